"""HF safetensors (release layout) -> r1jax model checkpoint (Orbax).

    python -m r1jax.convert --hf_dir DIR --out CKPT [--dtype bfloat16|float32] [--drop_mtp]

Reads per-expert and fused expert layouts, sharded (index json) or single-file checkpoints, BF16/FP32
and block-scaled FP8 weights. Everything is validated before anything is written; the output appears
only when complete (written to a temporary sibling directory, then renamed).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

import numpy as np

from r1jax import checkpoint, layout, safetensors_io
from r1jax.model.config import ConfigError, ModelConfig, load_hf_config

FP8_BLOCK = 128
SCALE_SUFFIX = "_scale_inv"  # "<name>.weight" has its block scales in "<name>.weight_scale_inv"


class ConversionError(ValueError):
    """Input that cannot be converted; the message lists the offending tensors or files."""


def _listing(names, limit=12) -> str:
    names = sorted(names)
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def dequantize_fp8(q: np.ndarray, scale_inv: np.ndarray) -> np.ndarray:
    """w[i, j] = float32(q[i, j]) * scale_inv[i // 128, j // 128]; q [M, N] fp8, scale_inv
    [ceil(M/128), ceil(N/128)] float32 -> float32 [M, N] (edge blocks partial)."""
    m, n = q.shape
    s = np.repeat(np.repeat(np.asarray(scale_inv, np.float32), FP8_BLOCK, 0), FP8_BLOCK, 1)[:m, :n]
    return np.asarray(q).astype(np.float32) * s


def plan(cfg: ModelConfig, tensors: dict[str, safetensors_io.TensorInfo], with_mtp: bool):
    """Checks names, shapes and scales against the layout; returns the HF tensors to read.

    Raises ConversionError listing every missing, unexpected or mis-shaped tensor at once.
    """
    names = set(tensors)
    expected = layout.hf_tensors(cfg, names, with_mtp=with_mtp)
    want = {t.name for t in expected}
    scales = {n for n in names if n.endswith(SCALE_SUFFIX)}
    mtp_prefix = f"model.layers.{cfg.num_hidden_layers}."
    ignored = {n for n in names if not with_mtp and n.startswith(mtp_prefix)}
    problems = []
    missing = want - names
    if missing:
        problems.append(f"missing tensor(s): {_listing(missing)}")
    unexpected = names - want - scales - ignored
    if unexpected:
        problems.append(f"unexpected tensor(s): {_listing(unexpected)}")
    bad_shape = [f"{t.name} {tensors[t.name].shape} (expected {t.shape})"
                 for t in expected if t.name in tensors and tensors[t.name].shape != t.shape]
    if bad_shape:
        problems.append(f"wrong shape: {_listing(bad_shape)}")
    for t in expected:
        info = tensors.get(t.name)
        if info is None or info.dtype.itemsize != 1:
            continue
        s = tensors.get(t.name + SCALE_SUFFIX)
        want_s = tuple(-(-d // FP8_BLOCK) for d in t.shape)
        if s is None:
            problems.append(f"FP8 tensor {t.name} has no {t.name + SCALE_SUFFIX}")
        elif s.shape != want_s:
            problems.append(f"{s.name} {s.shape} (expected {want_s})")
    orphan = {s for s in scales if s[:-len(SCALE_SUFFIX)] not in want and s not in ignored}
    if orphan:
        problems.append(f"scale(s) without a weight: {_listing(orphan)}")
    if problems:
        raise ConversionError("; ".join(problems))
    return expected


def read_tensor(tensors, name: str) -> np.ndarray:
    """float32 data of one HF tensor (FP8 dequantized with its block scales)."""
    info = tensors[name]
    data = safetensors_io.load(info)
    if info.dtype.itemsize == 1:
        return dequantize_fp8(data, safetensors_io.load(tensors[name + SCALE_SUFFIX]))
    return np.asarray(data, np.float32)


def fill_params(cfg: ModelConfig, expected, read) -> dict[str, np.ndarray]:
    """{dotted path: array} of every model variable, filled from HF tensors.

    expected: layout.hf_tensors(...); read(name, i) -> the i-th HF tensor's float32 data.
    """
    shapes = checkpoint.param_shapes(cfg)
    arrays = {p: np.zeros(s.shape, s.dtype) for p, s in shapes.items()}
    for i, t in enumerate(expected):
        data = read(t.name, i)
        for slot in t.slots:
            target = arrays[slot.path]
            piece = slot.fn(data)
            if target[slot.index].shape != piece.shape:  # a layout bug, not a user error
                raise AssertionError(f"{t.name} -> {slot.path}{list(slot.index)}: {piece.shape} "
                                     f"into {target[slot.index].shape}")
            target[slot.index] = piece
    return arrays


def convert(hf_dir: str, out: str, *, dtype: str = "bfloat16", drop_mtp: bool = False,
            log=print) -> ModelConfig:
    """Converts the HF checkpoint in `hf_dir` into an r1jax model checkpoint at `out`."""
    if os.path.exists(out):
        raise ConversionError(f"{out}: already exists; choose a new --out or remove it")
    tensors = safetensors_io.index_checkpoint(hf_dir)
    base = load_hf_config(hf_dir, param_dtype=dtype)
    with_mtp = (not drop_mtp) and layout.has_mtp_tensors(base, tensors)
    cfg = base.replace(with_mtp=with_mtp)
    expected = plan(cfg, tensors, with_mtp)

    t0, nbytes = time.time(), [0]

    def read(name, i):
        nbytes[0] += tensors[name].nbytes
        if (i + 1) % 200 == 0 or i + 1 == len(expected):
            rate = nbytes[0] / max(time.time() - t0, 1e-9) / 1e9
            log(f"convert: {i + 1}/{len(expected)} tensors, {nbytes[0] / 1e9:.2f} GB read, {rate:.2f} GB/s")
        return read_tensor(tensors, name)

    arrays = fill_params(cfg, expected, read)
    tmp = f"{os.path.abspath(out)}.tmp-{os.getpid()}"
    try:
        checkpoint.save_model(tmp, cfg, checkpoint.unflatten(arrays))
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"convert: wrote {out} ({len(expected)} tensors, MTP {'kept' if with_mtp else 'not included'})")
    return cfg


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m r1jax.convert", description=__doc__.split("\n")[0])
    p.add_argument("--hf_dir", required=True, help="directory with config.json and *.safetensors")
    p.add_argument("--out", required=True, help="new directory for the r1jax checkpoint")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                   help="parameter dtype of the output (the router bias stays float32)")
    p.add_argument("--drop_mtp", action="store_true", help="omit the MTP module (layer num_hidden_layers)")
    a = p.parse_args(argv)
    try:
        convert(a.hf_dir, a.out, dtype=a.dtype, drop_mtp=a.drop_mtp,
                log=lambda s: print(s, file=sys.stderr, flush=True))
    except (ConversionError, ConfigError, safetensors_io.CheckpointFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
