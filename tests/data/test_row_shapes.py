"""Row shapes as users have them: ShareGPT and Alpaca rows, `reasoning`/`system` on flat rows,
column maps (`parse_columns`, `parse_row(columns=...)`), their detection and `--format` forcing.

The oracle of every chat shape is the `messages` row written by hand for it: the shape must parse
to the same Example and give the same ids and loss mask through `chat.tokenize_example` with the
packaged tokenizer. Error cases are checked against the hand-written message they must give.
"""
import re

import pytest

from r1jax.data import tokenizer as tokenizer_lib
from r1jax.data.chat import tokenize_example
from r1jax.data.formats import FORMATS, DataError, Example, Message, detect_format, parse_columns, parse_row


@pytest.fixture(scope="module")
def tok():
    return tokenizer_lib.load_tokenizer()


def system(c):
    return {"role": "system", "content": c}


def user(c):
    return {"role": "user", "content": c}


def assistant(c, reasoning=None):
    return {"role": "assistant", "content": c} | ({} if reasoning is None else {"reasoning_content": reasoning})


def turn(speaker, value):
    return {"from": speaker, "value": value}


Q1, A1, Q2, A2 = "What is 2 + 2?", "It is 4.", "And 3 * 3?", "That is 9."
R = "Add the two numbers:\n2 + 2 = 4."
S = "You are a careful math tutor."

# (shape row, the messages row written by hand for it)
EQUIVALENT = {
    "sharegpt_system": (
        {"conversations": [turn("system", S), turn("human", Q1), turn("gpt", A1)]},
        {"messages": [system(S), user(Q1), assistant(A1)]}),
    "sharegpt_multi_turn_think": (
        {"conversations": [turn("human", Q1), turn("gpt", A1), turn("human", Q2),
                           turn("gpt", f"<think>\n{R}\n</think>\n\n{A2}")]},
        {"messages": [user(Q1), assistant(A1), user(Q2), assistant(A2, R)]}),
    "sharegpt_tagless_think": (
        {"conversations": [turn("human", Q1), turn("gpt", f"{R}\n</think>\n\n{A1}")]},
        {"messages": [user(Q1), assistant(A1, R)]}),
    "sharegpt_user_assistant": (
        {"conversations": [turn("system", S), turn("user", Q1), turn("assistant", A1), turn("user", Q2),
                           turn("assistant", A2)]},
        {"messages": [system(S), user(Q1), assistant(A1), user(Q2), assistant(A2)]}),
    "sharegpt_role_content": (
        {"conversations": [{"role": "human", "content": Q1}, {"role": "gpt", "content": A1},
                           {"role": "user", "content": Q2}, {"role": "assistant", "content": A2}]},
        {"messages": [user(Q1), assistant(A1), user(Q2), assistant(A2)]}),
    "sharegpt_reasoning_content": (
        {"conversations": [turn("human", Q1), turn("gpt", A1) | {"reasoning_content": R}]},
        {"messages": [user(Q1), assistant(A1, R)]}),
    "sharegpt_top_level_system": (
        {"system": S, "conversations": [turn("human", Q1), turn("gpt", A1)]},
        {"messages": [system(S), user(Q1), assistant(A1)]}),
    "alpaca_with_input": (
        {"instruction": "Add the numbers.", "input": "2 and 2", "output": A1},
        {"messages": [user("Add the numbers.\n\n2 and 2"), assistant(A1)]}),
    "alpaca_empty_input": (
        {"instruction": Q1, "input": "", "output": A1},
        {"messages": [user(Q1), assistant(A1)]}),
    "alpaca_no_input": (
        {"instruction": Q1, "output": A1},
        {"messages": [user(Q1), assistant(A1)]}),
    "alpaca_null_input": (
        {"instruction": Q1, "input": None, "output": A1},
        {"messages": [user(Q1), assistant(A1)]}),
    "alpaca_empty_instruction": (
        {"instruction": "", "input": Q1, "output": A1, "system": S},
        {"messages": [system(S), user(Q1), assistant(A1)]}),
    "alpaca_system": (
        {"instruction": "Add the numbers.", "input": "2 and 2", "output": A1, "system": S},
        {"messages": [system(S), user("Add the numbers.\n\n2 and 2"), assistant(A1)]}),
    "alpaca_think_output": (
        {"instruction": Q1, "output": f"<think>\n{R}\n</think>\n\n{A1}"},
        {"messages": [user(Q1), assistant(A1, R)]}),
    "alpaca_reasoning": (
        {"instruction": Q1, "output": A1, "reasoning": R, "system": S},
        {"messages": [system(S), user(Q1), assistant(A1, R)]}),
    "alpaca_history": (
        {"instruction": Q2, "output": A2, "system": S, "history": [[Q1, f"<think>\n{R}\n</think>\n\n{A1}"]]},
        {"messages": [system(S), user(Q1), assistant(A1, R), user(Q2), assistant(A2)]}),
    "prompt_completion_reasoning_system": (
        {"prompt": Q1, "completion": A1, "reasoning": R, "system": S},
        {"messages": [system(S), user(Q1), assistant(A1, R)]}),
    "prompt_completion_empty_system": (
        {"prompt": Q1, "completion": A1, "system": "", "reasoning": R},
        {"messages": [user(Q1), assistant(A1, R)]}),
    "input_output_reasoning_system": (
        {"input": Q1, "output": A1, "reasoning": R, "system": S},
        {"messages": [system(S), user(Q1), assistant(A1, R)]}),
    "input_output_null_reasoning": (
        {"input": Q1, "output": f"<think>{R}</think>{A1}", "reasoning": None, "system": S},
        {"messages": [system(S), user(Q1), assistant(A1, R)]}),
}


