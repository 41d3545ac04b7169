"""r1jax model checkpoint -> HF safetensors in the release layout (BF16, or FP8 as released), streamed.

    python -m r1jax.export --checkpoint CKPT --out DIR [--fp8] [--drop_mtp] [--max_shard_gb 5]
                           [--workers N] [--resume]
    python -m r1jax.export --checkpoint RUN --out DIR --adapter     (a LoRA run's PEFT adapter)

Writes config.json (with the release's quantization_config under --fp8), the tokenizer files (the
checkpoint's own, else the packaged R1 tokenizer) and generation_config.json when the checkpoint has
one, and safetensors shards of at most --max_shard_gb with model.safetensors.index.json, in the
release's tensor names (per-expert). Tensors are BF16, the router bias float32; --fp8 re-quantizes
every tensor the release stores in FP8 with 128x128 block scales (r1jax/interop/fp8.py), reusing the scales a
converted checkpoint kept from its FP8 source wherever they still reproduce the weights, so an FP8
release converted and exported comes back bit for bit. A checkpoint holding projections as FP8
codes (convert --dtype float8_e4m3fn) exports them dequantized to BF16 on the host, or under --fp8
as the codes and scales it stores, unchanged. Each tensor is read as slices of the Orbax
arrays and written at its place in a shard whose header was written first: memory holds a few
tensors per worker. The output appears only when complete; --resume continues an interrupted export.

A LoRA training run (r1jax/interop/lora_run.py) exports merged weights, W + s A B per tensor over the base
checkpoint the run names (with --fp8 the base's kept scales are reused for the blocks the adapters
left unchanged), or with --adapter its adapters alone as a PEFT LoRA adapter (r1jax/interop/peft_adapter.py).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np

from r1jax.models import checkpoint
from r1jax.interop import fp8, lora_run, peft_adapter, resumable, safetensors_io, streaming
from r1jax.models import hf_layout
from r1jax.interop.convert import SCALE_SUFFIX
from r1jax.data import DataError, load_tokenizer, read_scoring_rows
from r1jax.data.tokenizer import packaged_tokenizer_dir
from r1jax.models import registry
from r1jax.models.common.config import ConfigError, LoraConfig, RuntimeConfig
from r1jax.models.sources import training_step_dir

MAX_SHARD_BYTES = 5 * 10**9
BF16 = safetensors_io.DTYPES["BF16"]
F32 = np.dtype(np.float32)


class ExportError(ValueError):
    """A checkpoint that cannot be exported as asked; the message names the array or tensor."""


def out_tensors(expected, fp8_names) -> list[safetensors_io.OutTensor]:
    """What the shards hold, in release order: BF16 weights, the float32 router bias (as released),
    FP8 codes each followed by its float32 scale_inv for `fp8_names`."""
    out = []
    for t in expected:
        if t.name in fp8_names:
            out.append(safetensors_io.OutTensor(t.name, fp8.E4M3, t.shape))
            out.append(safetensors_io.OutTensor(t.name + SCALE_SUFFIX, F32, fp8.scale_shape(t.shape)))
        else:
            dtype = F32 if t.name.endswith("e_score_correction_bias") else BF16
            out.append(safetensors_io.OutTensor(t.name, dtype, t.shape))
    return out


def hf_config(cfg: RuntimeConfig, with_mtp: bool, fp8_weights: bool, token_ids: dict | None = None) -> dict:
    """config.json of the export: the model's, from its family (registry.export_hf_config), saying
    whether MTP weights and FP8 are present, with `token_ids` (the source checkpoint's bos/eos/pad
    ids, checkpoint.token_ids) over the family's own."""
    return {**registry.export_hf_config(cfg, with_mtp=with_mtp, fp8=fp8_weights), **(token_ids or {})}


