"""The R1 chat format as token ids: training rows and the generation prompt, built from one rule.

    <｜begin▁of▁sentence｜>{system}<｜User｜>{q}<｜Assistant｜><think>\\n{reasoning}\\n</think>\\n\\n{answer}<｜end▁of▁sentence｜>

A conversation renders as consecutive (text, trained) segments; its ids are `segment_ids`: each run
of consecutive segments with the same flag is encoded on its own and the runs' ids are concatenated,
so no BPE merge ever crosses a prompt/target boundary. The generation prompt for a conversation is
its segments before the final assistant turn, ending `<｜Assistant｜><think>\\n` (`prompt_segments`;
`prompt_ids` are its ids, what `r1jax.generate` feeds the model). A training row is those prompt
ids followed by the target's ids: `{reasoning}\\n</think>\\n\\n{answer}<｜end▁of▁sentence｜>` encoded
alone, so a row without reasoning trains `\\n`, `</think>`, ... right after the prompt's `<think>`,
`\\n`, exactly as generation continues (one encoding of the whole string would merge the two
newlines into one token the generation prompt never ends with).

Earlier assistant turns appear as their answers only, as the released template renders history, and
are never trained in the row. `turn_examples` makes `--train_all_turns`' examples: a conversation with
k assistant turns becomes k examples, example j the conversation up to and including turn j, each a
chat row like any other, so every trained turn starts where generation's prompt for its history ends
(`<｜Assistant｜><think>\\n`) and is preceded by exactly that prompt's ids.

The markers (`CHAT_MARKERS`) are written as text and become the loaded tokenizer's ids for them: R1's,
or an R1-Distill tokenizer's (other ids, same strings). A tokenizer that does not encode each of them
as one token cannot carry the format: `check_markers` makes that a DataError for chat rows (text and
input_ids rows need no marker).
"""
from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence

from r1jax.data.formats import DataError, Example, Message, parse_row
from r1jax.data.tokenizer import BOS_TOKEN, EOS_TOKEN, encode, tokenizer_dir

USER, ASSISTANT = "<｜User｜>", "<｜Assistant｜>"
THINK_OPEN, THINK_CLOSE = "<think>\n", "\n</think>\n\n"
CHAT_MARKERS = (BOS_TOKEN, USER, ASSISTANT, "<think>", "</think>", EOS_TOKEN)
_CHECKED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # tokenizer -> its marker ids

Segments = list[tuple[str, bool]]  # (text, trained)


def marker_ids(tokenizer) -> dict[str, int | None]:
    """{marker: its id} for each of CHAT_MARKERS; None for a marker the tokenizer does not encode
    as exactly one token (absent, or split into pieces). Computed once per tokenizer."""
    if tokenizer not in _CHECKED:
        found = {}
        for marker in CHAT_MARKERS:
            ids = encode(tokenizer, marker, add_bos=False)
            found[marker] = ids[0] if len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids[0]) == marker else None
        _CHECKED[tokenizer] = found
    return _CHECKED[tokenizer]


def check_markers(tokenizer, where: str) -> None:
    """Raises DataError naming `where` (the chat row), the first marker the tokenizer lacks and the
    tokenizer's directory, unless every CHAT_MARKERS string is one token of it."""
    missing = [m for m, i in marker_ids(tokenizer).items() if i is None]
    if missing:
        raise DataError(f"{where}: the R1 chat format needs the token {missing[0]!r}, which the tokenizer "
                        f"{tokenizer_dir(tokenizer) or '?'} lacks (missing: {', '.join(missing)}); use a "
                        "tokenizer with the R1 chat markers, or text / input_ids rows")


def prompt_segments(messages: Sequence[Message]) -> Segments:
    """The generation prompt for `messages` (a conversation without the turn to generate) as
    (text, trained) pieces, none trained; the last is `<｜Assistant｜><think>\\n`."""
    system = "".join(m.content for m in messages if m.role == "system")
    segs: Segments = [(BOS_TOKEN + system, False)]
    for m in messages:
        if m.role == "user":
            segs.append((USER + m.content, False))
        elif m.role == "assistant":
            segs.append((ASSISTANT + m.content + EOS_TOKEN, False))
    return segs + [(ASSISTANT + THINK_OPEN, False)]


def target_text(message: Message) -> str:
    """The trained text of a final assistant turn: what generation writes after `<think>\\n`."""
    return (message.reasoning or "") + THINK_CLOSE + message.content + EOS_TOKEN


