"""Projections held as the release's block-scaled FP8, dequantized on the device inside each layer.

Axis legend: I the projection's inputs (product of its input axes), O its outputs, S stack axes
(layers, experts), 128 the block size.

A weight [S..., in..., out...] is viewed as [S..., I, O] (r1jax's [in, out] is the release's
[out, in] transposed, so blocks are the release's blocks transposed) with

    w[s, i, o] = float32(codes[s, i, o]) * scale[s, i // 128, o // 128]      (r1jax/interop/fp8.py, NumPy)

scale [S..., ceil(I/128), ceil(O/128)] float32. The result is cast to the compute dtype inside the
fusion that reads the codes, so a layer's weights exist in bf16 only while that layer runs (inside
the scanned, rematerialized layer), never as a whole-model copy.
"""
from __future__ import annotations

import jax.numpy as jnp

from r1jax.models.common.params import split_dims

BLOCK = 128
E4M3_MAX = 448.0


def _expand(scale: jnp.ndarray, i: int, o: int) -> jnp.ndarray:
    """[S..., ceil(I/128), ceil(O/128)] -> [S..., I, O], each block's scale over its block."""
    s = jnp.repeat(scale, BLOCK, axis=-2)[..., :i, :]
    return jnp.repeat(s, BLOCK, axis=-1)[..., :o]


def dequantize(codes: jnp.ndarray, scale: jnp.ndarray, fan_in: int, fan_out: int, dtype) -> jnp.ndarray:
    """codes [S..., in..., out...] float8_e4m3fn, scale [S..., ceil(I/128), ceil(O/128)] -> the
    weight in `dtype`, float32(code) * scale rounded once to `dtype`."""
    stack, i, o = split_dims(codes.shape, fan_in, fan_out)
    w = codes.reshape(stack + (i, o)).astype(jnp.float32) * _expand(scale.astype(jnp.float32), i, o)
    return w.astype(dtype).reshape(codes.shape)


def quantize(w: jnp.ndarray, fan_in: int, fan_out: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """w [S..., in..., out...] -> (codes float8_e4m3fn, scale float32) by the release's recipe:
    scale = amax / 448 per 128x128 block (1 for an all-zero block), codes = round(w / scale).
    (Random initialization and tests; checkpoints are quantized on the host by r1jax/interop/fp8.py.)"""
    stack, i, o = split_dims(w.shape, fan_in, fan_out)
    w2 = w.reshape(stack + (i, o)).astype(jnp.float32)
    pi, po = -i % BLOCK, -o % BLOCK
    padded = jnp.pad(jnp.abs(w2), [(0, 0)] * len(stack) + [(0, pi), (0, po)])
    blocks = padded.reshape(stack + ((i + pi) // BLOCK, BLOCK, (o + po) // BLOCK, BLOCK))
    amax = blocks.max(axis=(-3, -1))
    scale = jnp.where(amax > 0, amax / E4M3_MAX, 1.0).astype(jnp.float32)
    codes = jnp.clip(w2 / _expand(scale, i, o), -E4M3_MAX, E4M3_MAX).astype(jnp.float8_e4m3fn)
    return codes.reshape(w.shape), scale
