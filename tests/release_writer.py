"""Test-side writer of checkpoints in the DeepSeek-V3/R1 release layout, independent of r1jax's code.

From a transformers model's float32 state (fused experts) it writes per-expert tensors over several
shards with an index json, every `*_proj.weight` as float8_e4m3fn with a float32 `weight_scale_inv`
of 128x128 blocks (quantized here with plain NumPy, block by block, in three recipes so that many
blocks have no +-448 code), other tensors in bf16 (the router bias in float32), and optionally an MTP
layer. It returns the dequantized float32 values (computed with np.kron, not r1jax's formula) under
the transformers state names, for loading into the reference model.
"""
from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

E4M3 = ml_dtypes.float8_e4m3fn


def quantize_blocks(w: np.ndarray, rng: np.random.RandomState):
    """[M, N] float32 -> (q [M, N] e4m3, scale [ceil(M/128), ceil(N/128)] float32). Per block a
    recipe at random: amax/448 (a +-448 code), 1.37x that (none), or a power of two (ue8m0-like);
    an all-zero block gets the scale 0.5."""
    m, n = w.shape
    q = np.zeros((m, n), E4M3)
    s = np.zeros((-(-m // 128), -(-n // 128)), np.float32)
    for bi in range(s.shape[0]):
        for bj in range(s.shape[1]):
            blk = w[bi * 128:(bi + 1) * 128, bj * 128:(bj + 1) * 128]
            amax = np.float32(np.abs(blk).max())
            recipe = rng.randint(3)
            if amax == 0:
                scale = np.float32(0.5)
            elif recipe == 0:
                scale = np.float32(amax / np.float32(448))
            elif recipe == 1:
                scale = np.float32(amax / np.float32(448) * np.float32(1.37))
            else:
                scale = np.float32(2.0 ** np.ceil(np.log2(amax / 448.0)))
            s[bi, bj] = scale
            q[bi * 128:(bi + 1) * 128, bj * 128:(bj + 1) * 128] = \
                np.clip(blk / scale, -448, 448).astype(E4M3)
    return q, s


def dequantize_ref(q: np.ndarray, s: np.ndarray) -> np.ndarray:
    m, n = q.shape
    return q.astype(np.float32) * np.kron(s, np.ones((128, 128), np.float32))[:m, :n]


def per_expert(state: dict[str, np.ndarray], f: int) -> dict[str, np.ndarray]:
    """transformers' fused expert tensors -> the release's per-expert names."""
    out = {}
    for name, w in state.items():
        if name.endswith("mlp.experts.gate_up_proj"):
            base = name[:-len("gate_up_proj")]
            for j in range(w.shape[0]):
                out[f"{base}{j}.gate_proj.weight"] = w[j, :f]
                out[f"{base}{j}.up_proj.weight"] = w[j, f:]
        elif name.endswith("mlp.experts.down_proj"):
            base = name[:-len("down_proj")]
            for j in range(w.shape[0]):
                out[f"{base}{j}.down_proj.weight"] = w[j]
        else:
            out[name] = w
    return out


def _fused(release: dict[str, np.ndarray], state_names, n_experts: int) -> dict[str, np.ndarray]:
    """The release's per-expert values back under transformers' fused names."""
    out = {}
    for name in state_names:
        if name.endswith("mlp.experts.gate_up_proj"):
            base = name[:-len("gate_up_proj")]
            out[name] = np.stack([np.concatenate([release[f"{base}{j}.gate_proj.weight"],
                                                  release[f"{base}{j}.up_proj.weight"]])
                                  for j in range(n_experts)])
        elif name.endswith("mlp.experts.down_proj"):
            base = name[:-len("down_proj")]
            out[name] = np.stack([release[f"{base}{j}.down_proj.weight"] for j in range(n_experts)])
        else:
            out[name] = release[name]
    return out


def mtp_layer(state: dict[str, np.ndarray], cfg, rng: np.random.RandomState) -> dict[str, np.ndarray]:
    """A release-style MTP layer (index num_hidden_layers), per-expert, float32: the last layer
    perturbed, plus enorm, hnorm, eh_proj, embed_tokens and shared_head."""
    last, mtp = f"model.layers.{cfg.num_hidden_layers - 1}.", f"model.layers.{cfg.num_hidden_layers}."
    out = {mtp + k[len(last):]: w + rng.normal(0, 0.01, w.shape).astype(np.float32)
           for k, w in per_expert(state, cfg.moe_intermediate_size).items() if k.startswith(last)}
    d, v = cfg.hidden_size, cfg.vocab_size
    for name, shape in [("enorm.weight", (d,)), ("hnorm.weight", (d,)), ("eh_proj.weight", (d, 2 * d)),
                        ("embed_tokens.weight", (v, d)), ("shared_head.norm.weight", (d,)),
                        ("shared_head.head.weight", (v, d))]:
        out[mtp + name] = rng.normal(1.0 if shape == (d,) else 0.0, 0.02, shape).astype(np.float32)
    return out


def write_release(state: dict[str, np.ndarray], cfg, out_dir, *, shards: int = 3, mtp=None,
                  bf16_names=(), seed: int = 0, fp8_suffixes=("_proj.weight",)) -> dict[str, np.ndarray]:
    """Writes `state` (transformers' float32 state dict) plus `mtp` tensors in the release layout.

    bf16_names: FP8 tensors to keep in bf16 instead; fp8_suffixes: the names ending so are FP8 (the
    DeepSeek-V3/R1 release also has `kv_a_proj_with_mqa.weight` in FP8: add "_proj_with_mqa.weight").
    Returns the dequantized float32 values under transformers' names (MTP excluded).
    """
    rng = np.random.RandomState(seed)
    release = per_expert(state, cfg.moe_intermediate_size)
    release.update(mtp or {})
    stored, values = {}, {}
    for name, w in release.items():
        if name.endswith(tuple(fp8_suffixes)) and name not in bf16_names:
            q, s = quantize_blocks(np.asarray(w, np.float32), rng)
            stored[name], stored[name + "_scale_inv"] = q, s
            values[name] = dequantize_ref(q, s)
        elif name.endswith("e_score_correction_bias"):
            stored[name] = values[name] = np.asarray(w, np.float32)
        else:
            stored[name] = np.asarray(w, np.float32).astype(ml_dtypes.bfloat16)
            values[name] = stored[name].astype(np.float32)
    os.makedirs(out_dir)
    names = sorted(stored)
    weight_map = {}
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: np.ascontiguousarray(stored[n]) for n in names[i::shards]}
        save_file(part, os.path.join(out_dir, fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return _fused(values, state, cfg.n_routed_experts)


def fp8_release(root, cfg, *, seed: int = 3, shards: int = 3, fp8_suffixes=("_proj.weight",)):
    """A random transformers model of `cfg` written by `write_release` to root/"hf" with an MTP
    layer (its eh_proj kept bf16, as some releases do) and a config.json carrying the release's
    quantization_config. Returns (hf_dir, the transformers model holding the dequantized values)."""
    import torch

    from hf_oracle import hf_state, random_hf_model
    from r1jax.models.deepseek_v3.config import to_hf_dict
    model = random_hf_model(cfg, seed=seed)
    state = hf_state(model)
    mtp = mtp_layer(state, cfg, np.random.RandomState(seed))
    hf_dir = os.path.join(str(root), "hf")
    values = write_release(state, cfg, hf_dir, shards=shards, mtp=mtp, seed=seed, fp8_suffixes=fp8_suffixes,
                           bf16_names={f"model.layers.{cfg.num_hidden_layers}.eh_proj.weight"})
    config = to_hf_dict(cfg)
    config["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3",
                                     "quant_method": "fp8", "weight_block_size": [128, 128]}
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with torch.no_grad():
        model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in values.items()},
                              strict=True)
    return hf_dir, model
