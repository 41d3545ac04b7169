"""All Orbax use: model checkpoints (converted weights) saved and restored, sharded when asked, and
their arrays streamed slice by slice (tensorstore) for conversion and export.

A model checkpoint directory holds
    config.json       the HF-style model config (its family's, r1jax/models/registry.py to_hf_dict)
    r1jax.json        what the params hold: {"with_mtp": bool, "param_dtype": str, "format": 1,
                      "fp8_weights": bool (absent: false)}
    params/           an Orbax PyTree checkpoint of the model's variables as a nested dict
and the HF checkpoint's SIDE_FILES (tokenizer, generation config) when it had them; and, when
converted from FP8 weights, `fp8_scales.safetensors`: the release's `*_scale_inv` tensors of the
weights it holds dequantized, under their release names, which let export re-quantize to the
release's exact codes (r1jax/interop/fp8.py).

With fp8_weights, the decoder layers' projections are float8_e4m3fn codes, each with its float32
block scales at PATH_scale (r1jax/models/common/params.py), and everything else is `param_dtype`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import threading

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from flax import nnx

from r1jax.models import registry
from r1jax.models.common.config import ConfigError, LoraConfig

META_NAME = "r1jax.json"
SCALES_NAME = "fp8_scales.safetensors"
# Files of an HF checkpoint that a model checkpoint carries along unchanged (convert copies them in,
# export copies them out): the tokenizer, and the release's default sampling settings.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SIDE_FILES = TOKENIZER_FILES + ("generation_config.json",)
# config.json keys naming token ids: no architecture (the families' configs drop them), but what
# transformers' generation defaults to. Carried from an HF checkpoint's config.json through convert,
# a run's model directory and export unchanged (`token_ids`, write_meta).
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint directory that is missing, incomplete or corrupt; the message names the path."""


def abstract_model(cfg) -> nnx.Module:
    """The model of `cfg` (its family's, registry.build) with ShapeDtypeStruct leaves: no memory
    is used."""
    return nnx.eval_shape(lambda: registry.build(cfg, nnx.Rngs(0)))


def param_shapes(cfg) -> dict[str, jax.ShapeDtypeStruct]:
    """Flat {dotted path: ShapeDtypeStruct} of every model variable (params and router bias)."""
    state = nnx.to_pure_dict(nnx.state(abstract_model(cfg)))
    return {".".join(map(str, k)): v for k, v in _flatten(state)}


