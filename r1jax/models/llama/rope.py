"""Rotary position embedding on [first half | second half] of each head (rotate-half, as HF Llama and
Qwen2 lay heads out), with Llama-3 frequency scaling.

Axis legend: B batch, T time, H heads, K head width (even), K/2 rotation frequencies.

Dimension i of the first half and dimension i + K/2 form one rotated pair, turned by
positions * inv_freq[i], inv_freq[i] = rope_theta^(-2i/K).

Llama-3 scaling (rope_factor > 1), by wavelength w = 2 pi / inv_freq against the original context
C = rope_original_max_position_embeddings:
    w < C / high_freq_factor:  kept
    w > C / low_freq_factor:   divided by rope_factor
    otherwise:                 (1 - s) inv_freq / factor + s inv_freq,
                               s = (C / w - low_freq_factor) / (high_freq_factor - low_freq_factor)
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from r1jax.models.llama.config import DenseConfig


def inv_freq(cfg: DenseConfig) -> np.ndarray:
    """Inverse frequencies [K/2] float32 (computed in float64, rounded once), llama3-scaled when
    cfg.rope_factor > 1 (module docstring)."""
    k = cfg.head_size
    freq = 1.0 / cfg.rope_theta ** (np.arange(0, k, 2, dtype=np.float64) / k)
    if not cfg.uses_llama3_rope:
        return freq.astype(np.float32)
    ctx, lo, hi = (cfg.rope_original_max_position_embeddings, cfg.rope_low_freq_factor,
                   cfg.rope_high_freq_factor)
    wavelength = 2 * math.pi / freq
    s = (ctx / wavelength - lo) / (hi - lo)
    blended = (1 - s) * freq / cfg.rope_factor + s * freq
    out = np.where(wavelength < ctx / hi, freq,
                   np.where(wavelength > ctx / lo, freq / cfg.rope_factor, blended))
    return out.astype(np.float32)


def rope_tables(cfg: DenseConfig, positions: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """cos, sin [B, T, K/2] float32 for integer `positions` [B, T]."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq(cfg))
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """Rotates pairs (x[i], x[i + K/2]) of x [B, T, H, K] by cos/sin [B, T, K/2]; computed in float32,
    returned in x.dtype."""
    xf = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    x1, x2 = xf[..., :half], xf[..., half:]
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x.dtype)
