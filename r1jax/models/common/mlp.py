"""SwiGLU MLP: the dense layers' MLP and the MoE's shared experts.

Axis legend: B batch, T time, D model, F MLP width.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.parallel import sharding
from r1jax.models.common import lora, params


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
    """SwiGLU of width f; `group` is its optimizer group (dense_mlp or shared_experts), which decides
    whether its projections carry adapters (ModelConfig.lora)."""

    def __init__(self, cfg, d: int, f: int, group: str, *, rngs: nnx.Rngs, width_axis: str = "mlp"):
        params.projection(self, "gate", rngs, (d, f), ("embed", width_axis), cfg, group)
        params.projection(self, "up", rngs, (d, f), ("embed", width_axis), cfg, group)
        params.projection(self, "down", rngs, (f, d), (width_axis, "embed"), cfg, group)
        self.dtype = cfg.dtype

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """x [B, T, D] -> [B, T, D] in the compute dtype."""
        dt = self.dtype
        x = x.astype(dt)
        h = swiglu(lora.project(self, "gate", "btd,df->btf", x, dt),
                   lora.project(self, "up", "btd,df->btf", x, dt))  # [B, T, F]
        h = sharding.constrain(h, ("batch", "seq", "mlp"))
        return lora.project(self, "down", "btf,fd->btd", h, dt)
