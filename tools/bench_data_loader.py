"""Loader throughput on a synthetic pre-tokenized split (tokens/s on this host).

    python tools/bench_data_loader.py [--examples 200000] [--seq_len 4096] [--batch 8] [--json]

Builds a TokenStore of random examples (lengths uniform in [50, 2000]) in a temporary directory,
then times `r1jax.data.loader` after a warm-up: batches/s, tokens/s counting every slot of a batch
(B * T per batch) and counting only document tokens (the non-padding share). Also times the packing
of one epoch, which runs at each epoch start. Target (issue 4): > 1M tokens/s per host.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from r1jax.data import token_store
from r1jax.data.loader import make_loader


def build_store(prefix: str, n: int, lo: int, hi: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(lo, hi + 1, n)
    ids = rng.integers(0, 129280, int(lengths.sum()), dtype=np.int32)
    mask = (rng.random(len(ids)) < 0.6).astype(np.uint8)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    examples = ({"input_ids": ids[a:b], "loss_mask": mask[a:b]} for a, b in zip(starts, ends))
    token_store.write(prefix, examples)
    return int(lengths.sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=200_000)
    p.add_argument("--min_len", type=int, default=50)
    p.add_argument("--max_len", type=int, default=2000)
    p.add_argument("--seq_len", type=int, default=4096)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--no_packing", action="store_true")
    p.add_argument("--prefetch", type=int, default=4)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "train")
        t0 = time.perf_counter()
        n_tokens = build_store(prefix, a.examples, a.min_len, a.max_len)
        build_s = time.perf_counter() - t0

        loader = make_loader(prefix, seq_len=a.seq_len, batch_size=a.batch, seed=0,
                             packing=not a.no_packing, prefetch=a.prefetch)
        t0 = time.perf_counter()
        steps = loader.steps_per_epoch                     # packs epoch 0
        plan_s = time.perf_counter() - t0
        for _ in range(a.warmup):
            next(loader)
        batches = slots = real = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < a.seconds:
            b = next(loader)
            batches += 1
            slots += b["tokens"].size
            real += int((b["segment_ids"] > 0).sum())
        dt = time.perf_counter() - t0
        loader.close()

    result = {
        "examples": a.examples, "dataset_tokens": n_tokens, "seq_len": a.seq_len,
        "batch": a.batch, "packing": not a.no_packing, "steps_per_epoch": steps,
        "build_store_s": round(build_s, 2), "pack_epoch_s": round(plan_s, 3),
        "batches_per_s": round(batches / dt, 1),
        "tokens_per_s": round(slots / dt), "document_tokens_per_s": round(real / dt),
        "fill": round(real / max(slots, 1), 4),
    }
    if a.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>22}: {v:,}" if type(v) in (int, float) else f"{k:>22}: {v}")


if __name__ == "__main__":
    main()
