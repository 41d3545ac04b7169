"""Prompt sets for reinforcement learning (GRPO): prompt + reference rows, cleaned, split, written.

    python -m r1jax.data prepare --prompts --input INPUT... --out DIR [--val 0.05] [--test 0.0] [--seed 0]
        [--columns prompt=problem,answer=solution,tests=test_code] [--format auto|prompt|messages]
        [--input_format C] [--tokenizer DIR] [--max_tokens N] [--strict] [--overwrite]
        [--decontaminate humaneval|EVAL_FILE ... [--decontaminate_ngram 13]]

GRPO samples several answers to a prompt and scores them with rule-based rewards
(r1jax/eval/rewards.py reads row["answer"] and row["tests"]), so its rows hold a prompt and a
reference, not a completion. Inputs are read as `prepare` reads them: files, globs or folders of
any container `readers` reads, each row named FILE:LINE (JSONL) or FILE:row N.

A row, after the column map (`--columns FIELD=COLUMN,...`, `formats.parse_columns` over `MAPPABLE`; a
mapped column a row lacks, a null cell, leaves its field absent; a file without it stops prepare):
  prompt     `prompt`: a string, one user turn, after an optional `system` string; or `messages`: a
             list of {"role": "system"|"user"|"assistant", "content": str} under `formats`' turn rules
             (a system message only first; an assistant turn's `<think>` block or reasoning_content is
             its reasoning, which chat.py never renders in a prompt), with an optional `system` string
             when it holds no system message. A final assistant turn is dropped (generation replaces
             it); what is left must not end with an assistant turn. `--format prompt|messages` requires
             that shape; auto takes the one the row has (both: malformed).
  reference  `answer`: a string, or a finite number written as its string (what the boxed,
             exact_match and contains rewards compare with); and/or `tests`: a string (Python asserts,
             for code_tests). null counts as absent and is not written.
  the rest   kept as it is (`category`, `id`, ...); `category` (a string or a number, normalized by
             `clean.normalize_text`) also stratifies the splits.

Rules, in this order; each removed row is counted under its reason (`REASONS`) with its FILE:LINE and
a detail:
  malformed        not an object; a field of the wrong type (named, with its column when mapped); a
                   mapped column missing; no prompt field or both; a bad message; two assistant turns
                   last
  empty            no prompt text: no user message, or one empty after normalization
                   (`clean.normalize_example`: NFC, "\\n" line endings, no control characters, trimmed;
                   an empty system message is dropped)
  no_reference     neither `answer` nor `tests`, or both blank
  contaminated     with --decontaminate: the prompt's text (its messages' contents) shares a word
                   n-gram with an evaluation item (`decontaminate`'s rule)
  too_long_tokens  with --max_tokens N: the generation prompt (`chat.prompt_segments`, the R1 chat
                   prompt ending `<｜Assistant｜><think>\\n`: the ids r1jax/inference/generate.py feeds
                   the model) is longer than N tokens of the tokenizer (--tokenizer)
  duplicate        the same normalized prompt conversation (`clean.content_key`) as a row kept
                   earlier, whatever the references: the first is kept
--strict stops at the first malformed row (exit 2, naming its FILE:LINE).

Output, for each non-empty split S of train, val, test (`split.split`: stratified by category,
seeded; --val default 0.05 as prepare's, --test 0), in input order:
    DIR/S.jsonl      one row per kept prompt: {"messages": the prompt conversation as normalized
                     ({role, content}), "source": "FILE:LINE", then every other field of the input row
                     (after the column map) as it is; `answer` as a string; an input field named
                     `source` is written as `input_source`; a value JSON cannot hold as its str()}
    DIR/report.json  {"kind": "prompts", "records": {"read", "kept", "removed": {reason: count}},
                     "examples": {reason: [{"where", "detail"}, ...]} (the first few), "splits" and
                     "categories": {name: {"examples", "tokens", "length": {min, mean, p50, p90, p99,
                     max}, "categories"}} (generation-prompt lengths in tokens), "inputs", "options",
                     "outputs", "seconds"}
    DIR/summary.txt  (also printed) and DIR/token_lengths.png (prompt lengths per split)
`read_prompts(DIR/S.jsonl)` reads a split back for the trainer. Flags of SFT preparation that do not
apply (`REFUSED`) exit 2. Exit status as prepare's: 0 done, 2 a bad option or input or (--strict) a
malformed row, 1 when no prompt is left.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from r1jax.data import chat, clean, decontaminate, formats, readers, split
from r1jax.data import report as report_lib
from r1jax.data.formats import DataError, Example, Message
from r1jax.data.tokenizer import tokenizer_dir

KIND = "prompts"
FORMATS = ("auto", "prompt", "messages")
MAPPABLE = ("prompt", "system", "messages", "category", "answer", "tests")
REFERENCES = ("answer", "tests")
REASONS = ("malformed", "empty", "no_reference", "contaminated", "too_long_tokens", "duplicate")
BATCH = 256
# prepare's flags that make no sense for a prompt set: {flag: why}.
REFUSED = {
    "train_all_turns": "a prompt set has no assistant turns to train",
    "kfold": "a prompt set is split into train/val/test only (--val, --test)",
    "too_long": "an over-long prompt is removed (too_long_tokens), never cut",
    "near_dup_threshold": "prompt sets are deduplicated exactly (reason duplicate)",
    "weights": "mixtures are not supported for prompt sets",
    "max_per_category": "mixtures are not supported for prompt sets",
    "mixture": "mixtures are not supported for prompt sets; give the inputs as --input",
}


def refused(args) -> str | None:
    """Why prepare's parsed `args` cannot make a prompt set (a flag of `REFUSED` given, a --format
    outside `FORMATS`), or None."""
    for flag, why in REFUSED.items():
        if getattr(args, flag, None) not in (None, False):
            return f"--{flag} does not apply to --prompts: {why}"
    if args.format not in FORMATS:
        return f"--format {args.format}: with --prompts, rows are one of {', '.join(FORMATS)}"
    return None


# ------------------------------------------------------------------------------------ one row

def prompt_messages(row: dict, where: str, fmt: str = "auto",
                    names: Mapping[str, str] = formats._NO_NAMES) -> list[Message]:
    """The conversation of a (column-mapped) row's `prompt` or `messages` with its `system`, a final
    assistant turn included (see the module docstring). DataError naming `where` and the field."""
    found = [k for k in ("prompt", "messages") if row.get(k) is not None]
    if len(found) == 2:
        raise DataError(f"{where}: both {formats._label('prompt', names)} and "
                        f"{formats._label('messages', names)}; keep one")
    shape = found[0] if found else None
    if fmt != "auto" and shape != fmt:
        raise DataError(f"{where}: missing field {formats._label(fmt, names)} (--format {fmt})")
    mapped = [k for k in ("prompt", "messages") if k in names]
    if shape is None and mapped:
        raise DataError(f"{where}: no prompt: field {formats._label(mapped[0], names)} is missing or null")
    if shape is None:
        raise DataError(f"{where}: no prompt: expected a string 'prompt' or a 'messages' list (keys: "
                        f"{sorted(row)}), or a column map (--columns prompt=COLUMN)")
    if shape == "prompt":
        msgs = [Message("user", formats._str_field(row, "prompt", where, names))]
    else:
        turns = formats._turn_list(row, "messages", where, names)
        msgs = formats._turns(turns, "messages", where, formats._message_turn)
    system = formats._opt_str(row, "system", where, names)
    if system:
        if msgs[0].role == "system":
            raise DataError(f"{where}: both a {formats._label('system', names)} field and a system message; "
                            "keep one")
        msgs.insert(0, Message("system", system))
    return msgs


def references(row: dict, where: str, names: Mapping[str, str] = formats._NO_NAMES) -> dict[str, str]:
    """{"answer"?, "tests"?} of a (column-mapped) row as strings, null ones left out; DataError
    naming the field for a value of the wrong type."""
    out = {}
    answer = row.get("answer")
    if answer is not None:
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
            raise DataError(f"{where}: field {formats._label('answer', names)} must be a string or a number, "
                            f"got {type(answer).__name__}")
        if isinstance(answer, float) and not math.isfinite(answer):
            raise DataError(f"{where}: field {formats._label('answer', names)} must be a finite number, got {answer}")
        out["answer"] = answer if isinstance(answer, str) else str(answer)
    tests = formats._opt_str(row, "tests", where, names)
    if tests is not None:
        out["tests"] = tests
    return out


def parse_prompt_row(row, where: str, fmt: str = "auto",
                     columns: Mapping[str, str] | None = None) -> tuple[Example, dict]:
    """A row -> (its prompt conversation as an Example, not yet normalized: source `where`, messages
    up to the last turn before the one to generate, category; the fields written after "messages"
    and "source"). DataError naming `where` for a malformed row (see the module docstring)."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    if fmt not in FORMATS:
        raise DataError(f"{where}: format {fmt!r}: prompt rows are one of {FORMATS}")
    names = dict(columns or {})
    if names:
        row = formats._mapped(row, names, where, missing_ok=True)
    msgs = prompt_messages(row, where, fmt, names)
    if msgs[-1].role == "assistant":
        msgs.pop()  # the turn generation writes
    if msgs and msgs[-1].role == "assistant":
        raise DataError(f"{where}: the prompt ends with two assistant turns; it must end with a user message")
    category = formats._category(row, where, names)
    refs = references(row, where, names)
    if "source" in row and "input_source" in row:
        raise DataError(f"{where}: fields 'source' and 'input_source' both present; the prepared row's "
                        "'source' is its FILE:LINE and an input 'source' is written as 'input_source'")
    fields = {}
    for key, value in row.items():
        if key in ("prompt", "messages", "system") or (key in REFERENCES and key not in refs):
            continue
        fields["input_source" if key == "source" else key] = refs.get(key, value)
    return Example(where, messages=tuple(msgs), category=category), fields


