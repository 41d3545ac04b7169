"""Cleaning training examples: normalization, required fields, duplicates, near-duplicates, length.

Every rule works on `formats.Example`s in input order and keeps the first occurrence, so a prepared
dataset depends only on the input files and the options.

* Normalization (`normalize_example`), applied to every string of an example (system, user and
  assistant contents, reasoning, text, category): Unicode NFC; line endings (CRLF, CR, NEL, U+2028,
  U+2029) to "\\n"; control characters other than "\\n" and "\\t" removed (with a stray BOM); leading
  and trailing whitespace trimmed. Interior whitespace is kept: indentation is content in code.
* Required fields (`check_fields`): every user message and every assistant answer must be non-empty
  after normalization. An assistant turn with reasoning but an empty answer is removed too: R1
  always answers after `</think>`, and training on such a row teaches it to stop after thinking.
  An empty system message is dropped from the example (a system prompt is optional). `text` must be
  non-empty; `input_ids` must be non-empty and train at least one token.
* Contamination (reason "contaminated", with `prepare --decontaminate`): the example shares a word
  n-gram with an evaluation item; the rule is `decontaminate`'s.
* Exact duplicates (`content_key`): a 128-bit hash of the normalized content (roles, contents,
  reasoning; text; ids and mask), without `category` and source.
* Near-duplicates (`NearDuplicateIndex`): MinHash (datasketch, "affine32" scheme) over the set of
  5-word shingles of the lower-cased words of all contents and reasoning (BigCode's near-dedup
  setting), indexed with datasketch's MinHashLSH; a candidate counts when its estimated Jaccard
  similarity reaches the threshold. Shingle hashing and the permutations are vectorized with numpy
  and give exactly datasketch's `MinHash.update_batch` signatures of the same shingle hashes.
* Length (`fit_length`): over `max_tokens`, an example is dropped, or truncated by cutting the
  trained tail; its prompt (everything before the last trained run of tokens) must leave room for
  at least one target token, else it is dropped either way.
* Length by characters, before tokenizing (`fit_chars`): no token covers more than `token_chars`
  characters (`max_token_chars`), so an example whose rendered characters exceed max_tokens x
  token_chars can never fit. As in `fit_length`, it is dropped by default (a cut completion trains
  on an unfinished answer), or in truncate mode its trained tail is cut to (max_tokens + 1) x
  token_chars characters, still over max_tokens tokens, which `fit_length` then truncates.
* Length by line bytes, before parsing (`line_byte_bound`): a JSONL line longer than any row that
  could fit is written in is skipped unread (`formats.read_examples(max_line_bytes=...)`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import unicodedata
from collections.abc import Sequence

import numpy as np
import tokenizers
from datasketch import MinHash, MinHashLSH

from r1jax.data.formats import Example, Message, split_reasoning

REASONS = ("malformed", "empty", "contaminated", "duplicate", "near_duplicate", "too_long", "too_long_chars",
           "too_long_line")

_NEWLINES = re.compile("\r\n|[\r\x85\u2028\u2029]")
# C0/C1 controls except \t (09) and \n (0a); \r and NEL are turned into \n first. U+FEFF is a BOM.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff]")


def normalize_text(s: str) -> str:
    """NFC, "\\n" line endings, no control characters but "\\n" and "\\t", trimmed."""
    s = unicodedata.normalize("NFC", s)
    s = _NEWLINES.sub("\n", s)
    return _CONTROL.sub("", s).strip()


def normalize_example(ex: Example) -> Example:
    """The example with every string normalized; an empty system message is dropped."""
    category = normalize_text(ex.category) if ex.category is not None else None
    fields = {"category": category or None}
    if ex.messages is not None:
        msgs = []
        for m in ex.messages:
            content = normalize_text(m.content)
            if m.role == "system" and not content:
                continue
            reasoning = normalize_text(m.reasoning) if m.reasoning is not None else None
            msgs.append(Message(m.role, content, reasoning or None))
        fields["messages"] = tuple(msgs)
    elif ex.text is not None:
        fields["text"] = normalize_text(ex.text)
    return dataclasses.replace(ex, **fields)


def check_fields(ex: Example) -> tuple[str, str] | None:
    """(reason, detail) when a normalized example lacks a required field ("empty") or cannot be
    written back canonically ("malformed"); None when it is usable."""
    if ex.messages is not None:
        for i, m in enumerate(ex.messages):
            if m.role != "system" and not m.content:
                extra = " (it has reasoning only)" if m.reasoning else ""
                return "empty", f"messages[{i}] ({m.role}) has empty content{extra}"
            if m.role == "assistant" and split_reasoning(m.content)[0] is not None:
                # A second reasoning block: its canonical row would not read back the same.
                return "malformed", f"messages[{i}] (assistant) answer still holds a <think>...</think> block"
        return None
    if ex.text is not None:
        return None if ex.text else ("empty", "text is empty")
    if not ex.input_ids:
        return "empty", "input_ids is empty"
    mask = ex.loss_mask if ex.loss_mask is not None else (0,) + (1,) * (len(ex.input_ids) - 1)
    return None if any(mask) else ("empty", "no token is trained (loss_mask is all 0)")


def content_key(ex: Example) -> bytes:
    """A stable 16-byte key of an example's content: equal exactly for exact duplicates."""
    if ex.messages is not None:
        payload = ["messages", [[m.role, m.content, m.reasoning or ""] for m in ex.messages]]
    elif ex.text is not None:
        payload = ["text", ex.text]
    else:
        mask = ex.loss_mask if ex.loss_mask is not None else (0,) + (1,) * (len(ex.input_ids) - 1)
        payload = ["input_ids", list(ex.input_ids), list(mask)]  # an implicit mask equals its default
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.blake2b(data, digest_size=16).digest()


