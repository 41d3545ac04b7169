"""`python -m r1jax.data prepare --input INPUT... --out DIR`: clean, deduplicate, tokenize, split, report.

    python -m r1jax.data prepare --input a.jsonl b.parquet 'more/*.csv' hf_saved/ --out data/mine \\
        [--val 0.05] [--test 0.0] [--seed 0] [--kfold K] [--max_tokens N --too_long drop|truncate] \\
        [--near_dup_threshold 0.85] [--train_all_turns] [--format F] [--input_format C] [--columns MAP] \\
        [--tokenizer DIR] [--strict] [--overwrite] [--decontaminate humaneval|EVAL_FILE ... [--decontaminate_ngram 13]] \\
        [--weights W...] [--max_per_category N]
    python -m r1jax.data prepare --mixture mix.yaml --out data/mine [...]
    python -m r1jax.data prepare --prompts --input ... --out DIR [...]   # prompt sets for GRPO: `prompt_set`

An input is a file, a glob or a directory in any container `readers` reads (JSONL, JSON array,
Parquet, CSV/TSV, Arrow, a `datasets` save_to_disk folder; .gz/.zst text), detected per file unless
--input_format names one. Input rows stream through, in order: read (with --max_tokens, a line longer than any row that
could fit is skipped unread) -> parse (formats) -> normalize -> required fields -> length by
characters (a row that can never fit is dropped, or with --too_long truncate cut, untokenized) ->
exact duplicates -> tokenize -> length limit -> near-duplicates; each removal is counted under one
reason (see `clean`). No over-long row is held past its own turn, so memory stays bounded.

With --decontaminate, right after the required fields, a record sharing a span of 13 words
(--decontaminate_ngram N) with an item of the evaluation sets named (`humaneval`, or JSONL/Parquet
files of eval rows) is removed under reason `contaminated`; the rule is `decontaminate`'s. An unknown
source, or an eval row it cannot use, exits 2 naming it (FILE:LINE).

Each kept record gives one training example, or with --train_all_turns one per assistant turn
(`chat.turn_examples`: turn j's example is the conversation up to and including turn j). Records are
screened whole (required fields, exact duplicates, near-duplicates), so the turns of one conversation
never count as duplicates of each other; the length rules (by characters, then tokens) apply to each
turn example (removed ones are named `FILE:LINE turn j`), and a turn example equal to one kept
earlier (two conversations that open alike) is dropped. A record is kept when at least one of its
examples is, else removed under the first reason that removed one (rules in the order above); a
line over the byte bound is skipped whole, earlier turns included. The kept records are then split
(see `split`), each with all its examples, so no conversation spans two splits, and written, per
split S:

    DIR/S.jsonl                 one row per training example in canonical form (with `category`):
                                with --train_all_turns, one row per turn example (the conversation
                                up to that turn); a truncated example is written as its `input_ids`
                                and `loss_mask`
    DIR/S.{ids,mask,offsets}.npy  `token_store.write(DIR/S, ...)`, equal to `tokenize_example` of
    DIR/S.meta.json             each row of DIR/S.jsonl, in order; the meta file holds the token
                                format version the loader checks

for S in train, val, test (non-empty ones only), or DIR/fold{k}/train and DIR/fold{k}/val with
--kfold K (and DIR/test with --test). A mixture (`--weights`, `--max_per_category`, `--mixture`;
rules in `mixture`) shapes only the training split(s): val and test are stratified by source and
category and keep every source's natural share; an upsampled record is written as often as it is
drawn. DIR/mixture.json holds the mixture as resolved (a valid `--mixture` file), DIR/report.json,
DIR/summary.txt and DIR/token_lengths.png describe the run (see `report`). Input files are only
read; exit status 0 when done, 2 for a bad option, a missing or unreadable input, a prepared DIR
without --overwrite, or (--strict) the first malformed row, 1 when no example is left.
"""
from __future__ import annotations

