"""Scaling curves of the full train step: tokens/s and peak memory against sequence length and against
the number of routed experts at fixed active parameters (cost per token should stay flat).

    python tools/bench_scaling.py --out tools/results/scaling_h200.json            # GPU: v3-small
    python tools/bench_scaling.py --small --seqs 64,128 --experts 16,32 --steps 1  # CPU smoke run

Each point is one `tools/bench.py` run in its own process (peak device memory is per process). The
sequence sweep keeps tokens per step fixed (batch = tokens // seq); the expert sweep keeps top-k,
expert width and sequence length fixed, so active parameters per token do not change.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def run_point(extra: list[str], common: list[str]) -> dict:
    """One bench.py run; its r1jax result row, or {"error": ...} when it failed (e.g. out of memory)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bench.json")
        r = subprocess.run([sys.executable, os.path.join(HERE, "bench.py"), *common, *extra, "--out", out],
                           capture_output=True, text=True)
        if not os.path.exists(out):
            return {"args": extra, "error": (r.stderr or r.stdout)[-800:]}
        row = json.load(open(out))["results"][0]
        return {"args": extra, **row}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="v3-small")
    p.add_argument("--small", action="store_true", help="bench.py --small shapes (CPU)")
    p.add_argument("--tokens", type=int, default=8192, help="tokens per step in the sequence sweep")
    p.add_argument("--seqs", default="1024,4096,16384")
    p.add_argument("--expert_seq", type=int, default=4096, help="sequence length of the expert sweep")
    p.add_argument("--experts", default="16,32,64,128,256")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--loss_chunk", type=int, default=4096)
    p.add_argument("--out", help="write all points (JSON) here")
    a = p.parse_args(argv)
    common = ["--preset", a.preset, "--steps", str(a.steps), "--warmup", "1", "--loss_chunk", str(a.loss_chunk)]
    if a.small:  # bench.py's shrunken v3-small, float32 (bf16 is slow on CPUs)
        common = ["--preset", "v3-small", "--small", "--steps", str(a.steps), "--warmup", "1",
                  "--dtype", "float32"]
    points = {"seq": [], "experts": []}
    for seq in [int(s) for s in a.seqs.split(",")]:
        extra = ["--seq", str(seq), "--batch", str(max(1, a.tokens // seq))]
        points["seq"].append(run_point(extra, common))
        _report("seq", seq, points["seq"][-1])
    for e in [int(s) for s in a.experts.split(",")]:
        extra = ["--seq", str(a.expert_seq), "--batch", str(max(1, a.tokens // a.expert_seq)),
                 "--experts", str(e)]
        points["experts"].append(run_point(extra, common))
        _report("experts", e, points["experts"][-1])
    flat = [r["tokens_per_s"] for r in points["experts"] if "tokens_per_s" in r]
    if len(flat) > 1:
        print(f"expert sweep: slowest / fastest tokens/s = {min(flat) / max(flat):.2f} (flat = 1.00)")
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump({"command": "python " + " ".join(sys.argv), "points": points}, f, indent=1)
    return 0 if all("error" not in r for rows in points.values() for r in rows) else 1


def _report(kind: str, value: int, r: dict) -> None:
    if "error" in r:
        print(f"{kind}={value}: failed: {r['error'][-300:]}", flush=True)
        return
    mem = r.get("peak_mem_gib")
    print(f"{kind}={value}: {r['tokens_per_s']:.0f} tokens/s, {r['model_tflops']:.2f} TFLOP/s, "
          f"peak {mem if mem is None else round(mem, 2)} GiB, step {r['step_ms']:.1f} ms", flush=True)


if __name__ == "__main__":
    sys.exit(main())
