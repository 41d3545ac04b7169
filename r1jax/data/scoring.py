"""Rows to score (`python -m r1jax.evaluate --data FILE.jsonl`): one token sequence per row.

The file is any container `readers` reads (JSONL, JSON array, Parquet, CSV/TSV, Arrow, ...); each
row (a non-blank JSONL line) is an object with exactly one of
  `"input_ids": [int, ...]`  pre-tokenized, used as is, or
  `"text": str`              encoded with the model's tokenizer (`tokenizer.encode`): the checkpoint's
                             own, else the packaged DeepSeek-V3/R1 one.
Every sequence needs at least 2 tokens: the loss predicts tokens 1..n-1 from their prefix.
"""
from __future__ import annotations

from r1jax.data import tokenizer as tokenizer_lib
from r1jax.data.formats import DataError, read_examples


def read_scoring_rows(path: str, tokenizer=None, add_bos: bool = True) -> list[list[int]]:
    """The token sequences of a scoring file, in file order.

    Args:
        path: the file (format in the module docstring).
        tokenizer: encodes `text` rows; loaded with `load_tokenizer()` only when a `text` row
            exists and none is given.
        add_bos: whether `text` rows get BOS first (see `tokenizer.encode`); `input_ids` rows are
            never changed.

    Returns:
        One list of token ids per row, each of length >= 2.

    Raises:
        DataError: naming `file:line` (`file:row N`) and the reason, for the first bad row; or
            naming the file when it holds no rows or cannot be read.
    """
    examples = list(read_examples([path], strict=True))
    if not examples:
        raise DataError(f"{path}: no rows (the file is empty or blank)")
    for ex in examples:
        if ex.kind not in ("text", "input_ids"):
            raise DataError(f"{ex.source}: a {ex.kind} row; scoring reads rows of 'input_ids' or 'text'")
    if tokenizer is None and any(ex.kind == "text" for ex in examples):
        tokenizer = tokenizer_lib.load_tokenizer()
    sequences = []
    for ex in examples:
        ids = tokenizer_lib.encode(tokenizer, ex.text, add_bos) if ex.kind == "text" else list(ex.input_ids)
        if len(ids) < 2:
            raise DataError(
                f"{ex.source}: {len(ids)} token(s); a row needs at least 2 (tokens 1..n-1 are "
                "predicted from their prefix, so a shorter row has nothing to score)")
        sequences.append(ids)
    return sequences