def read_rows(sources, strict: bool) -> Iterator[tuple[str, tuple[Example, dict] | DataError]]:
    """(where, parsed row or its DataError) of each row of `sources` (mixture.Source: path,
    input_format, format, columns), in order. With `strict`, a malformed row raises its DataError."""
    for s in sources:
        columns = formats.parse_columns(s.columns, MAPPABLE) if s.columns else None
        for unit in readers.expand(s.path):
            for where, row in readers.read_rows(unit, s.input_format or "auto"):
                try:
                    if isinstance(row, DataError):
                        raise row
                    parsed = parse_prompt_row(row, where, s.format or "auto", columns)
                except DataError as err:
                    if strict:
                        raise err from None
                    parsed = err
                yield where, parsed


class Prompt(NamedTuple):
    """A prompt that passed the rules checked before tokenizing."""
    example: Example    # the prompt conversation, normalized
    fields: dict        # written after "messages" and "source"
    key: bytes          # clean.content_key(example)


def screen(where: str, parsed: tuple[Example, dict] | DataError,
           evals: decontaminate.EvalIndex | None) -> Prompt | tuple[str, str, str]:
    """The rules malformed, empty, no_reference, contaminated on one row: (reason, where, detail)
    when it is removed, else its Prompt."""
    if isinstance(parsed, DataError):
        return "malformed", where, str(parsed).removeprefix(f"{where}: ")
    ex, fields = clean.normalize_example(parsed[0]), parsed[1]
    bad = clean.check_fields(ex)
    if bad:
        return bad[0], where, bad[1]
    if not any(m.role == "user" for m in ex.messages):
        return "empty", where, "no user message"
    if not any(isinstance(fields.get(k), str) and fields[k].strip() for k in REFERENCES):
        return "no_reference", where, "neither 'answer' nor 'tests' holds text"
    match = evals.match(ex) if evals is not None else None
    if match:
        return "contaminated", where, match.detail()
    return Prompt(ex, fields, clean.content_key(ex))