def _flatten(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flatten(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def unflatten(flat: dict[str, object]) -> dict:
    """{"a.b": x} -> {"a": {"b": x}}."""
    out: dict = {}
    for path, v in flat.items():
        node = out
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


def token_ids(directory: str | None) -> dict[str, int | list[int]]:
    """{key: value} of the TOKEN_ID_KEYS set (not null) in `directory`/config.json: an id, or a list
    of ids (eos_token_id may be one); {} without a directory or config.json. ConfigError naming the
    file and key for another value."""
    path = os.path.join(directory or "", "config.json")
    if not directory or not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    out = {}
    for key in TOKEN_ID_KEYS:
        v = d.get(key) if isinstance(d, dict) else None
        if v is None:
            continue
        ids = v if isinstance(v, list) else [v]
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise ConfigError(f"{path}: {key}={v!r}: expected a token id or a list of token ids")
        out[key] = v
    return out


def write_meta(directory: str, cfg, base: dict | None = None, token_ids: dict | None = None) -> None:
    """Writes config.json and r1jax.json of a model checkpoint of `cfg` into `directory`.

    config.json: the family's (registry.to_hf_dict), with `token_ids` (TOKEN_ID_KEYS: the source
    checkpoint's, `token_ids()`) over its own. r1jax.json: format, with_mtp, param_dtype;
    fp8_weights when the projections are FP8-held; for a run with adapters, "lora" (cfg.lora's fields) and "base" (what the adapters sit
    on: base_record)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({**registry.to_hf_dict(cfg), **(token_ids or {})}, f, indent=2)
    meta = {"format": FORMAT_VERSION, "with_mtp": cfg.with_mtp, "param_dtype": cfg.param_dtype}
    if cfg.fp8_weights:
        meta["fp8_weights"] = True
    if cfg.lora.rank:
        meta["lora"] = {**dataclasses.asdict(cfg.lora), "targets": list(cfg.lora.targets)}
    if base is not None:
        meta["base"] = base
    with open(os.path.join(directory, META_NAME), "w") as f:
        json.dump(meta, f, indent=2)


def read_meta(directory: str) -> dict:
    """A checkpoint's r1jax.json as a dict ({} when it has none)."""
    path = os.path.join(directory, META_NAME)
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupt metadata: {e}") from None


def base_record(directory: str | None, cfg, seed: int) -> dict:
    """What a run's adapters sit on: {"path", "digest"} of a model checkpoint (the digest of its
    config.json, r1jax.json and Orbax tree metadata and manifest: any rewrite changes it), or for a
    randomly initialized base {"path": "", "digest"} of its architecture and seed."""
    if not directory:
        return {"path": "", "seed": seed,
                "digest": _digest(json.dumps(registry.to_hf_dict(cfg), sort_keys=True).encode(), str(seed).encode())}
    directory = os.path.abspath(directory)
    parts = []
    for name in ("config.json", META_NAME, "params/_METADATA", "params/manifest.ocdbt"):
        p = os.path.join(directory, name)
        if os.path.exists(p):
            with open(p, "rb") as f:
                parts.append(name.encode() + b"\0" + f.read())
    return {"path": directory, "digest": _digest(*parts)}


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()[:32]


def save_model(directory: str, cfg, params: dict) -> None:
    """Writes cfg and the nested dict `params` (arrays) as a model checkpoint into `directory`."""
    directory = os.path.abspath(directory)
    write_meta(directory, cfg)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(directory, "params"), params)
    ckptr.wait_until_finished()


def read_config(directory: str, **runtime):
    """The config a checkpoint was saved with (its config.json read by the family its model_type
    names: registry.from_hf_dict); `runtime` overrides dtype/remat (not with_mtp;
    fp8_weights defaults to what r1jax.json records, false when absent)."""
    meta_path = os.path.join(directory, META_NAME)
    cfg_path = os.path.join(directory, "config.json")
    for p in (cfg_path, meta_path):
        if not os.path.exists(p):
            raise CheckpointError(f"{directory}: not an r1jax model checkpoint ({os.path.basename(p)} "
                                  "missing); convert HF weights with `python -m r1jax.convert`")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        with open(cfg_path) as f:
            hf = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{directory}: corrupt metadata: {e}") from None
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT_VERSION}")
    runtime.setdefault("param_dtype", meta["param_dtype"])
    fp8_weights = meta.get("fp8_weights", False)
    if not isinstance(fp8_weights, bool):
        raise CheckpointError(f"{meta_path}: fp8_weights={fp8_weights!r}, expected true or false")
    runtime.setdefault("fp8_weights", fp8_weights)
    if "lora" in meta and "lora" not in runtime:
        lc = meta["lora"]
        try:
            runtime["lora"] = LoraConfig(**{**lc, "targets": tuple(lc["targets"])})
        except (TypeError, KeyError) as e:
            raise CheckpointError(f"{meta_path}: bad \"lora\" entry {lc!r}: {e}") from None
    return registry.from_hf_dict(hf, source=cfg_path, with_mtp=meta["with_mtp"], **runtime)


def load_model(directory: str, cfg=None, shardings=None) -> nnx.Module:
    """Restores a model checkpoint. `cfg` (default: read_config) may change dtype/param_dtype/remat;
    `shardings` (a nested dict like the params, of jax.sharding.Sharding) places every array directly
    where it belongs; without it everything goes to the default device."""
    directory = os.path.abspath(directory)
    cfg = read_config(directory) if cfg is None else cfg
    cfg = cfg.replace(lora=LoraConfig())  # a model checkpoint holds no adapters
    params_dir = os.path.join(directory, "params")
    try:
        stored, _ = _orbax_metadata(params_dir)
    except Exception as e:  # orbax raises many types; all mean the same to a user
        raise CheckpointError(f"{params_dir}: not an Orbax checkpoint: {type(e).__name__}: {e}") from None
    check_arrays(params_dir, {p: (tuple(m.shape), np.dtype(m.dtype)) for p, m in stored.items()}, cfg)
    model = abstract_model(cfg)
    graphdef, state = nnx.split(model)
    target = nnx.to_pure_dict(state)
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, target)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), target, shardings)
    try:
        restored = ocp.StandardCheckpointer().restore(os.path.join(directory, "params"), target)
    except Exception as e:  # orbax raises many types; all mean the same to a user
        raise CheckpointError(f"{directory}/params: cannot restore: {type(e).__name__}: {e}") from None
    nnx.replace_by_pure_dict(state, restored)
    return nnx.merge(graphdef, state)