@pytest.mark.parametrize("name", EQUIVALENT)
def test_shape_equals_its_messages_row(tok, name):
    """Oracle: the hand-written messages row. The shape parses to the same Example (category kept)
    and gives the same ids and loss mask through tokenize_example."""
    row, messages_row = EQUIVALENT[name]
    got = parse_row(dict(row, category="math"), "f.jsonl:3")
    want = parse_row(dict(messages_row, category="math"), "f.jsonl:3")
    assert got == want
    assert tokenize_example(got, tok) == tokenize_example(want, tok)
    assert tokenize_example(row, tok, where="f.jsonl:3") == tokenize_example(messages_row, tok)


@pytest.mark.parametrize("row,reason", [
    ({"conversations": [turn("human", Q1), turn("tool", "42"), turn("gpt", A1)]},
     r"^f:1: conversations\[1\]: role 'tool' cannot be trained as R1 chat; ShareGPT roles: "
     r"system, human/user, gpt/assistant$"),
    ({"conversations": [turn("human", Q1), turn("function_call", "{}"), turn("gpt", A1)]},
     r"^f:1: conversations\[1\]: role 'function_call' cannot be trained"),
    ({"conversations": [turn("human", Q1), turn("gpt", A1), turn("observation", "x"), turn("gpt", A2)]},
     r"^f:1: conversations\[2\]: role 'observation' cannot be trained"),
    ({"conversations": [{"from": ["human"], "value": Q1}, turn("gpt", A1)]},
     r"^f:1: conversations\[0\]: role \['human'\] cannot be trained"),
    ({"conversations": [{"value": Q1}, turn("gpt", A1)]},
     r"^f:1: conversations\[0\]: missing field 'from' or 'role'$"),
    ({"conversations": [{"from": "human", "role": "user", "value": Q1}, turn("gpt", A1)]},
     r"^f:1: conversations\[0\]: both fields 'from' and 'role'$"),
    ({"conversations": [{"from": "human"}, turn("gpt", A1)]},
     r"^f:1: conversations\[0\]: missing field 'value' or 'content'$"),
    ({"conversations": [turn("human", Q1), turn("gpt", 4)]},
     r"^f:1: conversations\[1\]: field 'value' must be a string, got int$"),
    ({"conversations": [turn("human", Q1), turn("system", S), turn("gpt", A1)]},
     r"^f:1: conversations\[1\]: a system message may only come first$"),
    ({"conversations": [turn("human", Q1), turn("gpt", A1), turn("human", Q2)]},
     r"^f:1: the last message must be the assistant's"),
    ({"conversations": [turn("system", S), turn("gpt", A1)]}, r"^f:1: no user message$"),
    ({"conversations": []}, r"^f:1: 'conversations' must be a non-empty list$"),
    ({"conversations": {"human": Q1}}, r"^f:1: 'conversations' must be a non-empty list$"),
    ({"conversations": [turn("human", Q1), "A"]}, r"^f:1: conversations\[1\] must be an object$"),
    ({"system": S, "conversations": [turn("system", S), turn("human", Q1), turn("gpt", A1)]},
     r"^f:1: both a 'system' field and a system turn; keep one$"),
    ({"conversations": [turn("human", Q1), turn("gpt", f"<think>{R}</think>{A1}") | {"reasoning_content": R}]},
     r"^f:1: conversations\[1\]: assistant turn has both reasoning_content and a <think> block$"),
    ({"instruction": {"text": Q1}, "output": A1}, r"^f:1: field 'instruction' must be a string, got dict$"),
    ({"instruction": Q1, "output": f"<think>{R}</think>{A1}", "reasoning": R},
     r"^f:1: assistant turn has both 'reasoning' and a <think> block$"),
    ({"prompt": Q1, "completion": f"{R}</think>{A1}", "reasoning": R},
     r"^f:1: assistant turn has both 'reasoning' and a <think> block$"),
    ({"prompt": Q1, "completion": A1, "reasoning": [R]}, r"^f:1: field 'reasoning' must be a string, got list$"),
    ({"input": Q1, "output": A1, "system": {"text": S}}, r"^f:1: field 'system' must be a string, got dict$"),
    ({"prompt": Q1, "completion": A1, "category": ["a", "b"]},
     r"^f:1: field 'category' must be a string or a number, got list$"),
    ({"text": "t", "category": {"name": "a"}}, r"^f:1: field 'category' must be a string or a number, got dict$"),
])
def test_shape_errors(row, reason):
    """Oracle: the hand-written one-line message, naming the turn or field."""
    with pytest.raises(DataError, match=reason):
        parse_row(row, "f:1")


