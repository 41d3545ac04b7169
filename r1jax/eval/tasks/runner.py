"""Task evaluation: load a task's items, generate n samples per item, score them, summarize.

Generation is injected: `generate_fn(prompts: list[str]) -> list[dict]` takes user messages and returns
one dict per prompt with at least "answer" (the text after `</think>`) and "text" (everything
generated); "reasoning", "n_tokens" and "finish_reason" are kept in the records when present
(r1jax.inference.generate.generate_texts returns all of these). Sampling settings (temperature, top-p,
length) are bound into generate_fn by the caller. Repeated prompts get independent samples
(generate_texts keys each row's sampling by its index).

Only the answer is scored (boxed: the whole text, as the box may close the reasoning): a sample
whose reasoning never ends (no `</think>` within max_new_tokens) has an empty answer and fails.

Tasks:
- humaneval: the bundled 164 problems (or a HumanEval-format FILE), code extracted from the answer
  and run in the sandbox; pass@k (unbiased estimator) over n samples per problem. A trivial passing
  program runs in the sandbox first; when it does not pass, evaluate raises SandboxUnusable (a
  TaskError) instead of reporting a score.
- exact_match / contains / boxed: a JSONL FILE of rows with a prompt ("prompt", "input" or
  "question") and a reference ("answer", "output" or "reference"); the answer is scored by
  r1jax.eval.tasks.answers. With n samples per item, pass@k counts an item solved by any of k.
Every task reports "accuracy" (mean over all samples) and pass@k for each requested k <= n.
An item whose prompt leaves no room for max_new_tokens within the model's positions
(generate.PromptTooLong) is a TaskError naming the item: scoring it as failed would lower the score
for a reason that is not the model's answer.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

from r1jax.data.readers import json_objects
from r1jax.inference.generate import PromptTooLong
from r1jax.eval.tasks import answers, humaneval, sandbox

TASKS = ("humaneval", "exact_match", "contains", "boxed")
_PROMPT_KEYS = ("prompt", "input", "question")
_REFERENCE_KEYS = ("answer", "output", "reference")

GenerateFn = Callable[[list[str]], list[dict]]


class TaskError(ValueError):
    """Bad task name, settings or data; the message names the file, line and key."""


class SandboxUnusable(TaskError):
    """The sandbox does not pass a trivial program here, so a task scored in it would read 0 for
    reasons that have nothing to do with the model: no score is reported."""


def check_sandbox(task: str, limits: sandbox.Limits) -> None:
    """For tasks that run code (humaneval): raises SandboxUnusable, naming the sandbox's status and
    stderr tail, unless a trivial passing program passes under `limits`. Other tasks: nothing."""
    if task != "humaneval":
        return
    try:
        sandbox.check_runs(limits)
    except sandbox.SandboxError as e:
        raise SandboxUnusable(f"task {task}: {e}; no score reported") from None


@dataclasses.dataclass(frozen=True)
class TaskSettings:
    n_samples: int = 1
    ks: tuple[int, ...] = (1,)
    limit: int = 0                            # 0 = every item; else an even spread of this many
    limits: sandbox.Limits = sandbox.Limits()
    workers: int = 0                          # sandbox processes at once; 0 = CPU count

    def __post_init__(self):
        if self.n_samples < 1:
            raise TaskError(f"n_samples must be >= 1, got {self.n_samples}")
        bad = [k for k in self.ks if not 1 <= k <= self.n_samples]
        if not self.ks or bad:
            raise TaskError(f"k values {list(self.ks)} must each be in 1..n_samples={self.n_samples}")


def read_reference_rows(path: str) -> list[dict]:
    """[{"id", "prompt", "reference"}] from a JSONL file; bad rows fail naming file:line and key."""
    items = []
    for where, line_no, row in json_objects(path):
        got = {}
        for role, keys in (("prompt", _PROMPT_KEYS), ("reference", _REFERENCE_KEYS)):
            key = next((k for k in keys if k in row), None)
            if key is None or not isinstance(row[key], str):
                raise TaskError(f"{where}: needs a string {role} under one of "
                                f"{', '.join(keys)}; has keys {sorted(row)}")
            got[role] = row[key]
        items.append({"id": str(row.get("id", line_no)), **got})
    if not items:
        raise TaskError(f"{path}: no rows")
    return items


def load_items(task: str, data: str = "", limit: int = 0) -> list[dict]:
    """The task's items ({"id", "prompt", ...}), an even spread of `limit` of them when limit > 0."""
    if task not in TASKS:
        raise TaskError(f"unknown task {task!r}; one of {', '.join(TASKS)}")
    if task == "humaneval":
        problems = humaneval.load_problems(data)
        items = [{"id": p["task_id"], "prompt": humaneval.chat_prompt(p), "problem": p} for p in problems]
    else:
        if not data:
            raise TaskError(f"task {task} needs a data file (JSONL with prompts and references)")
        items = read_reference_rows(data)
    return humaneval.spread(items, limit)