def check_arrays(params_dir: str, stored: dict[str, tuple[tuple, np.dtype]], cfg) -> None:
    """Checks the arrays of a params checkpoint, {dotted path: (shape, dtype)}, against the variables
    of model `cfg`: each present, of its shape, FP8 codes exactly where the model holds codes (a
    float is restored into another float's dtype, never into codes or out of them).

    Raises CheckpointError naming `params_dir` and the offending paths."""
    e4m3 = np.dtype(ml_dtypes.float8_e4m3fn)
    problems = []
    for p, want in param_shapes(cfg).items():
        got = stored.get(p)
        codes = np.dtype(want.dtype) == e4m3
        if got is None:
            scales = cfg.fp8_weights and want.dtype == np.float32 and p.endswith("_scale")
            problems.append(f"{p}: missing" + (" (the block scales of FP8 codes; r1jax.json says "
                                               "fp8_weights)" if scales else ""))
        elif tuple(got[0]) != tuple(want.shape):
            problems.append(f"{p}: shape {list(got[0])}, expected {list(want.shape)}")
        elif (np.dtype(got[1]) == e4m3) != codes:
            problems.append(f"{p}: {np.dtype(got[1])}, expected " +
                            ("float8_e4m3fn codes (r1jax.json says fp8_weights)" if codes else
                             "a float (FP8 codes where this model holds plain weights)"))
    if problems:
        raise CheckpointError(f"{params_dir}: " + "; ".join(problems[:12]) +
                              (f" ... and {len(problems) - 12} more" if len(problems) > 12 else ""))


def numpy_params(model: nnx.Module) -> dict:
    """The model's variables as a nested dict of host numpy arrays."""
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))


# Streaming: arrays written and read slice by slice ------------------------------------------------

def _orbax_metadata(params_dir: str) -> tuple[dict, bool]:
    """({dotted path: Orbax ArrayMetadata}, use_zarr3) of a PyTree checkpoint; reads no array data."""
    meta = ocp.StandardCheckpointer().metadata(params_dir)
    meta = getattr(meta, "item_metadata", meta)  # a StepMetadata from orbax >= 0.12
    leaves = {".".join(map(str, k)): v for k, v in _flatten(dict(getattr(meta, "tree", meta)))}
    return leaves, bool(getattr(meta, "use_zarr3", False))


def create_params(params_dir: str, arrays: dict[str, tuple[tuple, np.dtype, tuple]]) -> None:
    """Creates at `params_dir` an Orbax PyTree checkpoint of {path: (shape, dtype, chunks)} whose data
    is still to be written (ParamStore.write); `load_model` reads it once every chunk is written.

    Orbax itself writes every file of the checkpoint, from a stand-in tree of one-element arrays, so
    the tree metadata and the OCDBT database are its own. Each stand-in is then replaced in that
    database by an empty zarr array of the real shape: chunked as given (one slice per layer or
    expert, so slices are written without reading back) and uncompressed (zstd would cost more CPU
    than the bf16 bits it saves). Orbax records that missing chunks are errors, not zeros.
    """
    params_dir = os.path.abspath(params_dir)
    stand_in = unflatten({p: np.zeros((1,) * len(shape), dtype) for p, (shape, dtype, _) in arrays.items()})
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(params_dir, stand_in)
    ckptr.wait_until_finished()
    meta, _ = _orbax_metadata(params_dir)
    context = ts.Context({"file_io_sync": False})
    pending = [ts.open(_array_spec(params_dir, meta[p].name, shape=shape, dtype=dtype, chunks=chunks),
                       create=True, delete_existing=True, context=context)
               for p, (shape, dtype, chunks) in arrays.items()]
    for f in pending:
        f.result()


def _array_spec(params_dir: str, name: str, zarr3: bool = False, **new) -> dict:
    """tensorstore spec of the array `name` of an Orbax checkpoint; `new` (shape, dtype, chunks)
    creates it. Orbax's defaults: OCDBT when params/manifest.ocdbt exists, zarr v2 unless told."""
    if os.path.exists(os.path.join(params_dir, "manifest.ocdbt")):
        kvstore = {"driver": "ocdbt", "base": f"file://{params_dir}/", "path": name}
    else:
        kvstore = {"driver": "file", "path": os.path.join(params_dir, name) + "/"}
    spec = {"driver": "zarr3" if zarr3 else "zarr", "kvstore": kvstore}
    if new:
        spec["dtype"] = np.dtype(new["dtype"]).name
        spec["metadata"] = {"shape": list(new["shape"]), "chunks": list(new["chunks"]), "compressor": None}
    return spec


