"""Task metrics during training: every `train.task_eval_every` steps (and at step 0 for the baseline)
the trainer generates answers for a held-out subset of the configured task and logs its metric.

    evaluator = TaskEval(c)                          # once, after the config is validated
    metrics = evaluator.run_model(model, tokenizer, mesh)   # {"task/humaneval_pass@1": ..., ...}
    metrics = evaluator(generate_fn)                 # the same with any generation function

`run_model` generates with r1jax.inference.generate.generate_texts and `evaluator.sampling` (temperature,
top_p, max_new_tokens, seed: GenerationSettings fields); `generate_fn(prompts) -> [{"answer",
"text", ...}]` is for other generators. Config keys (r1jax/train/run_config.py, section `task`):

| key | default | meaning |
|---|---|---|
| train.task_eval_every | 0 | steps between task evals; 0 = off |
| task.name | humaneval | humaneval, exact_match, contains or boxed |
| task.data | "" | JSONL with prompts and references; "" = the bundled HumanEval (humaneval only) |
| task.limit | 16 | held-out items: an even spread of this many; 0 = all |
| task.n_samples | 1 | samples per item |
| task.k | "1" | pass@k for these k (comma-separated, each <= n_samples) |
| task.temperature, task.top_p | 0.6, 0.95 | sampling (R1's recommended settings) |
| task.max_new_tokens | 512 | generation length per sample |
| task.timeout_s | 10.0 | seconds per HumanEval program in the sandbox |
| task.workers | 0 | sandbox processes at once; 0 = CPU count |

The same items are used at every eval (chosen once), so the metric is comparable across steps.
For humaneval, TaskEval(c) and every eval first run a trivial passing program in the sandbox and
raise runner.SandboxUnusable (a TaskError: training stops with its message) when it does not pass.
"""
from __future__ import annotations

from r1jax.eval.tasks import runner, sandbox


def settings(task_cfg) -> runner.TaskSettings:
    """TaskSettings from the config's `task` section."""
    ks = tuple(int(k) for k in str(task_cfg.k).split(",") if k.strip())
    return runner.TaskSettings(n_samples=task_cfg.n_samples, ks=ks, limit=task_cfg.limit,
                               workers=task_cfg.workers,
                               limits=sandbox.Limits(timeout_s=task_cfg.timeout_s))


class TaskEval:
    """The held-out items and scoring of one run's task metric."""

    def __init__(self, c):
        t = c.task
        self.task = t.name
        self.settings = settings(t)
        self.items = runner.load_items(t.name, t.data, t.limit)
        runner.check_sandbox(self.task, self.settings.limits)   # fail at start-up, not at the first eval
        self.last_records: list[dict] = []  # per-sample records of the latest call
        self.sampling = {"temperature": t.temperature, "top_p": t.top_p,
                         "max_new_tokens": t.max_new_tokens, "seed": c.seed}

    def run_model(self, model, tokenizer, mesh=None) -> dict[str, float]:
        """The metrics of `model` (e.g. the trainer's current one), generating with r1jax.generate."""
        from r1jax.inference import generate
        settings = generate.GenerationSettings(**self.sampling)
        return self(lambda prompts: generate.generate_texts(model, tokenizer, prompts, settings, mesh=mesh))

    def __call__(self, generate_fn: runner.GenerateFn) -> dict[str, float]:
        self.last_records, summary = runner.evaluate(self.task, self.items, generate_fn, self.settings)
        metrics = {f"task/{self.task}_{k}": float(v) for k, v in summary.items()
                   if k.startswith("pass@") or k == "accuracy"}
        metrics[f"task/{self.task}_seconds"] = summary["generate_s"] + summary["score_s"]
        return metrics
