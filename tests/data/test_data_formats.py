"""Row formats: detection, `--format` forcing, parsing into the canonical
Example, and `file:line: reason` errors from `parse_row` / `read_examples`, lenient and strict."""
import json
import re

import pytest

from r1jax.data import formats, readers
from r1jax.data.formats import DataError, Example, Message, parse_row, read_examples


def write(tmp_path, lines, name="rows.jsonl"):
    """A JSONL file of `lines` (dicts/lists are dumped, str and bytes written as they are)."""
    path = tmp_path / name
    raw = b""
    for line in lines:
        if isinstance(line, (dict, list)):
            line = json.dumps(line, ensure_ascii=False)
        raw += (line.encode("utf-8") if isinstance(line, str) else line) + b"\n"
    path.write_bytes(raw)
    return str(path)


U, A = {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}
GOOD = {"prompt": "p", "completion": "c"}
GOOD_EXAMPLE = (Message("user", "p"), Message("assistant", "c"))


# ---- detection and parsing -----------------------------------------------------------------

@pytest.mark.parametrize("row,fmt", [
    ({"messages": [U, A]}, "messages"),
    ({"prompt": "p", "completion": "c"}, "prompt_completion"),
    ({"input": "i", "output": "o"}, "input_output"),
    ({"text": "t"}, "text"),
    ({"input_ids": [1, 2]}, "input_ids"),
    ({"input_ids": [1, 2], "loss_mask": [0, 1]}, "input_ids"),
    ({"category": "x", "id": 3}, ""),
])
def test_detect_format(row, fmt):
    assert formats.detect_format(row) == fmt


@pytest.mark.parametrize("row,messages", [
    ({"messages": [U, {"role": "assistant", "content": "A", "reasoning_content": "R"}]},
     (Message("user", "Q"), Message("assistant", "A", "R"))),
    ({"messages": [U, {"role": "assistant", "content": "<think>\nR\n</think>\n\nA"}]},
     (Message("user", "Q"), Message("assistant", "A", "R"))),
    ({"messages": [U, {"role": "assistant", "content": "  <think>R</think>A"}]},
     (Message("user", "Q"), Message("assistant", "A", "R"))),
    # Only a leading block is reasoning; a later one is part of the answer.
    ({"messages": [U, {"role": "assistant", "content": "A <think>R</think>"}]},
     (Message("user", "Q"), Message("assistant", "A <think>R</think>"))),
    ({"messages": [{"role": "system", "content": "S"}, U, A, U,
                   {"role": "assistant", "content": "B", "reasoning_content": None}]},
     (Message("system", "S"), Message("user", "Q"), Message("assistant", "A"), Message("user", "Q"),
      Message("assistant", "B"))),
    ({"prompt": "p", "completion": "<think>\nr\n</think>\n\nc"},
     (Message("user", "p"), Message("assistant", "c", "r"))),
    ({"prompt": "p", "completion": "c"}, (Message("user", "p"), Message("assistant", "c"))),
    ({"input": "i", "output": "o"}, (Message("user", "i"), Message("assistant", "o"))),
    ({"input": "i", "output": "<think>r</think>o"}, (Message("user", "i"), Message("assistant", "o", "r"))),
])
def test_chat_rows_parse_to_messages(row, messages):
    ex = parse_row(dict(row, category="cat"), "f.jsonl:7")
    assert ex == Example("f.jsonl:7", messages=messages, category="cat")
    assert ex.kind == "messages"


def test_text_and_input_ids_rows():
    assert parse_row({"text": "hello", "other": 1}, "f:1") == Example("f:1", text="hello")
    ex = parse_row({"input_ids": [0, 5, 6], "loss_mask": [0, 1, True]}, "f:2")
    assert ex == Example("f:2", input_ids=(0, 5, 6), loss_mask=(0, 1, 1))
    assert ex.kind == "input_ids" and type(ex.loss_mask[2]) is int
    assert parse_row({"input_ids": [3]}, "f:3") == Example("f:3", input_ids=(3,))
    assert parse_row({"text": "t", "category": 5}, "f:4").category == "5"