class ParamStore:
    """The arrays of an Orbax PyTree checkpoint of model variables, opened for slice reads and writes
    from many threads.

    roots: top-level keys the model's variables sit under, stripped from the paths (a trainer's state
    item holds {"params": ..., "rest": ..., "opt_state": ...}: roots ("params", "rest")); empty when
    the tree is the variables' nested dict itself, as in a model checkpoint's params/.
    `shapes`: {dotted model path: (shape, dtype)}. `cache_bytes` keeps recently read chunks, for
    checkpoints whose chunks span several slices (a trainer's); converted ones have one per slice.
    """

    def __init__(self, params_dir: str, cache_bytes: int = 0, roots: tuple[str, ...] = ()):
        self.params_dir = os.path.abspath(params_dir)
        try:
            meta, self._zarr3 = _orbax_metadata(self.params_dir)
        except Exception as e:  # orbax raises many types; all mean the same to a user
            raise CheckpointError(f"{self.params_dir}: not an Orbax checkpoint: "
                                  f"{type(e).__name__}: {e}") from None
        if roots:
            meta = {p.split(".", 1)[1]: m for p, m in meta.items() if p.split(".", 1)[0] in roots}
        self.shapes = {p: (tuple(m.shape), np.dtype(m.dtype)) for p, m in meta.items()}
        self._names = {p: m.name for p, m in meta.items()}
        self._context = ts.Context({"cache_pool": {"total_bytes_limit": cache_bytes}, "file_io_sync": False})
        self._arrays: dict[str, ts.TensorStore] = {}
        self._lock = threading.Lock()

    def _array(self, path: str) -> ts.TensorStore:
        with self._lock:
            if path not in self._arrays:
                spec = _array_spec(self.params_dir, self._names[path], self._zarr3)
                self._arrays[path] = ts.open(spec, open=True, context=self._context).result()
            return self._arrays[path]

    def write(self, path: str, index: tuple, data: np.ndarray, reference: bool = False) -> ts.WriteFutures:
        """array[path][index] = data; `.commit` of the result completes once it is in the files.

        reference: tensorstore keeps a reference to `data` instead of copying it (`data` must not
        change until the reference is dropped, which with no cache (`cache_bytes` 0) is at commit)."""
        return self._array(path)[index].write(data, can_reference_source_data_indefinitely=reference)

    def read(self, path: str, index: tuple) -> np.ndarray:
        return self._array(path)[index].read().result()


def verify_params(params_dir: str, want: dict[str, tuple[tuple, np.dtype, tuple]]) -> None:
    """Checks a streamed params checkpoint against {path: (shape, dtype, chunks)}: Orbax's metadata
    names every array with its shape and dtype, and every chunk of every array is stored.

    Raises CheckpointError listing what differs."""
    params_dir = os.path.abspath(params_dir)
    meta, _ = _orbax_metadata(params_dir)
    problems = [f"{p}: missing" for p in sorted(set(want) - set(meta))]
    problems += [f"{p}: unexpected" for p in sorted(set(meta) - set(want))]
    for p, (shape, dtype, _) in want.items():
        m = meta.get(p)
        if m is not None and (tuple(m.shape) != tuple(shape) or np.dtype(m.dtype) != np.dtype(dtype)):
            problems.append(f"{p}: {np.dtype(m.dtype)}{list(m.shape)}, "
                            f"expected {np.dtype(dtype)}{list(shape)}")
    kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{params_dir}/"}).result()
    stored: dict[str, int] = {}
    for key in kv.list().result():
        name, _, chunk = key.decode().rpartition("/")
        if not chunk.startswith("."):
            stored[name] = stored.get(name, 0) + 1
    for p, (shape, _, chunks) in want.items():
        if p in meta:
            n = math.prod(-(-s // c) for s, c in zip(shape, chunks))
            if stored.get(meta[p].name, 0) != n:
                problems.append(f"{p}: {stored.get(meta[p].name, 0)} of {n} chunks written")
    if problems:
        raise CheckpointError(f"{params_dir}: incomplete: " + "; ".join(problems[:12]) +
                              (f" ... and {len(problems) - 12} more" if len(problems) > 12 else ""))
