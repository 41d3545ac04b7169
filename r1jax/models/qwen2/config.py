"""Qwen2's config.json dialect and presets: a DenseConfig (r1jax/models/llama/config.py) with
model_type "qwen2", whose q, k and v projections carry biases and whose o projection does not.

Qwen2's sliding-window attention is refused (`use_sliding_window: true`); with it off, transformers
attends over the full context in every layer and `sliding_window` / `max_window_layers` are unused.
"""
from __future__ import annotations

from typing import Any

from r1jax.models.common.config import ConfigError
from r1jax.models.llama.config import DenseConfig, HFDialect, read_hf_dict, write_hf_dict


def _check(d: dict[str, Any], source: str) -> None:
    """Refuses what the llama decoder does not compute: sliding windows, multimodal rope."""
    if d.get("use_sliding_window", False) is not False:
        raise ConfigError(f"{source}: use_sliding_window={d['use_sliding_window']!r} is not "
                          "supported (only false: full attention in every layer)")
    if d.get("use_mrope", False) is not False:
        raise ConfigError(f"{source}: use_mrope={d['use_mrope']!r} is not supported (only false)")
    layer_types = d.get("layer_types")
    if layer_types is not None:
        if not isinstance(layer_types, list):
            raise ConfigError(f"{source}: layer_types must be a list, got {layer_types!r}")
        other = [(i, t) for i, t in enumerate(layer_types) if t != "full_attention"]
        if other:
            raise ConfigError(f"{source}: layer_types[{other[0][0]}]={other[0][1]!r} is not "
                              "supported (only 'full_attention')")


QWEN2 = HFDialect(
    model_type="qwen2", architecture="Qwen2ForCausalLM",
    direct_keys=("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
                 "max_position_embeddings", "tie_word_embeddings"),
    required_keys=("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                   "num_attention_heads"),
    # transformers' Qwen2Config defaults for keys a config.json may leave out
    defaults={"num_key_value_heads": None, "head_dim": None, "rms_norm_eps": 1e-6,
              "max_position_embeddings": 32768, "tie_word_embeddings": False},
    required_values={"hidden_act": "silu", "attention_dropout": 0.0},
    # unused with use_sliding_window false (_check refuses it true)
    ignored_keys=frozenset({"use_sliding_window", "sliding_window", "max_window_layers",
                            "layer_types", "use_mrope"}),
    check=_check,
)


def from_hf_dict(d: dict[str, Any], *, source: str = "config", **runtime) -> DenseConfig:
    """A qwen2 DenseConfig from a parsed config.json."""
    return read_hf_dict(d, QWEN2, source=source, **runtime)


def to_hf_dict(c: DenseConfig) -> dict[str, Any]:
    """The config.json transformers' Qwen2Config reads for `c`."""
    d = write_hf_dict(c, QWEN2)
    d["use_sliding_window"] = False
    return d


# Presets (r1-distill shapes as published) -------------------------------------------------------

def _qwen2(**kw) -> DenseConfig:
    return DenseConfig(model_type="qwen2", tie_word_embeddings=False, max_position_embeddings=131072,
                       rope_factor=1.0, **kw)


PRESETS = {
    "r1-distill-qwen-1.5b": lambda: _qwen2(
        vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-6),
    "r1-distill-qwen-7b": lambda: _qwen2(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, rope_theta=10000.0, rms_norm_eps=1e-6),
    "r1-distill-qwen-14b": lambda: _qwen2(
        vocab_size=152064, hidden_size=5120, intermediate_size=13824, num_hidden_layers=48,
        num_attention_heads=40, num_key_value_heads=8, rope_theta=1000000.0, rms_norm_eps=1e-5),
    "r1-distill-qwen-32b": lambda: _qwen2(
        vocab_size=152064, hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
        num_attention_heads=40, num_key_value_heads=8, rope_theta=1000000.0, rms_norm_eps=1e-5),
    # Seconds on a CPU: q/k/v biases, 4 query heads over 2 K/V heads, plain rope.
    "tiny-qwen2": lambda: DenseConfig(
        model_type="qwen2", vocab_size=256, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
        rope_theta=10000.0, max_position_embeddings=1024, rope_factor=1.0),
}