import argparse
import glob
import itertools
import json
import os
import re
import sys
import time
from typing import NamedTuple

import numpy as np

from r1jax.data import batch_tokenize, chat, clean, decontaminate, mixture, prompt_set, split, token_store
from r1jax.data import report as report_lib
from r1jax.data import readers
from r1jax.data.formats import FORMATS, MAPPABLE, DataError, Example, parse_columns, read_examples
from r1jax.data.readers import INPUT_FORMATS, LineTooLong
from r1jax.data.tokenizer import describe, load_tokenizer, tokenizer_dir

SPLITS = ("train", "val", "test")
REPORT_FILES = ("report.json", "summary.txt", "token_lengths.png", "mixture.json")
DEFAULT_VAL = 0.05
DEFAULT_NEAR_DUP = 0.85
BATCH = 256
_FOLD_DIR = re.compile(r"fold\d+$")
_WHERE = re.compile(r"^(.*?:(?:row )?\d+): (.*)$", re.DOTALL)  # "PATH:LINE: ..." or "PATH:row N: ..."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", nargs="+", metavar="INPUT",
                   help="input file(s), glob(s) or directories: JSONL, JSON array, Parquet, CSV/TSV, "
                        "Arrow (file or stream), a datasets save_to_disk folder; .gz/.zst text (or --mixture)")
    p.add_argument("--input_format", default="auto", choices=INPUT_FORMATS,
                   help="container of every input (default: by extension, else by content)")
    p.add_argument("--columns", metavar="FIELD=COLUMN,...",
                   help="read these columns as these fields, e.g. prompt=problem,completion=solution,"
                        "reasoning=thinking (fields: " + ", ".join(MAPPABLE) + ")")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--format", default="auto", choices=FORMATS + ("prompt",),
                   help="row format (default: detected; `prompt` with --prompts only)")
    p.add_argument("--prompts", action="store_true",
                   help="prepare a prompt set for GRPO: prompt + answer/tests rows (see r1jax/data/prompt_set.py)")
    p.add_argument("--tokenizer", metavar="DIR",
                   help="directory with tokenizer.json, e.g. the model's checkpoint (default: the "
                        "packaged DeepSeek-V3/R1 tokenizer)")
    p.add_argument("--train_all_turns", action="store_true",
                   help="one training example per assistant turn (the conversation up to it), "
                        "not only the final turn")
    p.add_argument("--val", type=float, help=f"validation fraction (default {DEFAULT_VAL}; not with --kfold)")
    p.add_argument("--test", type=float, default=0.0, help="test fraction (default 0)")
    p.add_argument("--seed", type=int, default=0, help="split shuffle seed")
    p.add_argument("--kfold", type=int, metavar="K", help="write K train/val pairs under DIR/fold{k}/")
    p.add_argument("--near_dup_threshold", type=float,
                   help=f"MinHash Jaccard similarity at which examples count as near-duplicates "
                        f"(default {DEFAULT_NEAR_DUP})")
    p.add_argument("--max_tokens", type=int, metavar="N", help="length limit in tokens")
    p.add_argument("--too_long", choices=("drop", "truncate"),
                   help="over --max_tokens: drop the example (default) or cut its trained tail")
    p.add_argument("--strict", action="store_true", help="stop at the first malformed row (exit 2)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already prepared in DIR")
    p.add_argument("--decontaminate", nargs="+", metavar="NAME_OR_FILE",
                   help="remove records sharing a word n-gram with these evaluation sets: "
                        f"{', '.join(decontaminate.BUILTIN)} or JSONL/Parquet files of eval rows")
    p.add_argument("--decontaminate_ngram", type=int, metavar="N",
                   help=f"n-gram length in words for --decontaminate (default {decontaminate.NGRAM})")
    p.add_argument("--weights", nargs="+", type=float, metavar="W",
                   help="one weight per --input: each input's share of the training split is W / sum(W) "
                        "(upsampled by repetition or downsampled, seeded); val/test keep natural shares")
    p.add_argument("--max_per_category", type=int, metavar="N",
                   help="at most N training records per category (applied before --weights)")
    p.add_argument("--mixture", metavar="FILE",
                   help="a YAML or JSON file of sources (path, weight, columns, formats); instead of --input")


