"""A LoRA training run read for export: its adapters, its router bias, and the base model they sit on.

A run RUN trained with adapters (RuntimeConfig.lora.rank > 0) holds
    RUN/model/r1jax.json      besides format/with_mtp/param_dtype: "lora" {rank, alpha, dropout,
                              targets, rslora} and "base" {"path": the base model checkpoint, "digest"}
    RUN/checkpoints/STEP/state  Orbax {"params": the adapters only (e.g. layers.attn.q_lora.a),
                              "rest": {..., router_bias}, "opt_state": ...}
The base's weights are not in the run: they are read from "base"."path" (r1jax/models/checkpoint.py format)
through `BaseReader`, the one place base arrays come from.

`MergedStore` reads like checkpoint.ParamStore over the plain model (no adapters): every adapted
projection is W + s A B (r1jax/models/common/lora.py's merged weight), float32; the router bias is the run's.
"""
from __future__ import annotations

import os

import numpy as np
from flax import nnx

from r1jax.models import checkpoint
from r1jax.interop import fp8
from r1jax.models import hf_layout
from r1jax.interop.convert import SCALE_SUFFIX
from r1jax.models import registry
from r1jax.models.common.config import LoraConfig, RuntimeConfig

ADAPTER_SUFFIX = "_lora"


class LoraRunError(ValueError):
    """A LoRA run (or its base) that cannot be read as asked; the message names the path or key."""


def run_config(model_dir: str) -> RuntimeConfig:
    """The RuntimeConfig of a run's model directory, with its adapters (`lora`) set."""
    return checkpoint.read_config(model_dir)


def base_dir(model_dir: str) -> str:
    """The base model checkpoint a LoRA run's adapters sit on ("base"."path" of its r1jax.json),
    checked to be the one the run was trained on (its metadata digest, checkpoint.base_record)."""
    source = os.path.join(model_dir, checkpoint.META_NAME)
    base = checkpoint.read_meta(model_dir).get("base")
    path = base.get("path") if isinstance(base, dict) else None
    if not path:
        raise LoraRunError(f"{source}: \"base\".\"path\" is empty or missing: the run's base is not a "
                           "model checkpoint (a random-init base), so there are no base weights to "
                           "export with the adapters")
    if not os.path.isdir(path):
        raise LoraRunError(f"{source}: base checkpoint {path} does not exist")
    if base.get("digest"):
        now = checkpoint.base_record(path, None, 0)["digest"]
        if now != base["digest"]:
            raise LoraRunError(f"{source}: base checkpoint {path} changed since training (digest {now}, "
                               f"the run recorded {base['digest']})")
    return path


class BaseReader:
    """The base model's arrays by r1jax path: read(path, index) -> float32 numpy array, as the plain
    model (no FP8 codes) holds them.

    A model checkpoint's params/ holding bf16 or float32 weights, or projections held as FP8 codes
    (convert --dtype float8_e4m3fn: PATH and PATH_scale), which are dequantized here, a slot at a
    time (r1jax/interop/fp8.py); `kept_scales` then gives their release-layout scales, so that an FP8 export
    keeps the codes of every block the adapters did not change. The one place through which a LoRA
    export reads base weights."""

    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)
        self.cfg = checkpoint.read_config(self.directory)
        self.store = checkpoint.ParamStore(os.path.join(self.directory, "params"), cache_bytes=256 << 20)
        self.scales_path = os.path.join(self.directory, checkpoint.SCALES_NAME)
        self.fans = projection_fans(self.cfg) if self.cfg.fp8_weights else {}
        held = {p for p in self.fans if p + hf_layout.SCALE_PATH_SUFFIX in self.store.shapes}
        self.shapes = {p: (shape, np.dtype(np.float32) if p in held else dtype)
                       for p, (shape, dtype) in self.store.shapes.items()
                       if p.removesuffix(hf_layout.SCALE_PATH_SUFFIX) not in held or p in held}
        self.held = frozenset(held)

    def read(self, path: str, index: tuple) -> np.ndarray:
        if path not in self.held:
            return np.asarray(self.store.read(path, index), np.float32)
        lead = 0  # the leading integer indices (layer, expert) pick whole slots
        while lead < len(index) and isinstance(index[lead], (int, np.integer)):
            lead += 1
        codes = self.store.read(path, tuple(index[:lead]))
        scale = self.store.read(path + hf_layout.SCALE_PATH_SUFFIX, tuple(index[:lead]))
        fan_in, fan_out = self.fans[path]
        n_stack = codes.ndim - fan_in - fan_out
        i = int(np.prod(codes.shape[n_stack:n_stack + fan_in]))
        w = fp8.dequantize(codes.reshape(codes.shape[:n_stack] + (i, -1)), scale).reshape(codes.shape)
        return w[tuple(index[lead:])]

    def kept_scales(self, expected) -> dict:
        """{HF scale name: KeptScale} for the HF tensors of `expected` held as FP8 codes here."""
        names = hf_layout.fp8_held(expected, self.store.shapes)
        return {t.name + SCALE_SUFFIX: KeptScale(self.store, t.slots[0]) for t in expected if t.name in names}