def test_alpaca_errors_forced():
    """Oracle: the hand-written message naming the field, with --format alpaca."""
    with pytest.raises(DataError, match=r"^f:1: field 'input' must be a string, got list$"):
        parse_row({"instruction": Q1, "input": ["2", "2"], "output": A1}, "f:1", "alpaca")
    with pytest.raises(DataError, match=r"^f:1: missing field 'output'$"):
        parse_row({"instruction": Q1, "input": "x"}, "f:1", "alpaca")
    with pytest.raises(DataError, match=r"^f:1: 'history'\[1\] must be a \[user, assistant\] pair of strings$"):
        parse_row({"instruction": Q1, "output": A1, "history": [[Q1, A1], [Q2]]}, "f:1")
    with pytest.raises(DataError, match=r"^f:1: field 'history' must be a list"):
        parse_row({"instruction": Q1, "output": A1, "history": "earlier"}, "f:1")


def test_category_numbers_are_strings_containers_are_errors():
    """Oracle: str() of a number or bool (CSV and Parquet readers give numbers), the hand-written
    message for a list or object."""
    for value, text in ((3, "3"), (2.5, "2.5"), (True, "True"), ("x", "x"), (None, None)):
        assert parse_row({"text": "t", "category": value}, "f:1").category == text
    for value in (["a"], {"a": 1}):
        with pytest.raises(DataError, match=r"^f:1: field 'category' must be a string or a number, got "):
            parse_row({"text": "t", "category": value}, "f:1")


# ---- detection and --format forcing ---------------------------------------------------------

DETECTED = [
    ({"conversations": [turn("human", Q1), turn("gpt", A1)]}, "sharegpt"),
    ({"conversations": [], "system": S}, "sharegpt"),
    ({"instruction": "i", "input": "x", "output": "o"}, "alpaca"),
    ({"instruction": "i", "output": "o", "system": S}, "alpaca"),
    ({"instruction": "i"}, "alpaca"),
    ({"input": "x", "output": "o", "system": S, "reasoning": R}, "input_output"),
    ({"prompt": "p", "completion": "c", "system": S, "reasoning": R}, "prompt_completion"),
    ({"system": S, "reasoning": R, "category": "x"}, ""),
]


