"""`python -m r1jax.data toy_math --out DIR`: a seeded, verifiable arithmetic task for SFT then GRPO.

    python -m r1jax.data toy_math --out data/toy_math [--n_sft 140] [--n_rl 40] [--n_val 36] \\
        [--seed 0] [--difficulty NAME] [--terms T] [--max_operand M] [--ops +-]

The task: a chain of T small non-negative integers joined by + or -, evaluated left to right, e.g.

    prompt     "What is 7 + 5 - 3?"
    reasoning  "7 + 5 = 12\\n12 - 3 = 9"            (one line per operation: running total op operand)
    completion "The answer is \\boxed{9}."
    answer     "9"

Every operand is in 0..M; a `-` never takes the running total below 0 (its operand is at most the
total so far), so every number is a non-negative integer below T * (M + 1) and, for the sizes here,
one token of the R1 tokenizer (it writes 0..999 as one token each; longer numbers are split into
groups of three digits), so each reasoning line is one lookup `total, op, operand -> new total`
that the model can learn from examples. The reward is rule-checked: the completion's last
`\\boxed{}` against `answer` (r1jax/eval/rewards.py `boxed`, r1jax/eval/tasks/answers.py).

Difficulty knobs (`Difficulty`; `--difficulty NAME` picks one of DIFFICULTIES, and --terms,
--max_operand, --ops override its fields):
  - terms T: the number of operands (T - 1 reasoning lines); every extra line is another step the
    answer depends on, and 6 more tokens;
  - max_operand M: operands in 0..M; the first line is one of (M + 1)^2 sums, later lines more
    (their totals grow), so a larger M is many more facts to learn;
  - ops: which operations occur ("+", "-" or "+-").

Why it suits a CPU demonstration: a T=3 example is 44 tokens (prompt and target), so a tiny
model sees many of them per second; the answer is checkable exactly; and the difficulty can be set
so that a short SFT run solves some problems but not all (configs/grpo_math_sft.py records the
measurements), which is where GRPO's groups of samples hold both right and wrong answers.

Files (JSONL, one object a line), split without overlap: every problem (its prompt) is drawn once
from one seeded stream of distinct problems, the first n_val going to val, the next n_rl to rl, the
rest to sft, so val depends only on the seed and difficulty, not on n_sft or n_rl:
    DIR/sft.jsonl   {"prompt", "reasoning", "completion", "answer", "category"}: a prompt_completion
                    row (r1jax/data/formats.py) whose reasoning becomes the <think> block
    DIR/rl.jsonl    {"prompt", "answer", "category"}: prompts for GRPO
    DIR/val.jsonl   {"prompt", "answer", "category"}: held out, for task.name=boxed (task.data)
    DIR/toy_math.json  the settings and counts
`category` is the operation pattern ("++", "+-", ...). Asking for more problems than the knobs
allow (e.g. T=2, M=9, ops "+" has 100; the default add3_small, T=3, M=5, has 216) is an error
naming the options; so is a bad knob.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys

OPS = "+-"
QUESTION = "What is {}?"
ANSWER = "The answer is \\boxed{{{}}}."
SPLITS = ("sft", "rl", "val")


@dataclasses.dataclass(frozen=True)
class Difficulty:
    terms: int = 3              # operands per problem (>= 2)
    max_operand: int = 9        # operands in 0..max_operand
    ops: str = "+"              # operations that occur: a non-empty subset of OPS

    def check(self) -> None:
        """Raises ValueError naming the knob when it is out of range."""
        if self.terms < 2:
            raise ValueError(f"--terms {self.terms}: a problem needs at least 2 operands")
        if self.max_operand < 1:
            raise ValueError(f"--max_operand {self.max_operand}: must be at least 1")
        if not self.ops or any(o not in OPS for o in self.ops) or len(set(self.ops)) != len(self.ops):
            raise ValueError(f"--ops {self.ops!r}: a non-empty set of {OPS!r}, each once")


DIFFICULTIES = {
    "add3_small": Difficulty(3, 5, "+"),     # 216 problems; configs/grpo_math_sft.py's
    "add2": Difficulty(2, 9, "+"),
    "add3": Difficulty(3, 9, "+"),
    "addsub3": Difficulty(3, 9, "+-"),
    "add4": Difficulty(4, 9, "+"),
    "addsub4": Difficulty(4, 9, "+-"),
    "add2_2digit": Difficulty(2, 99, "+"),
}
DEFAULT_DIFFICULTY = "add3_small"


@dataclasses.dataclass(frozen=True)
class Problem:
    operands: tuple[int, ...]   # [T]
    ops: tuple[str, ...]        # [T - 1], each "+" or "-"

    @property
    def expression(self) -> str:
        """"7 + 5 - 3": operands and operations, single-spaced."""
        parts = [str(self.operands[0])]
        for op, x in zip(self.ops, self.operands[1:]):
            parts += [op, str(x)]
        return " ".join(parts)

    def totals(self) -> list[int]:
        """[T] the running totals, left to right: totals[0] = operands[0], totals[-1] = the answer."""
        out = [self.operands[0]]
        for op, x in zip(self.ops, self.operands[1:]):
            out.append(out[-1] + x if op == "+" else out[-1] - x)
        return out


def draw(rng: random.Random, d: Difficulty) -> Problem:
    """One problem: operands uniform in 0..M, each op uniform over d.ops; a `-` operand is uniform in
    0..min(M, total so far), so no running total is negative."""
    total = rng.randint(0, d.max_operand)
    operands, ops = [total], []
    for _ in range(d.terms - 1):
        op = rng.choice(d.ops)
        x = rng.randint(0, d.max_operand if op == "+" else min(d.max_operand, total))
        total = total + x if op == "+" else total - x
        operands.append(x)
        ops.append(op)
    return Problem(tuple(operands), tuple(ops))


def space_size(d: Difficulty) -> int:
    """How many distinct problems the knobs allow (dynamic programming over the running total)."""
    counts = {t: 1 for t in range(d.max_operand + 1)}      # running total -> ways to reach it
    for _ in range(d.terms - 1):
        nxt: dict[int, int] = {}
        for total, ways in counts.items():
            if "+" in d.ops:
                for x in range(d.max_operand + 1):
                    nxt[total + x] = nxt.get(total + x, 0) + ways
            if "-" in d.ops:
                for x in range(min(d.max_operand, total) + 1):
                    nxt[total - x] = nxt.get(total - x, 0) + ways
        counts = nxt
    return sum(counts.values())


def distinct_problems(n: int, d: Difficulty, seed: int) -> list[Problem]:
    """The first n distinct problems of the seeded stream of `draw`; ValueError naming the options
    when the knobs allow fewer than n."""
    d.check()
    have = space_size(d)
    if n > have:
        raise ValueError(f"--n_sft + --n_rl + --n_val = {n} distinct problems asked, but --terms "
                         f"{d.terms} --max_operand {d.max_operand} --ops {d.ops} allow only {have}")
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < n:   # ends: at most `have` distinct problems and n <= have
        p = draw(rng, d)
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def reasoning(p: Problem) -> str:
    """One line per operation, "total op operand = new total"."""
    t = p.totals()
    return "\n".join(f"{t[i]} {op} {x} = {t[i + 1]}" for i, (op, x) in enumerate(zip(p.ops, p.operands[1:])))


def sft_row(p: Problem) -> dict:
    answer = str(p.totals()[-1])
    return {"prompt": QUESTION.format(p.expression), "reasoning": reasoning(p),
            "completion": ANSWER.format(answer), "answer": answer, "category": "".join(p.ops)}


def prompt_row(p: Problem) -> dict:
    return {"prompt": QUESTION.format(p.expression), "answer": str(p.totals()[-1]),
            "category": "".join(p.ops)}


def build(n_sft: int, n_rl: int, n_val: int, d: Difficulty, seed: int = 0) -> dict[str, list[dict]]:
    """{"sft": [n_sft sft rows], "rl": [n_rl prompt rows], "val": [n_val prompt rows]}, disjoint by
    prompt; val first, then rl, then sft in the problem stream (module docstring)."""
    for name, n in (("--n_sft", n_sft), ("--n_rl", n_rl), ("--n_val", n_val)):
        if n < 0:
            raise ValueError(f"{name} {n}: must be >= 0")
    problems = distinct_problems(n_sft + n_rl + n_val, d, seed)
    val, rl, sft = problems[:n_val], problems[n_val:n_val + n_rl], problems[n_val + n_rl:]
    return {"sft": [sft_row(p) for p in sft], "rl": [prompt_row(p) for p in rl],
            "val": [prompt_row(p) for p in val]}


def write(out_dir: str, splits: dict[str, list[dict]], info: dict) -> None:
    """DIR/{sft,rl,val}.jsonl and DIR/toy_math.json (info)."""
    os.makedirs(out_dir, exist_ok=True)
    for name in SPLITS:
        tmp = os.path.join(out_dir, name + ".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in splits[name])
        os.replace(tmp, os.path.join(out_dir, name + ".jsonl"))
    with open(os.path.join(out_dir, "toy_math.json"), "w") as f:
        json.dump(info, f, indent=1)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="writes DIR/sft.jsonl, rl.jsonl, val.jsonl")
    p.add_argument("--n_sft", type=int, default=140, help="SFT rows (default 140)")
    p.add_argument("--n_rl", type=int, default=40, help="GRPO prompts (default 40)")
    p.add_argument("--n_val", type=int, default=36, help="held-out prompts (default 36)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--difficulty", default=DEFAULT_DIFFICULTY, choices=sorted(DIFFICULTIES),
                   help=f"preset knobs (default {DEFAULT_DIFFICULTY}): "
                        + "; ".join(f"{k}: terms={v.terms} max_operand={v.max_operand} ops={v.ops}"
                                    for k, v in DIFFICULTIES.items()))
    p.add_argument("--terms", type=int, help="operands per problem (overrides the preset)")
    p.add_argument("--max_operand", type=int, help="operands in 0..M (overrides the preset)")
    p.add_argument("--ops", help="operations, a subset of '+-' (overrides the preset)")


def run(args: argparse.Namespace) -> int:
    base = DIFFICULTIES[args.difficulty]
    d = Difficulty(terms=base.terms if args.terms is None else args.terms,
                   max_operand=base.max_operand if args.max_operand is None else args.max_operand,
                   ops=base.ops if args.ops is None else args.ops)
    try:
        splits = build(args.n_sft, args.n_rl, args.n_val, d, args.seed)
    except ValueError as e:
        print(f"error: toy_math: {e}", file=sys.stderr)
        return 2
    info = {"seed": args.seed, "difficulty": args.difficulty, **dataclasses.asdict(d),
            "space_size": space_size(d), **{f"n_{k}": len(v) for k, v in splits.items()}}
    write(args.out, splits, info)
    print(f"toy_math: {args.out}: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items())
          + f" (terms={d.terms} max_operand={d.max_operand} ops={d.ops}, seed {args.seed})")
    return 0
