"""Rows to score (`python -m r1jax.evaluate --data FILE.jsonl`): one token sequence per JSONL line.

Each non-blank line is a JSON object with exactly one of
  `"input_ids": [int, ...]`  pre-tokenized, used as is, or
  `"text": str`              encoded with the DeepSeek-V3/R1 tokenizer (`tokenizer.encode`).
Every sequence needs at least 2 tokens: the loss predicts tokens 1..n-1 from their prefix.
"""
from __future__ import annotations

import json

from r1jax.data import tokenizer as tokenizer_lib


class DataError(ValueError):
    """A data file that cannot be used; the message names `file:line` and what is wrong."""


def _parse_row(line: str, where: str) -> list[int] | str:
    """The row of one non-blank JSONL line: its `input_ids` (validated) or its `text`.

    `where` is `file:line`, put at the front of every error.
    """
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON: {e}") from None
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    has_ids, has_text = "input_ids" in row, "text" in row
    if has_ids and has_text:
        raise DataError(f"{where}: row has both 'input_ids' and 'text'; keep one")
    if not (has_ids or has_text):
        raise DataError(
            f"{where}: row has neither 'input_ids' nor 'text' (keys: {sorted(row)}); "
            "scoring reads only these two")
    if has_text:
        if not isinstance(row["text"], str):
            raise DataError(f"{where}: 'text' must be a string, got {type(row['text']).__name__}")
        return row["text"]
    ids = row["input_ids"]
    # bool is an int subclass in Python; true/false in a token list is a bug upstream.
    if not isinstance(ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise DataError(f"{where}: 'input_ids' must be a list of non-negative integers")
    return ids


def _read_lines(path: str) -> list[tuple[str, str]]:
    """(`file:line`, text) of every non-blank line of `path`, lines numbered from 1."""
    lines = []
    with open(path, "rb") as f:
        # Bytes, decoded line by line, so a bad byte is reported with its line number.
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: not UTF-8: {e}") from None
            if line.strip():
                lines.append((where, line))
    return lines


def read_scoring_rows(path: str, tokenizer=None, add_bos: bool = True) -> list[list[int]]:
    """The token sequences of a scoring JSONL file, in file order.

    Args:
        path: the JSONL file (format in the module docstring).
        tokenizer: encodes `text` rows; loaded with `load_tokenizer()` only when a `text` row
            exists and none is given.
        add_bos: whether `text` rows get BOS first (see `tokenizer.encode`); `input_ids` rows are
            never changed.

    Returns:
        One list of token ids per row, each of length >= 2.

    Raises:
        DataError: naming `file:line` and the reason, for the first bad row; or naming the file
            when it holds no rows.
    """
    rows = [(where, _parse_row(line, where)) for where, line in _read_lines(path)]
    if not rows:
        raise DataError(f"{path}: no rows (the file is empty or blank)")
    if tokenizer is None and any(isinstance(row, str) for _, row in rows):
        tokenizer = tokenizer_lib.load_tokenizer()
    sequences = []
    for where, row in rows:
        ids = tokenizer_lib.encode(tokenizer, row, add_bos) if isinstance(row, str) else row
        if len(ids) < 2:
            raise DataError(
                f"{where}: {len(ids)} token(s); a row needs at least 2 (tokens 1..n-1 are "
                "predicted from their prefix, so a shorter row has nothing to score)")
        sequences.append(ids)
    return sequences
