"""Model families by `model_type`, and what every command asks of them: a config from config.json
or a preset name, the model for a config, its HF layout and FLOPs (r1jax/models/family.py).

A new family is a folder under r1jax/models/ with a `family.py` holding FAMILY, and one line in
FAMILIES below.
"""
from __future__ import annotations

import json
import os
from typing import Any

from r1jax.models.common.config import ConfigError
from r1jax.models.deepseek_v3.family import FAMILY as DEEPSEEK_V3
from r1jax.models.family import Family
from r1jax.models.llama.family import FAMILY as LLAMA
from r1jax.models.qwen2.family import FAMILY as QWEN2

FAMILIES: tuple[Family, ...] = (DEEPSEEK_V3, LLAMA, QWEN2)

_BY_TYPE = {t: f for f in FAMILIES for t in f.model_types}
DEFAULT_MODEL_TYPE = "deepseek_v3"   # a config.json without model_type is read as R1's


def family(model_type: str, source: str = "config") -> Family:
    """The family reading config.json `model_type`; ConfigError naming `source` if none does."""
    if model_type not in _BY_TYPE:
        raise ConfigError(f"{source}: model_type={model_type!r} is not supported; r1jax reads "
                          f"{', '.join(sorted(_BY_TYPE))}")
    return _BY_TYPE[model_type]


def family_of(cfg) -> Family:
    """The family of a config object."""
    return family(cfg.model_type)


def presets() -> dict[str, tuple[Family, Any]]:
    """Every preset name -> (family, its config factory)."""
    return {name: (f, make) for f in FAMILIES for name, make in f.presets.items()}


def preset(name: str, **overrides):
    """A named preset of any family, with run-time (or architecture) fields overridden."""
    table = presets()
    if name not in table:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {sorted(table)}")
    try:
        return table[name][1]().replace(**overrides)
    except TypeError as e:
        raise ConfigError(f"preset {name!r}: {e}") from None


def from_hf_dict(d: dict[str, Any], *, source: str = "config", **runtime):
    """The config of a parsed config.json, by its model_type."""
    f = family(d.get("model_type", DEFAULT_MODEL_TYPE), source)
    return f.config_from_hf(d, source=source, **runtime)


def to_hf_dict(cfg) -> dict[str, Any]:
    return family_of(cfg).config_to_hf(cfg)


def load_hf_config(path: str, **runtime):
    """Reads `path` (a config.json or a directory holding one) into its family's config."""
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    try:
        with open(path) as f:
            d = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return from_hf_dict(d, source=path, **runtime)


def build(cfg, rngs):
    """The model of `cfg` (its family's nnx.Module) with parameters from `rngs`."""
    return family_of(cfg).model(cfg, rngs=rngs)


def hf_tensors(cfg, names=frozenset(), *, with_mtp: bool) -> list:
    """Every HF tensor a checkpoint of `cfg` holds (r1jax/models/hf_layout.py HFTensor)."""
    return family_of(cfg).hf_tensors(cfg, names, with_mtp=with_mtp)


def train_flops_per_token(cfg, seq_len: int) -> float:
    return family_of(cfg).train_flops_per_token(cfg, seq_len)


def mtp_tensors(cfg, names) -> frozenset:
    """The names among a checkpoint's tensor `names` that are its MTP module's (none for a family
    without one)."""
    return family_of(cfg).mtp_tensors(cfg, names)


def has_mtp_tensors(cfg, names) -> bool:
    return bool(mtp_tensors(cfg, names))


def fp8_blocks(cfg) -> bool:
    """Whether cfg's family stores projections block-scaled FP8 (convert keeps, export writes them)."""
    return family_of(cfg).fp8_blocks


def export_hf_config(cfg, *, with_mtp: bool, fp8: bool) -> dict:
    """The config.json of an export of `cfg`: its family's, saying whether MTP weights and FP8
    blocks follow."""
    f = family_of(cfg)
    if f.export_config is None:
        return f.config_to_hf(cfg)
    return f.export_config(cfg, with_mtp=with_mtp, fp8=fp8)