def canonical_row(ex: Example) -> dict:
    """The example as a JSONL row in canonical form (`messages` with `reasoning_content`, `text`
    or `input_ids`), keeping `category`; `formats.parse_row` reads it back to the same Example."""
    if ex.messages is not None:
        msgs = []
        for m in ex.messages:
            d = {"role": m.role, "content": m.content}
            if m.reasoning is not None:
                d["reasoning_content"] = m.reasoning
            msgs.append(d)
        row = {"messages": msgs}
    elif ex.text is not None:
        row = {"text": ex.text}
    else:
        row = {"input_ids": list(ex.input_ids)}
        if ex.loss_mask is not None:
            row["loss_mask"] = list(ex.loss_mask)
    if ex.category is not None:
        row["category"] = ex.category
    return row


# ----------------------------------------------------------------------------------------- length

def last_target_start(mask: Sequence[int]) -> int:
    """Index of the first token of the last run of trained tokens (len(mask) when none is trained).

    For a chat this is where the final assistant turn's target begins, so `mask[:start]` is the
    prompt of the trained turn."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return len(m)
    last = len(m) - 1 - int(np.argmax(m[::-1]))        # last trained token
    zeros = np.flatnonzero(~m[:last])
    return int(zeros[-1]) + 1 if len(zeros) else 0


def fit_length(ids: np.ndarray, mask: np.ndarray, max_tokens: int | None, mode: str):
    """Applies the length limit to a tokenized example.

    Args:
        ids, mask: [T] token ids and loss mask.
        max_tokens: the limit, or None for none.
        mode: "drop" or "truncate".

    Returns:
        (ids, mask, truncated) within the limit, or a string saying why the example is dropped.
    """
    if max_tokens is None or len(ids) <= max_tokens:
        return ids, mask, False
    if mode == "drop":
        return f"{len(ids)} tokens > --max_tokens {max_tokens}"
    prompt = last_target_start(mask)
    if prompt >= max_tokens:
        return f"prompt alone is {prompt} tokens, >= --max_tokens {max_tokens}: no room for a target"
    return ids[:max_tokens], mask[:max_tokens], True


_TEXT_KEEPING_PRE_TOKENIZERS = ("ByteLevel", "Digits", "Metaspace", "Split")


def _keeps_text(state: dict | None) -> bool:
    """Whether a pre-tokenizer (its serialized state) passes every character on to the model."""
    if state is None:
        return True
    if state["type"] == "Sequence":
        return all(map(_keeps_text, state["pretokenizers"]))
    return state["type"] in _TEXT_KEEPING_PRE_TOKENIZERS and state.get("behavior") != "Removed"


def max_token_chars(tokenizer) -> int | None:
    """The most characters of input text one token can cover; None when that cannot be bounded.

    It is the length of the longest vocabulary string. A byte-level BPE token (the R1 tokenizer's:
    128, for runs of spaces or dots) is written as one character per byte, and each input character
    it covers gives it at least one byte; an added token (`<｜User｜>`, ...) covers its own string;
    byte-fallback and continuation tokens ("<0x41>", "##s") are longer than what they cover. So a
    text of C characters takes at least C / max_token_chars tokens: no shorter bound is safe for
    R1, where 128 dots are one token. That holds only when no step drops or folds characters, as
    R1's tokenizer does not: no normalizer (NFC composes, strip removes), a BPE model without a
    fused unknown token, pre-tokenizers that keep every character, added tokens that strip no
    whitespace. For any other tokenizer the answer is None.
    """
    backend = tokenizer.backend_tokenizer
    normalizer = backend.normalizer
    pre = backend.pre_tokenizer
    model = backend.model
    if (normalizer is not None
            and json.loads(normalizer.__getstate__()) != {"type": "Sequence", "normalizers": []}):
        return None
    if not isinstance(model, tokenizers.models.BPE) or (model.unk_token is not None and model.fuse_unk):
        return None
    if not _keeps_text(json.loads(pre.__getstate__()) if pre is not None else None):
        return None
    if any(t.lstrip or t.rstrip for t in tokenizer.added_tokens_decoder.values()):
        return None
    return max(map(len, backend.get_vocab(with_added_tokens=True)))


def _rendered(ex: Example) -> tuple[int, int]:
    """(characters of the example's text that its rendering certainly holds, those of them before
    the trained tail): every message content and the final assistant turn's reasoning (chat.py
    renders earlier turns without theirs), or the text."""
    if ex.text is not None:
        return len(ex.text), 0
    last = ex.messages[-1]
    prompt = sum(len(m.content) for m in ex.messages[:-1])
    return prompt + len(last.content) + len(last.reasoning or ""), prompt


def fit_chars(ex: Example, max_tokens: int | None, token_chars: int | None, mode: str):
    """Applies the length limit by characters to a normalized example, before it is tokenized.

    Args:
        ex: a normalized example (`normalize_example`); `input_ids` examples pass unchanged.
        max_tokens: the limit in tokens, or None for none.
        token_chars: `max_token_chars` of the tokenizer, or None (no bound: the example passes).
        mode: "drop" or "truncate", as for `fit_length`.

    Returns:
        The example (cut, in truncate mode, to (max_tokens + 1) x token_chars characters of text: its
        final assistant turn's reasoning, then answer, or a text's end), or a string saying why it is
        dropped. Only an example of more than max_tokens x token_chars characters is touched; it
        renders to more than max_tokens tokens (`max_token_chars`), so `fit_length` would drop or
        truncate it too. Its prompt counts as longer than max_tokens (dropped either way) past
        (max_tokens + 1) x token_chars characters: even if one token straddled the trained boundary,
        more than max_tokens whole tokens stand before it. A cut example tokenizes to the uncut one's
        first max_tokens tokens unless one pre-tokenized word (a run of letters, spaces, ...) reaches
        from within them to the cut, far beyond them, where BPE may split its start differently.
    """
    if max_tokens is None or token_chars is None or ex.input_ids is not None:
        return ex
    limit = max_tokens * token_chars
    chars, prompt = _rendered(ex)
    if chars <= limit:
        return ex
    why = f"{chars} characters > --max_tokens {max_tokens} x {token_chars} characters per token at most"
    if mode == "drop":
        return why
    keep = (max_tokens + 1) * token_chars
    if ex.text is not None:
        return dataclasses.replace(ex, text=ex.text[:keep])
    if prompt > keep:
        return (f"prompt alone is {prompt} characters > (--max_tokens {max_tokens} + 1) x {token_chars} "
                "characters per token at most: no room for a target")
    last = ex.messages[-1]
    room = keep - prompt
    reasoning = last.reasoning[:room] if last.reasoning is not None else None
    answer = last.content[:room - len(reasoning or "")]
    return dataclasses.replace(ex, messages=ex.messages[:-1] + (Message("assistant", answer, reasoning),))


# JSONL bytes a row can spend per character of its text: an astral character written as an escaped
# surrogate pair ("\ud83d\ude00"), the longest JSON spelling of one character.
JSON_BYTES_PER_CHAR = 12
# JSONL bytes a row can spend per token besides its text, generously: the keys, quotes and commas of
# one message ({"role": "assistant", "content": "", "reasoning_content": ""}, 63 bytes), each
# message rendering to at least one token; an `input_ids` entry and its `loss_mask` ("129279, ", "1, ")
# take 11.
JSON_BYTES_PER_TOKEN = 128


def line_byte_bound(max_tokens: int, token_chars: int) -> int:
    """Bytes of a JSONL line beyond which the row is skipped unread.

    A row that could fit (max_tokens x token_chars characters of text, at most max_tokens messages or
    ids) is at most this long when written without padding: no keys other than its format's, a
    `category` under 32 x max_tokens bytes (each message or id leaves 65 of its 128 bytes), no
    whitespace between JSON tokens beyond one space, no reasoning in earlier assistant turns (not
    rendered), no control characters nor leading or trailing whitespace in its strings, no
    decomposed characters spelled as escapes (normalization removes or shortens those). Only such
    padding can make a line past the bound hold a row that fits. The line is skipped in truncate
    mode too: cutting needs the row parsed, and parsing needs the line in memory.
    """
    return max_tokens * (JSON_BYTES_PER_CHAR * token_chars + JSON_BYTES_PER_TOKEN)


# ------------------------------------------------------------------------------- near-duplicates

SHINGLE_WORDS = 5
NUM_PERM = 128
MINHASH_SEED = 1
_WORD = re.compile(r"\w+")
# Odd 64-bit multipliers, one per shingle position: a shingle hashes to sum_j (w_j + 1) * C_j.
_POSITION_MULTIPLIERS = np.random.default_rng(0x5EED).integers(
    0, 1 << 63, SHINGLE_WORDS, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
_IDS_SALT = np.uint64(1 << 40)  # keeps token-id shingles apart from word shingles


def shingle_text(ex: Example) -> str:
    if ex.messages is not None:
        return "\n".join(f"{m.reasoning}\n{m.content}" if m.reasoning else m.content for m in ex.messages)
    return ex.text


def _fmix32(h: np.ndarray) -> np.ndarray:
    """The MurmurHash3 32-bit finalizer, as datasketch pre-mixes inputs in its "affine32" scheme."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