def test_detect_format_new_shapes():
    """Oracle: the shape each row is written in (`system` and `reasoning` mark no shape)."""
    assert [detect_format(row) for row, _ in DETECTED] == [fmt for _, fmt in DETECTED]


def test_alpaca_row_is_not_ambiguous_but_two_shapes_are():
    """Oracle: an Alpaca row's input/output belong to it (the hand-written user message joins
    instruction and input); keys of two shapes name the ambiguity."""
    assert parse_row({"instruction": "i", "input": "x", "output": "o"}, "f:1") == Example(
        "f:1", messages=(Message("user", "i\n\nx"), Message("assistant", "o")))
    for row in ({"instruction": "i", "prompt": "p", "completion": "c"},
                {"conversations": [turn("human", Q1), turn("gpt", A1)], "messages": [user(Q1), assistant(A1)]},
                {"conversations": [turn("human", Q1), turn("gpt", A1)], "text": "t"}):
        with pytest.raises(DataError, match=r"^f:1: ambiguous row with keys"):
            parse_row(row, "f:1")


def test_forced_new_formats():
    """Oracle: hand-written Examples of only the forced shape's fields."""
    assert {"sharegpt", "alpaca"} <= set(FORMATS)
    mixed = {"conversations": [turn("human", Q1), turn("gpt", A1)], "text": "T"}
    assert parse_row(mixed, "f:1", "sharegpt") == Example(
        "f:1", messages=(Message("user", Q1), Message("assistant", A1)))
    assert parse_row(mixed, "f:1", "text") == Example("f:1", text="T")
    alpaca = {"instruction": "i", "input": "x", "output": "o"}
    assert parse_row(alpaca, "f:1", "input_output") == Example(
        "f:1", messages=(Message("user", "x"), Message("assistant", "o")))
    assert parse_row({"instruction": "i", "prompt": "p", "output": "o"}, "f:1", "alpaca") == Example(
        "f:1", messages=(Message("user", "i"), Message("assistant", "o")))
    with pytest.raises(DataError, match=r"^f:1: missing field 'instruction'$"):
        parse_row({"input": "x", "output": "o"}, "f:1", "alpaca")
    with pytest.raises(DataError, match=r"^f:1: missing field 'conversations'$"):
        parse_row({"messages": [user(Q1), assistant(A1)]}, "f:1", "sharegpt")


def test_unknown_shape_message_lists_the_new_shapes():
    """Oracle: the shapes a user can write, as the message must list them."""
    with pytest.raises(DataError) as e:
        parse_row({"question": "q", "answer": "a"}, "f:1")
    assert "conversations (ShareGPT)" in str(e.value) and "instruction/output (Alpaca)" in str(e.value)
    assert "--columns" in str(e.value)


# ---- column maps ----------------------------------------------------------------------------

MAP = "prompt=problem,completion=solution,reasoning=thinking,category=topic"


def test_column_map_equals_the_messages_row(tok):
    """Oracle: the hand-written messages row with reasoning_content and category."""
    row = {"problem": Q1, "solution": A1, "thinking": R, "topic": "math", "id": 7}
    got = parse_row(row, "f.csv:2", columns=parse_columns(MAP))
    want = parse_row({"messages": [user(Q1), assistant(A1, R)], "category": "math"}, "f.csv:2")
    assert got == want
    assert tokenize_example(got, tok) == tokenize_example(want, tok)