@pytest.mark.parametrize("content,reasoning,answer", [
    ("<think>\nr\n</think>\n\na", "r", "a"),
    ("<think>\n\nr\n\n</think>\n\n\na", "r", "a"),
    ("<think> r </think> a", " r ", " a"),
    ("<think></think>a", "", "a"),
    ("<think>r1</think>a</think>b", "r1", "a</think>b"),
    ("a", None, "a"),
    ("a</think>b", "a", "b"),  # R1 output without the opening tag: the released template splits it
])
def test_split_reasoning(content, reasoning, answer):
    assert formats.split_reasoning(content) == (reasoning, answer)


# ---- --format forcing ----------------------------------------------------------------------

MIXED = {"text": "T", "prompt": "P", "completion": "C", "input_ids": [4, 5]}


@pytest.mark.parametrize("fmt,expected", [
    ("text", Example("f:1", text="T")),
    ("prompt_completion", Example("f:1", messages=(Message("user", "P"), Message("assistant", "C")))),
    ("input_ids", Example("f:1", input_ids=(4, 5))),
])
def test_forced_format_reads_only_its_fields(fmt, expected):
    with pytest.raises(DataError, match=r"^f:1: ambiguous row"):
        parse_row(MIXED, "f:1")
    assert parse_row(MIXED, "f:1", fmt) == expected


def test_forced_format_missing_its_field():
    with pytest.raises(DataError, match=r"^f:1: missing field 'messages'"):
        parse_row({"text": "t"}, "f:1", "messages")
    with pytest.raises(DataError, match=r"^f:1: missing field 'input'"):
        parse_row({"prompt": "p", "completion": "c"}, "f:1", "input_output")
    with pytest.raises(DataError, match=r"^f:1: missing field 'input_ids'"):
        parse_row({"text": "t"}, "f:1", "input_ids")


def test_read_examples_forced_format(tmp_path):
    path = write(tmp_path, [{"text": "T", "prompt": "P", "completion": "C"}, {"text": "U"}])
    assert list(read_examples([path], fmt="text")) == [Example(f"{path}:1", text="T"),
                                                     Example(f"{path}:2", text="U")]
    with pytest.raises(DataError, match=r"--format 'csv': choose one of"):
        list(read_examples([path], fmt="csv"))


# ---- errors: file:line and the reason, lenient and strict ----------------------------------

def msg(**assistant):
    return {"messages": [U, dict(A, **assistant)]}