def prompt_text(ex: Example) -> str:
    """The generation prompt of a prompt conversation (`chat.prompt_segments`: ends `<think>\\n`)."""
    return "".join(text for text, _ in chat.prompt_segments(ex.messages))


def prompt_lengths(prompts: Sequence[Prompt], tokenizer) -> np.ndarray:
    """int64 [N]: the generation prompts' lengths in tokens, equal to `len(chat.prompt_ids(...))` of
    each conversation (one run of untrained pieces, encoded whole), in batches of BATCH. DataError
    (`chat.check_markers`) when the tokenizer lacks a chat marker."""
    out = np.zeros(len(prompts), np.int64)
    for start in range(0, len(prompts), BATCH):
        batch = prompts[start:start + BATCH]
        for p in batch:
            chat.check_markers(tokenizer, p.example.source)
        encodings = tokenizer.backend_tokenizer.encode_batch([prompt_text(p.example) for p in batch],
                                                             add_special_tokens=False)
        out[start:start + len(batch)] = [len(e.ids) for e in encodings]
    return out


class Tally(report_lib.Tally):
    """report.Tally over this module's REASONS."""

    def __init__(self):
        super().__init__()
        self.removed = dict.fromkeys(REASONS, 0)
        self.examples = {r: [] for r in REASONS}