def _check_args(args) -> str | None:
    if args.prompts and (problem := prompt_set.refused(args)):
        return problem
    if not args.prompts and args.format not in FORMATS:
        return f"--format {args.format}: only with --prompts; training rows are one of {', '.join(FORMATS)}"
    if (args.input is None) == (args.mixture is None):
        return "give the inputs as --input FILE... or as --mixture FILE (one of the two)"
    if args.mixture is not None and (args.weights is not None or args.max_per_category is not None):
        return "--weights and --max_per_category go in the --mixture file (weight, max_per_category)"
    if args.columns:
        try:
            parse_columns(args.columns, prompt_set.MAPPABLE if args.prompts else MAPPABLE)
        except DataError as e:
            return str(e)
    if args.kfold is not None and args.val is not None:
        return "--val and --kfold exclude each other: with --kfold K each fold's val is 1/K of the rest"
    if args.kfold is not None and args.kfold < 2:
        return f"--kfold {args.kfold}: K must be at least 2"
    val = 0.0 if args.kfold is not None else DEFAULT_VAL if args.val is None else args.val
    if not (0 <= val < 1 and 0 <= args.test < 1 and val + args.test < 1):
        return f"--val {val} and --test {args.test} must be in [0, 1) with a sum below 1"
    if args.too_long is not None and args.max_tokens is None:
        return "--too_long needs --max_tokens"
    if args.max_tokens is not None and args.max_tokens < 2:
        return f"--max_tokens {args.max_tokens}: must be at least 2"
    if args.near_dup_threshold is not None and not 0 < args.near_dup_threshold <= 1:
        return f"--near_dup_threshold {args.near_dup_threshold}: must be in (0, 1]"
    if args.decontaminate_ngram is not None and not args.decontaminate:
        return "--decontaminate_ngram needs --decontaminate (the evaluation sets to compare with)"
    if args.decontaminate_ngram is not None and args.decontaminate_ngram < 1:
        return f"--decontaminate_ngram {args.decontaminate_ngram}: must be at least 1"
    for spec in args.decontaminate or ():
        if problem := decontaminate.check_source(spec):
            return f"--decontaminate {problem}"
    return None


def _split_names(out: str) -> list[str]:
    """Prefixes of splits already in `out` (relative), e.g. "train", "fold0/val"."""
    names = [s for s in SPLITS if any(os.path.exists(os.path.join(out, s + x))
                                      for x in (".jsonl", *token_store.FILE_SUFFIXES))]
    for d in sorted(glob.glob(os.path.join(out, "fold*"))):
        if os.path.isdir(d) and _FOLD_DIR.match(os.path.basename(d)):
            names += [f"{os.path.basename(d)}/{n}" for n in _split_names(d)]
    return names


def _existing_outputs(out: str) -> list[str]:
    """Files of a prepared dataset already in `out`."""
    if not os.path.isdir(out):
        return []
    files = [os.path.join(out, f) for f in REPORT_FILES]
    for name in _split_names(out):
        prefix = os.path.join(out, name)
        files += [prefix + ".jsonl", *token_store.paths(prefix).values()]
    return [f for f in files if os.path.exists(f)]


def _is_output_path(path: str, out: str) -> bool:
    """Whether prepare could write (or remove) `path` as one of its outputs in `out`."""
    path, out = os.path.realpath(path), os.path.realpath(out)
    d, base = os.path.split(path)
    if d != out and not (os.path.dirname(d) == out and _FOLD_DIR.match(os.path.basename(d))):
        return False
    stems = [f"{s}{x}" for s in SPLITS for x in (".jsonl", *token_store.FILE_SUFFIXES)]
    return base in stems or (d == out and base in REPORT_FILES)


