"""What a training run reports: metrics.jsonl, TensorBoard events, a console progress line, PNG plots.

Only process 0 writes. metrics.jsonl holds one JSON object per logged step (train and eval records
share the `step` key); a non-finite value (a diverged loss) is written as null (r1jax/train/run_json.py).
Plots are redrawn from it at every eval, so they survive restarts.
"""
from __future__ import annotations

import math
import os
import resource
import sys
import time

import jax
import numpy as np

from r1jax.train.run_json import dumps, read_jsonl, rewrite_jsonl

# Dense bf16 peak TFLOP/s by device kind (vendor datasheets), for MFU.
PEAK_TFLOPS = {"NVIDIA H200": 989.0, "NVIDIA H100 80GB HBM3": 989.0, "TPU v5p": 459.0,
               "TPU v6 lite": 918.0, "TPU v5 lite": 197.0}


def device_memory() -> dict[str, float]:
    """GiB in use and peak on device 0 (accelerators), else the process's peak host RSS."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_in_use" in stats:
        return {"memory/device_gib": stats["bytes_in_use"] / 2**30,
                "memory/device_peak_gib": stats.get("peak_bytes_in_use", 0) / 2**30}
    return {"memory/host_peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def peak_tflops() -> float | None:
    return PEAK_TFLOPS.get(jax.local_devices()[0].device_kind)


class Monitor:
    def __init__(self, output_dir: str, total_steps: int, enabled: bool = True):
        self.dir, self.total, self.enabled = output_dir, total_steps, enabled
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.t0, self.start_step = time.time(), None
        self.tb = None
        if enabled:
            os.makedirs(output_dir, exist_ok=True)
            try:
                from tensorboardX import SummaryWriter
                self.tb = SummaryWriter(os.path.join(output_dir, "tensorboard"))
            except ImportError:  # TensorBoard files are optional; metrics.jsonl is the record
                self.tb = None

    def truncate_after(self, step: int) -> None:
        """Drops records past `step`, which the run about to start writes again: the restored
        checkpoint's step, or -1 (every record) when it starts from scratch. A torn last line is
        dropped with a warning; the file is replaced atomically."""
        if not (self.enabled and os.path.exists(self.path)):
            return
        recs = read_jsonl(self.path, self.log)
        rewrite_jsonl(self.path, [r for r in recs if r.get("step", 0) <= step])

    def records(self) -> list[dict]:
        """Every record of metrics.jsonl (a torn last line dropped with a warning)."""
        return read_jsonl(self.path, self.log) if os.path.exists(self.path) else []

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step" and math.isfinite(v):
                    self.tb.add_scalar(k, v, record["step"])
            self.tb.flush()

    def progress(self, step: int, text: str) -> None:
        """One console line: step/total, elapsed, ETA, and `text`."""
        if not self.enabled:
            return
        if self.start_step is None:
            self.start_step, self.t0 = step - 1, time.time()
        done = step - self.start_step
        el = time.time() - self.t0
        eta = el / max(done, 1) * (self.total - step)
        bar = int(30 * step / max(self.total, 1))
        print(f"[{'#' * bar}{'.' * (30 - bar)}] {step}/{self.total} {_hms(el)} eta {_hms(eta)} {text}",
              file=sys.stderr, flush=True)

    def log(self, text: str) -> None:
        if self.enabled:
            print(text, file=sys.stderr, flush=True)

    def plot(self) -> None:
        """loss.png (train/val loss), reward.png (GRPO: rollout and val reward) and expert_load.png
        (per-layer load of the last record)."""
        if not (self.enabled and os.path.exists(self.path)):
            return
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        recs = self.records()
        train = [(r["step"], r["train/loss"]) for r in recs if r.get("train/loss") is not None]
        val = [(r["step"], r["val/loss"]) for r in recs if r.get("val/loss") is not None]
        self._lines(plt, "loss.png", "loss (nats)", [(train, "-", "train/loss"), (val, "o-", "val/loss")])
        rewards = [(r["step"], r["reward/mean"]) for r in recs if r.get("reward/mean") is not None]
        val_rewards = [(r["step"], r["val/reward"]) for r in recs if r.get("val/reward") is not None]
        self._lines(plt, "reward.png", "reward",
                    [(rewards, "-", "reward/mean (rollouts)"), (val_rewards, "o-", "val/reward")])
        loads = [r["moe/expert_load"] for r in recs if r.get("moe/expert_load") is not None]
        if loads:
            load = np.asarray(loads[-1], dtype=float)  # [L_moe, E] fractions (null: nan)
            fig, ax = plt.subplots(figsize=(7, 1 + 0.4 * load.shape[0]))
            im = ax.imshow(load * load.shape[1], aspect="auto", cmap="viridis")
            ax.set_xlabel("expert")
            ax.set_ylabel("MoE layer")
            ax.set_title("expert load / uniform share")
            fig.colorbar(im, ax=ax)
            fig.tight_layout()
            fig.savefig(os.path.join(self.dir, "expert_load.png"), dpi=100)
            plt.close(fig)

    def _lines(self, plt, name: str, ylabel: str, series) -> None:
        """OUTPUT_DIR/NAME: each non-empty (points [(step, value)], style, label) of `series` against
        the step; nothing when all are empty."""
        if not any(points for points, _, _ in series):
            return
        fig, ax = plt.subplots(figsize=(7, 4))
        for points, style, label in series:
            if points:
                ax.plot(*zip(*points), style, label=label)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(self.dir, name), dpi=100)
        plt.close(fig)


def _hms(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
