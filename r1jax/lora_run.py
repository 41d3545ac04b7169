"""A LoRA training run read for export: its adapters, its router bias, and the base model they sit on.

A run RUN trained with adapters (ModelConfig.lora.rank > 0) holds
    RUN/model/r1jax.json      besides format/with_mtp/param_dtype: "lora" {rank, alpha, dropout,
                              targets, rslora} and "base" {"path": the base model checkpoint, "digest"}
    RUN/checkpoints/STEP/state  Orbax {"params": the adapters only (e.g. dense_layers.attn.q_a_lora.a),
                              "rest": {..., router_bias}, "opt_state": ...}
The base's weights are not in the run: they are read from "base"."path" (r1jax/checkpoint.py format)
through `BaseReader`, the one place base arrays come from.

`MergedStore` reads like checkpoint.ParamStore over the plain model (no adapters): every adapted
projection is W + s A B (r1jax/model/lora.py's merged weight), float32; the router bias is the run's.
"""
from __future__ import annotations

import json
import os

import numpy as np

from r1jax import checkpoint
from r1jax.model.config import LoraConfig, ModelConfig, to_hf_dict

ADAPTER_SUFFIX = "_lora"


class LoraRunError(ValueError):
    """A LoRA run (or its base) that cannot be read as asked; the message names the path or key."""


def run_meta(model_dir: str) -> dict:
    """RUN/model/r1jax.json as a dict."""
    path = os.path.join(model_dir, checkpoint.META_NAME)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise LoraRunError(f"{path}: missing; not a training run's model directory") from None
    except json.JSONDecodeError as e:
        raise LoraRunError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None


def lora_config(meta: dict, source: str) -> LoraConfig:
    """The "lora" entry of r1jax.json (keys absent = LoraConfig defaults); LoraConfig() without one."""
    entry = meta.get("lora")
    if entry is None:
        return LoraConfig()
    known = {"rank", "alpha", "dropout", "targets", "rslora"}
    if not isinstance(entry, dict) or set(entry) - known:
        bad = sorted(set(entry) - known) if isinstance(entry, dict) else entry
        raise LoraRunError(f"{source}: \"lora\": unknown key(s) {bad}; expected {sorted(known)}")
    kw = dict(entry)
    if "targets" in kw:
        kw["targets"] = tuple(kw["targets"])
    return LoraConfig(**kw)


def run_config(model_dir: str) -> ModelConfig:
    """The ModelConfig of a run's model directory, with its adapters (`lora`) set."""
    cfg = checkpoint.read_config(model_dir)
    if cfg.lora.rank:
        return cfg
    lora = lora_config(run_meta(model_dir), os.path.join(model_dir, checkpoint.META_NAME))
    return cfg.replace(lora=lora)


def base_dir(model_dir: str) -> str:
    """The base model checkpoint a LoRA run's adapters sit on ("base"."path" of its r1jax.json)."""
    source = os.path.join(model_dir, checkpoint.META_NAME)
    base = run_meta(model_dir).get("base")
    path = base.get("path") if isinstance(base, dict) else None
    if not path:
        raise LoraRunError(f"{source}: \"base\".\"path\" is empty or missing: the run's base is not a "
                           "model checkpoint, so there are no base weights to export with the adapters")
    if not os.path.isdir(path):
        raise LoraRunError(f"{source}: base checkpoint {path} does not exist")
    record = getattr(checkpoint, "base_record", None)  # the trainer's record of the base, when present
    if record is not None and base.get("digest") and base.get("seed") is None:
        now = record(path, None, 0)["digest"]
        if now != base["digest"]:
            raise LoraRunError(f"{source}: base checkpoint {path} changed since training (digest {now}, "
                               f"the run recorded {base['digest']})")
    return path


class BaseReader:
    """The base model's arrays by r1jax path: read(path, index) -> float32 numpy array.

    A model checkpoint's params/ holding bf16 or float32 weights; the one place through which a LoRA
    export reads base weights. Projections held as FP8 codes (a sibling NAME_scale array) are refused
    by name: they would need dequantizing here."""

    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)
        self.cfg = checkpoint.read_config(self.directory)
        self.store = checkpoint.ParamStore(os.path.join(self.directory, "params"), cache_bytes=256 << 20)
        self.scales_path = os.path.join(self.directory, checkpoint.SCALES_NAME)
        held = sorted(p for p in self.store.shapes if p + "_scale" in self.store.shapes)
        if held:
            raise LoraRunError(f"{self.directory}/params: {held[0]} is held as FP8 codes ({held[0]}_scale); "
                               "export reads bf16 or float32 bases only (convert the release to bf16)")

    @property
    def shapes(self) -> dict[str, tuple[tuple, np.dtype]]:
        return self.store.shapes

    def read(self, path: str, index: tuple) -> np.ndarray:
        return np.asarray(self.store.read(path, index), np.float32)


def open_base(model_dir: str, cfg: ModelConfig) -> BaseReader:
    """The base checkpoint of the LoRA run whose model directory is `model_dir` and config `cfg`,
    checked to hold the same architecture."""
    base = BaseReader(base_dir(model_dir))
    if to_hf_dict(base.cfg) != to_hf_dict(cfg):
        diff = sorted(k for k, v in to_hf_dict(cfg).items() if to_hf_dict(base.cfg).get(k) != v)
        raise LoraRunError(f"{base.directory}: not the architecture of the run {model_dir} "
                           f"(config.json differs in {', '.join(diff) or 'its keys'})")
    return base


def adapter_paths(shapes) -> dict[str, str]:
    """{projection path: its adapter's path prefix} for every adapter in `shapes` (dotted paths:
    "dense_layers.attn.q_a" -> "dense_layers.attn.q_a_lora", whose ".a" and ".b" exist)."""
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

    def __init__(self, state_dir: str, cfg: ModelConfig, base: BaseReader):
        self.params_dir = os.path.abspath(state_dir)
        self.run = checkpoint.ParamStore(self.params_dir, cache_bytes=256 << 20, roots=("params", "rest"))
        self.base = base
        self.scale = cfg.lora.scale
        self.adapters = adapter_paths(self.run.shapes)
        self.shapes = dict(base.shapes)
        for p, (shape, dtype) in self.run.shapes.items():  # the router bias the run trained
            if p in self.shapes and p.endswith("router_bias"):
                self.shapes[p] = (shape, dtype)

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
