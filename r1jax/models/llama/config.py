"""The frozen configuration of the dense decoders (Llama and Qwen2: the R1-Distill models), the
llama presets, and llama's HF config.json I/O.

Field names follow HF config.json. Llama-3's `rope_scaling` dict is flattened into `rope_*` fields
(rope_factor 1.0 is plain rope). Qwen2 is this architecture with biases on q, k and v
(`qkv_bias`); r1jax/models/qwen2/config.py reads and writes its config.json through `read_hf_dict`
here with its own `HFDialect`. The run-time fields every family shares come from RuntimeConfig
(r1jax/models/common/config.py).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from r1jax.models.common.config import ConfigError, RuntimeConfig, validate_runtime

MODEL_TYPES = ("llama", "qwen2")


@dataclasses.dataclass(frozen=True)
class DenseConfig(RuntimeConfig):
    """Architecture of a Llama- or Qwen2-family model (names as in HF config.json), and the run-time
    choices every family shares (RuntimeConfig). The defaults are R1-Distill-Llama-8B."""

    model_type: str = "llama"               # "llama" or "qwen2": the registry key and the HF class
    vocab_size: int = 128256
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8            # grouped-query attention: divides num_attention_heads
    head_dim: int | None = None             # None: hidden_size // num_attention_heads (as HF)
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    max_position_embeddings: int = 131072
    tie_word_embeddings: bool = False       # the head is embed.T; no lm_head variable
    attention_bias: bool = False            # llama: biases on q, k, v AND o (qwen2 has none of its own)
    # Llama-3 rope scaling (rope_scaling {"rope_type": "llama3", ...}); rope_factor 1.0 = plain rope.
    rope_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position_embeddings: int = 8192

    def __post_init__(self):
        validate(self)

    @property
    def head_size(self) -> int:
        """Per-head width K of q, k and v: head_dim, or hidden_size // num_attention_heads."""
        return self.head_dim if self.head_dim is not None else \
            self.hidden_size // self.num_attention_heads

    @property
    def qkv_bias(self) -> bool:
        """Whether q, k and v have biases: always in Qwen2, with attention_bias in Llama."""
        return self.model_type == "qwen2" or self.attention_bias

    @property
    def o_bias(self) -> bool:
        """Whether the output projection has a bias (Llama's attention_bias only)."""
        return self.attention_bias

    @property
    def uses_llama3_rope(self) -> bool:
        return self.rope_factor != 1.0

    @property
    def softmax_scale(self) -> float:
        return self.head_size ** -0.5


def validate(c: DenseConfig) -> None:
    """Raises ConfigError naming the first contradictory or out-of-range field of `c`."""
    def bad(key, why):
        raise ConfigError(f"model config: {key}={getattr(c, key)!r}: {why}")

    if c.model_type not in MODEL_TYPES:
        bad("model_type", f"must be one of {MODEL_TYPES}")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
        v = getattr(c, key)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            bad(key, "must be a positive integer")
    if c.head_dim is not None and (not isinstance(c.head_dim, int) or isinstance(c.head_dim, bool)
                                   or c.head_dim <= 0):
        bad("head_dim", "must be a positive integer or null")
    if c.head_dim is None and c.hidden_size % c.num_attention_heads:
        bad("hidden_size", f"must be a multiple of num_attention_heads={c.num_attention_heads} "
                           "when head_dim is not given")
    if c.head_size % 2:
        bad("head_dim", f"the head width {c.head_size} must be even (rope rotates two halves)")
    if c.num_attention_heads % c.num_key_value_heads:
        bad("num_key_value_heads", f"must divide num_attention_heads={c.num_attention_heads}")
    for key in ("tie_word_embeddings", "attention_bias"):
        if not isinstance(getattr(c, key), bool):
            bad(key, "must be true or false")
    if not c.rms_norm_eps > 0:
        bad("rms_norm_eps", "must be > 0")
    if not c.rope_theta > 0:
        bad("rope_theta", "must be > 0")
    if not c.rope_factor >= 1.0:
        bad("rope_factor", "the llama3 rope factor must be >= 1 (1 = plain rope)")
    if c.uses_llama3_rope:
        if not c.rope_high_freq_factor > c.rope_low_freq_factor > 0:
            bad("rope_high_freq_factor", f"must exceed rope_low_freq_factor={c.rope_low_freq_factor} > 0")
        if not isinstance(c.rope_original_max_position_embeddings, int) or \
                c.rope_original_max_position_embeddings <= 0:
            bad("rope_original_max_position_embeddings", "must be a positive integer")
    if c.model_type == "qwen2" and c.attention_bias:
        bad("attention_bias", "is llama's key; qwen2 always has q/k/v biases and no o bias")
    validate_runtime(c)
    if c.fp8_weights:
        bad("fp8_weights", f"{c.model_type} checkpoints are not block-scaled FP8; hold weights in "
                           "param_dtype")
    if c.with_mtp:
        bad("with_mtp", f"{c.model_type} has no multi-token-prediction module")
    if c.moe_chunk_tokens:
        bad("moe_chunk_tokens", f"{c.model_type} has no routed experts; leave it 0")


