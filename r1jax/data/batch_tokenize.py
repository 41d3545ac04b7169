"""Batched tokenization for `prepare`: `chat.tokenize_example` of many examples at once.

One batched encode through the tokenizer's Rust backend of every text to encode (a chat row's runs of
same-flag pieces, a text row's text); rendering, runs and their joining are chat.py's own functions,
so the result equals tokenize_example.
"""
from __future__ import annotations

import numpy as np

from r1jax.data.chat import check_markers, join_runs, render_messages, runs, text_ids_and_mask, tokenize_example
from r1jax.data.formats import Example

Tokenized = tuple[np.ndarray, np.ndarray]  # (int32 ids [T], uint8 loss_mask [T])


def tokenize_batch(examples: list[Example], tokenizer) -> list[Tokenized]:
    """`chat.tokenize_example` of many examples, as (int32 ids, uint8 loss_mask) pairs; its
    DataError (naming the first chat example) when the tokenizer lacks a chat marker."""
    out: list = [None] * len(examples)
    todo = []     # (example index, its runs or None for a text row, first text, number of texts)
    texts: list[str] = []
    for i, ex in enumerate(examples):
        if ex.kind == "input_ids":
            enc = tokenize_example(ex, tokenizer)
            out[i] = np.asarray(enc["input_ids"], np.int32), np.asarray(enc["loss_mask"], np.uint8)
        elif ex.kind == "text":
            todo.append((i, None, len(texts), 1))
            texts.append(ex.text)
        else:
            check_markers(tokenizer, ex.source)
            joined = runs(render_messages(ex))
            todo.append((i, joined, len(texts), len(joined)))
            texts += [text for text, _ in joined]
    encodings = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False) if texts else []
    for i, joined, first, n in todo:
        if joined is None:
            ids, mask = text_ids_and_mask(encodings[first].ids, tokenizer.bos_token_id)
        else:
            ids, mask = join_runs(joined, [e.ids for e in encodings[first:first + n]])
        out[i] = np.asarray(ids, np.int32), np.asarray(mask, np.uint8)
    return out
