"""The independent reference for the dense families' parity tests: transformers' LlamaForCausalLM and
Qwen2ForCausalLM (CPU torch, float32, eager attention).

Builds an HF model from an r1jax DenseConfig (through the family's to_hf_dict) with every tensor
random (norm scales and biases too), and hands its weights to r1jax through the family's layout
table (r1jax/models/llama/layout.py), the table convert and export use.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

from r1jax.models import registry

HF_CLASSES = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
              "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}


def hf_config(cfg):
    """transformers' config of `cfg`, read from r1jax's config.json for it."""
    config_cls, _ = HF_CLASSES[cfg.model_type]
    return config_cls(**registry.to_hf_dict(cfg), attn_implementation="eager")


def random_hf_model(cfg, seed: int = 0):
    """A float32 HF model of `cfg` whose every tensor is random: std 0.02 matrices, norm scales
    around 1, biases with std 0.1 (so that a bias put in the wrong place shows)."""
    torch.manual_seed(seed)
    _, model_cls = HF_CLASSES[cfg.model_type]
    model = model_cls(hf_config(cfg)).float().eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    return model


def hf_state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().float().numpy() for k, v in model.state_dict().items()
            if "inv_freq" not in k}


def r1jax_model(cfg, state: dict[str, np.ndarray]):
    """The r1jax model of `cfg` holding the HF state dict's weights, placed by the layout table.
    Asserts that the table fills every model variable exactly once and names only present tensors."""
    abstract = nnx.eval_shape(lambda: registry.build(cfg, nnx.Rngs(0)))
    graphdef, shapes = nnx.split(abstract)
    flat = {".".join(map(str, k)): v for k, v in nnx.to_flat_state(shapes)}
    arrays = {p: np.full(v.get_value().shape, np.nan, np.float32) for p, v in flat.items()}
    filled: dict[str, int] = {}
    for t in registry.hf_tensors(cfg, frozenset(state), with_mtp=False):
        assert t.name in state, f"layout names {t.name}, absent from the HF model"
        assert state[t.name].shape == t.shape, (t.name, state[t.name].shape, t.shape)
        for slot in t.slots:
            piece = slot.fn(state[t.name])
            assert arrays[slot.path][slot.index].shape == piece.shape, (t.name, slot.path)
            arrays[slot.path][slot.index] = piece
            filled[slot.path] = filled.get(slot.path, 0) + int(np.prod(piece.shape))
    for p, a in arrays.items():
        assert filled.get(p) == a.size and not np.isnan(a).any(), f"{p}: not filled exactly once"
    nested: dict = {}
    for p, a in arrays.items():
        node = nested
        *parents, leaf = p.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = jnp.asarray(a)
    nnx.replace_by_pure_dict(shapes, nested)
    return nnx.merge(graphdef, shapes)


def hf_param_count(cfg) -> int:
    """Parameters of transformers' model of `cfg`, built on the meta device (nothing allocated)."""
    _, model_cls = HF_CLASSES[cfg.model_type]
    with torch.device("meta"):
        model = model_cls(hf_config(cfg))
    return sum(p.numel() for p in model.parameters())


def hf_param_count_of(cfg, keep) -> int:
    """Parameters of the meta-device HF model whose name satisfies keep(name)."""
    _, model_cls = HF_CLASSES[cfg.model_type]
    with torch.device("meta"):
        model = model_cls(hf_config(cfg))
    return sum(p.numel() for n, p in model.named_parameters() if keep(n))