class _Progress:
    """A line on stderr every few seconds while records stream in."""

    def __init__(self, every_s: float = 5.0):
        self.start = self.last = time.perf_counter()
        self.every_s = every_s

    def update(self, read: int, kept: int, force: bool = False) -> None:
        now = time.perf_counter()
        if force or now - self.last >= self.every_s:
            self.last = now
            rate = read / max(now - self.start, 1e-9)
            print(f"prepare: {read} records read, {kept} kept ({rate:.0f} records/s)", file=sys.stderr,
                  flush=True)


class Kept(NamedTuple):
    """One training example, as written."""
    example: Example       # the row: a record, or one of its turn examples (cut in truncate mode)
    key: bytes             # clean.content_key(example)
    ids: np.ndarray        # int32 [T], within --max_tokens
    mask: np.ndarray       # uint8 [T]
    truncated: bool


class Record(NamedTuple):
    """A kept input record and its kept training examples (at least one), in turn order."""
    example: Example       # as screened: normalized, whole
    rows: list[Kept]
    origin: int            # the index of its source (an --input argument or a --mixture source)


def _screen(item: Example | DataError, args, token_chars: int | None, seen: dict[bytes, str],
            evals: decontaminate.EvalIndex | None = None):
    """The rules applied to one record before tokenizing: format, required fields, contamination
    (`evals`, with --decontaminate), length by line bytes and characters (with --train_all_turns,
    per turn example later: `_turns`), exact duplicates (`seen`: content key -> source of the kept
    examples).

    Returns ((reason, where, detail), None) for a removed record, else (None, (normalized example
    (cut in truncate mode, see `clean.fit_chars`), content key)), adding the key to `seen`."""
    if isinstance(item, LineTooLong):
        return ("too_long_line", item.where, f"line of {item.nbytes} bytes > {item.limit} for --max_tokens "
                f"{args.max_tokens}: skipped unread"), None
    if isinstance(item, DataError):
        m = _WHERE.match(str(item))
        return ("malformed", *(m.groups() if m else ("?", str(item)))), None
    ex = clean.normalize_example(item)
    bad = clean.check_fields(ex)
    if bad:
        return (bad[0], ex.source, bad[1]), None
    match = evals.match(ex) if evals is not None else None
    if match:
        return ("contaminated", ex.source, match.detail()), None
    fitted = ex if args.train_all_turns else clean.fit_chars(ex, args.max_tokens, token_chars,
                                                             args.too_long or "drop")
    if isinstance(fitted, str):
        return ("too_long_chars", ex.source, fitted), None
    key = clean.content_key(fitted)
    if key in seen:
        return ("duplicate", ex.source, f"same content as {seen[key]}"), None
    seen[key] = ex.source
    return None, (fitted, key)


def unique_examples(args, mix: mixture.Mixture, token_chars: int | None, tally: report_lib.Tally,
                    evals: decontaminate.EvalIndex | None = None):
    """(source index, normalized example, content key) of each input record that passes `_screen`,
    one at a time, sources in order: no removed record waits in a batch, nor is held while the next
    row is read (bounded memory with over-long lines). Counts every record and removal in `tally`."""
    line_bytes = clean.line_byte_bound(args.max_tokens, token_chars) if token_chars else None
    seen: dict[bytes, str] = {}
    for origin, source in enumerate(mix.sources):
        for item in read_examples([source.path], source.format, strict=args.strict,
                                  max_line_bytes=line_bytes, input_format=source.input_format,
                                  columns=_columns(source)):
            tally.read += 1
            removed, passed = _screen(item, args, token_chars, seen, evals)
            del item
            if removed:
                tally.remove(*removed)
            else:
                yield (origin, *passed)
                del passed


