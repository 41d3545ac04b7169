"""Model FLOPs per trained token: 6 x active matmul parameters + 3 x causal attention scores.

    attention scores, per token: L x 2 x H x (qk + v) x S/2   (QK^T and PV over half the keys, causal)

The embedding lookup is not a matmul and is not counted; the LM head is. MTP is not counted.
"""
from __future__ import annotations

from r1jax.models.deepseek_v3.config import ModelConfig


def attention_params(cfg: ModelConfig) -> int:
    """Matmul parameters of one MLA layer (q, kv and output projections)."""
    d, h = cfg.hidden_size, cfg.num_attention_heads
    q = d * h * cfg.qk_head_dim if cfg.q_lora_rank is None else \
        d * cfg.q_lora_rank + cfg.q_lora_rank * h * cfg.qk_head_dim
    kv = d * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) + \
        cfg.kv_lora_rank * h * (cfg.qk_nope_head_dim + cfg.v_head_dim)
    return q + kv + h * cfg.v_head_dim * d


def dense_mlp_params(cfg: ModelConfig) -> int:
    """Matmul parameters of one dense layer's MLP."""
    return 3 * cfg.hidden_size * cfg.intermediate_size


def moe_active_params(cfg: ModelConfig) -> int:
    """Matmul parameters one token passes through in one MoE layer: the router, its top-k routed
    experts and the shared experts."""
    d = cfg.hidden_size
    experts = cfg.num_experts_per_tok + cfg.n_shared_experts
    return d * cfg.n_routed_experts + experts * 3 * d * cfg.moe_intermediate_size


def head_params(cfg: ModelConfig) -> int:
    """Matmul parameters of the LM head."""
    return cfg.hidden_size * cfg.vocab_size


def active_matmul_params(cfg: ModelConfig) -> int:
    """Matmul parameters one token passes through (routed experts: only its top-k)."""
    return (cfg.num_hidden_layers * attention_params(cfg) + cfg.first_k_dense_replace * dense_mlp_params(cfg)
            + cfg.num_moe_layers * moe_active_params(cfg) + head_params(cfg))


def attention_score_flops(cfg: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs per token of one layer's QK^T and PV over half the keys (causal)."""
    return 2 * cfg.num_attention_heads * (cfg.qk_head_dim + cfg.v_head_dim) * seq_len / 2


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward + backward FLOPs per token at sequence length `seq_len`."""
    return 6.0 * active_matmul_params(cfg) + 3.0 * cfg.num_hidden_layers * attention_score_flops(cfg, seq_len)