BAD_LINES = {
    "invalid_json": ('{"text": "x"', r"invalid JSON"),
    "truncated_json": ('{"text": "x"} trailing', r"invalid JSON: Extra data"),
    "not_object_list": ([1, 2], r"a row must be a JSON object, got list"),
    "not_object_string": ('"just a string"', r"a row must be a JSON object, got str"),
    "unknown_format": ({"question": "q", "answer": "a"}, r"no known fields .*'answer', 'question'"),
    "ambiguous_messages_text": ({"messages": [U, A], "text": "t"},
                                r"ambiguous row with keys \['messages', 'text'\].*--format"),
    "ambiguous_prompt_input": ({"prompt": "p", "completion": "c", "input": "i", "output": "o"},
                               r"ambiguous row"),
    "ambiguous_input_ids_text": ({"input_ids": [1], "text": "t"}, r"ambiguous row"),
    "last_not_assistant": ({"messages": [U, A, U]}, r"the last message must be the assistant's"),
    "only_user": ({"messages": [U]}, r"the last message must be the assistant's"),
    "no_user": ({"messages": [{"role": "system", "content": "S"}, A]}, r"no user message"),
    "bad_role": ({"messages": [{"role": "tool", "content": "x"}, U, A]},
                 r"messages\[0\]: role 'tool' is not one of \('system', 'user', 'assistant'\)"),
    "missing_role": ({"messages": [{"content": "x"}, A]}, r"messages\[0\]: role None is not one of"),
    "system_not_first": ({"messages": [U, {"role": "system", "content": "S"}, A]},
                         r"messages\[1\]: a system message may only come first"),
    "empty_messages": ({"messages": []}, r"'messages' must be a non-empty list"),
    "messages_not_list": ({"messages": "hi"}, r"'messages' must be a non-empty list"),
    "message_not_object": ({"messages": [U, "A"]}, r"messages\[1\] must be an object"),
    "content_int": ({"messages": [{"role": "user", "content": 5}, A]},
                    r"messages\[0\]: field 'content' must be a string, got int"),
    "content_list": ({"messages": [U, {"role": "assistant", "content": [{"type": "text", "text": "A"}]}]},
                     r"messages\[1\]: field 'content' must be a string, got list"),
    "content_missing": ({"messages": [U, {"role": "assistant"}]}, r"messages\[1\]: missing field 'content'"),
    "content_null": ({"messages": [U, {"role": "assistant", "content": None}]},
                     r"messages\[1\]: missing field 'content'"),
    "reasoning_and_think": (msg(content="<think>r</think>A", reasoning_content="r"),
                            r"messages\[1\]: assistant turn has both reasoning_content and a <think> block"),
    "reasoning_not_string": (msg(reasoning_content=["r"]), r"messages\[1\]: reasoning_content must be a string"),
    "prompt_int": ({"prompt": 1, "completion": "c"},
                   r"field 'prompt' must be a string, got int"),
    "completion_missing": ({"prompt": "p"}, r"missing field 'completion'"),
    "output_null": ({"input": "i", "output": None}, r"missing field 'output'"),
    "text_not_string": ({"text": ["t"]}, r"field 'text' must be a string, got list"),
    "input_ids_negative": ({"input_ids": [1, -2]}, r"'input_ids' must be a list of non-negative integers"),
    "input_ids_float": ({"input_ids": [1, 2.0]}, r"'input_ids' must be a list of non-negative integers"),
    "input_ids_bool": ({"input_ids": [True]}, r"'input_ids' must be a list of non-negative integers"),
    "input_ids_not_list": ({"input_ids": "1 2"}, r"'input_ids' must be a list of non-negative integers"),
    "loss_mask_short": ({"input_ids": [1, 2, 3], "loss_mask": [0, 1]},
                        r"'loss_mask' must be a list of 0/1 as long as input_ids"),
    "loss_mask_long": ({"input_ids": [1], "loss_mask": [0, 1]}, r"'loss_mask' must be a list of 0/1"),
    "loss_mask_value": ({"input_ids": [1, 2], "loss_mask": [0, 2]}, r"'loss_mask' must be a list of 0/1"),
    "invalid_utf8": (b'{"text": "caf\xe9"}', r"not UTF-8"),
    "invalid_utf8_bytes": (b"\xff\xfe", r"not UTF-8"),
}


@pytest.mark.parametrize("name", BAD_LINES)
def test_bad_line_lenient_yields_error_and_continues(tmp_path, name):
    line, reason = BAD_LINES[name]
    path = write(tmp_path, [GOOD, line, GOOD])
    out = list(read_examples([path]))
    assert len(out) == 3
    assert out[0] == Example(f"{path}:1", messages=GOOD_EXAMPLE)
    assert out[2] == Example(f"{path}:3", messages=GOOD_EXAMPLE)
    assert isinstance(out[1], DataError)
    assert str(out[1]).startswith(f"{path}:2: "), str(out[1])
    assert re.search(reason, str(out[1])), str(out[1])


@pytest.mark.parametrize("name", BAD_LINES)
def test_bad_line_strict_raises_after_good_lines(tmp_path, name):
    line, reason = BAD_LINES[name]
    path = write(tmp_path, [GOOD, line, GOOD])
    rows = read_examples([path], strict=True)
    assert next(rows) == Example(f"{path}:1", messages=GOOD_EXAMPLE)
    with pytest.raises(DataError) as e:
        next(rows)
    assert str(e.value).startswith(f"{path}:2: ") and re.search(reason, str(e.value)), str(e.value)


def test_parse_row_errors_name_where():
    for name in ("unknown_format", "ambiguous_messages_text", "bad_role", "loss_mask_short"):
        line, reason = BAD_LINES[name]
        with pytest.raises(DataError, match=r"^data/x\.jsonl:12: .*" + reason):
            parse_row(line, "data/x.jsonl:12")
    with pytest.raises(DataError, match=r"^w:1: a row must be a JSON object, got NoneType"):
        parse_row(None, "w:1")