# HF config.json <-> DenseConfig ------------------------------------------------------------------

# Keys of a config.json that carry no architecture (bookkeeping written by transformers or the
# release), in both dialects.
BOOKKEEPING_KEYS = frozenset({
    "architectures", "model_type", "torch_dtype", "dtype", "transformers_version", "use_cache",
    "initializer_range", "bos_token_id", "eos_token_id", "pad_token_id", "name_or_path",
    "_name_or_path", "output_attentions", "output_hidden_states", "return_dict", "problem_type",
    "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id", "tokenizer_class",
    "task_specific_params",
})
_ROPE_KEYS = frozenset({"type", "rope_type", "factor", "low_freq_factor", "high_freq_factor",
                        "original_max_position_embeddings", "rope_theta"})
_INT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings")


@dataclasses.dataclass(frozen=True)
class HFDialect:
    """How one model_type's config.json spells a DenseConfig."""
    model_type: str
    architecture: str                       # the transformers class, for `architectures`
    direct_keys: tuple[str, ...]            # DenseConfig fields read as they are (beyond _INT_KEYS' kind)
    required_keys: tuple[str, ...]          # must be present (no default transformers would agree on)
    defaults: Mapping[str, Any]             # what transformers assumes for an absent key
    required_values: Mapping[str, Any]      # keys this implementation computes for one value only
    ignored_keys: frozenset[str]            # keys read and dropped (after `check`)
    check: Callable[[dict, str], None] = lambda d, source: None  # dialect-specific refusals


def _rope_fields(d: dict, source: str) -> dict[str, Any]:
    """rope_theta and the flattened llama3 fields of a config.json (transformers 4 `rope_scaling` +
    `rope_theta`, or transformers 5 `rope_parameters` holding both)."""
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    key = "rope_parameters" if d.get("rope_parameters") else "rope_scaling"
    if not isinstance(rope, dict):
        raise ConfigError(f"{source}: {key} must be an object, got {rope!r}")
    unknown = sorted(set(rope) - _ROPE_KEYS)
    if unknown:
        raise ConfigError(f"{source}: {key} has unknown key(s) {unknown}")
    if "rope_theta" in rope and "rope_theta" in d and rope["rope_theta"] != d["rope_theta"]:
        raise ConfigError(f"{source}: rope_theta={d['rope_theta']} contradicts "
                          f"{key}.rope_theta={rope['rope_theta']}")
    out: dict[str, Any] = {"rope_theta": float(rope.get("rope_theta", d.get("rope_theta", 10000.0)))}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "default":
        return {**out, "rope_factor": 1.0}
    if rope_type != "llama3":
        raise ConfigError(f"{source}: {key}.rope_type={rope_type!r} is not supported "
                          "(llama3 or default)")
    for k in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
        if k not in rope:
            raise ConfigError(f"{source}: {key}.{k} is required with rope_type llama3")
    return {**out, "rope_factor": float(rope["factor"]),
            "rope_low_freq_factor": float(rope["low_freq_factor"]),
            "rope_high_freq_factor": float(rope["high_freq_factor"]),
            "rope_original_max_position_embeddings": rope["original_max_position_embeddings"]}


