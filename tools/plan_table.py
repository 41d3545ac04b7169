"""Which R1 fine-tuning modes fit on which TPU slices: r1jax.plan over slices x variants, one table.

    python tools/plan_table.py [--config configs/r1_671b.py] [--slices v5p-128,v5p-256,...]
        [--variants full,bf16_state,frozen_experts] [--jobs 1] [--out FILE.md]

Each cell is one `python -m r1jax.plan --json` in its own process (a compile holds GBs of host
memory; separate processes release it), with the config's train.grad_accum: configs/r1_671b.py's 0
(auto, run_config.resolved_grad_accum) gives every chip one whole sequence per micro-batch
(grad_accum = batch_size / chips on these meshes): activations per chip are then the same on every
slice, and what differs is the model state the slice has to hold. Prints a Markdown table (the one
in BUILD.md) and the command that made it.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLICES = ("v5p-128", "v5p-256", "v5p-512", "v5p-1024", "v6e-256")
VARIANTS = ("full", "bf16_state", "frozen_experts")


def chips_of(name: str) -> int:
    gen, n = name.split("-")
    return int(n) // (2 if gen == "v5p" else 1)


def one(config: str, slice_name: str, variant: str) -> dict:
    preset = "r1-671b-v6e" if slice_name.startswith("v6e") else "r1-671b-v5p"
    cmd = [sys.executable, "-m", "r1jax.plan", f"--config={config}", f"--topology={slice_name}",
           f"--variant={variant}", "--json", f"--config.mesh.preset={preset}"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode:
        return {"topology": slice_name, "variant": variant, "error": (p.stderr.strip().splitlines()
                                                                     or ["?"])[-1][:200]}
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["wall_s"] = round(time.perf_counter() - t0, 1)
    return r


def cell(r: dict) -> str:
    if "error" in r:
        return f"error: {r['error']}"
    verdict = "**fits**" if r["fits"] else "no"
    if not r["compiled"]:  # the compiler's temporaries plus the inputs: a lower bound
        return f"no: >= {r['per_device_memory_gib']:.1f} / {r['hbm_gib']:.1f} GiB (compiler: out of HBM)"
    return f"{verdict}: {r['per_device_memory_gib']:.1f} / {r['hbm_gib']:.1f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/r1_671b.py")
    ap.add_argument("--slices", default=",".join(SLICES))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--jobs", type=int, default=1, help="plans compiled at once")
    ap.add_argument("--out", default="", help="also write the table here")
    ap.add_argument("--log", default="", help="append each plan's JSON here as it finishes")
    a = ap.parse_args()
    slices, variants = a.slices.split(","), a.variants.split(",")
    jobs = [(s, v) for s in slices for v in variants]
    def run(sv):
        r = one(a.config, *sv)
        print(f"{sv[0]} {sv[1]}: {json.dumps(r)}", file=sys.stderr, flush=True)
        if a.log:
            with open(a.log, "a") as f:
                f.write(json.dumps(r) + "\n")
        return r
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as ex:
        results = dict(zip(jobs, ex.map(run, jobs)))
    lines = ["| slice | chips | mesh (data, fsdp, expert, tensor) | grad_accum | "
             + " | ".join(variants) + " |",
             "|---|---|---|---|" + "---|" * len(variants)]
    for s in slices:
        first = next((results[(s, v)] for v in variants if "mesh" in results[(s, v)]), {})
        mesh = tuple(first.get("mesh", {}).values()) or "?"
        lines.append(f"| {s} | {chips_of(s)} | {mesh} | {first.get('grad_accum', '?')} | "
                     + " | ".join(cell(results[(s, v)]) for v in variants) + " |")
    times = [r.get("compile_s") for r in results.values() if r.get("compile_s")]
    lines.append("")
    lines.append("Made by: `" + " ".join(["python tools/plan_table.py", *sys.argv[1:]]) + "`")
    if times:
        lines.append(f"Compile time per plan: {min(times):.0f}-{max(times):.0f} s on this machine.")
    table = "\n".join(lines)
    print(table)
    if a.out:
        with open(a.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
