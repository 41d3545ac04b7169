"""`prepare` throughput on synthetic chat data (examples/s, tokens/s on this host).

    python tools/bench_data_prepare.py [--examples 100000] [--seed 0] [--keep DIR] [--json]

Writes a JSONL of varied chat rows into a temporary directory: `messages` (some multi-turn, some with
a system prompt, reasoning as `reasoning_content` or a `<think>` block) and `prompt`/`completion`
rows, five categories in unequal shares, Zipf-distributed words (about 500 tokens per example);
plus exact duplicates (some differing only in line endings and trailing spaces), near-duplicates
(a few words changed), empty answers and malformed lines, about 1% each. Then runs
`python -m r1jax.data prepare` on it in-process and prints the records read, the seconds (total and
per phase from report.json), examples/s and tokens/s (tokens of the kept examples). Target
(issue 4): 100k chat examples in under 5 minutes.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import tempfile
import time

import numpy as np

from r1jax.data import prepare

CATEGORIES = ("math", "code", "chat", "reasoning", "writing")
CATEGORY_SHARES = (0.35, 0.25, 0.2, 0.15, 0.05)
MALFORMED = ('{"messages": [{"role": "user", "content": "a line cut short',
             '["not", "an", "object"]',
             '{"prompt": "a prompt without its completion"}',
             '{"messages": [{"role": "bot", "content": "unknown role"}]}')
SYLLABLES = ("ka ri to na me shi lo pu ve zan dor ix um bel tra qua fen gor ly so "
             "pe ad in con ter ment ing tion al re de un ex per com").split()


def vocabulary(rng: np.random.Generator, n: int = 20000) -> np.ndarray:
    common = ("the of and to in is that it for on with as be this by we can if then so a an "
              "let first next value result step answer number function return list").split()
    made = {"".join(rng.choice(SYLLABLES, rng.integers(1, 4))) for _ in range(2 * n)}
    return np.array(common + sorted(made)[:n - len(common)])


def synth_rows(n: int, seed: int) -> list[str]:
    """n JSONL lines (see the module docstring)."""
    rng = np.random.default_rng(seed)
    vocab = vocabulary(rng)
    cdf = np.cumsum(1.0 / np.arange(1, len(vocab) + 1) ** 1.1)
    cdf /= cdf[-1]
    words_of = vocab.tolist()

    def text(lo, hi):
        k = int(rng.integers(lo, hi + 1))
        words = [words_of[j] for j in np.searchsorted(cdf, rng.random(k))]
        for i in range(int(rng.integers(4, 12)), len(words), int(rng.integers(8, 20))):
            words[i] += "." if rng.random() < 0.7 else ",\n"
        return " ".join(words)

    lines: list[str] = []
    made: list[dict] = []
    for i in range(n):
        r = rng.random()
        if made and r < 0.01:      # exact duplicate, sometimes only after normalization
            row = json.loads(json.dumps(made[int(rng.integers(len(made)))]))
            if rng.random() < 0.5 and "messages" in row:
                row["messages"][-1]["content"] = row["messages"][-1]["content"].replace("\n", "\r\n") + "  "
            lines.append(json.dumps(row, ensure_ascii=False))
            continue
        if made and r < 0.02:      # near-duplicate: a few words of the answer changed
            row = json.loads(json.dumps(made[int(rng.integers(len(made)))]))
            key = "messages" if "messages" in row else None
            words = (row["messages"][-1]["content"] if key else row["completion"]).split(" ")
            for _ in range(int(rng.integers(1, 4))):
                words[int(rng.integers(len(words)))] = str(rng.choice(vocab))
            if key:
                row["messages"][-1]["content"] = " ".join(words)
            else:
                row["completion"] = " ".join(words)
            lines.append(json.dumps(row, ensure_ascii=False))
            continue
        if r < 0.025:
            lines.append(MALFORMED[i % len(MALFORMED)])
            continue
        if r < 0.03:
            lines.append(json.dumps({"prompt": text(5, 30), "completion": "   "}))
            continue
        category = str(rng.choice(CATEGORIES, p=CATEGORY_SHARES))
        reasoning = text(20, 300) if rng.random() < 0.8 else None
        if rng.random() < 0.15:
            row = {"prompt": text(8, 80), "completion": (f"<think>\n{reasoning}\n</think>\n\n" if reasoning
                                                         else "") + text(10, 200)}
        else:
            msgs = [{"role": "system", "content": text(5, 30)}] if rng.random() < 0.2 else []
            if rng.random() < 0.1:
                msgs += [{"role": "user", "content": text(8, 60)}, {"role": "assistant", "content": text(10, 80)}]
            msgs.append({"role": "user", "content": text(8, 80)})
            answer = {"role": "assistant", "content": text(10, 200)}
            if reasoning:
                if rng.random() < 0.5:
                    answer["reasoning_content"] = reasoning
                else:
                    answer["content"] = f"<think>\n{reasoning}\n</think>\n\n{answer['content']}"
            row = {"messages": msgs + [answer]}
        row["category"] = category
        made.append(row)
        lines.append(json.dumps(row, ensure_ascii=False))
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", metavar="DIR", help="write input and output here and keep them")
    p.add_argument("--json", action="store_true", help="last line of stdout: the figures as JSON")
    args = p.parse_args()

    work = args.keep or tempfile.mkdtemp(prefix="bench_prepare_")
    os.makedirs(work, exist_ok=True)
    src, out = os.path.join(work, "synthetic.jsonl"), os.path.join(work, "prepared")
    try:
        t = time.perf_counter()
        with open(src, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in synth_rows(args.examples, args.seed))
        print(f"generated {args.examples} lines ({os.path.getsize(src) / 2**20:.0f} MiB) "
              f"in {time.perf_counter() - t:.1f} s", flush=True)
        summary = io.StringIO()
        t = time.perf_counter()
        with contextlib.redirect_stdout(summary):
            rc = prepare.main(["--input", src, "--out", out, "--overwrite"])
        seconds = time.perf_counter() - t
        if rc != 0:
            raise SystemExit(f"prepare failed with exit status {rc}:\n{summary.getvalue()}")
        print(summary.getvalue())
        rep = json.load(open(os.path.join(out, "report.json")))
        read = rep["records"]["read"]
        tokens = sum(s["tokens"] for s in rep["splits"].values())
        figures = {"records": read, "kept": rep["records"]["kept"], "tokens": tokens,
                   "seconds": round(seconds, 2), "examples_per_s": round(read / seconds, 1),
                   "tokens_per_s": round(tokens / seconds), "seconds_by_phase": rep["seconds_by_phase"],
                   "cpus": os.cpu_count()}
        print(f"prepare: {read} records in {seconds:.1f} s on {os.cpu_count()} CPUs: "
              f"{read / seconds:,.0f} examples/s, {tokens / seconds:,.0f} tokens/s "
              f"(phases, s: {rep['seconds_by_phase']}); target 100k in < 300 s")
        if args.json:
            print(json.dumps(figures))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