def _check_arrays(store: checkpoint.ParamStore, cfg: RuntimeConfig, expected) -> None:
    want = {p: tuple(s.shape) for p, s in checkpoint.param_shapes(cfg).items()}
    used = {slot.path for t in expected for slot in t.slots}
    problems = [f"{p} missing" for p in sorted(used - set(store.shapes))]
    problems += [f"{p} {list(store.shapes[p][0])} (expected {list(want[p])})" for p in sorted(used)
                 if p in store.shapes and store.shapes[p][0] != want[p]]
    problems += [f"{p} not in the model of config.json" for p in sorted(set(store.shapes) - set(want))]
    if problems:
        raise ExportError(f"{store.params_dir}: does not hold the model of its config: "
                          + "; ".join(problems[:12]) + (" ..." if len(problems) > 12 else ""))


def _source_scales(path: str | None, expected) -> dict[str, safetensors_io.TensorInfo]:
    """The FP8 scales a converted checkpoint kept, checked against the layout ({} without a file)."""
    if path is None or not os.path.exists(path):
        return {}
    infos = safetensors_io.read_header(path)
    shapes = {t.name + SCALE_SUFFIX: fp8.scale_shape(t.shape) for t in expected}
    bad = [f"{n} {i.shape}" for n, i in infos.items() if n in shapes and i.shape != shapes[n]]
    if bad:
        raise ExportError(f"{path}: scales of the wrong shape for this model: {', '.join(bad[:12])}")
    return {n: i for n, i in infos.items() if n in shapes}


def _scale_rows(given, rows: slice) -> np.ndarray:
    """Rows `rows` of a kept source scale: a tensor of fp8_scales.safetensors, or a base's scale
    read from its params (lora_run.KeptScale)."""
    return given.rows(rows) if hasattr(given, "rows") else safetensors_io.load(given)[rows]


def _read_fp8(task: streaming.Task, store: checkpoint.ParamStore) -> tuple[np.ndarray, np.ndarray]:
    """(codes, scale_inv) of the rows task.bounds() of an HF tensor held as FP8 codes, in the HF
    layout: codes [rows, in] e4m3 and their scale rows, from PATH and PATH_scale of its one slot
    (export writes per-expert tensors: one slot each, no row ranges)."""
    (slot,) = task.tensor.slots
    codes = slot.inv(store.read(slot.path, task.target_index(slot)), contiguous=True)
    scale = hf_layout.scale_slot(slot)
    return codes, scale.inv(store.read(scale.path, task.scale_index(slot)), contiguous=True)


def _read_tensor(task: streaming.Task, store: checkpoint.ParamStore) -> np.ndarray:
    """The rows task.bounds() of an HF tensor, assembled from its slots, in the params' dtype."""
    t = task.tensor
    lo, hi = task.bounds()
    if len(t.slots) == 1 and t.slots[0].rows is None:
        slot = t.slots[0]
        return slot.inv(store.read(slot.path, task.target_index(slot)), contiguous=True)
    pieces = [(s, store.read(s.path, task.target_index(s))) for s in t.slots]
    data = np.empty((hi - lo,) + t.shape[1:], pieces[0][1].dtype)
    for slot, piece in pieces:
        data[slot.hf_region(len(t.shape))] = slot.inv(piece)
    return data


def _export_task(task: streaming.Task, store, writers, fp8_names, scales, held=frozenset()):
    """Reads, converts and writes one task; returns ([], 0, bytes written): positional writes into
    the shards are done when this returns (made durable by the job's sync). `held`: tensors the
    checkpoint holds as FP8 codes (written as they are when in `fp8_names`, else dequantized)."""
    t = task.tensor
    lo, hi = task.bounds()
    if t.name in held:
        q, s = _read_fp8(task, store)
        if t.name not in fp8_names:
            data = fp8.dequantize(q, s, BF16)
            writers[t.name].write(t.name, data, lo)
            return [], 0, data.nbytes
        writers[t.name].write(t.name, q, lo)
        start = fp8.scale_rows(lo, hi, len(t.shape)).start
        writers[t.name + SCALE_SUFFIX].write(t.name + SCALE_SUFFIX, s, start)
        return [], 0, q.nbytes + s.nbytes
    data = _read_tensor(task, store)
    if t.name not in fp8_names:
        data = data.astype(writers[t.name].offsets[t.name][1].dtype, order="C")
        writers[t.name].write(t.name, data, lo)
        return [], 0, data.nbytes
    rows = fp8.scale_rows(lo, hi, len(t.shape))
    given = scales.get(t.name + SCALE_SUFFIX)
    try:
        q, s = fp8.quantize(data, None if given is None else _scale_rows(given, rows))
    except ValueError as e:
        raise ExportError(f"{t.name} (rows {lo}:{hi}): {e}") from None
    writers[t.name].write(t.name, q, lo)
    writers[t.name + SCALE_SUFFIX].write(t.name + SCALE_SUFFIX, s, rows.start)
    return [], 0, q.nbytes + s.nbytes


