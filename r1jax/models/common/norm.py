"""RMSNorm (statistics in float32). Axis legend: ... leading dims, D normalized dim."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.models.common import params


@functools.partial(jax.checkpoint, static_argnums=(2,))
def rms_norm(x: jnp.ndarray, scale: jnp.ndarray, eps: float) -> jnp.ndarray:
    """x [..., D] / rms(x) * scale [D]; statistics in float32, result in x.dtype.

    Recomputed in the backward pass from x (one elementwise pass): autodiff would otherwise keep a
    float32 copy of x and the normalized result, three times x's bytes in bf16, for every norm."""
    xf = x.astype(jnp.float32)
    y = xf * jnp.reciprocal(jnp.sqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps))
    return (y.astype(x.dtype) * scale.astype(x.dtype))


class RMSNorm(nnx.Module):
    """scale [D] ones, in optimizer `group` ("norms")."""

    def __init__(self, dim: int, eps: float, param_dtype, *, group: str = "norms"):
        self.scale = params.ones((dim,), ("norm",), param_dtype, group=group)
        self.eps = eps

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return rms_norm(x, self.scale[...], self.eps)