def render_messages(example: Example) -> Segments:
    """A chat example as (text, trained) pieces: its generation prompt, then its final turn's target."""
    *history, final = example.messages
    return prompt_segments(history) + [(target_text(final), True)]


def turn_examples(example: Example) -> list[Example]:
    """The training examples `--train_all_turns` makes of one example.

    A conversation gives one example per assistant turn that follows its first user message, the
    j-th being the conversation up to and including that turn (same category; source
    "FILE:LINE turn j" when there are several), so each is tokenized as a chat row whose prompt is
    generation's for that turn's history. An assistant turn before any user message is context
    only (a row needs a user message). Any other example, and a conversation with one such turn,
    comes back alone and unchanged.
    """
    msgs = example.messages
    if msgs is None:
        return [example]
    first_user = next(i for i, m in enumerate(msgs) if m.role == "user")
    ends = [i + 1 for i, m in enumerate(msgs) if m.role == "assistant" and i > first_user]
    if len(ends) == 1:
        return [example]
    return [dataclasses.replace(example, source=f"{example.source} turn {j}", messages=msgs[:end])
            for j, end in enumerate(ends, 1)]


def generation_prompt(example: Example) -> str:
    """The inference prompt for an example's conversation without its final assistant turn."""
    return "".join(text for text, _ in prompt_segments(example.messages[:-1]))


def runs(segs: Segments) -> Segments:
    """Consecutive pieces with the same trained flag joined; empty pieces dropped."""
    out: Segments = []
    for text, trained in segs:
        if not text:
            continue
        if out and out[-1][1] == trained:
            out[-1] = (out[-1][0] + text, trained)
        else:
            out.append((text, trained))
    return out


def join_runs(joined: Segments, encoded: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
    """(ids [T], loss_mask [T]) from `runs(...)` and each run's own ids: concatenated, the mask 1
    on the tokens of trained runs."""
    ids: list[int] = []
    mask: list[int] = []
    for (_, trained), piece in zip(joined, encoded, strict=True):
        ids += list(piece)
        mask += [int(trained)] * len(piece)
    return ids, mask


def segment_ids(segs: Segments, tokenizer) -> tuple[list[int], list[int]]:
    """(ids [T], loss_mask [T]) of pieces: each run of same-flag pieces encoded alone (see the
    module docstring), no special tokens added (BOS is in the first piece's text)."""
    joined = runs(segs)
    return join_runs(joined, [encode(tokenizer, text, add_bos=False) for text, _ in joined])


def prompt_ids(example: Example, tokenizer) -> list[int]:
    """Ids of the generation prompt for an example's conversation without its final assistant turn:
    [T] ints, BOS first, ending `<｜Assistant｜>`, `<think>`, `\\n`. Training rows start with them.
    DataError (`check_markers`) when the tokenizer lacks a chat marker."""
    check_markers(tokenizer, example.source)
    return segment_ids(prompt_segments(example.messages[:-1]), tokenizer)[0]


def text_ids_and_mask(ids, bos: int) -> tuple[list[int], list[int]]:
    """A `text` row: BOS first (once), every later token trained."""
    ids = list(ids)
    if ids[:1] != [bos]:
        ids = [bos] + ids
    return ids, [0] + [1] * (len(ids) - 1)


def tokenize_example(example: dict | Example, tokenizer, *, where: str = "example") -> dict[str, list[int]]:
    """{"input_ids": [...], "loss_mask": [...]} of one example (a parsed JSON row or an Example).

    loss_mask is 1 where the token is a training target. Chat rows: `segment_ids` of
    `render_messages` (the prompt's ids, then the target's). `text` rows train on every token after
    BOS; `input_ids` rows are taken as given, with their own loss_mask (default: every token after
    the first). A chat row with a tokenizer that lacks a chat marker is a DataError (`check_markers`).
    """
    ex = example if isinstance(example, Example) else parse_row(example, where)
    if ex.kind == "messages":
        check_markers(tokenizer, ex.source)
        ids, mask = segment_ids(render_messages(ex), tokenizer)
        return {"input_ids": ids, "loss_mask": mask}
    if ex.kind == "text":
        ids, mask = text_ids_and_mask(encode(tokenizer, ex.text, add_bos=False), tokenizer.bos_token_id)
        return {"input_ids": ids, "loss_mask": mask}
    ids = list(ex.input_ids)
    mask = list(ex.loss_mask) if ex.loss_mask is not None else [0] + [1] * (len(ids) - 1)
    if not ids:
        raise DataError(f"{ex.source}: empty input_ids")
    return {"input_ids": ids, "loss_mask": mask}