def test_column_map_renames():
    """Oracle: hand-written Examples. A mapped field wins over a column of its name (then ignored),
    mapped columns named like other fields do not make the row ambiguous, unmapped columns (here
    `category`) keep their names, and a map can name a ShareGPT or messages column."""
    row = {"prompt": "old", "problem": Q1, "completion": A1, "category": "c"}
    assert parse_row(row, "f:1", columns={"prompt": "problem"}) == Example(
        "f:1", messages=(Message("user", Q1), Message("assistant", A1)), category="c")
    assert parse_row({"input": Q1, "output": A1}, "f:1", columns={"prompt": "input", "completion": "output"}) == \
        Example("f:1", messages=(Message("user", Q1), Message("assistant", A1)))
    dialog = {"dialog": [turn("human", Q1), turn("gpt", A1)], "system_prompt": S}
    assert parse_row(dialog, "f:1", columns=parse_columns("conversations=dialog,system=system_prompt")) == \
        Example("f:1", messages=(Message("system", S), Message("user", Q1), Message("assistant", A1)))
    assert parse_row({"chat": [user(Q1), assistant(A1)]}, "f:1", columns={"messages": "chat"}) == \
        Example("f:1", messages=(Message("user", Q1), Message("assistant", A1)))
    assert parse_row({"tokens": [0, 5], "mask": [0, 1]}, "f:1", columns={"input_ids": "tokens", "loss_mask": "mask"}) \
        == Example("f:1", input_ids=(0, 5), loss_mask=(0, 1))


def test_column_map_missing_column_names_column_and_mapping():
    """Oracle: the hand-written message of the issue."""
    with pytest.raises(DataError) as e:
        parse_row({"question": Q1, "solution": A1}, "data.csv:4", columns=parse_columns(MAP))
    assert str(e.value) == ("data.csv:4: no column 'problem' (--columns prompt=problem); "
                            "columns: ['question', 'solution']")


@pytest.mark.parametrize("row,columns,reason", [
    ({"problem": [Q1], "solution": A1}, {"prompt": "problem", "completion": "solution"},
     r"^f:1: field 'prompt' \(column 'problem'\) must be a string, got list$"),
    ({"problem": Q1, "solution": {"text": A1}}, {"prompt": "problem", "completion": "solution"},
     r"^f:1: field 'completion' \(column 'solution'\) must be a string, got dict$"),
    ({"problem": Q1, "solution": A1, "topic": ["math"]}, {"prompt": "problem", "completion": "solution",
                                                          "category": "topic"},
     r"^f:1: field 'category' \(column 'topic'\) must be a string or a number, got list$"),
    ({"chat": "hello"}, {"messages": "chat"}, r"^f:1: 'messages' \(column 'chat'\) must be a non-empty list$"),
    ({"t": [1, 2]}, {"text": "t"}, r"^f:1: field 'text' \(column 't'\) must be a string, got list$"),
    ({"q": Q1, "a": A1, "why": [R]}, {"prompt": "q", "completion": "a", "reasoning": "why"},
     r"^f:1: field 'reasoning' \(column 'why'\) must be a string, got list$"),
])
def test_column_map_cells_that_do_not_fit(row, columns, reason):
    """Oracle: the hand-written message naming the field and its column."""
    with pytest.raises(DataError, match=reason):
        parse_row(row, "f:1", columns=columns)


def test_parse_columns():
    """Oracle: the hand-written {field: column}."""
    assert parse_columns(MAP) == {"prompt": "problem", "completion": "solution", "reasoning": "thinking",
                                  "category": "topic"}
    assert parse_columns(" prompt = my problem , text=a=b") == {"prompt": "my problem", "text": "a=b"}
    assert parse_columns("") == {}


@pytest.mark.parametrize("spec,reason", [
    ("prompt=problem,answer=solution", "entry 'answer=solution': unknown field 'answer'; fields: prompt, "),
    ("prompt=", "entry 'prompt=': empty column name"),
    ("prompt=a,prompt=b", "entry 'prompt=b': field 'prompt' is already mapped (to 'a')"),
    ("prompt=a,completion", "entry 'completion': expected FIELD=COLUMN"),
    ("prompt=a,", "entry '': expected FIELD=COLUMN"),
    ("prompt=q,completion=q", "entry 'completion=q': column 'q' is already mapped (to 'prompt')"),
])
def test_parse_columns_errors(spec, reason):
    """Oracle: the hand-written message naming the bad entry."""
    with pytest.raises(DataError, match=re.escape("--columns " + reason)):
        parse_columns(spec)
