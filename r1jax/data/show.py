"""`python -m r1jax.data show --input FILE --n 3`: the first examples as the model sees them.

Each example is normalized as `prepare` does, tokenized with `tokenize_example`, and printed as the
decoded token ids, with the trained tokens (loss_mask 1) marked: reverse video on a terminal,
⟦...⟧ otherwise. With --train_all_turns, each of a conversation's turn examples is shown
(`chat.turn_examples`, as `prepare --train_all_turns` makes them), each counting towards --n. Works on
a raw input in any container `readers` reads (JSONL, JSON array, Parquet, CSV/TSV, Arrow, a
save_to_disk folder; compressed text; a glob or a directory) and on a prepared DIR/S.jsonl.
Malformed rows are named on stderr and skipped.
"""
from __future__ import annotations

import argparse
import itertools
import sys

from r1jax.data import clean
from r1jax.data.chat import tokenize_example, turn_examples
from r1jax.data.formats import FORMATS, DataError, parse_columns, read_examples
from r1jax.data.readers import INPUT_FORMATS
from r1jax.data.tokenizer import load_tokenizer

MARKS = {True: ("\x1b[7m", "\x1b[27m"), False: ("⟦", "⟧")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, metavar="FILE",
                   help="input (raw or prepared): a file, glob or directory; JSONL, JSON array, Parquet, "
                        "CSV/TSV, Arrow, a datasets save_to_disk folder; .gz/.zst text")
    p.add_argument("--input_format", default="auto", choices=INPUT_FORMATS,
                   help="container of the input (default: by extension, else by content)")
    p.add_argument("--n", type=int, default=3, help="number of examples to show (default 3)")
    p.add_argument("--format", default="auto", choices=FORMATS, help="row format (default: detected)")
    p.add_argument("--columns", metavar="FIELD=COLUMN,...",
                   help="read these columns as these fields, as prepare --columns does")
    p.add_argument("--tokenizer", metavar="DIR", help="directory with tokenizer.json (default: packaged)")
    p.add_argument("--train_all_turns", action="store_true",
                   help="show one example per assistant turn, as prepare --train_all_turns makes them")


def render_marked(ids: list[int], mask: list[int], tokenizer, tty: bool) -> str:
    """The decoded ids with each run of trained tokens wrapped in the marks of `MARKS[tty]`."""
    open_, close = MARKS[tty]
    out = []
    for trained, run in itertools.groupby(zip(ids, mask), key=lambda t: bool(t[1])):
        text = tokenizer.decode([t for t, _ in run], skip_special_tokens=False,
                                clean_up_tokenization_spaces=False)
        out.append(f"{open_}{text}{close}" if trained else text)
    return "".join(out)


def run(args: argparse.Namespace, stdout=None) -> int:
    stdout = stdout or sys.stdout
    if args.n < 1:
        print(f"error: --n {args.n}: must be at least 1", file=sys.stderr)
        return 2
    try:
        columns = parse_columns(args.columns) if args.columns else None
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tty = stdout.isatty()
    tokenizer = load_tokenizer(args.tokenizer)
    shown = 0
    try:
        for item in read_examples([args.input], args.format, input_format=args.input_format, columns=columns):
            if isinstance(item, DataError):
                print(f"skipped {item}", file=sys.stderr)
                continue
            record = clean.normalize_example(item)
            bad = clean.check_fields(record)
            note = f"  (prepare removes it: {bad[0]}, {bad[1]})" if bad else ""
            for ex in turn_examples(record) if args.train_all_turns else [record]:
                try:
                    enc = tokenize_example(ex, tokenizer)
                except DataError as e:  # e.g. empty input_ids
                    print(f"skipped {e}", file=sys.stderr)
                    continue
                ids, mask = enc["input_ids"], enc["loss_mask"]
                category = f", category {ex.category}" if ex.category else ""
                print(f"── {ex.source} ({ex.kind}{category}) ──{note}", file=stdout)
                print(render_marked(ids, mask, tokenizer, tty), file=stdout)
                print(f"── {len(ids)} tokens, {sum(mask)} trained ──\n", file=stdout)
                shown += 1
                if shown == args.n:
                    break
            if shown == args.n:
                break
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not shown:
        print(f"error: {args.input}: no usable example", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m r1jax.data show", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
