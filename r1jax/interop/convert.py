"""HF safetensors (release layout) -> r1jax model checkpoint (Orbax), streamed in bounded memory.

    python -m r1jax.convert --hf_dir DIR --out CKPT [--dtype bfloat16|float32|float8_e4m3fn]
                            [--drop_mtp] [--workers N] [--resume]

Reads per-expert and fused expert layouts, sharded (index json) or single-file checkpoints,
BF16/FP16/FP32 and block-scaled FP8 weights (r1jax/interop/fp8.py). Everything is validated before anything
is written. Then each HF tensor (the largest in blocks of rows) is read memory-mapped, dequantized,
transformed by its layout slot and written as a slice of its stacked array through tensorstore, so
host memory holds a few tensors per worker, never the model. The output appears only when complete
(built in CKPT.partial, then renamed); an interrupted run continues with --resume.

--dtype float8_e4m3fn keeps the decoder layers' projections as block-scaled FP8 (the model's
RuntimeConfig.fp8_weights: codes at their path, scales at PATH_scale): FP8 source tensors are copied
as codes and scales, never dequantized; float sources are quantized on the host (r1jax/interop/fp8.py). The
rest (embeddings, norms, router, head, the MTP block) is bf16, the router bias float32.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time

import numpy as np

from r1jax.models import checkpoint
from r1jax.interop import fp8, resumable, safetensors_io, streaming
from r1jax.models import hf_layout
from r1jax.models import registry
from r1jax.models.common.config import ConfigError, RuntimeConfig
from r1jax.models.registry import load_hf_config

SCALE_SUFFIX = "_scale_inv"  # "<name>.weight" has its block scales in "<name>.weight_scale_inv"
READ_AHEAD_BYTES = 256 << 20  # the kernel reads this far ahead of the tensors being converted
OCDBT_DATA = "params/d"  # tensorstore renames each finished file into place here; none changes after
FP8_DTYPE = "float8_e4m3fn"  # --dtype that keeps projections as FP8 codes and scales (fp8_weights)
DTYPES = ("bfloat16", "float32", FP8_DTYPE)
_FLOATS = {np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64),
           safetensors_io.DTYPES["BF16"]}


class ConversionError(ValueError):
    """Input that cannot be converted; the message lists the offending tensors or files."""


def _listing(names, limit=12) -> str:
    names = sorted(names)
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def plan(cfg: RuntimeConfig, tensors: dict[str, safetensors_io.TensorInfo], with_mtp: bool):
    """Checks names, shapes, dtypes and scales against the layout; returns the HF tensors to read.

    Raises ConversionError listing every missing, unexpected, mis-shaped or mis-typed tensor at once.
    """
    names = set(tensors)
    expected = registry.hf_tensors(cfg, names, with_mtp=with_mtp)
    want = {t.name for t in expected}
    scales = {n for n in names if n.endswith(SCALE_SUFFIX)}
    ignored = set() if with_mtp else registry.mtp_tensors(cfg, names)  # the MTP module's, dropped
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
    bad_dtype = [f"{t.name} {tensors[t.name].dtype}" for t in expected if t.name in tensors
                 and tensors[t.name].dtype not in _FLOATS | {fp8.E4M3}]
    for t in expected:
        info = tensors.get(t.name)
        if info is None or info.dtype != fp8.E4M3:
            continue
        s = tensors.get(t.name + SCALE_SUFFIX)
        want_s = fp8.scale_shape(t.shape)
        if s is None:
            problems.append(f"FP8 tensor {t.name} has no {t.name + SCALE_SUFFIX}")
        elif s.shape != want_s:
            problems.append(f"{s.name} {s.shape} (expected {want_s})")
        elif s.dtype not in _FLOATS:
            bad_dtype.append(f"{s.name} {s.dtype}")
    if bad_dtype:
        problems.append(f"wrong dtype (expected a float or float8_e4m3fn): {_listing(bad_dtype)}")
    orphan = {s for s in scales if s[:-len(SCALE_SUFFIX)] not in want and s not in ignored}
    if orphan:
        problems.append(f"scale(s) without a weight: {_listing(orphan)}")
    if problems:
        raise ConversionError("; ".join(problems))
    return expected


def fill_params(cfg: RuntimeConfig, expected, read) -> dict[str, np.ndarray]:
    """{dotted path: array} of every model variable, filled from HF tensors, all in memory (for small
    models and tests; `convert` streams instead).

    expected: registry.hf_tensors(...); read(name, i) -> the i-th HF tensor's float32 data.
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


