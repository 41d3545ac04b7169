"""Convert benchmark: peak host memory must not grow with depth, and throughput must keep up with a read.

    python tools/bench_convert.py [--layers 4 16] [--experts 8 [32 ...]] [--hidden 7168]
                                  [--moe_inter 2048] [--workers N] [--dir /tmp] [--json]

Builds synthetic checkpoints in the release layout (FP8 e4m3 weights with float32 128x128 scales,
per-expert tensors, bf16 embeddings and norms, several shards with an index) of one width and several
depths. The default width is R1's own (hidden 7168, experts of 2048, so every matrix has a released
shape) with 8 routed experts per layer instead of 256: ~580 MB of input per layer. Per depth it reads
every tensor with the `safetensors` library (plain read), writes as many bytes as the conversion will
output to plain files (plain write: fsynced and dropped from the page cache, as convert does), and
converts with `python -m r1jax.convert` in a subprocess. The page cache of the inputs is dropped
before the read and the conversion, as a 690 GB release is never cached. Prints input and output
GB, peak RSS of the converting process (its VmHWM, imports included), conversion GB/s (input bytes
over convert's own wall time, which excludes the interpreter's imports), plain-read GB/s, plain-write
GB/s, and the ratios against the targets (RSS deepest / shallowest <= 1.3; conversion / read >= 0.5).
A bf16 conversion writes two bytes per FP8 byte it reads, so it cannot run faster than half the
plain write rate: that bound is printed too. With several `--experts`, every (layers, experts) point
is run, and the peak RSS growth per input tensor (the points with fewest and most tensors; the index's
tensor count) shows what the converter keeps per tensor: a release has ~95,000 (at a small `--hidden`
the tensors are many and tiny, which is what shows it). Disk: the inputs plus one output at a time; everything
is removed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from r1jax.models import registry
from r1jax.models import checkpoint
from r1jax.interop import fp8, safetensors_io
from r1jax.models.deepseek_v3.config import ModelConfig, to_hf_dict

SHARD_BYTES = 200 << 20


def bench_config(layers: int, hidden: int, experts: int, moe_inter: int) -> ModelConfig:
    """An R1-shaped config of the given width and depth (first layer dense, as R1's first three)."""
    groups = min(8, experts // 2)
    return ModelConfig(vocab_size=16384, hidden_size=hidden, intermediate_size=4 * hidden,
                       moe_intermediate_size=moe_inter, num_hidden_layers=layers, first_k_dense_replace=1,
                       num_attention_heads=hidden // 128, q_lora_rank=hidden // 2, kv_lora_rank=hidden // 4,
                       qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=experts,
                       n_shared_experts=1, num_experts_per_tok=min(8, experts // 2), n_group=groups,
                       topk_group=max(1, groups // 2),
                       max_position_embeddings=4096, rope_factor=1.0, rope_mscale=0.0,
                       rope_mscale_all_dim=0.0)


def _random(t: safetensors_io.OutTensor, rng: np.random.Generator) -> np.ndarray:
    if t.dtype == fp8.E4M3:
        codes = rng.integers(0, 256, t.shape, dtype=np.uint8)
        codes = np.minimum(codes & 0x7F, 0x7E) | (codes & 0x80)  # no NaN codes
        return codes.view(fp8.E4M3)
    if t.name.endswith("_scale_inv"):
        return (rng.random(t.shape, dtype=np.float32) * 1e-3 + 1e-5).astype(np.float32)
    return (rng.standard_normal(t.shape, dtype=np.float32) * 0.02).astype(t.dtype)


def write_synthetic(cfg: ModelConfig, out_dir: str, seed: int = 0) -> int:
    """Writes a release-layout checkpoint of `cfg` with random values; returns its tensor bytes."""
    os.makedirs(out_dir)
    tensors = []
    for t in registry.hf_tensors(cfg, with_mtp=False):
        if t.fp8_in_release:
            tensors.append(safetensors_io.OutTensor(t.name, fp8.E4M3, t.shape))
            tensors.append(safetensors_io.OutTensor(t.name + "_scale_inv", np.dtype(np.float32),
                                                    fp8.scale_shape(t.shape)))
        else:
            bias = t.name.endswith("e_score_correction_bias")  # float32 in the release
            dtype = np.dtype(np.float32) if bias else safetensors_io.DTYPES["BF16"]
            tensors.append(safetensors_io.OutTensor(t.name, dtype, t.shape))
    groups = safetensors_io.plan_shards(tensors, SHARD_BYTES)
    names = safetensors_io.shard_names(len(groups))
    rng = np.random.default_rng(seed)
    for fname, group in zip(names, groups):
        w = safetensors_io.ShardWriter(os.path.join(out_dir, fname), group, create=True)
        for t in group:
            w.write(t.name, _random(t, rng))
        w.close()
    safetensors_io.write_index(out_dir, {t.name: f for f, g in zip(names, groups) for t in g},
                               sum(t.nbytes for t in tensors))
    hf = to_hf_dict(cfg)
    hf["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                 "weight_block_size": [128, 128]}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
    return sum(t.nbytes for t in tensors)


def drop_cache(directory: str) -> None:
    """Evicts the files of `directory` from the page cache (written back first, so it can)."""
    for root, _, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def plain_read(directory: str) -> tuple[float, str]:
    """(seconds to read every tensor of `directory`, how): with safetensors' torch loader when torch
    is installed (numpy has no float8 dtype), else every tensor's byte range with readinto."""
    tensors = safetensors_io.index_checkpoint(directory)
    try:
        from safetensors import safe_open
        import torch  # noqa: F401 - safetensors needs it for framework="pt"
    except ImportError:
        t0 = time.time()
        for info in tensors.values():
            buf = np.empty(info.nbytes, np.uint8)
            with open(info.file, "rb") as f:
                f.seek(info.offset)
                f.readinto(memoryview(buf))
        return time.time() - t0, "readinto of each tensor"
    t0 = time.time()
    for path in sorted({i.file for i in tensors.values()}):
        with safe_open(path, framework="pt") as f:
            for k in f.keys():
                f.get_tensor(k)
    return time.time() - t0, "safetensors safe_open(framework='pt').get_tensor"


def plain_write(directory: str, nbytes: int, file_bytes: int = 64 << 20) -> float:
    """Seconds to write `nbytes` to new files in `directory` as fast as plainly possible: one buffer
    written over and over, each file fsynced and dropped from the page cache as convert does. The
    floor under any conversion writing that much; the files are removed afterwards."""
    os.makedirs(directory)
    buf = memoryview(np.random.default_rng(0).integers(0, 256, file_bytes, dtype=np.uint8))
    t0 = time.time()
    for i in range(-(-nbytes // file_bytes)):
        n = min(file_bytes, nbytes - i * file_bytes)
        fd = os.open(os.path.join(directory, f"{i:05d}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            view = buf[:n]
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    seconds = time.time() - t0
    shutil.rmtree(directory)
    return seconds


def output_bytes(cfg: ModelConfig) -> int:
    """Bytes of the bf16 parameters convert writes for `cfg` (the router bias stays float32)."""
    return sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize
               for s in checkpoint.param_shapes(cfg.replace(param_dtype="bfloat16")).values())


def input_tensors(hf_dir: str) -> int:
    """Tensors in the checkpoint's index (weights and FP8 scales)."""
    with open(os.path.join(hf_dir, safetensors_io.INDEX_NAME)) as f:
        return len(json.load(f)["weight_map"])


def run_convert(hf_dir: str, out: str, workers: int) -> tuple[int, float, str]:
    """(peak RSS bytes, seconds, stderr) of `python -m r1jax.convert` on hf_dir, as convert reports
    them: its own wall time (imports excluded) and its VmHWM (the child's own peak; the parent's
    wait4 ru_maxrss would include this benchmark's memory, inherited at fork)."""
    r = subprocess.run([sys.executable, "-m", "r1jax.convert", "--hf_dir", hf_dir, "--out", out,
                        "--workers", str(workers)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"convert failed ({r.returncode}):\n{r.stderr}")
    m = re.search(r"in ([0-9.]+) s: .*peak RSS ([0-9.]+) GB", r.stderr)
    return int(float(m.group(2)) * 1e9), float(m.group(1)), r.stderr


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, nargs="+", default=[4, 16])
    p.add_argument("--hidden", type=int, default=7168)
    p.add_argument("--experts", type=int, nargs="+", default=[8], help="routed experts per layer")
    p.add_argument("--moe_inter", type=int, default=2048)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where the synthetic checkpoints go")
    p.add_argument("--json", action="store_true", help="last line of stdout: the results as JSON")
    a = p.parse_args(argv)
    root = tempfile.mkdtemp(prefix="r1jax-bench-convert-", dir=a.dir)
    rows = []
    try:
        for n, e in [(n, e) for e in a.experts for n in a.layers]:
            cfg = bench_config(n, a.hidden, e, a.moe_inter)
            src, out = os.path.join(root, f"hf-{n}-{e}"), os.path.join(root, f"ckpt-{n}-{e}")
            nbytes, out_bytes = write_synthetic(cfg, src), output_bytes(cfg)
            n_tensors = input_tensors(src)
            drop_cache(src)
            read_s, how = plain_read(src)
            write_s = plain_write(os.path.join(root, "plain-write"), out_bytes)
            drop_cache(src)
            rss, convert_s, log = run_convert(src, out, a.workers)
            shutil.rmtree(out)
            rows.append({"layers": n, "experts": e, "input_tensors": n_tensors, "input_gb": nbytes / 1e9, "output_gb": out_bytes / 1e9,
                         "per_layer_mb": nbytes / n / 1e6, "peak_rss_gb": rss / 1e9,
                         "convert_gb_s": nbytes / 1e9 / convert_s, "read_gb_s": nbytes / 1e9 / read_s,
                         "write_gb_s": out_bytes / 1e9 / write_s,
                         "write_bound_gb_s": nbytes / 1e9 / write_s,
                         "convert_s": convert_s, "read_s": read_s, "write_s": write_s})
            r = rows[-1]
            print(f"{n:3d} layers {e:4d} experts {n_tensors:6d} tensors  {r['input_gb']:.3f} GB in, {r['output_gb']:.3f} GB out "
                  f"({r['per_layer_mb']:.0f} MB/layer)  peak RSS {r['peak_rss_gb']:.3f} GB  "
                  f"convert {r['convert_gb_s']:.3f} GB/s ({convert_s:.1f} s)  plain read "
                  f"{r['read_gb_s']:.3f} GB/s ({read_s:.1f} s)  plain write {r['write_gb_s']:.3f} GB/s "
                  f"({write_s:.1f} s)", flush=True)
            print("     " + [line for line in log.splitlines() if line.startswith("convert: read")][-1])
            shutil.rmtree(src)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rss_ratio = rows[len(a.layers) - 1]["peak_rss_gb"] / rows[0]["peak_rss_gb"]  # first --experts
    few, many = min(rows, key=lambda r: r["input_tensors"]), max(rows, key=lambda r: r["input_tensors"])
    per_tensor = ((many["peak_rss_gb"] - few["peak_rss_gb"]) * 1e9 /
                  max(many["input_tensors"] - few["input_tensors"], 1))
    speed = min(r["convert_gb_s"] / r["read_gb_s"] for r in rows)
    bound = min(r["write_bound_gb_s"] / r["read_gb_s"] for r in rows)
    of_bound = min(r["convert_gb_s"] / r["write_bound_gb_s"] for r in rows)
    print(f"plain read: {how}; workers {a.workers}")
    print(f"peak RSS {a.layers[-1]} / {a.layers[0]} layers: {rss_ratio:.3f} (target <= 1.3)")
    print(f"peak RSS growth per input tensor: {per_tensor:.0f} bytes ({few['input_tensors']} -> "
          f"{many['input_tensors']} tensors; x 95,000 for R1: {per_tensor * 95000 / 1e9:.2f} GB)")
    print(f"convert / plain read throughput, worst depth: {speed:.3f} (target >= 0.5)")
    print(f"  the plain write of the output bounds that ratio at {bound:.3f} on this machine; "
          f"convert reaches {of_bound:.3f} of its own bound")
    if a.json:
        print(json.dumps({"rows": rows, "rss_ratio": rss_ratio, "rss_bytes_per_tensor": per_tensor,
                          "throughput_ratio": speed,
                          "write_bound_ratio": bound, "of_write_bound": of_bound,
                          "workers": a.workers, "read": how}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
