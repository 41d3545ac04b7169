"""Rotary position embedding with YaRN scaling, on interleaved pairs as DeepSeek lays them out.

Axis legend: B batch, T time, H heads, R rope dims (even), R/2 rotation frequencies.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from r1jax.models.deepseek_v3.config import ModelConfig, yarn_mscale


def yarn_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """Inverse frequencies [R/2] (float32), YaRN-blended when cfg.rope_factor > 1.

    YaRN (Peng et al. 2023, sec. 3.2): dims that rotate fewer than `beta_slow` times over the original
    context are interpolated by `factor`, those rotating more than `beta_fast` times are kept, with a
    linear ramp between (correction range floored/ceiled, as DeepSeek does).
    """
    dim, base = cfg.qk_rope_head_dim, cfg.rope_theta
    # float64 then one rounding: the exactly rounded float32 frequencies.
    pos_freqs = base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    extrapolation = 1.0 / pos_freqs
    if not cfg.uses_yarn:
        return extrapolation.astype(np.float32)
    factor = cfg.rope_factor
    interpolation = 1.0 / (factor * pos_freqs)

    def correction_dim(num_rotations: float) -> float:
        orig = cfg.rope_original_max_position_embeddings
        return dim * math.log(orig / (num_rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(cfg.rope_beta_fast)), 0)
    high = min(math.ceil(correction_dim(cfg.rope_beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    keep = 1.0 - ramp  # 1: extrapolate (high freq), 0: interpolate
    return (interpolation * (1 - keep) + extrapolation * keep).astype(np.float32)


def rope_attention_factor(cfg: ModelConfig) -> float:
    """Scale on cos/sin: mscale(factor, mscale) / mscale(factor, mscale_all_dim); 1.0 for R1."""
    if not cfg.uses_yarn:
        return 1.0
    if cfg.rope_mscale and cfg.rope_mscale_all_dim:
        return yarn_mscale(cfg.rope_factor, cfg.rope_mscale) / yarn_mscale(cfg.rope_factor,
                                                                           cfg.rope_mscale_all_dim)
    return yarn_mscale(cfg.rope_factor, 1.0)


def rope_tables(cfg: ModelConfig, positions: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """cos, sin [B, T, R/2] float32 for integer `positions` [B, T]."""
    inv_freq = jnp.asarray(yarn_inv_freq(cfg))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, R/2]
    a = rope_attention_factor(cfg)
    return jnp.cos(angles) * a, jnp.sin(angles) * a


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """Rotates interleaved pairs (x[2i], x[2i+1]) of x [B, T, H, R] by cos/sin [B, T, R/2].

    The result keeps the interleaved layout; computed in float32, returned in x.dtype.
    """
    dtype = x.dtype
    xf = x.astype(jnp.float32).reshape(*x.shape[:-1], x.shape[-1] // 2, 2)  # [B, T, H, R/2, 2]
    x1, x2 = xf[..., 0], xf[..., 1]
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    out = jnp.stack([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)  # [B, T, H, R/2, 2]
    return out.reshape(x.shape).astype(dtype)