def _write_side_files(checkpoint_dir: str | None, dst: str) -> None:
    """Tokenizer files (the checkpoint's own set when it has tokenizer.json, else the packaged R1
    tokenizer's) and the checkpoint's generation_config.json."""
    own = checkpoint_dir is not None and os.path.exists(os.path.join(checkpoint_dir, "tokenizer.json"))
    sources = [(checkpoint_dir if own else str(packaged_tokenizer_dir()), checkpoint.TOKENIZER_FILES)]
    if checkpoint_dir is not None:
        sources.append((checkpoint_dir, ("generation_config.json",)))
    for src, names in sources:
        for name in names:
            if os.path.exists(os.path.join(src, name)):
                shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))


def _source_digest(params_dir: str, scales_path: str | None) -> str:
    """Changes whenever the params (their OCDBT manifest) or the kept scales are rewritten."""
    parts = []
    for p in (os.path.join(params_dir, "manifest.ocdbt"), os.path.join(params_dir, "_METADATA")):
        if os.path.exists(p):
            st = os.stat(p)
            parts.append(f"{p}:{st.st_size}:{st.st_mtime_ns}")
    if scales_path and os.path.exists(scales_path):
        parts.append(safetensors_io.identity(scales_path))
    return resumable.digest(*parts)


def fp8_tensors(expected, fp8_weights: bool, scales: dict, held=frozenset()) -> set[str]:
    """The HF tensors to write as FP8: none without --fp8; those the checkpoint `held` as FP8 codes;
    of the others, with kept source scales exactly the ones the FP8 source had (a release may keep
    e.g. eh_proj in bf16), else every projection the release stores FP8 (hf_layout.FP8_SUFFIXES)."""
    if not fp8_weights:
        return set()
    if scales:
        return set(held) | {t.name for t in expected if t.name + SCALE_SUFFIX in scales}
    return set(held) | {t.name for t in expected if t.fp8_in_release}


