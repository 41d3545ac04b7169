"""Training-data row formats, read into one canonical `Example`.

A row (a JSONL line, or a row of any container `readers` reads) is one of:
  {"messages": [{"role": "system"|"user"|"assistant", "content": str, "reasoning_content"?: str}]}
  {"prompt": str, "completion": str}       {"input": str, "output": str}
  {"text": str}                            {"input_ids": [int, ...], "loss_mask"?: [0|1, ...]}
Assistant reasoning is either a `reasoning_content` field or a leading `<think>...</think>` block in
the content. An optional `category` (str) feeds stratified splits and per-category reports; other keys
are ignored.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Sequence

from r1jax.data import readers
from r1jax.data.errors import DataError

FORMATS = ("auto", "messages", "prompt_completion", "input_output", "text", "input_ids")
ROLES = ("system", "user", "assistant")
_THINK = re.compile(r"^\s*<think>(.*?)</think>", re.DOTALL)


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


def read_examples(paths: Sequence[str], fmt: str = "auto", strict: bool = False,
                  max_line_bytes: int | None = None, input_format: str = "auto"
                  ) -> Iterator[Example | DataError]:
    """Examples of the inputs in order: each a file, glob or directory (`readers.expand`) of any
    container (`readers.read_rows`; `input_format` forces one). A malformed row yields its
    DataError (or raises it when `strict`). A JSONL line of more than `max_line_bytes` bytes yields
    a LineTooLong without being decoded, `strict` or not (it is a length, not a format, problem).
    A file that cannot be read raises DataError. Inputs are only read."""
    if fmt not in FORMATS:
        raise DataError(f"--format {fmt!r}: choose one of {FORMATS}")
    if input_format not in readers.INPUT_FORMATS:
        raise DataError(f"--input_format {input_format!r}: choose one of {readers.INPUT_FORMATS}")
    for path in paths:
        for unit in readers.expand(path):
            for where, row in readers.read_rows(unit, input_format, max_line_bytes):
                if isinstance(row, readers.LineTooLong):
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