def _turns(ex: Example, key: bytes, args, token_chars: int | None):
    """([(training example, content key)] of a screened record, [(reason, where, detail)] of those
    removed by characters). Without --train_all_turns: the record itself (screened by characters
    already); with it: its turn examples, each through `clean.fit_chars`."""
    if not args.train_all_turns:
        return [(ex, key)], []
    kept, removed = [], []
    for turn in chat.turn_examples(ex):
        fitted = clean.fit_chars(turn, args.max_tokens, token_chars, args.too_long or "drop")
        if isinstance(fitted, str):
            removed.append(("too_long_chars", turn.source, fitted))
        else:
            kept.append((fitted, key if fitted is ex else clean.content_key(fitted)))
    return kept, removed


def _record_removal(ex: Example, removed: list[tuple[str, str, str]]) -> tuple[str, str, str]:
    """(reason, where, detail) of a record none of whose training examples is kept, from those of its
    examples' removals (in rule order: characters, tokens, duplicates): the first one's."""
    reason, where, detail = removed[0]
    if len(removed) == 1:
        return reason, where, detail
    return reason, ex.source, f"none of its {len(removed)} turns kept ({where}: {detail})"


def clean_stream(args, mix: mixture.Mixture, tokenizer, tally: report_lib.Tally, seconds: dict) -> list[Record]:
    """Streams the input records through the cleaning rules in batches; returns the kept ones in
    input order and counts every removal in `tally`. Raises DataError (--strict, unreadable file,
    a --decontaminate row without evaluation text)."""
    evals = None
    if getattr(args, "decontaminate", None):
        evals = decontaminate.EvalIndex.build(args.decontaminate, args.decontaminate_ngram or decontaminate.NGRAM)
        print(f"decontaminate: {evals.describe()}", file=sys.stderr, flush=True)
    near = clean.NearDuplicateIndex(args.near_dup_threshold or DEFAULT_NEAR_DUP)
    token_chars = clean.max_token_chars(tokenizer) if args.max_tokens else None
    written: dict[bytes, str] = {}  # content key -> source of the training examples kept so far
    kept: list[Record] = []
    progress = _Progress()
    records = unique_examples(args, mix, token_chars, tally, evals)
    while unique := list(itertools.islice(records, BATCH)):
        turns = [_turns(ex, key, args, token_chars) for _, ex, key in unique]
        t = time.perf_counter()
        tokenized = iter(batch_tokenize.tokenize_batch([e for fits, _ in turns for e, _ in fits], tokenizer))
        seconds["tokenize"] += time.perf_counter() - t
        candidates = []  # (record, its examples within the length limit, its removed examples)
        for (origin, ex, _), (fits, removed) in zip(unique, turns):
            rows = []
            for turn, key in fits:
                fitted = clean.fit_length(*next(tokenized), args.max_tokens, args.too_long or "drop")
                if isinstance(fitted, str):
                    removed.append(("too_long", turn.source, fitted))
                else:
                    rows.append(Kept(turn, key, *fitted))
            if rows:
                candidates.append((origin, ex, rows, removed))
            else:
                tally.remove(*_record_removal(ex, removed))

        t = time.perf_counter()
        hashes = [near.shingle_hashes(ex) for _, ex, _, _ in candidates]
        hashed = [i for i, h in enumerate(hashes) if len(h)]  # no words at all: exact dedup only
        sigs = dict(zip(hashed, near.signatures([hashes[i] for i in hashed]))) if hashed else {}
        for i, (origin, ex, rows, removed) in enumerate(candidates):
            new = [r for r in rows if r.key not in written]
            removed += [("duplicate", r.example.source, f"same content as {written[r.key]}")
                        for r in rows if r.key in written]
            match = near.check_and_add(sigs[i], ex.source) if new and i in sigs else None
            if not new:
                tally.remove(*_record_removal(ex, removed))
            elif match:
                tally.remove("near_duplicate", ex.source,
                             f"similar to {match[0]} (estimated Jaccard {match[1]:.2f})")
            else:
                for reason, where, detail in removed:
                    tally.remove_turn(reason, where, detail)
                tally.truncated += sum(r.truncated for r in new)
                tally.training_examples += len(new)
                written.update((r.key, r.example.source) for r in new)
                kept.append(Record(ex, new, origin))
        seconds["near_duplicates"] += time.perf_counter() - t
        progress.update(tally.read, len(kept))
    progress.update(tally.read, len(kept), force=True)
    return kept