def export_params(params_dir: str, cfg: RuntimeConfig, out: str, *, fp8_weights: bool = False,
                  drop_mtp: bool = False, scales_path: str | None = None,
                  side_dir: str | None = None, max_shard_bytes: int = MAX_SHARD_BYTES,
                  workers: int = 1, resume: bool = False, log=print,
                  block_bytes: int = streaming.BLOCK_BYTES, roots: tuple[str, ...] = (),
                  store=None) -> list[str]:
    """Exports the variables of model `cfg` from the Orbax PyTree checkpoint `params_dir` (a model
    checkpoint's params/, or with roots=("params", "rest") a trainer's state item) to `out`;
    returns the shard file names.

    scales_path: FP8 scales kept by convert (checkpoint.SCALES_NAME), reused where they fit;
    side_dir: where tokenizer, generation config and the config.json token ids come from (else the
    packaged tokenizer, and the family's ids);
    store: what the variables are read from (shapes, read(path, index)), instead of params_dir's
    arrays (lora_run.MergedStore for a LoRA run).
    """
    if fp8_weights and not registry.fp8_blocks(cfg):
        raise ExportError(f"--fp8: model_type {cfg.model_type!r} has no block-scaled FP8 layout; "
                          "export without --fp8")
    with_mtp = cfg.with_mtp and not drop_mtp
    expected = registry.hf_tensors(cfg, with_mtp=with_mtp)
    token_ids = checkpoint.token_ids(side_dir)
    if store is None:
        store = checkpoint.ParamStore(params_dir, cache_bytes=256 << 20, roots=roots)
        if cfg.fp8_weights:  # codes and scales as the model holds them, else a CheckpointError
            checkpoint.check_arrays(store.params_dir, store.shapes, cfg)
    _check_arrays(store, cfg, expected)
    held = hf_layout.fp8_held(expected, store.shapes) if cfg.fp8_weights else frozenset()
    scales = _source_scales(scales_path, expected)
    if hasattr(store, "kept_scales"):  # a LoRA run over a base holding FP8 codes: its own scales
        scales.update(store.kept_scales(expected))
    fp8_names = fp8_tensors(expected, fp8_weights, scales, held)
    tensors = out_tensors(expected, fp8_names)
    groups = safetensors_io.plan_shards(tensors, max_shard_bytes)
    files = safetensors_io.shard_names(len(groups))
    where = {t.name: f for f, g in zip(files, groups) for t in g}
    shapes = {p: (s, store.shapes[p][1]) for p, (s, _) in store.shapes.items()}
    # Rows of FP8 tensors, read or written, move in whole 128-row bands.
    tasks = streaming.make_tasks(expected, shapes, block_bytes, fp8_names | held)
    digest = _source_digest(params_dir, scales_path)
    spec = {"job": "r1jax.export", "fp8": fp8_weights, "with_mtp": with_mtp, "roots": list(roots),
            "config": resumable.digest(json.dumps(registry.to_hf_dict(cfg), sort_keys=True)),
            "shards": files, "max_shard_bytes": max_shard_bytes,
            "tasks": resumable.digest(*(k.key for k in tasks))}

    job = resumable.OutputDir(out, spec, resume=resume, log=log)
    with job.keeping_work("export", log):
        if not job.resumed:
            for f, g in zip(files, groups):
                safetensors_io.ShardWriter(os.path.join(job.path, f), g, create=True).close()
            safetensors_io.write_index(job.path, where, sum(t.nbytes for t in tensors))
            with open(os.path.join(job.path, "config.json"), "w") as fh:
                json.dump(hf_config(cfg, with_mtp, bool(fp8_names), token_ids), fh, indent=2)
            _write_side_files(side_dir, job.path)
            job.mark_ready()
        shard_writers = {f: safetensors_io.ShardWriter(os.path.join(job.path, f), g, create=False)
                         for f, g in zip(files, groups)}
        writers = {name: shard_writers[f] for name, f in where.items()}
        digests = {k.key: digest for k in tasks}
        done = job.finished(digests)
        todo = [k for k in tasks if k.key not in done]
        if done:
            log(f"export: resuming: {len(done)} of {len(tasks)} tensors were written; writing the "
                f"other {len(todo)}")
        out_bytes = {t.name: t.nbytes for t in tensors}
        out_bytes.update({t.name: out_bytes[t.name] + out_bytes[t.name + SCALE_SUFFIX] for t in expected
                          if t.name in fp8_names})
        rows = lambda k: k.bounds()[1] - k.bounds()[0]
        progress = streaming.Progress("export", len(todo), sum(
            out_bytes[k.tensor.name] * rows(k) // k.tensor.shape[0] for k in todo), log)
        streaming.execute(job, todo, lambda k: _export_task(k, store, writers, fp8_names, scales, held),
                          digests, workers, progress)
        for w in shard_writers.values():
            w.close()
    job.commit()
    log(f"export: wrote {out} ({len(tensors)} tensors in {len(files)} shards, "
        f"{'FP8' if fp8_names else 'BF16'}, MTP {'included' if with_mtp else 'not included'})")
    return files


def export_lora_merged(step_dir: str, run_model: str, cfg: RuntimeConfig, out: str, **kw) -> list[str]:
    """Exports a LoRA run's training checkpoint `step_dir` as the plain model: every adapted
    projection W + s A B over the run's base checkpoint, the run's router bias; `kw` as
    export_params (with --fp8 the base's kept FP8 scales are reused where blocks did not change)."""
    base = lora_run.open_base(run_model, cfg)
    plain = cfg.replace(lora=LoraConfig(), fp8_weights=False)  # what MergedStore reads as
    store = lora_run.MergedStore(os.path.join(step_dir, "state"), cfg, base)
    return export_params(store.params_dir, plain, out, side_dir=run_model, store=store,
                         scales_path=base.scales_path, **kw)


def export_adapter(checkpoint_dir: str, out: str, log=print) -> list[str]:
    """Writes the adapters of a LoRA run (RUN, RUN/checkpoints/STEP) as a PEFT adapter into the
    new directory `out` (r1jax/interop/peft_adapter.py); returns the tensor names written."""
    step_dir = training_step_dir(checkpoint_dir)
    if step_dir is None:
        raise ExportError(f"{checkpoint_dir}: not a training run (no state/ or checkpoints/STEP); "
                          "--adapter exports the adapters of a LoRA training run")
    run_model = os.path.join(os.path.dirname(os.path.dirname(step_dir)), "model")
    cfg = lora_run.run_config(run_model)
    state = os.path.join(step_dir, "state")
    run = checkpoint.ParamStore(state, roots=("params", "rest"))
    adapters = lora_run.adapter_paths(run.shapes)
    if not cfg.lora.rank or not adapters:
        raise ExportError(f"{state}: holds no adapters ({os.path.join(run_model, checkpoint.META_NAME)} "
                          "has no \"lora\" rank); --adapter needs a LoRA run; export without --adapter "
                          "writes the model's weights")
    base = lora_run.open_base(run_model, cfg)
    routers = {}  # layers whose router bias the run changed: PEFT's modules_to_save carries them
    tensors = {t.name: t for t in registry.hf_tensors(cfg, with_mtp=False)}
    for name, t in tensors.items():
        if name.endswith(".e_score_correction_bias"):
            slot = t.slots[0]
            mine = np.asarray(run.read(slot.path, slot.index), np.float32)
            if not np.array_equal(mine, base.read(slot.path, slot.index)):
                module = name.removesuffix(".e_score_correction_bias")
                w = tensors[module + ".weight"].slots[0]
                routers[module] = (w.inv(base.read(w.path, w.index)), mine)
    if os.path.exists(out):
        raise ExportError(f"{out}: exists; choose a new directory for the adapter")
    partial = out + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    names = peft_adapter.write_adapter(partial, cfg, run.read, adapters, routers,
                                       np.dtype(run.shapes[next(iter(adapters.values())) + ".a"][1]), log)
    os.rename(partial, out)
    return names


def source_variables(checkpoint_dir: str) -> tuple[RuntimeConfig, object]:
    """(the plain model's config, a store reading its variables: shapes, read(path, index)) of what
    `export` exports from `checkpoint_dir`; a LoRA run's merged over its base."""
    step_dir = training_step_dir(checkpoint_dir)
    if step_dir is None:
        return (checkpoint.read_config(checkpoint_dir),
                checkpoint.ParamStore(os.path.join(checkpoint_dir, "params"), cache_bytes=256 << 20))
    run_model = os.path.join(os.path.dirname(os.path.dirname(step_dir)), "model")
    cfg = lora_run.run_config(run_model)
    state = os.path.join(step_dir, "state")
    if not cfg.lora.rank:
        return cfg, checkpoint.ParamStore(state, cache_bytes=256 << 20, roots=("params", "rest"))
    base = lora_run.open_base(run_model, cfg)
    return cfg.replace(lora=LoraConfig(), fp8_weights=False), lora_run.MergedStore(state, cfg, base)


def fp8_cost(checkpoint_dir: str, out: str, data: str, log=print) -> dict:
    """Prints (and returns, fp8_check.losses) the loss of the FP8 export `out` next to the BF16
    weights of `checkpoint_dir` on the rows of the JSONL file `data` (text or input_ids rows,
    tokenized with the export's tokenizer)."""
    # Imported here: evaluate (scoring) reaches generate, which imports this module.
    from r1jax.interop import fp8_check  # noqa: PLC0415
    from r1jax.eval.evaluate import check_rows  # noqa: PLC0415
    cfg, store = source_variables(checkpoint_dir)
    rows = read_scoring_rows(data, tokenizer=load_tokenizer(out))
    check_rows(rows, cfg, data)
    result = fp8_check.losses(cfg, store, out, rows)
    log(f"export: FP8 check on {len(rows)} rows of {data} ({result['tokens']} tokens, float32 "
        f"compute): loss BF16 {result['bf16']:.5f}, FP8 {result['fp8']:.5f} "
        f"({result['fp8'] - result['bf16']:+.5f})")
    return result


def export(checkpoint_dir: str, out: str, adapter: bool = False, **kw) -> list[str]:
    """Exports a model checkpoint (r1jax/models/checkpoint.py format) or a training checkpoint (its
    params and router bias; the run's model config is RUN/model; a LoRA run's adapters merged into
    its base); `kw` as export_params. adapter: a LoRA run's adapters as a PEFT adapter instead."""
    if adapter:
        return export_adapter(checkpoint_dir, out, log=kw.get("log", print))
    step_dir = training_step_dir(checkpoint_dir)
    if step_dir is not None:
        run_model = os.path.join(os.path.dirname(os.path.dirname(step_dir)), "model")
        cfg = lora_run.run_config(run_model)
        if cfg.lora.rank:
            return export_lora_merged(step_dir, run_model, cfg, out, **kw)
        return export_params(os.path.join(step_dir, "state"), cfg, out, side_dir=run_model,
                             roots=("params", "rest"), **kw)
    cfg = checkpoint.read_config(checkpoint_dir)
    return export_params(os.path.join(checkpoint_dir, "params"), cfg, out,
                         scales_path=os.path.join(checkpoint_dir, checkpoint.SCALES_NAME),
                         side_dir=checkpoint_dir, **kw)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m r1jax.export", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True,
                   help="r1jax model checkpoint (python -m r1jax.convert), or a training run "
                        "(RUN for its latest step, RUN/checkpoints/STEP, RUN/best/STEP)")
    p.add_argument("--out", required=True, help="new directory for the HF checkpoint")
    p.add_argument("--fp8", action="store_true",
                   help="FP8 with 128x128 block scales where the release has them (default BF16)")
    p.add_argument("--drop_mtp", action="store_true", help="omit the MTP module")
    p.add_argument("--max_shard_gb", type=float, default=MAX_SHARD_BYTES / 1e9,
                   help="largest shard, in GB (10^9 bytes)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="threads reading, converting and writing (default: CPU cores, at most 8)")
    p.add_argument("--resume", action="store_true", help="continue the export left in OUT.partial")
    p.add_argument("--fp8_check_data", metavar="FILE",
                   help="with --fp8: JSONL rows (text or input_ids; a few) on which to print the "
                        "loss of the FP8 export next to the BF16 weights' (float32 compute, the "
                        "whole model in this host's memory)")
    p.add_argument("--adapter", action="store_true",
                   help="a LoRA run's adapters as a PEFT adapter (adapter_config.json, "
                        "adapter_model.safetensors) for the model's transformers class; without "
                        "it a LoRA run exports merged weights")
    a = p.parse_args(argv)
    if a.workers < 1 or a.max_shard_gb <= 0:
        p.error("--workers must be >= 1 and --max_shard_gb > 0")
    if a.fp8_check_data and not a.fp8:
        p.error("--fp8_check_data compares an FP8 export with BF16: it needs --fp8")
    if a.adapter and (a.fp8 or a.drop_mtp or a.resume):
        p.error("--adapter writes adapters only: --fp8, --drop_mtp and --resume do not apply")
    log = lambda s: print(s, file=sys.stderr, flush=True)
    try:
        export(a.checkpoint, a.out, adapter=a.adapter, fp8_weights=a.fp8, drop_mtp=a.drop_mtp,
               max_shard_bytes=int(a.max_shard_gb * 1e9), workers=a.workers, resume=a.resume, log=log)
        if a.fp8_check_data:
            fp8_cost(a.checkpoint, a.out, a.fp8_check_data, log)
    except (ExportError, ConfigError, checkpoint.CheckpointError, resumable.JobError,
            safetensors_io.CheckpointFormatError, lora_run.LoraRunError,
            peft_adapter.AdapterExportError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
