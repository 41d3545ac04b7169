"""The frozen model configuration of the DeepSeek-V3 / R1 family, its presets, and HF config.json I/O.

Field names follow the released `config.json` so a reader can hold the two side by side. YaRN's
`rope_scaling` dict is flattened into `rope_*` fields. The run-time fields every family shares (dtype,
remat, adapters, ...) come from RuntimeConfig (r1jax/models/common/config.py).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

from r1jax.models.common.config import ConfigError, RuntimeConfig, validate_runtime

# Keys of a config.json that carry no architecture (bookkeeping written by transformers or the
# release). Anything else we do not know is an error: a silently ignored key could change the model.
_IGNORED_HF_KEYS = frozenset({
    "architectures", "model_type", "auto_map", "torch_dtype", "dtype", "transformers_version",
    "use_cache", "pretraining_tp", "initializer_range", "attention_dropout", "ep_size",
    "bos_token_id", "eos_token_id", "pad_token_id", "output_router_logits", "quantization_config",
    "name_or_path", "_name_or_path", "tie_word_embeddings", "num_key_value_heads", "aux_loss_alpha",
    "seq_aux", "moe_layer_freq", "hidden_act", "scoring_func", "topk_method", "attention_bias",
    "rope_interleave", "num_mtp_layers", "rope_scaling", "rope_parameters", "rope_theta",
    "max_position_embeddings", "output_attentions", "output_hidden_states", "return_dict",
    "problem_type", "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id",
    "tokenizer_class", "task_specific_params", "head_dim", "qk_head_dim",
})
# Of the ignored keys, these must hold the one value this implementation computes.
_REQUIRED_HF_VALUES = {
    "hidden_act": "silu",
    "scoring_func": "sigmoid",
    "topk_method": "noaux_tc",
    "moe_layer_freq": 1,
    "attention_bias": False,
    "tie_word_embeddings": False,
    "rope_interleave": True,
}
_ROPE_KEYS = frozenset({"type", "rope_type", "factor", "beta_fast", "beta_slow", "mscale",
                        "mscale_all_dim", "original_max_position_embeddings", "rope_theta",
                        "truncate", "attention_factor"})


@dataclasses.dataclass(frozen=True)
class ModelConfig(RuntimeConfig):
    """Architecture of a DeepSeek-V3-family model (names as in the released config.json), and the
    run-time choices every family shares (RuntimeConfig)."""

    model_type: ClassVar[str] = "deepseek_v3"   # the registry key (r1jax/models/registry.py)

    vocab_size: int = 129280
    hidden_size: int = 7168
    intermediate_size: int = 18432          # dense MLP width (first_k_dense_replace layers)
    moe_intermediate_size: int = 2048       # routed and shared expert width
    num_hidden_layers: int = 61
    first_k_dense_replace: int = 3
    num_attention_heads: int = 128
    q_lora_rank: int | None = 1536          # None: a full-rank q_proj (V2-Lite style)
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    n_routed_experts: int = 256
    n_shared_experts: int = 1
    num_experts_per_tok: int = 8
    n_group: int = 8
    topk_group: int = 4
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 2.5
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 163840
    # YaRN (rope_scaling); rope_factor 1.0 means plain RoPE.
    rope_factor: float = 40.0
    rope_original_max_position_embeddings: int = 4096
    rope_beta_fast: float = 32.0
    rope_beta_slow: float = 1.0
    rope_mscale: float = 1.0
    rope_mscale_all_dim: float = 1.0
    num_nextn_predict_layers: int = 1

    def __post_init__(self):
        validate(self)

    # Derived quantities ------------------------------------------------------------------------
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def num_moe_layers(self) -> int:
        return self.num_hidden_layers - self.first_k_dense_replace

    @property
    def uses_yarn(self) -> bool:
        return self.rope_factor != 1.0

    @property
    def softmax_scale(self) -> float:
        """(qk_nope + qk_rope)^-0.5, times mscale^2 under YaRN (mscale from `mscale_all_dim`)."""
        scale = self.qk_head_dim ** -0.5
        if self.uses_yarn and self.rope_mscale_all_dim:
            m = yarn_mscale(self.rope_factor, self.rope_mscale_all_dim)
            scale *= m * m
        return scale



def yarn_mscale(factor: float, mscale: float) -> float:
    """YaRN attention temperature 0.1*mscale*ln(factor)+1 (1 when factor <= 1); YaRN paper eq. 22."""
    if factor <= 1.0:
        return 1.0
    return 0.1 * mscale * math.log(factor) + 1.0


def validate(c: ModelConfig) -> None:
    """Raises ConfigError naming the first contradictory or out-of-range field."""
    def bad(key, why):
        raise ConfigError(f"model config: {key}={getattr(c, key)!r}: {why}")

    for key in ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size",
                "num_hidden_layers", "num_attention_heads", "kv_lora_rank", "qk_nope_head_dim",
                "qk_rope_head_dim", "v_head_dim", "n_routed_experts", "num_experts_per_tok",
                "n_group", "topk_group", "max_position_embeddings"):
        v = getattr(c, key)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            bad(key, "must be a positive integer")
    if c.q_lora_rank is not None and (not isinstance(c.q_lora_rank, int) or c.q_lora_rank <= 0):
        bad("q_lora_rank", "must be a positive integer or null")
    for key in ("n_shared_experts", "num_nextn_predict_layers", "first_k_dense_replace"):
        v = getattr(c, key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            bad(key, "must be a non-negative integer")
    if c.first_k_dense_replace > c.num_hidden_layers:
        bad("first_k_dense_replace", f"exceeds num_hidden_layers={c.num_hidden_layers}")
    if c.qk_rope_head_dim % 2:
        bad("qk_rope_head_dim", "must be even (rope rotates pairs)")
    if c.n_routed_experts % c.n_group:
        bad("n_group", f"must divide n_routed_experts={c.n_routed_experts}")
    per_group = c.n_routed_experts // c.n_group
    if per_group < 2:
        bad("n_group", "each group needs at least 2 experts (the group score sums its top-2)")
    if c.topk_group > c.n_group:
        bad("topk_group", f"exceeds n_group={c.n_group}")
    if c.num_experts_per_tok > c.topk_group * per_group:
        bad("num_experts_per_tok", f"exceeds the {c.topk_group * per_group} experts in the kept groups")
    if not c.rms_norm_eps > 0:
        bad("rms_norm_eps", "must be > 0")
    if not c.rope_theta > 0:
        bad("rope_theta", "must be > 0")
    if not c.rope_factor >= 1.0:
        bad("rope_factor", "YaRN factor must be >= 1")
    if c.uses_yarn and c.rope_original_max_position_embeddings <= 0:
        bad("rope_original_max_position_embeddings", "must be positive with YaRN")
    validate_runtime(c)
    if c.with_mtp and c.num_nextn_predict_layers != 1:
        bad("with_mtp", f"needs num_nextn_predict_layers == 1 (the released depth), "
                        f"got {c.num_nextn_predict_layers}")
    if c.with_mtp and c.num_moe_layers < 1:
        bad("with_mtp", "the MTP block is an MoE layer; the model has none")


# HF config.json <-> ModelConfig ------------------------------------------------------------------

_DIRECT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size",
                "num_hidden_layers", "first_k_dense_replace", "num_attention_heads", "q_lora_rank",
                "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
                "n_routed_experts", "n_shared_experts", "num_experts_per_tok", "n_group",
                "topk_group", "norm_topk_prob", "routed_scaling_factor", "rms_norm_eps",
                "num_nextn_predict_layers")


def from_hf_dict(d: dict[str, Any], *, source: str = "config", **runtime) -> ModelConfig:
    """Builds a ModelConfig from a parsed HF config.json; `runtime` sets dtype/param_dtype/with_mtp/remat.

    Unknown keys and values this implementation cannot compute are ConfigErrors naming `source`.
    """
    known = set(_DIRECT_KEYS) | _IGNORED_HF_KEYS
    unknown = sorted(k for k in d if k not in known)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; not a DeepSeek-V3-family config "
                          "this version understands")
    if d.get("model_type", "deepseek_v3") not in ("deepseek_v3", "kimi_k2"):
        raise ConfigError(f"{source}: model_type={d['model_type']!r}, expected 'deepseek_v3'")
    for key, want in _REQUIRED_HF_VALUES.items():
        if key in d and d[key] != want:
            raise ConfigError(f"{source}: {key}={d[key]!r} is not supported (only {want!r})")
    if d.get("num_key_value_heads") not in (None, d.get("num_attention_heads")):
        raise ConfigError(f"{source}: num_key_value_heads={d['num_key_value_heads']} must equal "
                          f"num_attention_heads={d.get('num_attention_heads')} in MLA")
    if "num_mtp_layers" in d and "num_nextn_predict_layers" in d and \
            d["num_mtp_layers"] != d["num_nextn_predict_layers"]:
        raise ConfigError(f"{source}: num_mtp_layers={d['num_mtp_layers']} contradicts "
                          f"num_nextn_predict_layers={d['num_nextn_predict_layers']}")
    kw: dict[str, Any] = {k: d[k] for k in _DIRECT_KEYS if k in d}
    if "num_mtp_layers" in d and "num_nextn_predict_layers" not in d:
        kw["num_nextn_predict_layers"] = d["num_mtp_layers"]
    kw["max_position_embeddings"] = d.get("max_position_embeddings", 4096)

    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise ConfigError(f"{source}: rope_scaling must be an object, got {rope!r}")
    bad_rope = sorted(set(rope) - _ROPE_KEYS)
    if bad_rope:
        raise ConfigError(f"{source}: rope_scaling has unknown key(s) {bad_rope}")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
    if "rope_theta" in rope and "rope_theta" in d and rope["rope_theta"] != d["rope_theta"]:
        raise ConfigError(f"{source}: rope_theta={d['rope_theta']} contradicts "
                          f"rope_scaling.rope_theta={rope['rope_theta']}")
    kw["rope_theta"] = float(theta)
    if rope_type == "yarn":
        if "attention_factor" in rope and rope["attention_factor"] is not None:
            raise ConfigError(f"{source}: rope_scaling.attention_factor is not supported; "
                              "DeepSeek derives it from mscale/mscale_all_dim")
        if rope.get("truncate", True) is not True:
            raise ConfigError(f"{source}: rope_scaling.truncate=false is not supported")
        if "factor" not in rope:
            raise ConfigError(f"{source}: rope_scaling.factor is required for yarn")
        kw["rope_factor"] = float(rope["factor"])
        kw["rope_original_max_position_embeddings"] = int(
            rope.get("original_max_position_embeddings", kw["max_position_embeddings"]))
        kw["rope_beta_fast"] = float(rope.get("beta_fast") or 32.0)
        kw["rope_beta_slow"] = float(rope.get("beta_slow") or 1.0)
        kw["rope_mscale"] = float(rope.get("mscale") or 0.0)
        kw["rope_mscale_all_dim"] = float(rope.get("mscale_all_dim") or 0.0)
        if kw["rope_factor"] == 1.0:
            raise ConfigError(f"{source}: rope_scaling.factor=1 with type yarn; drop rope_scaling")
    elif rope_type == "default":
        kw.update(rope_factor=1.0, rope_mscale=0.0, rope_mscale_all_dim=0.0)
    else:
        raise ConfigError(f"{source}: rope_scaling.type={rope_type!r} is not supported "
                          "(yarn or default)")
    for k, v in kw.items():
        if k in ("routed_scaling_factor", "rms_norm_eps") and isinstance(v, int) and not isinstance(v, bool):
            kw[k] = float(v)
    try:
        return ModelConfig(**kw, **runtime)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    except TypeError as e:
        raise ConfigError(f"{source}: {e}") from None


def to_hf_dict(c: ModelConfig) -> dict[str, Any]:
    """The release-style config.json for `c` (what transformers' DeepseekV3Config reads)."""
    d: dict[str, Any] = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3"}
    d.update({k: getattr(c, k) for k in _DIRECT_KEYS})
    d.update(num_key_value_heads=c.num_attention_heads, hidden_act="silu", scoring_func="sigmoid",
             topk_method="noaux_tc", moe_layer_freq=1, attention_bias=False,
             tie_word_embeddings=False, rope_theta=c.rope_theta,
             max_position_embeddings=c.max_position_embeddings, bos_token_id=0, eos_token_id=1,
             torch_dtype="bfloat16")
    if c.uses_yarn:
        d["rope_scaling"] = {"type": "yarn", "factor": c.rope_factor,
                             "original_max_position_embeddings": c.rope_original_max_position_embeddings,
                             "beta_fast": c.rope_beta_fast, "beta_slow": c.rope_beta_slow,
                             "mscale": c.rope_mscale, "mscale_all_dim": c.rope_mscale_all_dim}
    return d


# Presets -------------------------------------------------------------------------------------------

def _r1_671b() -> ModelConfig:
    return ModelConfig()  # the defaults are the released R1 config.json exactly


def _v3_small() -> ModelConfig:
    # The single-GPU benchmark model (tools/bench.py): 3.53B params, 0.80B active.
    return ModelConfig(vocab_size=129280, hidden_size=2048, intermediate_size=8192,
                       moe_intermediate_size=1024, num_hidden_layers=8, first_k_dense_replace=1,
                       num_attention_heads=16, q_lora_rank=768, kv_lora_rank=512,
                       qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
                       n_routed_experts=64, n_shared_experts=1, num_experts_per_tok=8, n_group=8,
                       topk_group=4, routed_scaling_factor=2.5, max_position_embeddings=8192,
                       rope_factor=1.0, rope_mscale=0.0, rope_mscale_all_dim=0.0)


def _small() -> ModelConfig:
    # A CPU-trainable R1-shaped model with the real vocabulary (~70M params, ~42M of them embeddings).
    return ModelConfig(vocab_size=129280, hidden_size=256, intermediate_size=768,
                       moe_intermediate_size=128, num_hidden_layers=4, first_k_dense_replace=1,
                       num_attention_heads=4, q_lora_rank=96, kv_lora_rank=64, qk_nope_head_dim=32,
                       qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=16, n_shared_experts=1,
                       num_experts_per_tok=4, n_group=4, topk_group=2, max_position_embeddings=4096,
                       rope_factor=4.0, rope_original_max_position_embeddings=1024)


def _tiny() -> ModelConfig:
    # Seconds on a CPU; same ratios as R1 (MLA with both LoRAs, grouped routing, YaRN).
    return ModelConfig(vocab_size=129280, hidden_size=64, intermediate_size=128,
                       moe_intermediate_size=32, num_hidden_layers=3, first_k_dense_replace=1,
                       num_attention_heads=4, q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16,
                       qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=8, n_shared_experts=1,
                       num_experts_per_tok=2, n_group=4, topk_group=2, max_position_embeddings=1024,
                       rope_factor=4.0, rope_original_max_position_embeddings=256)


PRESETS = {
    "r1-671b": _r1_671b,
    "v3-671b": _r1_671b,   # DeepSeek-V3 and R1 share one architecture and config
    "v3-small": _v3_small,
    "small": _small,
    "tiny": _tiny,
}