# Streaming ----------------------------------------------------------------------------------------

def chunk_shapes(tasks: list[streaming.Task], shapes: dict) -> dict[str, tuple[int, ...]]:
    """{path: zarr chunk shape}: each chunk is exactly what one task writes through one slot (or,
    for a path held as FP8 codes, through its scale slot), so no chunk is ever read back, merged or
    shared between threads."""
    chunks: dict[str, tuple[int, ...]] = {}
    for task in tasks:
        for slot in task.tensor.slots:
            writes = [(slot.path, task.rows)]
            if slot.path + hf_layout.SCALE_PATH_SUFFIX in shapes:
                writes.append((slot.path + hf_layout.SCALE_PATH_SUFFIX, task.scale_rows))
            for path, rows in writes:
                if path in chunks:
                    continue
                shape = shapes[path][0]
                chunk = [1] * len(slot.index) + list(shape[len(slot.index):])
                if rows is not None:
                    block = slot.block(*rows, len(task.tensor.shape))
                    chunk[len(slot.index) + len(block) - 1] = rows[1] - rows[0]
                chunks[path] = tuple(chunk)
    return chunks


def _convert_task(task: streaming.Task, tensors, store: checkpoint.ParamStore, shapes, scales,
                  pool: streaming.BufferPool):
    """Reads, dequantizes and starts writing one task; returns (tensorstore write futures, bytes
    they hold, bytes read). Results go into `pool`'s buffers, which tensorstore references (no copy)
    until the writes commit. A tensor landing on projections held as FP8 (`shapes` has their
    PATH_scale) goes to `_fp8_task` instead."""
    t = task.tensor
    if t.slots[0].path + hf_layout.SCALE_PATH_SUFFIX in shapes:
        return _fp8_task(task, tensors, store, pool)
    info = tensors[t.name]
    lo, hi = task.bounds()
    data = safetensors_io.load(info)[lo:hi]
    read = data.nbytes
    dtype = shapes[t.slots[0].path][1]
    # Materialized in the slots' [in, out] order at once: tensorstore copies a transposed view
    # element by element, several times slower than a contiguous array.
    swap = all(slot.swap for slot in t.slots)
    out_shape = data.shape[:-2] + (data.shape[-1], data.shape[-2]) if swap else data.shape
    if info.dtype == fp8.E4M3:
        s_info = tensors[t.name + SCALE_SUFFIX]
        rows = fp8.scale_rows(lo, hi, data.ndim)
        scale = np.asarray(safetensors_io.load(s_info)[rows])
        data = fp8.dequantize(data, scale, dtype, transpose=swap, out=pool.array(out_shape, dtype))
        scales.write(s_info.name, scale, rows.start)
        read += scale.nbytes
    elif swap:
        data = hf_layout.transpose_last2(data, out=pool.array(out_shape, dtype))
    elif data.dtype != dtype:
        out = pool.array(out_shape, dtype)
        out[...] = data
        data = out
    futures = [store.write(slot.path, task.target_index(slot), slot.fn(data, swapped=swap), reference=True)
               for slot in t.slots]
    return futures, data.nbytes, read


