"""DeepSeek-V3 / R1's HF checkpoint layout: every tensor of the release and where it lands in the
r1jax model (r1jax/models/hf_layout.py Slot, HFTensor), in file order of the release.

Decoder layer n < first_k_dense_replace lands in the dense stack at row n, later ones in the MoE
stack at row n - first_k_dense_replace; layer num_hidden_layers is the MTP module. Routed experts
come one tensor per expert (the release) or fused per layer (transformers >= 5 save format).
"""
from __future__ import annotations

import sys

from r1jax.models.common import quantized
from r1jax.models.hf_layout import HFTensor, Slot
from r1jax.models.deepseek_v3.config import ModelConfig, to_hf_dict


def _block_tensors(cfg: ModelConfig, n: int, prefix: str, idx: tuple[int, ...], moe: bool,
                   fused_experts: bool) -> list[HFTensor]:
    """HF tensors of decoder layer `n` landing under r1jax `prefix` at leading indices `idx`."""
    d, h = cfg.hidden_size, cfg.num_attention_heads
    hf = f"model.layers.{n}."
    out: list[HFTensor] = []

    def add(name, shape, path, extra=(), **transform):
        out.append(HFTensor(hf + name, tuple(shape),
                            (Slot(sys.intern(f"{prefix}.{path}"), idx + extra, **transform),)))

    add("input_layernorm.weight", (d,), "attn_norm.scale")
    add("post_attention_layernorm.weight", (d,), "mlp_norm.scale")
    a = "self_attn."
    # [H*K, X] -> [X, H, K]: a projection into per-head features.
    split_out = dict(swap=True, split=(1, h))
    if cfg.q_lora_rank is None:
        add(a + "q_proj.weight", (h * cfg.qk_head_dim, d), "attn.q_proj", **split_out)
    else:
        add(a + "q_a_proj.weight", (cfg.q_lora_rank, d), "attn.q_a", swap=True)
        add(a + "q_a_layernorm.weight", (cfg.q_lora_rank,), "attn.q_a_norm.scale")
        add(a + "q_b_proj.weight", (h * cfg.qk_head_dim, cfg.q_lora_rank), "attn.q_b", **split_out)
    add(a + "kv_a_proj_with_mqa.weight", (cfg.kv_lora_rank + cfg.qk_rope_head_dim, d), "attn.kv_a",
        swap=True)
    add(a + "kv_a_layernorm.weight", (cfg.kv_lora_rank,), "attn.kv_a_norm.scale")
    add(a + "kv_b_proj.weight", (h * (cfg.qk_nope_head_dim + cfg.v_head_dim), cfg.kv_lora_rank),
        "attn.kv_b", **split_out)
    # [D, H*V] -> [H, V, D]: the output projection from per-head values.
    add(a + "o_proj.weight", (d, h * cfg.v_head_dim), "attn.o", swap=True, split=(0, h))
    if not moe:
        f = cfg.intermediate_size
        add("mlp.gate_proj.weight", (f, d), "mlp.gate", swap=True)
        add("mlp.up_proj.weight", (f, d), "mlp.up", swap=True)
        add("mlp.down_proj.weight", (d, f), "mlp.down", swap=True)
        return out
    e, f = cfg.n_routed_experts, cfg.moe_intermediate_size
    add("mlp.gate.weight", (e, d), "mlp.router", swap=True)
    add("mlp.gate.e_score_correction_bias", (e,), "mlp.router_bias")
    if fused_experts:
        # [E, 2F, D] -> gate and up [E, D, F] each; down [E, D, F] -> [E, F, D].
        out.append(HFTensor(hf + "mlp.experts.gate_up_proj", (e, 2 * f, d), (
            Slot(f"{prefix}.mlp.gate", idx, swap=True, rows=(0, f)),
            Slot(f"{prefix}.mlp.up", idx, swap=True, rows=(f, 2 * f)))))
        add("mlp.experts.down_proj", (e, d, f), "mlp.down", swap=True)
    else:
        for j in range(e):
            x = f"mlp.experts.{j}."
            add(x + "gate_proj.weight", (f, d), "mlp.gate", (j,), swap=True)
            add(x + "up_proj.weight", (f, d), "mlp.up", (j,), swap=True)
            add(x + "down_proj.weight", (d, f), "mlp.down", (j,), swap=True)
    if cfg.n_shared_experts:
        fs = f * cfg.n_shared_experts
        add("mlp.shared_experts.gate_proj.weight", (fs, d), "mlp.shared.gate", swap=True)
        add("mlp.shared_experts.up_proj.weight", (fs, d), "mlp.shared.up", swap=True)
        add("mlp.shared_experts.down_proj.weight", (d, fs), "mlp.shared.down", swap=True)
    return out


