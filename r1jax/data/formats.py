"""Training-data row formats, read into one canonical `Example`.

A JSONL row is one of:
  {"messages": [{"role": "system"|"user"|"assistant", "content": str, "reasoning_content"?: str}]}
  {"prompt": str, "completion": str}       {"input": str, "output": str}
  {"text": str}                            {"input_ids": [int, ...], "loss_mask"?: [0|1, ...]}
Assistant reasoning is either a `reasoning_content` field or a leading `<think>...</think>` block in
the content. An optional `category` (str) feeds stratified splits and per-category reports; other keys
are ignored.
"""
from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator, Sequence

FORMATS = ("auto", "messages", "prompt_completion", "input_output", "text", "input_ids")
ROLES = ("system", "user", "assistant")
_THINK = re.compile(r"^\s*<think>(.*?)</think>", re.DOTALL)


class DataError(ValueError):
    """A data row or file that cannot be used; the message names `file:line` and what is wrong."""


@dataclasses.dataclass(frozen=True)
class Message:
    role: str
    content: str
    reasoning: str | None = None  # assistant turns only


@dataclasses.dataclass(frozen=True)
class Example:
    """One training example. Exactly one of `messages`, `text`, `input_ids` is set."""
    source: str                                  # "file:line"
    messages: tuple[Message, ...] | None = None
    text: str | None = None
    input_ids: tuple[int, ...] | None = None
    loss_mask: tuple[int, ...] | None = None     # with input_ids only
    category: str | None = None

    @property
    def kind(self) -> str:
        return "messages" if self.messages is not None else "text" if self.text is not None else "input_ids"


def detect_format(row: dict) -> str:
    """The format of a parsed row, by its keys; "" when none fits."""
    if "messages" in row:
        return "messages"
    if "prompt" in row or "completion" in row:
        return "prompt_completion"
    if "input" in row or "output" in row:
        return "input_output"
    if "input_ids" in row:
        return "input_ids"
    if "text" in row:
        return "text"
    return ""


def split_reasoning(content: str) -> tuple[str | None, str]:
    """A leading `<think>...</think>` block of an assistant content -> (reasoning, answer).

    R1 often emits its reasoning without the opening tag ("...</think>\n\nanswer"); as in the
    released chat template, everything before the first `</think>` is then the reasoning.
    """
    m = _THINK.match(content)
    if m:
        return m.group(1).strip("\n"), content[m.end():].lstrip("\n")
    head, sep, tail = content.partition("</think>")
    if sep and "<think>" not in head:
        return head.strip("\n"), tail.lstrip("\n")
    return None, content


def _str_field(row: dict, key: str, where: str) -> str:
    if key not in row or row[key] is None:
        raise DataError(f"{where}: missing field {key!r}")
    if not isinstance(row[key], str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(row[key]).__name__}")
    return row[key]


def _assistant(content: str, reasoning, where: str) -> Message:
    if reasoning is not None and not isinstance(reasoning, str):
        raise DataError(f"{where}: reasoning_content must be a string")
    think, answer = split_reasoning(content)
    if think is not None and reasoning is not None:
        raise DataError(f"{where}: assistant turn has both reasoning_content and a <think> block")
    return Message("assistant", answer, reasoning if reasoning is not None else think)


def _messages(row: dict, where: str) -> tuple[Message, ...]:
    msgs = row["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: 'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(msgs):
        at = f"{where}: messages[{i}]"
        if not isinstance(m, dict):
            raise DataError(f"{at} must be an object")
        role = m.get("role")
        if role not in ROLES:
            raise DataError(f"{at}: role {role!r} is not one of {ROLES}")
        content = _str_field(m, "content", at)
        if role == "assistant":
            out.append(_assistant(content, m.get("reasoning_content"), at))
        else:
            if role == "system" and i != 0:
                raise DataError(f"{at}: a system message may only come first")
            out.append(Message(role, content))
    if out[-1].role != "assistant":
        raise DataError(f"{where}: the last message must be the assistant's (the trained turn)")
    if not any(m.role == "user" for m in out):
        raise DataError(f"{where}: no user message")
    return tuple(out)


def _ids(row: dict, where: str) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    ids = row["input_ids"]
    if isinstance(ids, list) and not ids:
        raise DataError(f"{where}: 'input_ids' is empty")
    if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                            for t in ids):
        raise DataError(f"{where}: 'input_ids' must be a list of non-negative integers")
    mask = row.get("loss_mask")
    if mask is not None:
        if not isinstance(mask, list) or len(mask) != len(ids) or any(v not in (0, 1) for v in mask):
            raise DataError(f"{where}: 'loss_mask' must be a list of 0/1 as long as input_ids")
        mask = tuple(int(v) for v in mask)
    return tuple(ids), mask


