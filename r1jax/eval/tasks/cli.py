"""`python -m r1jax.evaluate --task ...`: the task half of the evaluate command line.

    python -m r1jax.evaluate --task humaneval --checkpoint CKPT [--n_samples 10 --k 1,10]
        [--temperature 0.6 --top_p 0.95 --max_new_tokens 2048 --limit N --output FILE.jsonl --json]
    python -m r1jax.evaluate --task boxed|exact_match|contains --checkpoint CKPT --data FILE.jsonl ...

Writes one JSONL record per sample to --output (id, sample, answer, passed, and the task's details:
status/stderr/code for humaneval, reference/boxed for the others) and prints the summary (accuracy,
pass@k, timings); with --json the summary is the last line of stdout as one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from r1jax.eval.tasks import runner, sandbox


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("task metrics (with --task)")
    g.add_argument("--task", choices=runner.TASKS, help="score generated answers instead of the loss")
    g.add_argument("--n_samples", type=int, default=1, help="samples per problem")
    g.add_argument("--k", default="1", help="pass@k for these k, comma-separated (each <= n_samples)")
    g.add_argument("--temperature", type=float, default=0.6)
    g.add_argument("--top_p", type=float, default=0.95)
    g.add_argument("--max_new_tokens", type=int, default=2048)
    g.add_argument("--limit", type=int, default=0, help="an even spread of this many items; 0 = all")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--timeout", type=float, default=10.0, help="seconds per program (humaneval)")
    g.add_argument("--workers", type=int, default=0, help="programs run at once; 0 = CPU count")
    g.add_argument("--output", help="per-sample records, JSONL")


def settings_from_args(a) -> runner.TaskSettings:
    try:
        ks = tuple(int(k) for k in a.k.split(",") if k.strip())
    except ValueError:
        raise runner.TaskError(f"--k {a.k!r}: expected integers like 1,10") from None
    return runner.TaskSettings(n_samples=a.n_samples, ks=ks, limit=a.limit, workers=a.workers,
                               limits=sandbox.Limits(timeout_s=a.timeout))


def model_generate_fn(checkpoint_dir: str, dtype: str, temperature: float, top_p: float,
                      max_new_tokens: int, seed: int, batch_size: int,
                      log=lambda s: None) -> runner.GenerateFn:
    """generate_fn backed by r1jax.generate on a checkpoint or training run (loaded once), with the
    checkpoint's own tokenizer when it has one, else the packaged R1 one."""
    from r1jax.inference import generate
    from r1jax.data import tokenizer as tokenizer_lib
    model, meta_dir = generate.load(checkpoint_dir, dtype)
    tokenizer = tokenizer_lib.load_checkpoint_tokenizer(meta_dir, log)
    tokenizer_lib.check_fits(tokenizer, model.cfg.vocab_size, checkpoint_dir)
    settings = generate.GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature,
                                           top_p=top_p, seed=seed, batch_size=batch_size,
                                           eos_token_ids=generate.eos_ids_of(tokenizer, meta_dir))
    return lambda prompts: generate.generate_texts(model, tokenizer, prompts, settings)


def run(a, generate_fn: runner.GenerateFn | None = None, log=lambda s: None) -> int:
    """Runs the task the parsed arguments ask for; generate_fn defaults to the checkpoint's model."""
    settings = settings_from_args(a)
    items = runner.load_items(a.task, a.data or "", a.limit)
    log(f"evaluate: task {a.task}, {len(items)} items x {settings.n_samples} samples")
    if generate_fn is None:
        generate_fn = model_generate_fn(a.checkpoint, a.dtype, a.temperature, a.top_p,
                                        a.max_new_tokens, a.seed, a.batch_size, log)
    records, summary = runner.evaluate(a.task, items, generate_fn, settings)
    summary.update(checkpoint=a.checkpoint, data=a.data or "", n_samples=settings.n_samples,
                   temperature=a.temperature, top_p=a.top_p, max_new_tokens=a.max_new_tokens)
    if a.output:
        os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
        with open(a.output, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
    metrics = "  ".join(f"{k} {v:.4f}" for k, v in summary.items() if k.startswith("pass@"))
    print(f"task {a.task}  items {summary['items']}  samples {summary['samples']}  "
          f"accuracy {summary['accuracy']:.4f}  {metrics}")
    if a.json:
        print(json.dumps(summary))
    sys.stdout.flush()
    return 0
