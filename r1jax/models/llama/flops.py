"""Model FLOPs per trained token of a dense decoder: 6 x matmul parameters + 3 x causal attention
scores, the formula of r1jax/models/deepseek_v3/flops.py:

    matmul parameters  = L x (D H K + 2 D G K + H K D + 3 D F) + D V
                         (q, k, v, o; gate, up, down; the head, tied or not)
    attention scores, per token: L x 2 x H x (K + K) x S/2   (QK^T and PV over half the keys, causal)
    train FLOPs/token  = 6 x matmul parameters + 3 x attention scores

Axis legend: L layers, D model, H query heads, G K/V heads, K head width, F MLP width, V vocab,
S sequence length. The embedding lookup, norms and biases are not matmuls and are not counted.
"""
from __future__ import annotations

from r1jax.models.llama.config import DenseConfig


def attention_params(cfg: DenseConfig) -> int:
    """Matmul parameters of one layer's attention (q, k, v and o projections)."""
    d, h, g, k = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_size
    return d * h * k + 2 * d * g * k + h * k * d


def mlp_params(cfg: DenseConfig) -> int:
    """Matmul parameters of one layer's SwiGLU MLP."""
    return 3 * cfg.hidden_size * cfg.intermediate_size


def active_matmul_params(cfg: DenseConfig) -> int:
    """Matmul parameters one token passes through: every layer's, and the head."""
    return cfg.num_hidden_layers * (attention_params(cfg) + mlp_params(cfg)) + \
        cfg.hidden_size * cfg.vocab_size


def attention_score_flops(cfg: DenseConfig, seq_len: int) -> float:
    """Forward FLOPs per token of one layer's QK^T and PV over half the keys (causal)."""
    return 2 * cfg.num_attention_heads * (2 * cfg.head_size) * seq_len / 2


def train_flops_per_token(cfg: DenseConfig, seq_len: int) -> float:
    """Forward + backward FLOPs per token at sequence length `seq_len`."""
    return 6.0 * active_matmul_params(cfg) + 3.0 * cfg.num_hidden_layers * attention_score_flops(cfg, seq_len)