def _write_jsonl(path: str, rows) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _row(k: Kept) -> dict:
    if not k.truncated:
        return clean.canonical_row(k.example)
    return clean.canonical_row(Example(k.example.source, input_ids=tuple(k.ids.tolist()),
                                       loss_mask=tuple(k.mask.tolist()), category=k.example.category))


def write_splits(out: str, kept: list[Kept], parts: dict[str, list[int]], stale: list[str]) -> dict:
    """Removes `stale` files of an earlier dataset, then writes DIR/S.jsonl and the token store of
    each part; returns {name: {"jsonl", "token_store"}}."""
    for path in stale:
        os.remove(path)
    for d in glob.glob(os.path.join(out, "fold*")):
        if os.path.isdir(d) and _FOLD_DIR.match(os.path.basename(d)) and not os.listdir(d):
            os.rmdir(d)
    outputs = {}
    for name, idx in parts.items():
        prefix = os.path.join(out, name)
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
        _write_jsonl(prefix + ".jsonl", (_row(kept[i]) for i in idx))
        token_store.write(prefix, ({"input_ids": kept[i].ids, "loss_mask": kept[i].mask} for i in idx))
        outputs[name] = {"jsonl": prefix + ".jsonl", "token_store": prefix}
    return outputs


def _examples_of(parts: dict[str, list[int]], first: np.ndarray) -> dict[str, list[int]]:
    """Record indices per part -> the indices of their training examples (record r's are
    first[r] .. first[r + 1] - 1), in order."""
    return {name: [i for r in idx for i in range(first[r], first[r + 1])] for name, idx in parts.items()}


def _assign_splits(args, mix: mixture.Mixture, records: list[Record]
                   ) -> tuple[dict[str, list[int]], dict[str, list[int]], dict[str, tuple[list[int], list[int]]]]:
    """(parts to write, by name; the top-level split of each example for the histogram), as indices
    of the training examples in record order, a training part's records repeated as the mixture
    draws them; and {training part: (its record indices before, after the mixture)}. Records are
    assigned whole, stratified by source and category (`mixture.strata`)."""
    categories = mixture.strata([r.origin for r in records], [r.example.category for r in records],
                                len(mix.sources))
    first = np.cumsum([0] + [len(r.rows) for r in records])
    if args.kfold is None:
        val = DEFAULT_VAL if args.val is None else args.val
        parts = split.split(categories, val, args.test, args.seed)
        top, groups = parts, [parts]
    else:
        base = split.split(categories, 0.0, args.test, args.seed)
        folds = split.kfold(categories, args.kfold, args.seed, indices=base["train"])
        parts = {"test": base["test"]} | {f"fold{k}/{side}": fold[side] for k, fold in enumerate(folds)
                                          for side in ("train", "val")}
        top = {f"train+val ({args.kfold} folds)": base["train"], "test": base["test"]}
        groups = [{**fold, "test": base["test"]} for fold in folds]
    keys = [row.key for r in records for row in r.rows]
    for group in groups:
        split.check_disjoint(_examples_of(group, first), keys)
    shaped = {name: (idx, _mix_training(idx, mix, records, args.seed)) for name, idx in parts.items()
              if name == "train" or name.endswith("/train")}
    parts = parts | {name: after for name, (_, after) in shaped.items()}
    top = top | ({"train": parts["train"]} if "train" in top else {})
    return _examples_of(parts, first), _examples_of(top, first), shaped


