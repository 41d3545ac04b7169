"""The R1 chat format for training, and tokenization with a loss mask.

    <｜begin▁of▁sentence｜>{system}<｜User｜>{q}<｜Assistant｜><think>\\n{reasoning}\\n</think>\\n\\n{answer}<｜end▁of▁sentence｜>

Inference prompts end at `<｜Assistant｜><think>\\n`, so by default the loss covers what follows it in
the final assistant turn (reasoning kept). Earlier assistant turns appear as their answers only, as
the released template renders history; with `train_all_turns` those answers are trained too.
Token ids are the tokenizer's encoding of the full rendered string; the mask comes from character
offsets, so it never changes the ids.
"""
from __future__ import annotations

import numpy as np

from r1jax.data.formats import DataError, Example, parse_row
from r1jax.data.tokenizer import BOS_TOKEN, EOS_TOKEN, encode

USER, ASSISTANT = "<｜User｜>", "<｜Assistant｜>"
THINK_OPEN, THINK_CLOSE = "<think>\n", "\n</think>\n\n"

Segments = list[tuple[str, bool]]  # (text, trained)


def render_messages(example: Example, train_all_turns: bool = False) -> Segments:
    """The rendered conversation as consecutive (text, trained) pieces."""
    msgs = example.messages
    system = "".join(m.content for m in msgs if m.role == "system")
    segs: Segments = [(BOS_TOKEN + system, False)]
    last = len(msgs) - 1
    for i, m in enumerate(msgs):
        if m.role == "user":
            segs.append((USER + m.content, False))
        elif m.role == "assistant" and i < last:
            segs += [(ASSISTANT, False), (m.content + EOS_TOKEN, train_all_turns)]
        elif m.role == "assistant":
            segs += [(ASSISTANT + THINK_OPEN, False),
                     ((m.reasoning or "") + THINK_CLOSE + m.content + EOS_TOKEN, True)]
    return segs


def generation_prompt(example: Example) -> str:
    """The inference prompt for an example's conversation without its final assistant turn."""
    segs = render_messages(example)
    return "".join(text for text, _ in segs[:-1])  # ends with "<｜Assistant｜><think>\n"


def trained_spans(segs: Segments) -> tuple[str, np.ndarray]:
    """The rendered string and its trained character spans [S, 2] (start, end), sorted, disjoint."""
    spans, pos = [], 0
    for text, trained in segs:
        if trained and text:
            spans.append((pos, pos + len(text)))
        pos += len(text)
    return "".join(t for t, _ in segs), np.asarray(spans, np.int64).reshape(-1, 2)


def mask_from_offsets(offsets, spans: np.ndarray) -> np.ndarray:
    """uint8 [T]: 1 for tokens holding any character of a trained span; offsets [T, 2] (start, end).

    BPE can merge across the prompt/target boundary: with no reasoning, "<think>\n" + "\n</think>"
    encodes the two newlines as one token. That token is trained, so every target character is
    learned; the ids stay the full string's encoding (its prompt part then differs from the inference
    prompt's last token, the price of the one-encoding rule).
    """
    ab = np.asarray(offsets, np.int64).reshape(-1, 2)
    k = np.searchsorted(spans[:, 1], ab[:, 0], side="right")  # first span ending after the token start
    hit = k < len(spans)
    hit[hit] = spans[k[hit], 0] < ab[hit, 1]
    return hit.astype(np.uint8)


def text_ids_and_mask(ids, bos: int) -> tuple[list[int], list[int]]:
    """A `text` row: BOS first (once), every later token trained."""
    ids = list(ids)
    if ids[:1] != [bos]:
        ids = [bos] + ids
    return ids, [0] + [1] * (len(ids) - 1)


def tokenize_segments(segs: Segments, tokenizer) -> dict[str, list[int]]:
    text, spans = trained_spans(segs)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return {"input_ids": list(enc["input_ids"]),
            "loss_mask": mask_from_offsets(enc["offset_mapping"], spans).tolist()}


def tokenize_example(example: dict | Example, tokenizer, *, train_all_turns: bool = False,
                     where: str = "example") -> dict[str, list[int]]:
    """{"input_ids": [...], "loss_mask": [...]} of one example (a parsed JSON row or an Example).

    loss_mask is 1 where the token is a training target. `text` rows train on every token after
    BOS; `input_ids` rows keep their own loss_mask (default: every token after the first).
    """
    ex = example if isinstance(example, Example) else parse_row(example, where)
    if ex.kind == "messages":
        return tokenize_segments(render_messages(ex, train_all_turns), tokenizer)
    if ex.kind == "text":
        ids, mask = text_ids_and_mask(encode(tokenizer, ex.text, add_bos=False), tokenizer.bos_token_id)
        return {"input_ids": ids, "loss_mask": mask}
    ids = list(ex.input_ids)
    mask = list(ex.loss_mask) if ex.loss_mask is not None else [0] + [1] * (len(ids) - 1)
    if not ids:
        raise DataError(f"{ex.source}: empty input_ids")
    return {"input_ids": ids, "loss_mask": mask}