def _fp8_task(task: streaming.Task, tensors, store: checkpoint.ParamStore, pool: streaming.BufferPool):
    """`_convert_task` for a tensor whose slots hold FP8 codes: per slot, the codes and scales of its
    rows (fp8.take_rows: an FP8 source's own, a float source's quantized in the HF layout), swapped
    into the [in, out] layout, written to PATH and PATH_scale."""
    t = task.tensor
    info = tensors[t.name]
    lo, hi = task.bounds()
    data = safetensors_io.load(info)[lo:hi]
    read, scale = data.nbytes, None
    if info.dtype == fp8.E4M3:
        scale = np.asarray(safetensors_io.load(tensors[t.name + SCALE_SUFFIX])[
            fp8.scale_rows(lo, hi, data.ndim)])
        read += scale.nbytes
    futures, held = [], 0
    for slot in t.slots:
        rows = slot.rows or (0, data.shape[-2])
        try:
            q, s = fp8.take_rows(data, scale, *rows)
        except ValueError as e:
            raise ConversionError(f"{t.name} (rows {lo}:{hi}): {e}") from None
        if slot.swap:
            q = hf_layout.transpose_last2(q, out=pool.array(q.shape[:-2] + q.shape[:-3:-1], fp8.E4M3))
            s = hf_layout.transpose_last2(s)
        plain = dataclasses.replace(slot, rows=None)
        futures.append(store.write(slot.path, task.target_index(slot), plain.fn(q, swapped=slot.swap),
                                   reference=True))
        futures.append(store.write(slot.path + hf_layout.SCALE_PATH_SUFFIX, task.scale_index(slot), s,
                                   reference=True))
        held += q.nbytes + s.nbytes
    return futures, held, read


def _prefetch(task: streaming.Task, tensors, scaled: bool) -> None:
    """Starts reading what `_convert_task` will read for `task` (its rows, and its scales)."""
    t, (lo, hi) = task.tensor, task.bounds()
    info = tensors[t.name]
    row = info.nbytes // t.shape[0]
    safetensors_io.prefetch(info, lo * row, hi * row)
    if scaled:
        safetensors_io.prefetch(tensors[t.name + SCALE_SUFFIX])


def _evict(task: streaming.Task, tensors) -> None:
    """Drops the rows `_convert_task` read for `task` from the page cache (each is read once)."""
    t, (lo, hi) = task.tensor, task.bounds()
    info = tensors[t.name]
    row = info.nbytes // t.shape[0]
    safetensors_io.evict(info, lo * row, hi * row)


def _source_bytes(task: streaming.Task, tensors, scaled: bool) -> int:
    """Bytes `_convert_task` reads for `task`: its rows of the tensor, and of the scales if FP8."""
    t, (lo, hi) = task.tensor, task.bounds()
    n = tensors[t.name].nbytes * (hi - lo) // t.shape[0]
    if scaled:
        s = tensors[t.name + SCALE_SUFFIX]
        rows = fp8.scale_rows(lo, hi, len(t.shape))
        n += s.nbytes * (rows.stop - rows.start) // s.shape[0]
    return n


def _copy_side_files(src: str, dst: str) -> None:
    for name in checkpoint.SIDE_FILES:
        if os.path.exists(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))


@dataclasses.dataclass(frozen=True)
class SourceDigests:
    """{task key: digest of the files it reads}, computed when asked instead of stored: a release has
    ~48,000 tasks, and a stored digest string and dict entry each would cost ~150 bytes apiece for
    the whole job. Read-only; `get` and `[]` as a dict's, for r1jax/interop/resumable.py and streaming.py.

    tensors: HF name -> safetensors_io.TensorInfo; files: shard path -> safetensors_io.identity.
    A task key is its tensor's name, with "[lo:hi]" after it for a block of rows."""
    tensors: dict
    files: dict
    fp8_names: frozenset

    def get(self, key: str, default=None):
        name = key.split("[", 1)[0]
        if name not in self.tensors:
            return default
        names = [name] + ([name + SCALE_SUFFIX] if name in self.fp8_names else [])
        return resumable.digest(*(self.files[self.tensors[n].file] for n in names))

    def __getitem__(self, key: str) -> str:
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found


