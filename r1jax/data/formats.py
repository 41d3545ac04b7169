"""Training-data row formats, read into one canonical `Example`.

A row (a dict: a JSONL line, or a row of any container `readers` reads) is one of these shapes (`FORMATS`, detected by its keys):
  messages           {"messages": [{"role": "system"|"user"|"assistant", "content": str,
                                    "reasoning_content"?: str}, ...]}
  sharegpt           {"conversations": [{"from": "system"|"human"|"gpt", "value": str}, ...], "system"?: str}
  alpaca             {"instruction": str, "input"?: str, "output": str, "system"?: str, "reasoning"?: str,
                      "history"?: [[user: str, assistant: str], ...]}
  prompt_completion  {"prompt": str, "completion": str, "system"?: str, "reasoning"?: str}
  input_output       {"input": str, "output": str, "system"?: str, "reasoning"?: str}
  text               {"text": str}
  input_ids          {"input_ids": [int, ...], "loss_mask"?: [0|1, ...]}
Every shape but text and input_ids is a chat: it becomes the same Example as the `messages` row
written by hand for it.

- Reasoning of an assistant turn is a `reasoning_content` field (messages, ShareGPT turns), a
  `reasoning` field (alpaca, prompt_completion, input_output), or a leading `<think>...</think>`
  block of its content (also R1's tagless "...</think>answer", `split_reasoning`); not both.
- ShareGPT: `from` is also spelled `role`, and `value` `content`, as some exports write them (one
  spelling of each per turn); `human`/`user` is the user, `gpt`/`assistant` the assistant. Other
  roles (tool, function_call, observation, ...) cannot be trained as R1 chat: a DataError naming
  the turn. A non-empty top-level `system` is a leading system message (with a system turn as well,
  a DataError).
- Alpaca: the user message is the instruction, then, when `input` is non-empty, a blank line and
  the input (`instruction + "\\n\\n" + input`; an empty instruction gives the input alone). A row
  with `instruction` is Alpaca although it has `input`/`output` too; input_output is the shape of
  rows without one. `history` holds the earlier turns as [user, assistant] pairs, oldest first
  (their assistant texts may hold `<think>` blocks too); the instruction is the last user turn.
- `system` of the flat shapes (alpaca, prompt_completion, input_output): a leading system message
  when non-empty.
- Chat rules, for every chat shape: a system message only first, at least one user message, the
  last message the assistant's (the trained turn).
An optional `category` (str; a number or bool is written as a string; a list or object is a
DataError) feeds stratified splits and per-category reports; other keys are ignored.

Column maps (`parse_columns`, `--columns prompt=problem,completion=solution`) read a row's column
under a field's name: `parse_row(row, where, columns={"prompt": "problem"})` reads column `problem`
as `prompt` (a column already named `prompt` is then ignored; unmapped columns keep their names).
A mapped column missing from a row is a DataError naming the column and the mapping; errors about a
mapped field name its column too. The fields a map may name are `MAPPABLE` for training rows;
prompt sets (r1jax/data/prompt_set.py) pass their own list, which adds `answer` and `tests`.
"""
from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Iterator, Mapping, Sequence

from r1jax.data import readers
from r1jax.data.errors import DataError

FORMATS = ("auto", "messages", "sharegpt", "alpaca", "prompt_completion", "input_output", "text",
           "input_ids")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant"}
MAPPABLE = ("prompt", "completion", "reasoning", "system", "category", "messages", "conversations",
            "instruction", "input", "output", "history", "text", "input_ids", "loss_mask")
_THINK = re.compile(r"^\s*<think>(.*?)</think>", re.DOTALL)
# (shape, the keys that mark it), in detection order.
_SHAPE_KEYS = (("messages", ("messages",)), ("sharegpt", ("conversations",)), ("alpaca", ("instruction",)),
               ("prompt_completion", ("prompt", "completion")), ("input_output", ("input", "output")),
               ("input_ids", ("input_ids",)), ("text", ("text",)))
_NO_NAMES: Mapping[str, str] = types.MappingProxyType({})  # no column map
_FLAT = {"alpaca": ("instruction", "output"), "prompt_completion": ("prompt", "completion"),
         "input_output": ("input", "output")}  # shape -> (user field, assistant field)


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