def read_hf_dict(d: dict[str, Any], dialect: HFDialect, *, source: str, **runtime) -> DenseConfig:
    """A DenseConfig from a parsed config.json of `dialect`; `runtime` sets RuntimeConfig fields.

    Unknown keys, missing required keys and values this implementation cannot compute are
    ConfigErrors naming `source` and the key."""
    known = set(dialect.direct_keys) | set(dialect.ignored_keys) | set(dialect.required_values) | \
        BOOKKEEPING_KEYS | {"rope_theta", "rope_scaling", "rope_parameters"}
    unknown = sorted(k for k in d if k not in known)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; not a {dialect.model_type} config "
                          "this version understands")
    if d.get("model_type", dialect.model_type) != dialect.model_type:
        raise ConfigError(f"{source}: model_type={d['model_type']!r}, expected {dialect.model_type!r}")
    missing = [k for k in dialect.required_keys if k not in d]
    if missing:
        raise ConfigError(f"{source}: required key {missing[0]!r} is missing")
    for key, want in dialect.required_values.items():
        if key in d and d[key] != want:
            raise ConfigError(f"{source}: {key}={d[key]!r} is not supported (only {want!r})")
    dialect.check(d, source)
    kw: dict[str, Any] = {**dialect.defaults, **{k: d[k] for k in dialect.direct_keys if k in d}}
    if kw.get("num_key_value_heads") is None:
        kw["num_key_value_heads"] = kw["num_attention_heads"]  # transformers' default: no grouping
    for k in _INT_KEYS:
        if kw.get(k) is not None and (not isinstance(kw[k], int) or isinstance(kw[k], bool)):
            raise ConfigError(f"{source}: {k}={kw[k]!r} must be an integer")
    if kw["head_dim"] is not None and kw["head_dim"] * kw["num_attention_heads"] == kw["hidden_size"]:
        kw["head_dim"] = None  # the derived width, stated: the same config as without it
    if isinstance(kw.get("rms_norm_eps"), int):
        kw["rms_norm_eps"] = float(kw["rms_norm_eps"])
    kw.update(_rope_fields(d, source))
    try:
        return DenseConfig(model_type=dialect.model_type, **kw, **runtime)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"{source}: {e}") from None


def write_hf_dict(c: DenseConfig, dialect: HFDialect) -> dict[str, Any]:
    """The config.json of `c` that `dialect`'s transformers class reads (release style: rope_theta
    at the top, llama3 scaling in rope_scaling)."""
    if c.model_type != dialect.model_type:
        raise ConfigError(f"model config: model_type={c.model_type!r} cannot be written as "
                          f"{dialect.model_type!r}")
    d: dict[str, Any] = {"architectures": [dialect.architecture], "model_type": c.model_type}
    d.update({k: getattr(c, k) for k in dialect.direct_keys})
    d.update(dialect.required_values)
    d.update(rope_theta=c.rope_theta, torch_dtype="bfloat16")
    if c.uses_llama3_rope:
        d["rope_scaling"] = {"rope_type": "llama3", "factor": c.rope_factor,
                             "low_freq_factor": c.rope_low_freq_factor,
                             "high_freq_factor": c.rope_high_freq_factor,
                             "original_max_position_embeddings": c.rope_original_max_position_embeddings}
    if d.get("head_dim", 0) is None:
        del d["head_dim"]  # transformers derives it as r1jax does
    return d


LLAMA = HFDialect(
    model_type="llama", architecture="LlamaForCausalLM",
    direct_keys=("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
                 "max_position_embeddings", "tie_word_embeddings", "attention_bias"),
    required_keys=("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                   "num_attention_heads"),
    # transformers' LlamaConfig defaults for keys a config.json may leave out
    defaults={"num_key_value_heads": None, "head_dim": None, "rms_norm_eps": 1e-6,
              "max_position_embeddings": 2048, "tie_word_embeddings": False, "attention_bias": False},
    required_values={"hidden_act": "silu", "mlp_bias": False, "attention_dropout": 0.0},
    ignored_keys=frozenset({"pretraining_tp"}),  # a slicing of the same matmuls in transformers 4
)


def from_hf_dict(d: dict[str, Any], *, source: str = "config", **runtime) -> DenseConfig:
    """A llama DenseConfig from a parsed config.json (read_hf_dict)."""
    return read_hf_dict(d, LLAMA, source=source, **runtime)


def to_hf_dict(c: DenseConfig) -> dict[str, Any]:
    """The config.json transformers' LlamaConfig reads for `c`."""
    return write_hf_dict(c, LLAMA)


# Presets (r1-distill shapes as published) -------------------------------------------------------

def _r1_distill_llama_8b() -> DenseConfig:
    return DenseConfig(model_type="llama", vocab_size=128256, hidden_size=4096,
                       intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=500000.0,
                       max_position_embeddings=131072, tie_word_embeddings=False, rope_factor=8.0,
                       rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                       rope_original_max_position_embeddings=8192)


def _r1_distill_llama_70b() -> DenseConfig:
    return DenseConfig(model_type="llama", vocab_size=128256, hidden_size=8192,
                       intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                       num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=500000.0,
                       max_position_embeddings=131072, tie_word_embeddings=False, rope_factor=8.0,
                       rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                       rope_original_max_position_embeddings=8192)


def _tiny_llama() -> DenseConfig:
    # Seconds on a CPU: grouped queries (4 heads over 2 K/V heads) and llama3 rope scaling.
    return DenseConfig(model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=1024,
                       rope_factor=8.0, rope_original_max_position_embeddings=128)


PRESETS = {
    "r1-distill-llama-8b": _r1_distill_llama_8b,
    "r1-distill-llama-70b": _r1_distill_llama_70b,
    "tiny-llama": _tiny_llama,
}
