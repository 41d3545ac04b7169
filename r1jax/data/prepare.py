"""`python -m r1jax.data prepare --input FILE... --out DIR`: clean, deduplicate, tokenize, split, report.

    python -m r1jax.data prepare --input a.jsonl b.jsonl --out data/mine \\
        [--val 0.05] [--test 0.0] [--seed 0] [--kfold K] [--max_tokens N --too_long drop|truncate] \\
        [--near_dup_threshold 0.85] [--train_all_turns] [--format F] [--tokenizer DIR] [--strict] [--overwrite]

Input lines stream through, in order: parse (formats) -> normalize -> required fields -> exact
duplicates -> tokenize -> length limit -> near-duplicates; each removal is counted under one reason
(see `clean`). The kept examples are then split (see `split`) and written, per split S:

    DIR/S.jsonl                 the cleaned rows in canonical form (with `category`); a truncated
                                example is written as its `input_ids` and `loss_mask`
    DIR/S.{ids,mask,offsets}.npy  `token_store.write(DIR/S, ...)`, equal to `tokenize_example` of
                                each row of DIR/S.jsonl with the same --train_all_turns

for S in train, val, test (non-empty ones only), or DIR/fold{k}/train and DIR/fold{k}/val with
--kfold K (and DIR/test with --test). DIR/report.json, DIR/summary.txt and DIR/token_lengths.png
describe the run (see `report`). Input files are only read; exit status 0 when done, 2 for a bad
option, a missing input, a prepared DIR without --overwrite, or (--strict) the first malformed
line, 1 when no example is left.
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

from r1jax.data import batch_tokenize, clean, split, token_store
from r1jax.data import report as report_lib
from r1jax.data.formats import FORMATS, DataError, Example, read_jsonl
from r1jax.data.tokenizer import load_tokenizer

SPLITS = ("train", "val", "test")
REPORT_FILES = ("report.json", "summary.txt", "token_lengths.png")
DEFAULT_VAL = 0.05
BATCH = 256
_FOLD_DIR = re.compile(r"fold\d+$")
_WHERE = re.compile(r"^(.*?:\d+): (.*)$", re.DOTALL)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", nargs="+", required=True, metavar="FILE", help="JSONL input file(s)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--format", default="auto", choices=FORMATS, help="row format (default: detected)")
    p.add_argument("--tokenizer", metavar="DIR", help="directory with tokenizer.json (default: packaged)")
    p.add_argument("--train_all_turns", action="store_true",
                   help="train every assistant answer, not only the final turn")
    p.add_argument("--val", type=float, help=f"validation fraction (default {DEFAULT_VAL}; not with --kfold)")
    p.add_argument("--test", type=float, default=0.0, help="test fraction (default 0)")
    p.add_argument("--seed", type=int, default=0, help="split shuffle seed")
    p.add_argument("--kfold", type=int, metavar="K", help="write K train/val pairs under DIR/fold{k}/")
    p.add_argument("--near_dup_threshold", type=float, default=0.85,
                   help="MinHash Jaccard similarity at which examples count as near-duplicates")
    p.add_argument("--max_tokens", type=int, metavar="N", help="length limit in tokens")
    p.add_argument("--too_long", choices=("drop", "truncate"),
                   help="over --max_tokens: drop the example (default) or cut its trained tail")
    p.add_argument("--strict", action="store_true", help="stop at the first malformed line (exit 2)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already prepared in DIR")


def _check_args(args) -> str | None:
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
    if not 0 < args.near_dup_threshold <= 1:
        return f"--near_dup_threshold {args.near_dup_threshold}: must be in (0, 1]"
    return None


def _split_names(out: str) -> list[str]:
    """Prefixes of splits already in `out` (relative), e.g. "train", "fold0/val"."""
    names = [s for s in SPLITS if any(os.path.exists(os.path.join(out, s + x))
                                      for x in (".jsonl", ".ids.npy", ".mask.npy", ".offsets.npy"))]
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
    stems = [f"{s}{x}" for s in SPLITS for x in (".jsonl", ".ids.npy", ".mask.npy", ".offsets.npy")]
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
    example: Example
    key: bytes             # clean.content_key
    ids: np.ndarray        # int32 [T], within --max_tokens
    mask: np.ndarray       # uint8 [T]
    truncated: bool


def clean_stream(args, tokenizer, tally: report_lib.Tally, seconds: dict) -> list[Kept]:
    """Streams the input records through the cleaning rules in batches; returns the kept ones in
    input order and counts every removal in `tally`. Raises DataError (--strict, unreadable file)."""
    seen: dict[bytes, str] = {}
    near = clean.NearDuplicateIndex(args.near_dup_threshold)
    tokenize = lambda exs: batch_tokenize.tokenize_batch(exs, tokenizer, args.train_all_turns)
    kept: list[Kept] = []
    progress = _Progress()
    records = read_jsonl(args.input, args.format, strict=args.strict)
    while batch := list(itertools.islice(records, BATCH)):
        unique = []
        for item in batch:
            tally.read += 1
            if isinstance(item, DataError):
                m = _WHERE.match(str(item))
                tally.remove("malformed", *(m.groups() if m else ("?", str(item))))
                continue
            ex = clean.normalize_example(item)
            bad = clean.check_fields(ex)
            if bad:
                tally.remove(bad[0], ex.source, bad[1])
                continue
            key = clean.content_key(ex)
            if key in seen:
                tally.remove("duplicate", ex.source, f"same content as {seen[key]}")
                continue
            seen[key] = ex.source
            unique.append((ex, key))

        t = time.perf_counter()
        tokenized = tokenize([ex for ex, _ in unique])
        seconds["tokenize"] += time.perf_counter() - t
        candidates = []
        for (ex, key), (ids, mask) in zip(unique, tokenized):
            fitted = clean.fit_length(ids, mask, args.max_tokens, args.too_long or "drop")
            if isinstance(fitted, str):
                tally.remove("too_long", ex.source, fitted)
            else:
                candidates.append(Kept(ex, key, *fitted))

        t = time.perf_counter()
        hashes = [near.shingle_hashes(c.example) for c in candidates]
        hashed = [i for i, h in enumerate(hashes) if len(h)]  # no words at all: exact dedup only
        sigs = dict(zip(hashed, near.signatures([hashes[i] for i in hashed]))) if hashed else {}
        for i, cand in enumerate(candidates):
            match = near.check_and_add(sigs[i], cand.example.source) if i in sigs else None
            if match:
                tally.remove("near_duplicate", cand.example.source,
                             f"similar to {match[0]} (estimated Jaccard {match[1]:.2f})")
            else:
                tally.truncated += cand.truncated
                kept.append(cand)
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


def _assign_splits(args, categories: list, keys: list) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """(parts to write, by name; the top-level split of each example for the histogram)."""
    if args.kfold is None:
        val = DEFAULT_VAL if args.val is None else args.val
        parts = split.split(categories, val, args.test, args.seed)
        split.check_disjoint(parts, keys)
        return parts, parts
    base = split.split(categories, 0.0, args.test, args.seed)
    parts = {"test": base["test"]}
    for k, fold in enumerate(split.kfold(categories, args.kfold, args.seed, indices=base["train"])):
        split.check_disjoint({**fold, "test": base["test"]}, keys)
        parts[f"fold{k}/train"], parts[f"fold{k}/val"] = fold["train"], fold["val"]
    return parts, {f"train+val ({args.kfold} folds)": base["train"], "test": base["test"]}


def _check_paths(args) -> tuple[str | None, list[str]]:
    """(a problem with the input or output paths, or None; the files of a dataset already in --out)."""
    for path in args.input:
        if os.path.isdir(path):
            return f"--input {path}: is a directory, not a JSONL file", []
        if not os.path.isfile(path):
            return f"--input {path}: no such file", []
        if _is_output_path(path, args.out):
            return (f"input {path} is where prepare writes its output in {args.out}; input files are "
                    "never modified: choose another --out"), []
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
    problem = _check_args(args)
    existing = []
    if not problem:
        problem, existing = _check_paths(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2

    # Clean.
    tally = report_lib.Tally()
    seconds = {"tokenize": 0.0, "near_duplicates": 0.0}
    try:
        kept = clean_stream(args, load_tokenizer(args.tokenizer), tally, seconds)
    except DataError as e:  # --strict, or an input that cannot be read
        print(str(e), file=sys.stderr)
        return 2
    seconds["read_and_clean"] = time.perf_counter() - t0 - seconds["tokenize"] - seconds["near_duplicates"]

    # Split.
    categories = [k.example.category for k in kept]
    try:
        parts, top = _assign_splits(args, categories, [k.key for k in kept]) if kept else ({}, {})
    except ValueError as e:  # e.g. --kfold K above the number of examples kept
        print(f"error: {e} (after cleaning {tally.read} records)", file=sys.stderr)
        return 2
    parts = {name: idx for name, idx in parts.items() if idx}

    # Write.
    t = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    outputs = write_splits(args.out, kept, parts, existing)
    seconds["write"] = time.perf_counter() - t

    # Report.
    lengths = np.asarray([len(k.ids) for k in kept], np.int64)
    trained = np.asarray([int(k.mask.sum()) for k in kept], np.int64)
    options = {k: v for k, v in vars(args).items() if k not in ("input", "out", "command")}
    rep = report_lib.build(
        tally, parts, lengths, trained, categories,
        inputs=[{"path": p, "bytes": os.path.getsize(p)} for p in args.input], out=args.out,
        options=options, outputs=outputs, seconds=round(time.perf_counter() - t0, 3),
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
