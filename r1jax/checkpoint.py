"""All Orbax use: model checkpoints (converted weights) saved and restored, sharded when asked.

A model checkpoint directory holds
    config.json       the HF-style model config (r1jax.model.config.to_hf_dict)
    r1jax.json        what the params hold: {"with_mtp": bool, "param_dtype": str, "format": 1}
    params/           an Orbax PyTree checkpoint of the model's variables as a nested dict
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from r1jax.model.config import ModelConfig, from_hf_dict, to_hf_dict
from r1jax.model.transformer import Transformer

META_NAME = "r1jax.json"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint directory that is missing, incomplete or corrupt; the message names the path."""


def abstract_model(cfg: ModelConfig) -> Transformer:
    """The model with ShapeDtypeStruct leaves: no memory is used."""
    return nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))


def param_shapes(cfg: ModelConfig) -> dict[str, jax.ShapeDtypeStruct]:
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


def save_model(directory: str, cfg: ModelConfig, params: dict) -> None:
    """Writes cfg and the nested dict `params` (arrays) as a model checkpoint into `directory`."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(to_hf_dict(cfg), f, indent=2)
    with open(os.path.join(directory, META_NAME), "w") as f:
        json.dump({"format": FORMAT_VERSION, "with_mtp": cfg.with_mtp,
                   "param_dtype": cfg.param_dtype}, f, indent=2)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(directory, "params"), params)
    ckptr.wait_until_finished()


def read_config(directory: str, **runtime) -> ModelConfig:
    """The ModelConfig a checkpoint was saved with; `runtime` overrides dtype/remat (not with_mtp)."""
    meta_path = os.path.join(directory, META_NAME)
    cfg_path = os.path.join(directory, "config.json")
    for p in (cfg_path, meta_path, os.path.join(directory, "params")):
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
    return from_hf_dict(hf, source=cfg_path, with_mtp=meta["with_mtp"], **runtime)


def load_model(directory: str, cfg: ModelConfig | None = None, shardings=None) -> Transformer:
    """Restores a model checkpoint. `cfg` (default: read_config) may change dtype/param_dtype/remat;
    `shardings` (a nested dict like the params, of jax.sharding.Sharding) places every array directly
    where it belongs; without it everything goes to the default device."""
    directory = os.path.abspath(directory)
    cfg = read_config(directory) if cfg is None else cfg
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


def numpy_params(model: Transformer) -> dict:
    """The model's variables as a nested dict of host numpy arrays."""
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))