def clean_prompts(sources, tokenizer, tally: Tally, *, strict: bool = False, max_tokens: int | None = None,
                  evals: decontaminate.EvalIndex | None = None) -> tuple[list[Prompt], np.ndarray]:
    """(the kept prompts in input order, int64 [K] their generation-prompt lengths in tokens): every
    row of `sources` through the rules in order, each removal counted in `tally`. Raises DataError
    (--strict, an unreadable input, a tokenizer without the chat markers)."""
    candidates = []
    for where, parsed in read_rows(sources, strict):
        tally.read += 1
        passed = screen(where, parsed, evals)
        if isinstance(passed, Prompt):
            candidates.append(passed)
        else:
            tally.remove(*passed)
    lengths = prompt_lengths(candidates, tokenizer)
    kept, kept_lengths, seen = [], [], {}
    for p, n in zip(candidates, lengths):
        if max_tokens is not None and n > max_tokens:
            tally.remove("too_long_tokens", p.example.source, f"{n} prompt tokens > --max_tokens {max_tokens}")
        elif p.key in seen:
            tally.remove("duplicate", p.example.source, f"same prompt as {seen[p.key]}")
        else:
            seen[p.key] = p.example.source
            kept.append(p)
            kept_lengths.append(n)
    return kept, np.asarray(kept_lengths, np.int64)


# ----------------------------------------------------------------------------------- outputs

def output_row(p: Prompt) -> dict:
    """A kept prompt as its row of DIR/S.jsonl."""
    msgs = [{"role": m.role, "content": m.content} for m in p.example.messages]
    return {"messages": msgs, "source": p.example.source, **p.fields}


def _stats(lengths: np.ndarray, categories: list[str | None]) -> dict:
    """report.stats of prompts (none of their tokens is trained: no trained_tokens)."""
    s = report_lib.stats(lengths, np.zeros_like(lengths), categories)
    del s["trained_tokens"]
    return s


def build_report(tally: Tally, parts: dict[str, list[int]], lengths: np.ndarray,
                 categories: list[str | None], **extra) -> dict:
    """The report.json object (see the module docstring); `extra` adds top-level keys."""
    by_cat: dict[str, list[int]] = {}
    for i, c in enumerate(categories):
        by_cat.setdefault(c or report_lib.NO_CATEGORY, []).append(i)
    pick = lambda idx: _stats(lengths[np.asarray(idx, np.int64)], [categories[i] for i in idx])  # noqa: E731
    return {"kind": KIND,
            "records": {"read": tally.read, "kept": tally.kept, "removed": dict(tally.removed)},
            "examples": dict(tally.examples),
            "splits": {name: pick(idx) for name, idx in parts.items()},
            "categories": {c: pick(idx) for c, idx in sorted(by_cat.items())},
            **extra}


def _table_row(name: str, s: dict) -> str:
    return f"  {name:<22} {s['examples']:>9} {s['tokens']:>12} {report_lib.length_columns(s)}"


def summary(rep: dict) -> str:
    """A readable summary of a prompt set's report."""
    rec = rep["records"]
    lines = [f"prompts: read {rec['read']}, kept {rec['kept']}",
             "removed: " + ", ".join(f"{r} {rec['removed'][r]}" for r in REASONS)]
    lines += [f"  {r:<15} {ex['where']}: {ex['detail']}" for r in REASONS for ex in rep["examples"][r]]
    header = (f"  {'':<22} {'prompts':>9} {'tokens':>12} {'min':>7} {'mean':>9} {'p50':>8} {'p90':>8} "
              f"{'p99':>8} {'max':>8}")
    for title, table in (("splits", rep["splits"]), ("categories", rep["categories"])):
        lines += ["", f"{title} (generation-prompt lengths in tokens):", header]
        lines += [_table_row(name, s) for name, s in table.items()]
    if "seconds" in rep:
        lines += ["", f"took {rep['seconds']:.1f} s"]
    return "\n".join(lines) + "\n"