def _shapes(row: dict) -> list[str]:
    """The shapes whose marking keys a row has, in detection order; Alpaca's `input`/`output` do not
    also count as input_output."""
    found = [shape for shape, keys in _SHAPE_KEYS if any(k in row for k in keys)]
    if "alpaca" in found and "input_output" in found:
        found.remove("input_output")
    return found


def detect_format(row: dict) -> str:
    """The format of a parsed row, by its keys; "" when none fits."""
    found = _shapes(row)
    return found[0] if found else ""


def parse_columns(spec: str, fields: Sequence[str] = MAPPABLE) -> dict[str, str]:
    """A `--columns` value -> {field: column}.

    spec: comma-separated FIELD=COLUMN entries, e.g. "prompt=problem,completion=solution"; FIELD is
    one of `fields` (default MAPPABLE, the training rows' fields), COLUMN any non-empty name without a comma (spaces around either are dropped; an
    "=" after the first belongs to the column). "" maps nothing. DataError naming the entry for a
    malformed entry, an unknown field, an empty column, a field mapped twice or a column mapped to
    two fields.
    """
    out: dict[str, str] = {}
    if not spec.strip():
        return out
    for entry in spec.split(","):
        field, sep, column = (s.strip() for s in entry.partition("="))
        if not sep:
            raise DataError(f"--columns entry {entry!r}: expected FIELD=COLUMN")
        if field not in fields:
            raise DataError(f"--columns entry {entry!r}: unknown field {field!r}; "
                            f"fields: {', '.join(fields)}")
        if not column:
            raise DataError(f"--columns entry {entry!r}: empty column name")
        if field in out:
            raise DataError(f"--columns entry {entry!r}: field {field!r} is already mapped "
                            f"(to {out[field]!r})")
        other = next((f for f, c in out.items() if c == column), None)
        if other is not None:
            raise DataError(f"--columns entry {entry!r}: column {column!r} is already mapped (to {other!r})")
        out[field] = column
    return out


def _mapped(row: dict, columns: Mapping[str, str], where: str, missing_ok: bool = False) -> dict:
    """The row as its fields: each mapped column under its field's name; the mapped columns and
    the columns named like a mapped field dropped; others as they are. DataError naming the column
    and its mapping when the row lacks a mapped column, unless `missing_ok` (the field is then
    absent, as for a null cell: prompt sets, whose reference columns are often null)."""
    for field, column in columns.items():
        if column not in row and not missing_ok:
            raise DataError(f"{where}: no column {column!r} (--columns {field}={column}); "
                            f"columns: {sorted(row)}")
    out = {k: v for k, v in row.items() if k not in columns and k not in columns.values()}
    out.update((field, row[column]) for field, column in columns.items() if column in row)
    return out


def _label(key: str, names: Mapping[str, str]) -> str:
    """How errors name a field: 'prompt', or 'prompt' (column 'problem') when mapped from one."""
    return f"{key!r} (column {names[key]!r})" if key in names else repr(key)


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


def _str_field(row: dict, key: str, where: str, names: Mapping[str, str] = _NO_NAMES) -> str:
    if key not in row or row[key] is None:
        raise DataError(f"{where}: missing field {_label(key, names)}")
    if not isinstance(row[key], str):
        raise DataError(f"{where}: field {_label(key, names)} must be a string, "
                        f"got {type(row[key]).__name__}")
    return row[key]


def _opt_str(row: dict, key: str, where: str, names: Mapping[str, str] = _NO_NAMES) -> str | None:
    """An optional string field: None when absent or null."""
    return None if row.get(key) is None else _str_field(row, key, where, names)


def _category(row: dict, where: str, names: Mapping[str, str]) -> str | None:
    """`category` as a string (None when absent or null); a number or bool as its str()."""
    category = row.get("category")
    if category is None or isinstance(category, str):
        return category
    if isinstance(category, (int, float)):  # bool is an int
        return str(category)
    raise DataError(f"{where}: field {_label('category', names)} must be a string or a number, "
                    f"got {type(category).__name__}")


