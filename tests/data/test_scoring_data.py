"""Scoring rows from JSONL: both row kinds, lazy tokenizer loading, and file:line errors."""
import json
import re

import pytest

from r1jax.data import scoring
from r1jax.data import tokenizer as tokenizer_lib


@pytest.fixture(scope="module")
def tok():
    return tokenizer_lib.load_tokenizer()


def write(tmp_path, text, name="rows.jsonl"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return str(path)


def test_both_row_kinds_in_file_order(tmp_path, tok):
    path = write(tmp_path, "\n".join([
        json.dumps({"input_ids": [5, 6, 7]}),
        "",  # blank lines are skipped
        json.dumps({"text": "Hello world", "source": "extra keys are ignored"}),
        "   ",
        json.dumps({"text": "<｜begin▁of▁sentence｜>Hi<｜Assistant｜>"}),
    ]) + "\n")
    hello = tokenizer_lib.encode(tok, "Hello world", add_bos=False)
    rows = scoring.read_scoring_rows(path, tokenizer=tok)
    assert rows == [[5, 6, 7], [0] + hello, [0, 23166, 128804]]
    rows = scoring.read_scoring_rows(path, tokenizer=tok, add_bos=False)
    assert rows == [[5, 6, 7], hello, [0, 23166, 128804]]


def test_tokenizer_loaded_only_for_text_rows(tmp_path, tok, monkeypatch):
    calls = []

    def fake_load(path=None):
        calls.append(path)
        return tok

    monkeypatch.setattr(tokenizer_lib, "load_tokenizer", fake_load)
    ids_only = write(tmp_path, '{"input_ids": [1, 2]}\n', "ids.jsonl")
    assert scoring.read_scoring_rows(ids_only) == [[1, 2]]
    assert calls == []
    with_text = write(tmp_path, '{"text": "a b"}\n{"text": "c d"}\n', "text.jsonl")
    assert scoring.read_scoring_rows(with_text) == [
        tokenizer_lib.encode(tok, t, True) for t in ("a b", "c d")]
    assert calls == [None]  # loaded once, the packaged copy


@pytest.mark.parametrize("lines,line_no,reason", [
    (['{"input_ids": [1, 2]}', '{"text": '], 2, "invalid JSON"),
    (['[1, 2, 3]'], 1, "JSON object"),
    (['{"input_ids": [1, 2]}', '', '{"messages": []}'], 3, "'messages' must be a non-empty list"),
    (['{"prompt": "a", "completion": "b"}'], 1, "scoring reads rows of 'input_ids' or 'text'"),
    (['{"id": 3}'], 1, "no known fields"),
    (['{"input_ids": [1, 2], "text": "ab"}'], 1, "ambiguous row"),
    (['{"input_ids": "1 2"}'], 1, "non-negative integers"),
    (['{"input_ids": [1, -2]}'], 1, "non-negative integers"),
    (['{"input_ids": [1, 2.0]}'], 1, "non-negative integers"),
    (['{"input_ids": [1, true]}'], 1, "non-negative integers"),
    (['{"text": 12}'], 1, "must be a string"),
    (['{"input_ids": [1, 2]}', '{"input_ids": [7]}'], 2, "at least 2"),
    (['{"text": ""}'], 1, "at least 2"),  # only the BOS
])
def test_errors_name_file_and_line(tmp_path, tok, lines, line_no, reason):
    path = write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(scoring.DataError) as info:
        scoring.read_scoring_rows(path, tokenizer=tok)
    assert f"{path}:{line_no}:" in str(info.value)
    assert reason in str(info.value)


def test_short_text_without_bos(tmp_path, tok):
    path = write(tmp_path, '{"text": "Hi"}\n')
    assert scoring.read_scoring_rows(path, tokenizer=tok) == [[0, 23166]]
    with pytest.raises(scoring.DataError, match=re.escape(f"{path}:1: 1 token")):
        scoring.read_scoring_rows(path, tokenizer=tok, add_bos=False)


def test_invalid_utf8_names_the_line(tmp_path, tok):
    path = write(tmp_path, b'{"input_ids": [1, 2]}\n{"text": "\xff\xfe"}\n')
    with pytest.raises(scoring.DataError, match=re.escape(f"{path}:2: not UTF-8")):
        scoring.read_scoring_rows(path, tokenizer=tok)


@pytest.mark.parametrize("content", ["", "\n  \n\n"])
def test_empty_file(tmp_path, content):
    path = write(tmp_path, content)
    with pytest.raises(scoring.DataError, match="no rows") as info:
        scoring.read_scoring_rows(path)
    assert path in str(info.value)


def test_data_error_is_a_value_error():
    assert issubclass(scoring.DataError, ValueError)
