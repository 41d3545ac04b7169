"""The one mapping between the released HF tensor layout and r1jax parameter paths.

HF stores torch Linear weights as [out, in]; r1jax stores kernels as [in, ...out] with heads split
out, and stacks layers (and experts) along leading axes. Each HF tensor maps to one or more `Slot`s:
a parameter path, the leading indices it fills (layer, expert), and the transform of its data.
Convert (HF -> r1jax) walks `hf_tensors`; export (r1jax -> HF) will walk the same list backwards.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from r1jax.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Slot:
    path: str                      # dotted r1jax path, e.g. "moe_layers.mlp.gate"
    index: tuple[int, ...]         # leading indices into the target array (layer[, expert])
    fn: Callable[[np.ndarray], np.ndarray]  # HF data -> data of target[index]


@dataclasses.dataclass(frozen=True)
class HFTensor:
    name: str
    shape: tuple[int, ...]
    slots: tuple[Slot, ...]


def _same(w):
    return w


def _t(w):  # [out, in] -> [in, out]
    return w.T


def _split_out(heads: int):
    """[H*K, X] -> [X, H, K]: a projection into per-head features."""
    return lambda w: w.T.reshape(w.shape[1], heads, w.shape[0] // heads)


def _split_in(heads: int):
    """[D, H*V] -> [H, V, D]: the output projection from per-head values."""
    return lambda w: w.T.reshape(heads, w.shape[1] // heads, w.shape[0])


def _rows(lo: int, hi: int):
    """Rows lo:hi of [E, 2F, D], transposed to [E, D, F] (the fused gate_up_proj)."""
    return lambda w: np.swapaxes(w[:, lo:hi, :], 1, 2)


def _swap(w):  # [E, D, F] -> [E, F, D]
    return np.swapaxes(w, 1, 2)


def _block_tensors(cfg: ModelConfig, n: int, prefix: str, idx: tuple[int, ...], moe: bool,
                   fused_experts: bool) -> list[HFTensor]:
    """HF tensors of decoder layer `n` landing under r1jax `prefix` at leading indices `idx`."""
    d, h = cfg.hidden_size, cfg.num_attention_heads
    hf = f"model.layers.{n}."
    out: list[HFTensor] = []

    def add(name, shape, path, fn, extra=()):
        out.append(HFTensor(hf + name, tuple(shape), (Slot(f"{prefix}.{path}", idx + extra, fn),)))

    add("input_layernorm.weight", (d,), "attn_norm.scale", _same)
    add("post_attention_layernorm.weight", (d,), "mlp_norm.scale", _same)
    a = "self_attn."
    if cfg.q_lora_rank is None:
        add(a + "q_proj.weight", (h * cfg.qk_head_dim, d), "attn.q_proj", _split_out(h))
    else:
        add(a + "q_a_proj.weight", (cfg.q_lora_rank, d), "attn.q_a", _t)
        add(a + "q_a_layernorm.weight", (cfg.q_lora_rank,), "attn.q_a_norm.scale", _same)
        add(a + "q_b_proj.weight", (h * cfg.qk_head_dim, cfg.q_lora_rank), "attn.q_b", _split_out(h))
    add(a + "kv_a_proj_with_mqa.weight", (cfg.kv_lora_rank + cfg.qk_rope_head_dim, d), "attn.kv_a", _t)
    add(a + "kv_a_layernorm.weight", (cfg.kv_lora_rank,), "attn.kv_a_norm.scale", _same)
    add(a + "kv_b_proj.weight", (h * (cfg.qk_nope_head_dim + cfg.v_head_dim), cfg.kv_lora_rank),
        "attn.kv_b", _split_out(h))
    add(a + "o_proj.weight", (d, h * cfg.v_head_dim), "attn.o", _split_in(h))
    if not moe:
        f = cfg.intermediate_size
        add("mlp.gate_proj.weight", (f, d), "mlp.gate", _t)
        add("mlp.up_proj.weight", (f, d), "mlp.up", _t)
        add("mlp.down_proj.weight", (d, f), "mlp.down", _t)
        return out
    e, f = cfg.n_routed_experts, cfg.moe_intermediate_size
    add("mlp.gate.weight", (e, d), "mlp.router", _t)
    add("mlp.gate.e_score_correction_bias", (e,), "mlp.router_bias", _same)
    if fused_experts:
        out.append(HFTensor(hf + "mlp.experts.gate_up_proj", (e, 2 * f, d), (
            Slot(f"{prefix}.mlp.gate", idx, _rows(0, f)), Slot(f"{prefix}.mlp.up", idx, _rows(f, 2 * f)))))
        add("mlp.experts.down_proj", (e, d, f), "mlp.down", _swap)
    else:
        for j in range(e):
            x = f"mlp.experts.{j}."
            add(x + "gate_proj.weight", (f, d), "mlp.gate", _t, (j,))
            add(x + "up_proj.weight", (f, d), "mlp.up", _t, (j,))
            add(x + "down_proj.weight", (d, f), "mlp.down", _t, (j,))
    if cfg.n_shared_experts:
        fs = f * cfg.n_shared_experts
        add("mlp.shared_experts.gate_proj.weight", (fs, d), "mlp.shared.gate", _t)
        add("mlp.shared_experts.up_proj.weight", (fs, d), "mlp.shared.up", _t)
        add("mlp.shared_experts.down_proj.weight", (d, fs), "mlp.shared.down", _t)
    return out


def is_fused_layer(names, n: int) -> bool:
    """Whether HF layer `n` stores its experts fused (transformers >= 5 save format)."""
    return f"model.layers.{n}.mlp.experts.gate_up_proj" in names


def hf_tensors(cfg: ModelConfig, names=frozenset(), *, with_mtp: bool) -> list[HFTensor]:
    """Every HF tensor a checkpoint of `cfg` must hold, in file order of the release.

    `names` (the tensor names present) decides per layer between per-expert and fused experts.
    `with_mtp` includes layer `num_hidden_layers` (the MTP module).
    """
    d, v, k = cfg.hidden_size, cfg.vocab_size, cfg.first_k_dense_replace
    out = [HFTensor("model.embed_tokens.weight", (v, d), (Slot("embed", (), _same),))]
    for n in range(cfg.num_hidden_layers):
        if n < k:
            out += _block_tensors(cfg, n, "dense_layers", (n,), False, False)
        else:
            out += _block_tensors(cfg, n, "moe_layers", (n - k,), True, is_fused_layer(names, n))
    out.append(HFTensor("model.norm.weight", (d,), (Slot("final_norm.scale", (), _same),)))
    out.append(HFTensor("lm_head.weight", (v, d), (Slot("lm_head", (), _t),)))
    if with_mtp:
        n = cfg.num_hidden_layers
        out += _block_tensors(cfg, n, "mtp.block", (), True, is_fused_layer(names, n))
        m = f"model.layers.{n}."
        out += [
            HFTensor(m + "embed_tokens.weight", (v, d), (Slot("mtp.embed", (), _same),)),
            HFTensor(m + "enorm.weight", (d,), (Slot("mtp.enorm.scale", (), _same),)),
            HFTensor(m + "hnorm.weight", (d,), (Slot("mtp.hnorm.scale", (), _same),)),
            HFTensor(m + "eh_proj.weight", (d, 2 * d), (Slot("mtp.eh_proj", (), _t),)),
            HFTensor(m + "shared_head.norm.weight", (d,), (Slot("mtp.norm.scale", (), _same),)),
            HFTensor(m + "shared_head.head.weight", (v, d), (Slot("mtp.head", (), _t),)),
        ]
    return out


def has_mtp_tensors(cfg: ModelConfig, names) -> bool:
    prefix = f"model.layers.{cfg.num_hidden_layers}."
    return any(n.startswith(prefix) for n in names)