def _assistant(content: str, reasoning, where: str, field: str = "reasoning_content") -> Message:
    """An assistant turn: `reasoning` (the `field` it came from, for errors) or the content's
    leading <think> block as its reasoning, not both."""
    if reasoning is not None and not isinstance(reasoning, str):
        raise DataError(f"{where}: {field} must be a string")
    think, answer = split_reasoning(content)
    if think is not None and reasoning is not None:
        raise DataError(f"{where}: assistant turn has both {field} and a <think> block")
    return Message("assistant", answer, reasoning if reasoning is not None else think)


def _conversation(msgs: Sequence[Message], where: str) -> tuple[Message, ...]:
    """The chat rules on a conversation's messages (a system message only first is `_turns`'
    check) -> them as a tuple."""
    if msgs[-1].role != "assistant":
        raise DataError(f"{where}: the last message must be the assistant's (the trained turn)")
    if not any(m.role == "user" for m in msgs):
        raise DataError(f"{where}: no user message")
    return tuple(msgs)


def _turn_list(row: dict, key: str, where: str, names: Mapping[str, str]) -> list:
    turns = row[key]
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: {_label(key, names)} must be a non-empty list")
    return turns


def _message_turn(m: dict, at: str) -> tuple[str, str]:
    """(role, content) of a `messages` item."""
    role = m.get("role")
    if role not in ROLES:
        raise DataError(f"{at}: role {role!r} is not one of {ROLES}")
    return role, _str_field(m, "content", at)


def _one_key(turn: dict, keys: tuple[str, str], at: str) -> str:
    """Which of two spellings of a turn's field the turn uses; DataError for neither or both."""
    present = [k for k in keys if k in turn]
    if len(present) != 1:
        what = "missing field" if not present else "both fields"
        raise DataError(f"{at}: {what} {keys[0]!r} {'or' if not present else 'and'} {keys[1]!r}")
    return present[0]


def _sharegpt_turn(turn: dict, at: str) -> tuple[str, str]:
    """(role, content) of a ShareGPT `conversations` item, its role mapped to ROLES."""
    speaker = turn[_one_key(turn, ("from", "role"), at)]
    if not isinstance(speaker, str) or speaker not in SHAREGPT_ROLES:
        raise DataError(f"{at}: role {speaker!r} cannot be trained as R1 chat; ShareGPT roles: "
                        "system, human/user, gpt/assistant")
    return SHAREGPT_ROLES[speaker], _str_field(turn, _one_key(turn, ("value", "content"), at), at)


def _turns(turns: list, name: str, where: str, read_turn) -> list[Message]:
    """Messages of a list of turn objects; `read_turn(turn, "WHERE: NAME[i]")` -> (role, content).
    A system turn is only allowed first."""
    out = []
    for i, t in enumerate(turns):
        at = f"{where}: {name}[{i}]"
        if not isinstance(t, dict):
            raise DataError(f"{at} must be an object")
        role, content = read_turn(t, at)
        if role == "system" and i != 0:
            raise DataError(f"{at}: a system message may only come first")
        out.append(_assistant(content, t.get("reasoning_content"), at) if role == "assistant"
                   else Message(role, content))
    return out


def _messages(row: dict, where: str, names: Mapping[str, str] = _NO_NAMES) -> tuple[Message, ...]:
    turns = _turn_list(row, "messages", where, names)
    return _conversation(_turns(turns, "messages", where, _message_turn), where)


def _sharegpt(row: dict, where: str, names: Mapping[str, str]) -> tuple[Message, ...]:
    turns = _turn_list(row, "conversations", where, names)
    msgs = _turns(turns, "conversations", where, _sharegpt_turn)
    system = _opt_str(row, "system", where, names)
    if system:
        if msgs[0].role == "system":
            raise DataError(f"{where}: both a {_label('system', names)} field and a system turn; keep one")
        msgs.insert(0, Message("system", system))
    return _conversation(msgs, where)


def _flat(row: dict, kind: str, where: str, names: Mapping[str, str]) -> tuple[Message, ...]:
    """The conversation of an alpaca, prompt_completion or input_output row: [system], user,
    assistant (see the module docstring)."""
    q, a = _FLAT[kind]
    user = _str_field(row, q, where, names)
    if kind == "alpaca":
        extra = _opt_str(row, "input", where, names)
        user = "\n\n".join(part for part in (user, extra) if part)
    reasoning = _opt_str(row, "reasoning", where, names)
    answer = _assistant(_str_field(row, a, where, names), reasoning, where, _label("reasoning", names))
    system = _opt_str(row, "system", where, names)
    history = _history(row, where, names) if kind == "alpaca" else ()
    return ((Message("system", system),) if system else ()) + history + (Message("user", user), answer)