def _mix_training(idx: list[int], mix: mixture.Mixture, records: list[Record], seed: int) -> list[int]:
    """A training part's record indices after the category cap and the weights (`mixture`)."""
    idx = mixture.cap_categories(idx, [r.example.category for r in records], mix.max_per_category, seed)
    if mix.weights is None:
        return idx
    return mixture.resample(idx, [r.origin for r in records], mix.weights, seed,
                            [s.path for s in mix.sources])


def _mixture_report(mix: mixture.Mixture, records: list[Record],
                    shaped: dict[str, tuple[list[int], list[int]]]) -> dict:
    """report.json's "mixture": the rules and, per training part, each source's and category's
    records and share before and after them (records, not training examples)."""
    origins = [r.origin for r in records]
    cats = [r.example.category or report_lib.NO_CATEGORY for r in records]
    cat_names = sorted(set(cats))
    targets = ([round(w / sum(mix.weights), 6) for w in mix.weights] if mix.weights
               else [None] * len(mix.sources))
    parts = {}
    for name, (before, after) in shaped.items():
        src_before = mixture.shares(before, origins, range(len(mix.sources)))
        src_after = mixture.shares(after, origins, range(len(mix.sources)))
        parts[name] = {
            "sources": [{"path": s.path, "target_share": t, "before": src_before[i], "after": src_after[i]}
                        for i, (s, t) in enumerate(zip(mix.sources, targets))],
            "categories": {c: {"before": b, "after": a} for (c, b), a in zip(
                mixture.shares(before, cats, cat_names).items(), mixture.shares(after, cats, cat_names).values())}}
    return {"weights": mix.weights, "max_per_category": mix.max_per_category,
            "records_kept": [origins.count(i) for i in range(len(mix.sources))], "training": parts}


def sources(args) -> mixture.Mixture:
    """The sources prepare reads: --mixture's, or the --input arguments with --weights and
    --max_per_category; each source's unset container, row format and column map are the command
    line's. Raises MixtureError naming the flag, file or key."""
    mix = (mixture.load(args.mixture) if args.mixture
           else mixture.from_args(args.input, args.weights, args.max_per_category))
    return mixture.with_defaults(mix, args.input_format, args.format, args.columns)


def _columns(source: mixture.Source, fields=MAPPABLE) -> dict[str, str] | None:
    """The column map a source is read through (over `fields`: prompt_set.MAPPABLE for --prompts)."""
    return parse_columns(source.columns, fields) if source.columns else None


def input_files(args, mix: mixture.Mixture) -> list[dict]:
    """{"path", "bytes", "container"} of each file (or save_to_disk folder) the sources name, in
    reading order (`readers.expand`, `readers.describe`). Raises DataError naming an input that names
    nothing readable, or a file whose container cannot be told."""
    return [readers.describe(unit, s.input_format) for s in mix.sources for unit in readers.expand(s.path)]


def _check_columns(path: str, names: list[str] | None, columns: dict[str, str] | None) -> None:
    """Raises DataError naming the file and the column when a tabular file lacks a mapped column."""
    for field, column in (columns or {}).items():
        if names is not None and column not in names:
            raise DataError(f"{path}: no column {column!r} (--columns {field}={column}); columns: {names}")


def _check_paths(args, mix: mixture.Mixture) -> tuple[str | None, list[str]]:
    """(a problem with the input or output paths, or None; the files of a dataset already in --out)."""
    try:
        units = []
        for s in mix.sources:
            for unit in readers.expand(s.path):
                readers.describe(unit, s.input_format)
                # Opens a tabular file's footer or schema: a cut Parquet file, a missing mapped column
                # are named here, before any row is read.
                _check_columns(unit, readers.columns_of(unit, s.input_format),
                               _columns(s, prompt_set.MAPPABLE if args.prompts else MAPPABLE))
                units.append(unit)
        files = [(unit, readers.files_of(unit)) for unit in units]
    except DataError as e:
        return f"--input {e}", []
    for unit, paths in files:
        if any(_is_output_path(path, args.out) for path in paths):
            return (f"input {unit} is where prepare writes its output in {args.out}; input files "
                    "are never modified: choose another --out"), []
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        return f"--out {args.out} is a file; it must be a directory", []
    existing = _existing_outputs(args.out)
    if existing and not args.overwrite:
        return (f"{args.out} already holds a prepared dataset ({', '.join(existing[:4])}"
                f"{', ...' if len(existing) > 4 else ''}); pass --overwrite to replace it, or choose "
                "another --out"), existing
    return None, existing