def test_lenient_keeps_going_strict_stops_at_first(tmp_path):
    a = write(tmp_path, [GOOD, "", "   ", "not json", GOOD, {"text": 3}], name="a.jsonl")
    b = write(tmp_path, [b"\x80", GOOD], name="b.jsonl")
    out = list(read_examples([a, b]))
    kinds = [(type(x).__name__, x.source if isinstance(x, Example) else str(x).split(": ")[0]) for x in out]
    # Blank lines are skipped but still counted; every error is followed by the rows after it.
    assert kinds == [("Example", f"{a}:1"), ("DataError", f"{a}:4"), ("Example", f"{a}:5"),
                     ("DataError", f"{a}:6"), ("DataError", f"{b}:1"), ("Example", f"{b}:2")]
    got = []
    with pytest.raises(DataError, match=re.escape(f"{a}:4: invalid JSON")):
        for x in read_examples([a, b], strict=True):
            got.append(x)
    assert got == [Example(f"{a}:1", messages=GOOD_EXAMPLE)]


def test_crlf_line_endings_and_files_unchanged(tmp_path):
    path = tmp_path / "crlf.jsonl"
    raw = b'{"text": "a"}\r\n{"input": "i", "output": "o"}\r\n'
    path.write_bytes(raw)
    assert list(read_examples([str(path)])) == [
        Example(f"{path}:1", text="a"),
        Example(f"{path}:2", messages=(Message("user", "i"), Message("assistant", "o")))]
    assert path.read_bytes() == raw


def test_missing_file(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=re.escape(missing) + r": no such file or directory"):
        list(read_examples([missing]))


def test_json_objects_name_file_and_line(tmp_path):
    from r1jax.data.readers import json_objects
    good = tmp_path / "good.jsonl"
    good.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n{"b": 2}\n')  # BOM and a blank line
    assert [(w, n, r) for w, n, r in json_objects(str(good))] == [(f"{good}:1", 1, {"a": 1}),
                                                                  (f"{good}:3", 3, {"b": 2})]
    for name, content, message in [("json", b'{"a": 1}\n{"a": \n', ":2: invalid JSON"),
                                   ("list", b'{"a": 1}\n[1, 2]\n', ":2: a row must be a JSON object, got list"),
                                   ("utf8", b'{"a": 1}\n{"a": "\xff"}\n', ":2: not UTF-8")]:
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(content)
        with pytest.raises(DataError, match=re.escape(f"{path}{message}")):
            list(json_objects(str(path)))
    with pytest.raises(DataError, match="cannot open"):
        list(json_objects(str(tmp_path / "missing.jsonl")))


def test_max_line_bytes_skips_long_lines_unread_and_resynchronizes(tmp_path, monkeypatch):
    """A line over `max_line_bytes` (newline excluded) is given as a LineTooLong with its length,
    not parsed, and reading goes on at the next line with the right numbers; a line at the bound is
    read, a long all-whitespace line is blank, a long last line without a newline is skipped, and
    --strict does not stop at it. Oracle: the lines and their byte lengths, written by hand below.
    The skip reads in chunks smaller than the line, so resynchronizing takes several reads."""
    monkeypatch.setattr(readers, "_SKIP_CHUNK", 7)
    at_bound = '{"text": "' + "a" * 30 + '"}'                    # 42 bytes
    over = '{"text": "' + "b" * 31 + '"}'                        # 43 bytes
    bad_json_over = "{" * 100                                      # never parsed: not "invalid JSON"
    path = write(tmp_path, [at_bound, over, {"text": "c"}, " " * 100, bad_json_over, "", {"text": "d"}])
    with open(path, "ab") as f:
        f.write(b'{"text": "' + b"e" * 200 + b'"}')                # last line, no newline
    for strict in (False, True):
        out = list(read_examples([path], max_line_bytes=42, strict=strict))
        assert out[0] == Example(f"{path}:1", text="a" * 30)
        assert isinstance(out[1], readers.LineTooLong)
        assert (out[1].where, out[1].nbytes, out[1].limit) == (f"{path}:2", 43, 42)
        assert str(out[1]) == f"{path}:2: line of 43 bytes > 42, skipped unread"
        assert out[2] == Example(f"{path}:3", text="c")
        assert isinstance(out[3], readers.LineTooLong) and (out[3].where, out[3].nbytes) == (f"{path}:5", 100)
        assert out[4] == Example(f"{path}:7", text="d")
        assert isinstance(out[5], readers.LineTooLong) and (out[5].where, out[5].nbytes) == (f"{path}:8", 212)
        assert len(out) == 6
    # Without a bound every line is read whole, as before.
    assert [type(x).__name__ for x in read_examples([path])] == ["Example", "Example", "Example", "DataError",
                                                              "Example", "Example"]