def _score_answers(task: str, items: list[dict], outs: list[dict], n: int, st: TaskSettings) -> list[dict]:
    """One {"passed", ...} per sample, in (item, sample) order."""
    if task == "humaneval":
        codes = [humaneval.extract_code(o.get("answer", ""), items[i // n]["problem"]["entry_point"])
                 for i, o in enumerate(outs)]
        programs = [humaneval.program(items[i // n]["problem"], c) for i, c in enumerate(codes)]
        results = sandbox.run_many(programs, st.limits, st.workers)
        return [{"passed": r.passed, "status": r.status, "stderr_tail": r.stderr_tail[-1000:],
                 "run_s": round(r.duration_s, 4), "code": c} for r, c in zip(results, codes)]
    check = {"exact_match": answers.exact_match, "contains": answers.contains,
             "boxed": answers.boxed_match}[task]
    out = []
    for i, o in enumerate(outs):
        ref = items[i // n]["reference"]
        # exact/contains judge the final answer; boxed looks for the box anywhere in what was generated
        pred = o.get("text", "") if task == "boxed" else o.get("answer", "")
        rec = {"passed": bool(check(pred, ref)), "reference": ref}
        if task == "boxed":
            rec["boxed"] = answers.last_boxed(pred)
        out.append(rec)
    return out


def evaluate(task: str, items: list[dict], generate_fn: GenerateFn,
             settings: TaskSettings = TaskSettings()) -> tuple[list[dict], dict]:
    """(per-sample records, summary) for `task` over `items` with `generate_fn`; SandboxUnusable
    (before anything is generated) when the task runs code and the sandbox cannot run a trivial
    passing program."""
    check_sandbox(task, settings.limits)
    n = settings.n_samples
    prompts = [it["prompt"] for it in items for _ in range(n)]
    t0 = time.perf_counter()
    try:
        outs = generate_fn(prompts)
    except PromptTooLong as e:
        raise TaskError(f"task {task}: item {items[e.index // n]['id']}: {e.reason}; lower max_new_tokens "
                        "or leave the item out of the data") from None
    gen_s = time.perf_counter() - t0
    if len(outs) != len(prompts):
        raise TaskError(f"generate_fn returned {len(outs)} results for {len(prompts)} prompts")
    t1 = time.perf_counter()
    scored = _score_answers(task, items, outs, n, settings)
    records = []
    for i, (o, s) in enumerate(zip(outs, scored)):
        rec = {"task": task, "id": items[i // n]["id"], "sample": i % n,
               "answer": o.get("answer", ""), **s}
        for key in ("reasoning", "n_tokens", "finish_reason"):
            if key in o:
                rec[key] = o[key]
        records.append(rec)
    counts = [(n, sum(r["passed"] for r in records[j * n:(j + 1) * n])) for j in range(len(items))]
    summary = {"task": task, "items": len(items), "samples": len(records),
               "accuracy": sum(r["passed"] for r in records) / len(records),
               **humaneval.mean_pass_at_k(counts, list(settings.ks)),
               "generate_s": round(gen_s, 3), "score_s": round(time.perf_counter() - t1, 3)}
    if task == "humaneval":
        statuses = [r["status"] for r in records]
        summary["status_counts"] = {s: statuses.count(s) for s in sandbox.STATUSES if s in statuses}
    return records, summary
