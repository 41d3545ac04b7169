"""Batched tokenization for `prepare`: `chat.tokenize_example` of many examples at once.

One batched encode of the rendered strings through the tokenizer's Rust backend; rendering, trained
spans and the loss-mask rule are chat.py's own functions, so the result equals tokenize_example.
"""
from __future__ import annotations

import numpy as np

from r1jax.data.chat import mask_from_offsets, render_messages, text_ids_and_mask, tokenize_example, trained_spans
from r1jax.data.formats import Example

Tokenized = tuple[np.ndarray, np.ndarray]  # (int32 ids [T], uint8 loss_mask [T])


def tokenize_batch(examples: list[Example], tokenizer, train_all_turns: bool = False) -> list[Tokenized]:
    """`chat.tokenize_example` of many examples, as (int32 ids, uint8 loss_mask) pairs."""
    out: list = [None] * len(examples)
    todo, texts, spans = [], [], []
    for i, ex in enumerate(examples):
        if ex.kind == "input_ids":
            enc = tokenize_example(ex, tokenizer, train_all_turns=train_all_turns)
            out[i] = np.asarray(enc["input_ids"], np.int32), np.asarray(enc["loss_mask"], np.uint8)
            continue
        todo.append(i)
        if ex.kind == "text":
            texts.append(ex.text)
            spans.append(None)
        else:
            text, span = trained_spans(render_messages(ex, train_all_turns))
            texts.append(text)
            spans.append(span)
    encodings = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False) if texts else []
    for i, span, enc in zip(todo, spans, encodings):
        if span is None:
            ids, mask = text_ids_and_mask(enc.ids, tokenizer.bos_token_id)
            out[i] = np.asarray(ids, np.int32), np.asarray(mask, np.uint8)
        else:
            out[i] = np.asarray(enc.ids, np.int32), mask_from_offsets(enc.offsets, span)
    return out