def parse_row(row, where: str, fmt: str = "auto") -> Example:
    """A parsed JSON row -> Example; DataError naming `where` for anything unusable."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    if fmt not in FORMATS:
        raise DataError(f"{where}: format {fmt!r} unknown; choose one of {FORMATS}")
    families = (("messages",), ("prompt", "completion"), ("input", "output"), ("input_ids",), ("text",))
    if fmt == "auto" and sum(any(k in row for k in fam) for fam in families) > 1:
        raise DataError(f"{where}: ambiguous row with keys {sorted(row)}: keep one format's fields, "
                        "or name the format with --format")
    kind = detect_format(row) if fmt == "auto" else fmt
    if not kind:
        raise DataError(f"{where}: no known fields (keys: {sorted(row)}); expected messages, "
                        "prompt/completion, input/output, text or input_ids")
    category = row.get("category")
    if category is not None and not isinstance(category, str):
        category = str(category)
    if kind == "messages":
        if "messages" not in row:
            raise DataError(f"{where}: missing field 'messages'")
        return Example(where, messages=_messages(row, where), category=category)
    if kind in ("prompt_completion", "input_output"):
        q, a = ("prompt", "completion") if kind == "prompt_completion" else ("input", "output")
        user = _str_field(row, q, where)
        return Example(where, messages=(Message("user", user), _assistant(_str_field(row, a, where), None,
                                                                           where)), category=category)
    if kind == "text":
        return Example(where, text=_str_field(row, "text", where), category=category)
    if "input_ids" not in row:
        raise DataError(f"{where}: missing field 'input_ids'")
    ids, mask = _ids(row, where)
    return Example(where, input_ids=ids, loss_mask=mask, category=category)


class LineTooLong(DataError):
    """A line longer than the reader's byte bound, skipped unread (`read_jsonl(max_line_bytes=...)`)."""

    def __init__(self, where: str, nbytes: int, limit: int):
        super().__init__(f"{where}: line of {nbytes} bytes > {limit}, skipped unread")
        self.where, self.nbytes, self.limit = where, nbytes, limit


_SKIP_CHUNK = 1 << 20  # bytes read at a time while skipping the rest of an over-long line
_BLANK = object()


def bounded_lines(f, max_bytes: int | None) -> Iterator[tuple[int, bytes | int]]:
    """(line number, line) for each line of a binary file, counting from 1.

    The line is its bytes, with the trailing b"\n". A line of more than `max_bytes` bytes (without
    its b"\n") is read past in chunks of `_SKIP_CHUNK` and given as its length in bytes instead, or
    as b"" when all of it is ASCII whitespace; the next line is read from its start. Memory held is
    at most max_bytes + 1 bytes per line whatever its length. None reads every line whole.
    """
    lineno = 0
    while raw := f.readline(-1 if max_bytes is None else max_bytes + 1):
        lineno += 1
        if max_bytes is None or len(raw) <= max_bytes or raw.endswith(b"\n"):
            yield lineno, raw
            del raw  # not held while the next line is read
            continue
        nbytes, blank = len(raw), raw.isspace()
        del raw
        while chunk := f.readline(_SKIP_CHUNK):
            if chunk.endswith(b"\n"):
                nbytes, blank = nbytes + len(chunk) - 1, blank and chunk.isspace()
                break
            nbytes, blank = nbytes + len(chunk), blank and chunk.isspace()
        yield lineno, b"" if blank else nbytes


def _json_lines(path: str, max_line_bytes: int | None = None
                ) -> Iterator[tuple[str, int, dict | list | str | int | float | DataError | None]]:
    """(where "PATH:LINE", line number, decoded JSON value or the DataError of a bad line) for each
    non-blank line; a line over `max_line_bytes` gives a LineTooLong without being decoded. A file
    that cannot be opened raises DataError.

    At most two copies of a line are held at once (its bytes and text while decoding, its text and
    value while parsing), and only the value while it is yielded or the next line is read."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot open: {e.strerror}") from None
    with f:
        for lineno, raw in bounded_lines(f, max_line_bytes):
            where = f"{path}:{lineno}"
            value = _BLANK
            if isinstance(raw, int):
                value = LineTooLong(where, raw, max_line_bytes)
            else:
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # BOM tolerated
                    raw = None
                    if line and not line.isspace():  # as line.strip(), without its copy
                        value = json.loads(line)
                except UnicodeDecodeError:
                    value = DataError(f"{where}: not UTF-8")
                except json.JSONDecodeError as e:
                    value = DataError(f"{where}: invalid JSON: {e.msg}")
            raw = line = None  # nothing of this line is held while the next one is read
            if value is not _BLANK:
                yield where, lineno, value
            value = None


def json_objects(path: str) -> Iterator[tuple[str, int, dict]]:
    """(where "PATH:LINE", line number, row) for each non-blank line of a JSONL file, in order.

    A file that cannot be opened, a line that is not UTF-8 JSON, or a row that is not an object
    raises DataError naming PATH:LINE.
    """
    for where, lineno, row in _json_lines(path):
        if isinstance(row, DataError):
            raise row
        if not isinstance(row, dict):
            raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
        yield where, lineno, row


def read_jsonl(paths: Sequence[str], fmt: str = "auto", strict: bool = False,
               max_line_bytes: int | None = None) -> Iterator[Example | DataError]:
    """Examples of the JSONL files in order. A malformed line yields its DataError (or raises it when
    `strict`); blank lines are skipped. A line of more than `max_line_bytes` bytes yields a
    LineTooLong without being decoded, `strict` or not (it is a length, not a format, problem).
    Files are only read."""
    if fmt not in FORMATS:
        raise DataError(f"--format {fmt!r}: choose one of {FORMATS}")
    for path in paths:
        for where, _, row in _json_lines(path, max_line_bytes):
            if isinstance(row, LineTooLong):
                yield row
                continue
            try:
                if isinstance(row, DataError):
                    raise row
                item = parse_row(row, where, fmt)
            except DataError as err:
                if strict:
                    raise err from None
                item = err
            row = None  # held no longer than its example: the next line may be long too
            yield item
            item = None
