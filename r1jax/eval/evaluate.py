"""Score a checkpoint: mean next-token loss, perplexity and token accuracy over a JSONL file, or, with
--task, a task metric on generated answers (HumanEval pass@k, exact match, contains, boxed math).

    python -m r1jax.evaluate --checkpoint CKPT --data FILE.jsonl [--dtype float32] [--batch_size 8] [--json]
    python -m r1jax.evaluate --task humaneval --checkpoint CKPT [--n_samples N --k 1,10 ...]   (tasks/cli.py)

Rows are `{"input_ids": [...]}` or `{"text": ...}` (R1 tokenizer, BOS prepended). The loss is the mean
NLL in nats over every predicted token: tokens 1..n-1 of each row from their prefix, padding excluded.
Rows of different lengths are right-padded into batches; padding never changes a row's result.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r1jax.models import checkpoint, sources
from r1jax.data import DataError, read_scoring_rows
from r1jax.data.tokenizer import check_fits, checkpoint_tokenizer_dir, load_checkpoint_tokenizer
from r1jax.models.losses import next_token_loss_sums
from r1jax.models.common.config import ConfigError
from r1jax.eval.tasks import cli as task_cli
from r1jax.eval.tasks.humaneval import HumanEvalError
from r1jax.eval.tasks.runner import TaskError


def bucket_length(n: int, multiple: int = 64) -> int:
    """Padded length for a batch whose longest row has n tokens (few distinct shapes to compile)."""
    return max(multiple, -(-n // multiple) * multiple)


def make_batches(rows: list[list[int]], batch_size: int):
    """Yields (tokens [batch_size, T] int32, segment_ids [batch_size, T] int32, n_rows); unused rows
    and positions have segment id 0 (padding)."""
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        t = bucket_length(max(len(r) for r in chunk))
        tokens = np.zeros((batch_size, t), np.int32)
        segments = np.zeros((batch_size, t), np.int32)
        for i, r in enumerate(chunk):
            tokens[i, :len(r)] = r
            segments[i, :len(r)] = 1
        yield tokens, segments, len(chunk)


def check_rows(rows, cfg, data_path):
    for i, r in enumerate(rows):
        if max(r) >= cfg.vocab_size:
            raise DataError(f"{data_path}: row {i + 1}: token id {max(r)} >= vocab_size {cfg.vocab_size}")
        if len(r) > cfg.max_position_embeddings:
            raise DataError(f"{data_path}: row {i + 1}: {len(r)} tokens > max_position_embeddings "
                            f"{cfg.max_position_embeddings}")


def score(model, rows, batch_size: int, log=lambda s: None) -> dict:
    """Sums loss, tokens and argmax hits over `rows` (lists of token ids) with `model`."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def sums(state, tokens, segments):
        logits, _ = nnx.merge(graphdef, state)(tokens, segment_ids=segments)
        return next_token_loss_sums(logits, tokens, segments)

    total = count = correct = 0.0
    t0 = time.time()
    n_batches = -(-len(rows) // batch_size)
    for i, (tokens, segments, _) in enumerate(make_batches(rows, batch_size)):
        s, c, a = sums(state, jnp.asarray(tokens), jnp.asarray(segments))
        total, count, correct = total + float(s), count + float(c), correct + float(a)
        log(f"evaluate: batch {i + 1}/{n_batches}, {int(count)} tokens, "
            f"{count / max(time.time() - t0, 1e-9):.0f} tok/s")
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": int(count),
            "accuracy": correct / count, "sequences": len(rows)}


def main(argv=None, generate_fn=None) -> int:
    """generate_fn (task mode only): prompts -> [{"answer", "text", ...}] in place of the checkpoint's
    model, for callers that bring their own generation."""
    p = argparse.ArgumentParser(prog="python -m r1jax.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True,
                   help="r1jax model checkpoint (python -m r1jax.convert), or a training run (RUN, "
                        "RUN/checkpoints/STEP, RUN/best/STEP; a run's adapters are applied to its base)")
    p.add_argument("--data", help="rows with input_ids or text, in any container prepare reads (with "
                                  "--task: the task's JSONL rows)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="compute dtype")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object, last line")
    task_cli.add_arguments(p)
    a = p.parse_args(argv)
    if a.batch_size < 1:
        p.error("--batch_size must be >= 1")
    log = lambda s: print(s, file=sys.stderr, flush=True)
    if a.task:
        try:
            return task_cli.run(a, generate_fn, log)
        except (TaskError, HumanEvalError, DataError, ConfigError, checkpoint.CheckpointError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if not a.data:
        p.error("--data is required (or --task)")
    try:
        meta = sources.meta_dir(a.checkpoint)
        cfg = checkpoint.read_config(meta, dtype=a.dtype)
        # The checkpoint's own tokenizer when it has one; else the packaged R1 one, loaded on demand.
        tokenizer = None
        if checkpoint_tokenizer_dir(meta):
            tokenizer = load_checkpoint_tokenizer(meta, log)
            check_fits(tokenizer, cfg.vocab_size, a.checkpoint)
        rows = read_scoring_rows(a.data, tokenizer=tokenizer)
        check_rows(rows, cfg, a.data)
        model, _ = sources.load(a.checkpoint, a.dtype)
        result = score(model, rows, a.batch_size, log)
    except (DataError, ConfigError, checkpoint.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result.update(checkpoint=a.checkpoint, data=a.data, dtype=a.dtype)
    print(f"loss {result['loss']:.6f}  perplexity {result['perplexity']:.4f}  "
          f"accuracy {result['accuracy']:.4f}  tokens {result['tokens']}  sequences {result['sequences']}")
    if a.json:
        print(json.dumps(result))
    return 0
