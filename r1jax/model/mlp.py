"""SwiGLU MLP: the dense layers' MLP and the MoE's shared experts.

Axis legend: B batch, T time, D model, F MLP width.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax import sharding
from r1jax.model import params


@jax.checkpoint
def swiglu(gate_out: jnp.ndarray, up_out: jnp.ndarray) -> jnp.ndarray:
    """silu(gate_out) * up_out, [..., F]. Recomputed in the backward pass from its two inputs:
    autodiff would otherwise also keep silu's sigmoid and output, two more [..., F] activations."""
    return jax.nn.silu(gate_out) * up_out


def pair_columns(gate: jnp.ndarray, up: jnp.ndarray) -> jnp.ndarray:
    """gate, up [..., F] -> [..., 2F] with gate's column f at 2f and up's at 2f + 1.

    One matmul against the pair computes both projections. Interleaved rather than concatenated, a
    split of F over devices stays a split of 2F into the same contiguous blocks, so weights split over
    `tensor` are paired where they lie."""
    return jnp.stack([gate, up], axis=-1).reshape(*gate.shape[:-1], 2 * gate.shape[-1])


@jax.checkpoint
def swiglu_pairs(paired_out: jnp.ndarray) -> jnp.ndarray:
    """swiglu of the output of a matmul against `pair_columns(gate, up)`: [..., 2F] -> [..., F].
    Recomputed in the backward pass from that output alone."""
    pairs = paired_out.reshape(*paired_out.shape[:-1], -1, 2)
    return jax.nn.silu(pairs[..., 0]) * pairs[..., 1]


class MLP(nnx.Module):
    def __init__(self, d: int, f: int, *, dtype, param_dtype, rngs: nnx.Rngs, width_axis: str = "mlp"):
        self.gate = params.normal(rngs, (d, f), ("embed", width_axis), param_dtype)
        self.up = params.normal(rngs, (d, f), ("embed", width_axis), param_dtype)
        self.down = params.normal(rngs, (f, d), (width_axis, "embed"), param_dtype)
        self.dtype = dtype

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """x [B, T, D] -> [B, T, D] in the compute dtype."""
        c = lambda p: p[...].astype(self.dtype)
        x = x.astype(self.dtype)
        h = swiglu(x @ c(self.gate), x @ c(self.up))  # [B, T, F]
        h = sharding.constrain(h, ("batch", "seq", "mlp"))
        return h @ c(self.down)