class NearDuplicateIndex:
    """MinHash/LSH over the examples kept so far; `check_and_add` keeps the first of near-duplicates.

    Word numbers come from a vocabulary grown in input order (fast, and stable for a given input),
    so signatures are only comparable within one index.
    """

    def __init__(self, threshold: float):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"near-duplicate threshold {threshold} must be in (0, 1]")
        self.threshold = threshold
        self._lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
        self._perm = MinHash(num_perm=NUM_PERM, seed=MINHASH_SEED, scheme="affine32").permutations
        self._vocab: dict[str, int] = {}
        self._numbers = itertools.count()
        self._sigs: list[np.ndarray] = []
        self._sources: list[str] = []

    def shingle_hashes(self, ex: Example) -> np.ndarray:
        """uint32 [S] hashes of the distinct shingles of an example (S may be 0)."""
        if ex.input_ids is not None:
            ids = np.asarray(ex.input_ids, np.uint64) + _IDS_SALT
        else:
            words = _WORD.findall(shingle_text(ex).lower())
            # A new word takes the next unused number; a known word keeps its own (all in C).
            ids = np.fromiter(map(self._vocab.setdefault, words, self._numbers), np.uint64, len(words))
        n = len(ids)
        if n == 0:
            return np.zeros(0, np.uint32)
        k = min(SHINGLE_WORDS, n)
        h = np.zeros(n - k + 1, np.uint64)
        for j in range(k):
            h += (ids[j:n - k + 1 + j] + np.uint64(1)) * _POSITION_MULTIPLIERS[j]
        return np.unique((h ^ (h >> np.uint64(32))).astype(np.uint32))

    def signatures(self, hashes: Sequence[np.ndarray]) -> np.ndarray:
        """uint32 [N, NUM_PERM] MinHash signatures of N non-empty shingle-hash sets.

        Row i equals `MinHash(seed=MINHASH_SEED, hashfunc=int).update_batch(hashes[i])`'s hash
        values; computed for many sets at once in chunks of bounded memory."""
        a, b = self._perm
        out = np.empty((NUM_PERM, len(hashes)), np.uint32)
        i = 0
        while i < len(hashes):
            j, total = i, 0
            while j < len(hashes) and (j == i or total + len(hashes[j]) <= 1 << 13):
                total += len(hashes[j])
                j += 1
            hv = _fmix32(np.concatenate(hashes[i:j]))
            phv = np.multiply.outer(a, hv)                              # [P, S], wraps mod 2^32
            phv += b[:, None]
            starts = np.cumsum([0] + [len(x) for x in hashes[i:j - 1]])
            out[:, i:j] = np.minimum.reduceat(phv, starts, axis=1)     # contiguous rows: fast
            i = j
        return np.ascontiguousarray(out.T)

    def check_and_add(self, sig: np.ndarray, source: str) -> tuple[str, float] | None:
        """The earliest kept example whose estimated Jaccard similarity with `sig` reaches the
        threshold, as (source, similarity); None, and `sig` is indexed, when there is none."""
        m = MinHash(seed=MINHASH_SEED, hashvalues=sig, permutations=self._perm, scheme="affine32")
        cands = sorted(self._lsh.query(m))
        if cands:
            sims = (np.stack([self._sigs[c] for c in cands]) == sig).mean(axis=1)
            hits = np.flatnonzero(sims >= self.threshold)
            if len(hits):
                c = cands[hits[0]]
                return self._sources[c], float(sims[hits[0]])
        key = len(self._sigs)
        self._lsh.insert(key, m, check_duplication=False)
        self._sigs.append(sig)
        self._sources.append(source)
        return None