def run(args: argparse.Namespace) -> int:
    """Prepares the dataset described by parsed arguments; returns the exit status."""
    t0 = time.perf_counter()
    problem, existing, mix = _check_args(args), [], None
    if not problem:
        try:
            mix = sources(args)
        except mixture.MixtureError as e:
            problem = str(e)
    if not problem:
        args.input = [s.path for s in mix.sources]
        problem, existing = _check_paths(args, mix)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2

    # Clean.
    tally = report_lib.Tally()
    seconds = {"tokenize": 0.0, "near_duplicates": 0.0}
    try:
        tokenizer = load_tokenizer(args.tokenizer)
    except (OSError, ValueError) as e:  # no tokenizer.json there, or one that cannot be read
        print(f"error: --tokenizer {args.tokenizer}: {e}", file=sys.stderr)
        return 2
    print(f"tokenizer: {describe(tokenizer)}", file=sys.stderr)
    if args.prompts:
        return prompt_set.run(args, mix, tokenizer, existing, input_files(args, mix), t0)
    try:
        records = clean_stream(args, mix, tokenizer, tally, seconds)
    except DataError as e:  # --strict, an unreadable input or eval file, chat rows the tokenizer cannot carry
        print(str(e), file=sys.stderr)
        return 2
    seconds["read_and_clean"] = time.perf_counter() - t0 - seconds["tokenize"] - seconds["near_duplicates"]

    # Split.
    kept = [row for r in records for row in r.rows]
    try:
        parts, top, shaped = _assign_splits(args, mix, records) if records else ({}, {}, {})
    except ValueError as e:  # --kfold K above the number of examples kept, a weighted source left empty
        print(f"error: {e} (after cleaning {tally.read} records)", file=sys.stderr)
        return 2
    parts = {name: idx for name, idx in parts.items() if idx}

    # Write.
    t = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    outputs = write_splits(args.out, kept, parts, existing)
    mixture.write(mix, os.path.join(args.out, "mixture.json"))
    seconds["write"] = time.perf_counter() - t

    # Report.
    lengths = np.asarray([len(k.ids) for k in kept], np.int64)
    trained = np.asarray([int(k.mask.sum()) for k in kept], np.int64)
    categories = [k.example.category for k in kept]
    options = {k: v for k, v in vars(args).items() if k not in ("input", "out", "command")}
    options["tokenizer"] = tokenizer_dir(tokenizer)  # the directory used, also when packaged
    options["near_dup_threshold"] = args.near_dup_threshold or DEFAULT_NEAR_DUP  # the threshold used
    if args.decontaminate:
        options["decontaminate_ngram"] = args.decontaminate_ngram or decontaminate.NGRAM  # the n used
    rep = report_lib.build(
        tally, parts, lengths, trained, categories,
        inputs=input_files(args, mix), out=args.out,
        options=options, outputs=outputs, mixture=_mixture_report(mix, records, shaped),
        seconds=round(time.perf_counter() - t0, 3),
        seconds_by_phase={k: round(v, 3) for k, v in seconds.items()})
    text = report_lib.write(args.out, rep, {n: lengths[np.asarray(i, np.int64)] for n, i in top.items()},
                            args.max_tokens)
    sys.stdout.write(text)
    if not kept:
        print(f"error: no example left out of {tally.read} records (see {args.out}/summary.txt)",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m r1jax.data prepare", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