@dataclasses.dataclass(frozen=True)
class Job:
    """Everything a conversion decides before writing anything."""
    cfg: RuntimeConfig
    tensors: dict                      # HF name -> safetensors_io.TensorInfo
    expected: list                     # hf_layout.HFTensor, every one present and checked
    shapes: dict                       # r1jax path -> (shape, dtype)
    fp8_names: frozenset               # HF tensors stored FP8
    fp8_held: frozenset                # HF tensors landing on projections held as FP8 codes
    tasks: list                        # streaming.Task, in the order their bytes lie on disk
    arrays: dict                       # r1jax path -> (shape, dtype, chunks)
    scales: list                       # safetensors_io.OutTensor of the kept FP8 scales
    digests: SourceDigests             # task key -> digest of the files it reads
    spec: dict                         # what the output directory's manifest records
    token_ids: dict                    # the source config.json's bos/eos/pad ids (checkpoint.token_ids)

    def scaled(self, task: streaming.Task) -> bool:
        return task.tensor.name in self.fp8_names


def plan_job(hf_dir: str, dtype: str, drop_mtp: bool, block_bytes: int) -> Job:
    """Reads headers and config, validates (see `plan`) and lays out the conversion of `hf_dir`.
    dtype: one of DTYPES; FP8_DTYPE makes a bf16 model with fp8_weights."""
    tensors = safetensors_io.index_checkpoint(hf_dir)
    base = load_hf_config(hf_dir, param_dtype="bfloat16" if dtype == FP8_DTYPE else dtype,
                          fp8_weights=dtype == FP8_DTYPE)
    if dtype == FP8_DTYPE and not registry.fp8_blocks(base):
        raise ConversionError(f"--dtype {FP8_DTYPE}: model_type {base.model_type!r} has no block-scaled "
                              "FP8 layout; choose a float dtype")
    with_mtp = (not drop_mtp) and registry.has_mtp_tensors(base, tensors)
    cfg = base.replace(with_mtp=with_mtp)
    expected = plan(cfg, tensors, with_mtp)
    shapes = {p: (tuple(s.shape), np.dtype(s.dtype)) for p, s in checkpoint.param_shapes(cfg).items()}
    fp8_names = frozenset(t.name for t in expected if tensors[t.name].dtype == fp8.E4M3)
    held = hf_layout.fp8_held(expected, shapes)
    # Rows of FP8 tensors, read or written, move in whole 128-row bands.
    tasks = streaming.make_tasks(expected, shapes, block_bytes, fp8_names | held)
    tasks.sort(key=lambda k: (tensors[k.tensor.name].file, tensors[k.tensor.name].offset, k.bounds()))
    chunks = chunk_shapes(tasks, shapes)
    files = {f: safetensors_io.identity(f) for f in {i.file for i in tensors.values()}}
    spec = {"job": "r1jax.convert", "format": checkpoint.FORMAT_VERSION, "dtype": dtype,
            "with_mtp": with_mtp, "config": resumable.digest(json.dumps(registry.to_hf_dict(cfg), sort_keys=True)),
            "tasks": resumable.digest(*(k.key for k in tasks))}
    # fp8_scales.safetensors keeps the scales of FP8 sources that are dequantized (all of them, or
    # with fp8_weights those outside the decoder layers' projections, e.g. the MTP block's).
    return Job(cfg, tensors, expected, shapes, fp8_names, held, tasks,
               {p: (shape, dt, chunks[p]) for p, (shape, dt) in shapes.items()},
               [safetensors_io.OutTensor(i.name, i.dtype, i.shape) for i in
                (tensors[t.name + SCALE_SUFFIX] for t in expected if t.name in fp8_names - held)],
               SourceDigests(tensors, files, fp8_names), spec, checkpoint.token_ids(hf_dir))