def is_fused_layer(names, n: int) -> bool:
    """Whether HF layer `n` stores its experts fused (transformers >= 5 save format)."""
    return f"model.layers.{n}.mlp.experts.gate_up_proj" in names


def hf_tensors(cfg: ModelConfig, names=frozenset(), *, with_mtp: bool) -> list[HFTensor]:
    """Every HF tensor a checkpoint of `cfg` must hold, in file order of the release.

    `names` (the tensor names present) decides per layer between per-expert and fused experts; the
    default (no names) is the release's per-expert layout.
    `with_mtp` includes layer `num_hidden_layers` (the MTP module).
    """
    d, v, k = cfg.hidden_size, cfg.vocab_size, cfg.first_k_dense_replace
    out = [HFTensor("model.embed_tokens.weight", (v, d), (Slot("embed", ()),))]
    for n in range(cfg.num_hidden_layers):
        if n < k:
            out += _block_tensors(cfg, n, "dense_layers", (n,), False, False)
        else:
            out += _block_tensors(cfg, n, "moe_layers", (n - k,), True, is_fused_layer(names, n))
    out.append(HFTensor("model.norm.weight", (d,), (Slot("final_norm.scale", ()),)))
    out.append(HFTensor("lm_head.weight", (v, d), (Slot("lm_head", (), swap=True),)))
    if with_mtp:
        n = cfg.num_hidden_layers
        out += _block_tensors(cfg, n, "mtp.block", (), True, is_fused_layer(names, n))
        m = f"model.layers.{n}."
        out += [
            HFTensor(m + "embed_tokens.weight", (v, d), (Slot("mtp.embed", ()),)),
            HFTensor(m + "enorm.weight", (d,), (Slot("mtp.enorm.scale", ()),)),
            HFTensor(m + "hnorm.weight", (d,), (Slot("mtp.hnorm.scale", ()),)),
            HFTensor(m + "eh_proj.weight", (d, 2 * d), (Slot("mtp.eh_proj", (), swap=True),)),
            HFTensor(m + "shared_head.norm.weight", (d,), (Slot("mtp.norm.scale", ()),)),
            HFTensor(m + "shared_head.head.weight", (v, d), (Slot("mtp.head", (), swap=True),)),
        ]
    return out


def mtp_tensors(cfg: ModelConfig, names) -> frozenset[str]:
    """The names among `names` that belong to the MTP module: layer num_hidden_layers's."""
    prefix = f"model.layers.{cfg.num_hidden_layers}."
    return frozenset(n for n in names if n.startswith(prefix))


def has_mtp_tensors(cfg: ModelConfig, names) -> bool:
    """Whether a checkpoint holding `names` has the MTP module's weights."""
    return bool(mtp_tensors(cfg, names))


# The release's config.json quantization_config of its block-scaled FP8 weights.
QUANTIZATION_CONFIG = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                       "weight_block_size": [quantized.BLOCK, quantized.BLOCK]}


def export_config(cfg: ModelConfig, *, with_mtp: bool, fp8: bool) -> dict:
    """config.json of an export: the model's, saying whether MTP weights and FP8 are present."""
    d = to_hf_dict(cfg)
    if not with_mtp:
        d["num_nextn_predict_layers"] = 0  # no MTP weights follow; readers must not look for them
    if fp8:
        d["quantization_config"] = dict(QUANTIZATION_CONFIG)
    return d