def _history(row: dict, where: str, names: Mapping[str, str]) -> tuple[Message, ...]:
    """An Alpaca row's earlier turns: `history` [[user, assistant], ...] -> messages, oldest first."""
    pairs = row.get("history")
    if pairs is None:
        return ()
    if not isinstance(pairs, list):
        raise DataError(f"{where}: field {_label('history', names)} must be a list of [user, assistant] pairs")
    out = []
    for i, pair in enumerate(pairs):
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(t, str) for t in pair)):
            raise DataError(f"{where}: {_label('history', names)}[{i}] must be a [user, assistant] pair "
                            "of strings")
        out += [Message("user", pair[0]), _assistant(pair[1], None, f"{where}: history[{i}]")]
    return tuple(out)


def _ids(row: dict, where: str, names: Mapping[str, str] = _NO_NAMES
         ) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    ids = row["input_ids"]
    if isinstance(ids, list) and not ids:
        raise DataError(f"{where}: {_label('input_ids', names)} is empty")
    if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                            for t in ids):
        raise DataError(f"{where}: {_label('input_ids', names)} must be a list of non-negative integers")
    mask = row.get("loss_mask")
    if mask is not None:
        if not isinstance(mask, list) or len(mask) != len(ids) or any(v not in (0, 1) for v in mask):
            raise DataError(f"{where}: {_label('loss_mask', names)} must be a list of 0/1 as long as "
                            "input_ids")
        mask = tuple(int(v) for v in mask)
    return tuple(ids), mask


def parse_row(row, where: str, fmt: str = "auto", columns: Mapping[str, str] | None = None) -> Example:
    """A parsed JSON row -> Example; DataError naming `where` for anything unusable.

    fmt: one of FORMATS ("auto": by the row's keys; a row with the keys of two shapes is ambiguous).
    columns: {field: column} (`parse_columns`) read before anything else (see the module docstring).
    """
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    if fmt not in FORMATS:
        raise DataError(f"{where}: format {fmt!r} unknown; choose one of {FORMATS}")
    names = dict(columns or {})
    if names:
        row = _mapped(row, names, where)
    if fmt == "auto" and len(_shapes(row)) > 1:
        raise DataError(f"{where}: ambiguous row with keys {sorted(row)}: keep one format's fields, "
                        "or name the format with --format")
    kind = detect_format(row) if fmt == "auto" else fmt
    if not kind:
        raise DataError(f"{where}: no known fields (keys: {sorted(row)}); expected messages, conversations "
                        "(ShareGPT), instruction/output (Alpaca), prompt/completion, input/output, text or "
                        "input_ids, or a column map (--columns)")
    category = _category(row, where, names)
    if kind in ("messages", "sharegpt"):
        key = "messages" if kind == "messages" else "conversations"
        if key not in row:
            raise DataError(f"{where}: missing field {key!r}")
        msgs = _messages(row, where, names) if kind == "messages" else _sharegpt(row, where, names)
        return Example(where, messages=msgs, category=category)
    if kind in _FLAT:
        return Example(where, messages=_flat(row, kind, where, names), category=category)
    if kind == "text":
        return Example(where, text=_str_field(row, "text", where, names), category=category)
    if "input_ids" not in row:
        raise DataError(f"{where}: missing field 'input_ids'")
    ids, mask = _ids(row, where, names)
    return Example(where, input_ids=ids, loss_mask=mask, category=category)


def read_examples(paths: Sequence[str], fmt: str = "auto", strict: bool = False,
                  max_line_bytes: int | None = None, input_format: str = "auto",
                  columns: Mapping[str, str] | None = None) -> Iterator[Example | DataError]:
    """Examples of the inputs in order: each a file, glob or directory (`readers.expand`) of any
    container (`readers.read_rows`; `input_format` forces one), read through the column map
    `columns` ({field: column}, see `parse_row`) when given. A malformed row yields its
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
                    item = parse_row(row, where, fmt, columns)
                except DataError as err:
                    if strict:
                        raise err from None
                    item = err
                row = None  # held no longer than its example: the next line may be long too
                yield item
                item = None