def convert(hf_dir: str, out: str, *, dtype: str = "bfloat16", drop_mtp: bool = False,
            workers: int = 1, resume: bool = False, log=print, block_bytes: int = streaming.BLOCK_BYTES,
            ) -> RuntimeConfig:
    """Converts the HF checkpoint in `hf_dir` into an r1jax model checkpoint at `out`.

    workers: threads dequantizing and writing; resume: continue `out`.partial left by an interrupted
    run; block_bytes: tensors bigger than this (as output) go in blocks of rows.
    """
    times = [time.time()]
    j = plan_job(hf_dir, dtype, drop_mtp, block_bytes)
    out_dir = resumable.OutputDir(out, j.spec, resume=resume, log=log, write_once=(OCDBT_DATA,))
    params_dir = os.path.join(out_dir.path, "params")
    scales_path = os.path.join(out_dir.path, checkpoint.SCALES_NAME)
    with out_dir.keeping_work("convert", log):
        if not out_dir.resumed:
            checkpoint.write_meta(out_dir.path, j.cfg, token_ids=j.token_ids)
            _copy_side_files(hf_dir, out_dir.path)
            checkpoint.create_params(params_dir, j.arrays)
            if j.scales:
                safetensors_io.ShardWriter(scales_path, j.scales, create=True).close()
            out_dir.mark_ready()
        store = checkpoint.ParamStore(params_dir)
        scales = safetensors_io.ShardWriter(scales_path, j.scales, create=False) if j.scales else None
        done = out_dir.finished(j.digests)
        todo = [k for k in j.tasks if k.key not in done]
        if done:
            log(f"convert: resuming: {len(done)} of {len(j.tasks)} tensors were converted from "
                f"unchanged shards; converting the other {len(todo)}")
        progress = streaming.Progress("convert", len(todo), sum(
            _source_bytes(k, j.tensors, j.scaled(k)) for k in todo), log)
        read_ahead = streaming.ReadAhead(
            todo, [_source_bytes(k, j.tensors, j.scaled(k)) for k in todo],
            lambda k: _prefetch(k, j.tensors, j.scaled(k)), READ_AHEAD_BYTES)

        pool = streaming.BufferPool(keep=4 * workers)

        def step(k: streaming.Task):
            read_ahead.advance()
            return _convert_task(k, j.tensors, store, j.shapes, scales, pool)
        times.append(time.time())
        streaming.execute(out_dir, todo, step, j.digests, workers, progress,
                          release=lambda k: _evict(k, j.tensors))
        times.append(time.time())
        if scales is not None:
            scales.close()
        checkpoint.verify_params(params_dir, j.arrays)
    out_dir.commit()
    times.append(time.time())
    gb, seconds = progress.bytes / 1e9, times[-1] - times[0]
    mtp = "kept" if j.cfg.with_mtp else "not included"
    log(f"convert: wrote {out} ({len(j.expected)} tensors, MTP {mtp})")
    log(f"convert: read {gb:.3f} GB in {seconds:.2f} s: {gb / seconds:.3f} GB/s (planning and layout "
        f"{times[1] - times[0]:.2f} s, tensors {times[2] - times[1]:.2f} s, checks and sync "
        f"{times[3] - times[2]:.2f} s); peak RSS {streaming.peak_rss_bytes() / 1e9:.3f} GB")
    return j.cfg


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m r1jax.convert", description=__doc__.split("\n")[0])
    p.add_argument("--hf_dir", required=True, help="directory with config.json and *.safetensors")
    p.add_argument("--out", required=True, help="new directory for the r1jax checkpoint")
    p.add_argument("--dtype", default="bfloat16", choices=DTYPES,
                   help="parameter dtype of the output (the router bias stays float32); "
                        f"{FP8_DTYPE}: the decoder layers' projections as FP8 codes + 128x128 "
                        "scales, the rest bfloat16")
    p.add_argument("--drop_mtp", action="store_true", help="omit the MTP module (layer num_hidden_layers)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="threads dequantizing and writing (default: CPU cores, at most 8)")
    p.add_argument("--resume", action="store_true",
                   help="continue the conversion an earlier run left in OUT.partial")
    a = p.parse_args(argv)
    if a.workers < 1:
        p.error("--workers must be >= 1")
    try:
        convert(a.hf_dir, a.out, dtype=a.dtype, drop_mtp=a.drop_mtp, workers=a.workers,
                resume=a.resume, log=lambda s: print(s, file=sys.stderr, flush=True))
    except (ConversionError, ConfigError, safetensors_io.CheckpointFormatError, resumable.JobError,
            checkpoint.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