def run(args, mix, tokenizer, stale: list[str], inputs: list[dict], t0: float) -> int:
    """`prepare --prompts` after prepare's checks of the options and paths: cleans the sources of
    `mix`, splits, removes the `stale` files of an earlier preparation in --out, writes the outputs
    and the report (`inputs`: prepare.input_files); returns the exit status."""
    from r1jax.data import prepare  # the command's shared pieces (prepare imports this module)
    tally = Tally()
    try:
        evals = None
        if args.decontaminate:
            evals = decontaminate.EvalIndex.build(args.decontaminate, args.decontaminate_ngram or decontaminate.NGRAM)
            print(f"decontaminate: {evals.describe()}", file=sys.stderr, flush=True)
        kept, lengths = clean_prompts(mix.sources, tokenizer, tally, strict=args.strict,
                                      max_tokens=args.max_tokens, evals=evals)
    except DataError as e:  # --strict, an unreadable input or eval file, a tokenizer without the markers
        print(str(e), file=sys.stderr)
        return 2
    categories = [p.example.category for p in kept]
    val = prepare.DEFAULT_VAL if args.val is None else args.val
    parts = split.split(categories, val, args.test, args.seed) if kept else {}
    split.check_disjoint(parts, [p.key for p in kept])
    parts = {name: idx for name, idx in parts.items() if idx}

    os.makedirs(args.out, exist_ok=True)
    for path in stale:
        os.remove(path)
    outputs = {}
    for name, idx in parts.items():
        path = os.path.join(args.out, name + ".jsonl")
        prepare._write_jsonl(path, (output_row(kept[i]) for i in idx))
        outputs[name] = {"jsonl": path}
    options = {k: v for k, v in vars(args).items() if k not in ("input", "out", "command") and k not in REFUSED}
    options["tokenizer"] = tokenizer_dir(tokenizer)  # the directory used, also when packaged
    if args.decontaminate:
        options["decontaminate_ngram"] = args.decontaminate_ngram or decontaminate.NGRAM
    rep = build_report(tally, parts, lengths, categories, inputs=inputs, out=args.out, options=options,
                       outputs=outputs, seconds=round(time.perf_counter() - t0, 3))
    with open(os.path.join(args.out, "report.json"), "w", encoding="utf-8") as f:
        json.dump(rep, f, indent=2, ensure_ascii=False)
        f.write("\n")
    text = summary(rep)
    with open(os.path.join(args.out, "summary.txt"), "w", encoding="utf-8") as f:
        f.write(text)
    report_lib.histogram(os.path.join(args.out, "token_lengths.png"),
                         {n: lengths[np.asarray(i, np.int64)] for n, i in parts.items()}, args.max_tokens)
    sys.stdout.write(text)
    if not kept:
        print(f"error: no prompt left out of {tally.read} rows (see {args.out}/summary.txt)", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------ for the trainer

def read_prompts(path: str) -> list[dict]:
    """The rows of a prepared split DIR/S.jsonl, in order, each checked: `messages` a prompt
    conversation (`formats`' turn rules, no user message blank, the last one the user's), `answer`
    and `tests` strings when present, at least one of them not blank. Raises DataError naming
    PATH:LINE and what is wrong."""
    out = []
    for where, _, row in readers.json_objects(path):
        if row.get("messages") is None:
            raise DataError(f"{where}: no 'messages' field (keys: {sorted(row)}); see r1jax/data/prompt_set.py")
        msgs = prompt_messages(row, where)
        if msgs[-1].role != "user":
            raise DataError(f"{where}: the last message is the {msgs[-1].role}'s; a prompt ends with a user message")
        bad = clean.check_fields(clean.normalize_example(Example(where, messages=tuple(msgs))))
        if bad:
            raise DataError(f"{where}: {bad[1]}")
        for key in REFERENCES:
            if row.get(key) is not None and not isinstance(row[key], str):
                raise DataError(f"{where}: field {key!r} must be a string, got {type(row[key]).__name__}")
        if not any(isinstance(row.get(k), str) and row[k].strip() for k in REFERENCES):
            raise DataError(f"{where}: no reference: neither 'answer' nor 'tests' holds text")
        out.append(row)
    return out
