"""The HF tensors of a Llama / Qwen2 checkpoint and the r1jax variables they fill
(r1jax/models/hf_layout.py HFTensor and Slot: convert applies each slot's `fn`, export its `inv`).

HF Linear weights are [out, in]; r1jax kernels [in, ...out] with heads split out, layers stacked on a
leading axis of `layers.*`:

    model.embed_tokens.weight                     [V, D]       embed [V, D]
    model.layers.N.input_layernorm.weight         [D]          layers.attn_norm.scale[N]
    model.layers.N.self_attn.q_proj.weight        [H*K, D]     layers.attn.q[N]     [D, H, K]
    model.layers.N.self_attn.{k,v}_proj.weight    [G*K, D]     layers.attn.{k,v}[N] [D, G, K]
    model.layers.N.self_attn.o_proj.weight        [D, H*K]     layers.attn.o[N]     [H, K, D]
    model.layers.N.self_attn.q_proj.bias          [H*K]        layers.attn.q_bias[N] [H, K]  (qkv_bias)
    model.layers.N.self_attn.{k,v}_proj.bias      [G*K]        layers.attn.{k,v}_bias[N] [G, K]
    model.layers.N.self_attn.o_proj.bias          [D]          layers.attn.o_bias[N] (o_bias)
    model.layers.N.post_attention_layernorm.weight [D]         layers.mlp_norm.scale[N]
    model.layers.N.mlp.{gate,up}_proj.weight      [F, D]       layers.mlp.{gate,up}[N] [D, F]
    model.layers.N.mlp.down_proj.weight           [D, F]       layers.mlp.down[N]   [F, D]
    model.norm.weight                             [D]          final_norm.scale
    lm_head.weight                                [V, D]       lm_head [D, V]  (absent when tied)
"""
from __future__ import annotations

import sys

from r1jax.models.hf_layout import HFTensor, Slot
from r1jax.models.common.config import ConfigError
from r1jax.models.llama.config import DenseConfig


def _layer_tensors(cfg: DenseConfig, n: int) -> list[HFTensor]:
    """HF tensors of decoder layer n, landing at index n of the `layers` stack."""
    d, h, g, k, f = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                     cfg.head_size, cfg.intermediate_size)
    hf = f"model.layers.{n}."
    out: list[HFTensor] = []

    def add(name, shape, path, **transform):
        out.append(HFTensor(hf + name, tuple(shape), (Slot(sys.intern("layers." + path), (n,),
                                                           **transform),)))

    add("input_layernorm.weight", (d,), "attn_norm.scale")
    a = "self_attn."
    add(a + "q_proj.weight", (h * k, d), "attn.q", swap=True, split=(1, h))
    add(a + "k_proj.weight", (g * k, d), "attn.k", swap=True, split=(1, g))
    add(a + "v_proj.weight", (g * k, d), "attn.v", swap=True, split=(1, g))
    if cfg.qkv_bias:
        add(a + "q_proj.bias", (h * k,), "attn.q_bias", split=(0, h))
        add(a + "k_proj.bias", (g * k,), "attn.k_bias", split=(0, g))
        add(a + "v_proj.bias", (g * k,), "attn.v_bias", split=(0, g))
    add(a + "o_proj.weight", (d, h * k), "attn.o", swap=True, split=(0, h))
    if cfg.o_bias:
        add(a + "o_proj.bias", (d,), "attn.o_bias")
    add("post_attention_layernorm.weight", (d,), "mlp_norm.scale")
    add("mlp.gate_proj.weight", (f, d), "mlp.gate", swap=True)
    add("mlp.up_proj.weight", (f, d), "mlp.up", swap=True)
    add("mlp.down_proj.weight", (d, f), "mlp.down", swap=True)
    return out


def hf_tensors(cfg: DenseConfig, names=frozenset(), *, with_mtp: bool) -> list[HFTensor]:
    """Every HF tensor a checkpoint of `cfg` holds, in transformers' order. `names` (the tensors
    present) changes nothing: these families have one layout. with_mtp: a ConfigError (no MTP)."""
    if with_mtp:
        raise ConfigError(f"with_mtp: {cfg.model_type} checkpoints have no multi-token-prediction "
                          "module")
    d, v = cfg.hidden_size, cfg.vocab_size
    out = [HFTensor("model.embed_tokens.weight", (v, d), (Slot("embed", ()),))]
    for n in range(cfg.num_hidden_layers):
        out += _layer_tensors(cfg, n)
    out.append(HFTensor("model.norm.weight", (d,), (Slot("final_norm.scale", ()),)))
    if not cfg.tie_word_embeddings:
        out.append(HFTensor("lm_head.weight", (v, d), (Slot("lm_head", (), swap=True),)))
    return out
