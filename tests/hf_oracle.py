"""The independent reference for parity tests: transformers' DeepseekV3ForCausalLM (CPU torch).

Builds an HF model from an r1jax ModelConfig with every weight random (norm scales, router bias and
all), and hands its weights to r1jax through the same layout table convert uses.
"""
from __future__ import annotations

import numpy as np
import torch
import transformers

from r1jax.models import registry
from r1jax.interop.convert import fill_params
from r1jax.models.checkpoint import unflatten
from r1jax.models.deepseek_v3.config import ModelConfig, to_hf_dict


def hf_config(cfg: ModelConfig) -> transformers.DeepseekV3Config:
    return transformers.DeepseekV3Config(**to_hf_dict(cfg), attn_implementation="eager")


def random_hf_model(cfg: ModelConfig, seed: int = 0, bias_scale: float = 0.5):
    """A float32 HF model of `cfg` whose every tensor is random (std 0.02 matrices, norms around 1,
    router bias with spread `bias_scale`, so group selection depends on it)."""
    torch.manual_seed(seed)
    model = transformers.DeepseekV3ForCausalLM(hf_config(cfg)).float().eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if "inv_freq" in name:
                continue
            if name.endswith("e_score_correction_bias"):
                p.copy_(torch.randn(p.shape, generator=g) * bias_scale)
            elif p.ndim == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=g) * (3.0 if "gate.weight" in name else 1.0))
    return model


def hf_state(model) -> dict[str, np.ndarray]:
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    return {k: v for k, v in sd.items() if "inv_freq" not in k}


def r1jax_params(cfg: ModelConfig, state: dict[str, np.ndarray]) -> dict:
    """Nested params dict for r1jax from an HF state dict (fused or per-expert names)."""
    expected = registry.hf_tensors(cfg, set(state), with_mtp=False)
    missing = {t.name for t in expected} - set(state)
    assert not missing, missing
    return unflatten(fill_params(cfg, expected, lambda name, i: state[name]))


def hf_loss_and_logits(model, tokens: np.ndarray, mask: np.ndarray | None = None):
    """Mean next-token NLL over predicted tokens (padding excluded) and logits, float32."""
    ids = torch.tensor(tokens)
    am = None if mask is None else torch.tensor(mask)
    out = model(input_ids=ids, attention_mask=am)
    logits = out.logits
    lp = torch.log_softmax(logits[:, :-1].double(), -1)
    nll = -lp.gather(-1, ids[:, 1:, None])[..., 0]
    valid = torch.ones_like(nll, dtype=torch.bool) if am is None else (am[:, 1:] > 0)
    loss = (nll * valid).sum() / valid.sum()
    return loss, logits
