"""The JSON a training run writes and reads back: strict on the way out, forgiving of a crash on the
way in.

Writing: a non-finite float (NaN, +-Infinity: a diverged loss) is written as `null`, so every file
is standard JSON (RFC 8259) that strict readers (jq, JavaScript, Go) accept; the key stays, its
value is null. Reading a JSONL file (one object per line, e.g. metrics.jsonl): a last line without
its newline that does not parse is what a crash in the middle of a write leaves; it is dropped with a
warning naming the file. Any other line that does not parse is an error naming FILE:LINE. Files
written before this rule (bare NaN tokens) still read, as float('nan').
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable


class JsonlError(ValueError):
    """A JSONL file with a malformed line other than a torn last one; the message names FILE:LINE."""


def finite(obj):
    """`obj` (dicts, lists, tuples, scalars) with every non-finite float replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps(obj, **kwargs) -> str:
    """json.dumps of `obj` with non-finite floats as null; never emits NaN or Infinity tokens."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)


def read_jsonl(path: str, warn: Callable[[str], None]) -> list[dict]:
    """The objects of the JSONL file `path`, in order; blank lines are skipped.

    A torn last line (no trailing newline, not valid JSON) is dropped and reported through `warn`;
    a line that is not a JSON object anywhere else raises JsonlError naming `path:line`."""
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    out = []
    for i, raw in enumerate(lines, 1):
        if raw.strip():
            out.append(_record(raw, f"{path}:{i}"))
    if tail.strip():
        try:
            out.append(_record(tail, f"{path}:{len(lines) + 1}"))
        except JsonlError:
            shown = tail[:60].decode("utf-8", errors="replace")
            warn(f"warning: {path}:{len(lines) + 1}: dropped a partial last line, left by a write cut "
                 f"short ({len(tail)} bytes: {shown!r}...)")
    return out


def _record(raw: bytes, where: str) -> dict:
    try:
        rec = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise JsonlError(f"{where}: not a JSON line ({e})") from None
    if not isinstance(rec, dict):
        raise JsonlError(f"{where}: a JSON {type(rec).__name__}, expected an object")
    return rec


def rewrite_jsonl(path: str, records: list[dict]) -> None:
    """Replaces the JSONL file `path` by `records` atomically (a crash leaves the old or the new file)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(dumps(r) + "\n" for r in records)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
