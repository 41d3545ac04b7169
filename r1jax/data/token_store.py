"""Tokenized examples on disk: three flat, memory-mappable arrays per split.

    {prefix}.ids.npy      int32  [total_tokens]   every example's input_ids, concatenated
    {prefix}.mask.npy     uint8  [total_tokens]   loss_mask (1 = training target)
    {prefix}.offsets.npy  int64  [N + 1]          example i is [offsets[i], offsets[i+1])
    {prefix}.meta.json    {"format_version": FORMAT_VERSION}

Written once by `python -m r1jax.data prepare`, read by the training loader without parsing JSON.
The format version names the rule the ids were made with; a split of another version (none: made
before versions, when a chat row was one encoding of its whole rendered string) is refused, so data
tokenized by an older rule is never mixed in.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable

import numpy as np

from r1jax.data.formats import DataError

SUFFIXES = ("ids", "mask", "offsets")
# 2: a chat row is its generation prompt's ids + its target's ids, each encoded alone (chat.py).
# 3: with --train_all_turns, one example per assistant turn (the conversation up to it), no longer
#    earlier answers trained inside the final turn's row.
FORMAT_VERSION = 3
FILE_SUFFIXES = (".ids.npy", ".mask.npy", ".offsets.npy", ".meta.json")  # every file of a split


def paths(prefix: str) -> dict[str, str]:
    """{"ids", "mask", "offsets": the arrays' paths, "meta": the format file's}."""
    return {**{s: f"{prefix}.{s}.npy" for s in SUFFIXES}, "meta": f"{prefix}.meta.json"}


def format_version(prefix: str) -> int | None:
    """The format version of the split at `prefix`; None when it has no readable meta file."""
    try:
        with open(paths(prefix)["meta"], encoding="utf-8") as f:
            version = json.load(f).get("format_version")
    except (OSError, ValueError, AttributeError):
        return None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def check_format(prefix: str) -> None:
    """DataError naming the split unless it was written with this FORMAT_VERSION."""
    version = format_version(prefix)
    if version != FORMAT_VERSION:
        made = "before format versions" if version is None else f"with format version {version}"
        raise DataError(f"{prefix}: this split was prepared {made}; this r1jax reads format version "
                        f"{FORMAT_VERSION} (chat rows tokenized as prompt ids + target ids): prepare "
                        "it again with `python -m r1jax.data prepare ... --overwrite`")


def write(prefix: str, examples: Iterable[dict]) -> int:
    """Writes tokenized examples ({"input_ids", "loss_mask"}) under `prefix`; returns their count.

    Files appear only when complete (written to temporary names, then renamed).
    """
    ids, mask, offsets = [], [], [0]
    for ex in examples:
        if len(ex["input_ids"]) != len(ex["loss_mask"]):
            raise ValueError("input_ids and loss_mask differ in length")
        ids.append(np.asarray(ex["input_ids"], np.int32))
        mask.append(np.asarray(ex["loss_mask"], np.uint8))
        offsets.append(offsets[-1] + len(ex["input_ids"]))
    arrays = {"ids": np.concatenate(ids) if ids else np.zeros(0, np.int32),
              "mask": np.concatenate(mask) if mask else np.zeros(0, np.uint8),
              "offsets": np.asarray(offsets, np.int64)}
    files = paths(prefix)
    for name in SUFFIXES:
        tmp = files[name] + ".tmp.npy"
        np.save(tmp, arrays[name])
        os.replace(tmp, files[name])
    with open(files["meta"] + ".tmp", "w", encoding="utf-8") as f:
        json.dump({"format_version": FORMAT_VERSION}, f)
    os.replace(files["meta"] + ".tmp", files["meta"])
    return len(offsets) - 1


class TokenStore:
    """Read-only, memory-mapped access to a split written by `write`."""

    def __init__(self, prefix: str):
        p = paths(prefix)
        missing = [p[s] for s in SUFFIXES if not os.path.exists(p[s])]
        if missing:
            raise FileNotFoundError(f"{prefix}: missing {', '.join(missing)}; run "
                                    "`python -m r1jax.data prepare` to create the split")
        check_format(prefix)
        self.ids = np.load(p["ids"], mmap_mode="r")
        self.mask = np.load(p["mask"], mmap_mode="r")
        self.offsets = np.load(p["offsets"])
        if self.offsets[-1] != len(self.ids) or len(self.ids) != len(self.mask):
            raise ValueError(f"{prefix}: token files disagree in length (corrupt or partly written)")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids int32 [n], loss_mask uint8 [n]) of example i."""
        a, b = self.offsets[i], self.offsets[i + 1]
        return np.asarray(self.ids[a:b]), np.asarray(self.mask[a:b])

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)
