"""Build the bundled code-instruction dataset from this machine's Python standard library.

    python tools/build_code_dataset.py --out data/stdlib_code.jsonl

Writes messages-format JSONL (request: signature + docstring; answer: the source) and
OUT.report.json (functions found, duplicates, HumanEval overlap removed). `configs/code.py` builds the
same file into ~/.cache/r1jax on first use.
"""
import argparse
import json
import sys

from r1jax.data import code_dataset


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--stdlib", help="root to scan (default: this interpreter's standard library)")
    a = p.parse_args(argv)
    report = code_dataset.build(a.out, a.stdlib, log=lambda s: print(s, file=sys.stderr))
    print(json.dumps({k: v for k, v in report.items() if k != "humaneval_overlap_examples"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