class KeptScale:
    """The release-layout scale_inv [ceil(out/128), ceil(in/128)] of one HF tensor whose codes a base
    holds (its one slot's PATH_scale, swapped back); rows(r) reads scale rows r."""

    def __init__(self, store, slot):
        self.store, self.slot = store, slot

    def rows(self, rows: slice) -> np.ndarray:
        scale = hf_layout.scale_slot(self.slot)
        return scale.inv(self.store.read(scale.path, self.slot.index), contiguous=True)[rows]


def projection_fans(cfg: RuntimeConfig) -> dict[str, tuple[int, int]]:
    """{dotted path: (fan_in, fan_out)} of every projection of the model of `cfg` (its `projection`
    metadata, r1jax/models/common/params.py)."""
    state = nnx.state(checkpoint.abstract_model(cfg.replace(lora=LoraConfig())))
    return {".".join(map(str, p)): tuple(v.get_metadata()["projection"])
            for p, v in nnx.to_flat_state(state) if "projection" in v.get_metadata()}


def open_base(model_dir: str, cfg: RuntimeConfig) -> BaseReader:
    """The base checkpoint of the LoRA run whose model directory is `model_dir` and config `cfg`,
    checked to hold the same architecture."""
    base = BaseReader(base_dir(model_dir))
    if registry.to_hf_dict(base.cfg) != registry.to_hf_dict(cfg):
        diff = sorted(k for k, v in registry.to_hf_dict(cfg).items() if registry.to_hf_dict(base.cfg).get(k) != v)
        raise LoraRunError(f"{base.directory}: not the architecture of the run {model_dir} "
                           f"(config.json differs in {', '.join(diff) or 'its keys'})")
    return base


def adapter_paths(shapes) -> dict[str, str]:
    """{projection path: its adapter's path prefix} for every adapter in `shapes` (dotted paths:
    "layers.attn.q" -> "layers.attn.q_lora", whose ".a" and ".b" exist)."""
    out = {}
    for p in shapes:
        if p.endswith(ADAPTER_SUFFIX + ".a") and p[:-2] + ".b" in shapes:
            out[p[:-len(ADAPTER_SUFFIX) - 2]] = p[:-2]
    return out


def merged_region(w: np.ndarray, a: np.ndarray, b: np.ndarray, scale: float) -> np.ndarray:
    """W + scale A B in float32 for one region: w [s..., in..., out...], a [s..., in..., r],
    b [s..., r, out...] (the same leading s axes)."""
    n_stack = b.ndim - 1 - (w.ndim - (a.ndim - 1))  # b holds the stack, r, then W's output axes
    stack = a.shape[:n_stack]
    r = a.shape[-1]
    ab = np.matmul(a.astype(np.float32).reshape(stack + (-1, r)),
                   b.astype(np.float32).reshape(stack + (r, -1)))
    return w.astype(np.float32) + np.float32(scale) * ab.reshape(w.shape)


class MergedStore:
    """The plain model's variables of a LoRA run, read like checkpoint.ParamStore (shapes, read):
    base projections with their adapters merged (W + s A B, float32), the run's router bias, the
    rest from the base."""

    def __init__(self, state_dir: str, cfg: RuntimeConfig, base: BaseReader):
        self.params_dir = os.path.abspath(state_dir)
        self.run = checkpoint.ParamStore(self.params_dir, cache_bytes=256 << 20, roots=("params", "rest"))
        self.base = base
        self.scale = cfg.lora.scale
        self.adapters = adapter_paths(self.run.shapes)
        self.shapes = dict(base.shapes)
        for p, (shape, dtype) in self.run.shapes.items():  # the router bias the run trained
            if p in self.shapes and p.endswith("router_bias"):
                self.shapes[p] = (shape, dtype)

    def kept_scales(self, expected) -> dict:
        """The base's own FP8 scales (BaseReader.kept_scales), for an FP8 export of the merge."""
        return self.base.kept_scales(expected)

    def _own(self, path: str) -> bool:
        return path in self.run.shapes and path.endswith("router_bias")

    def read(self, path: str, index: tuple) -> np.ndarray:
        if self._own(path):
            return self.run.read(path, index)
        w = self.base.read(path, index)
        prefix = self.adapters.get(path)
        if prefix is None:
            return w
        full = tuple(index) + (slice(None),) * (len(self.shapes[path][0]) - len(index))
        n_pre = len(self.run.shapes[prefix + ".a"][0]) - 1
        n_stack = len(self.run.shapes[prefix + ".b"][0]) - 1 - (len(full) - n_pre)
        a = self.run.read(prefix + ".a", full[:n_pre] + (slice(None),))
        b = self.run.read(prefix + ".b", full[:n_stack] + (slice(None),) + full[n_pre:])
        return merged_region(w, a, b, self.scale)
