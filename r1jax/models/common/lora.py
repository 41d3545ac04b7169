"""Low-rank adapters (LoRA, Hu et al. 2021) on frozen projections.

Axis legend: I a projection's inputs (product of its input axes), O its outputs, r the rank,
E routed experts, M token copies sorted by expert.

A projection W [in..., out...] with an adapter computes

    y = x W + s (dropout(x) A) B,      A [in..., r], B [r, out...],  s = alpha / r  (alpha / sqrt(r) with rslora)

A starts uniform in +-1/sqrt(I) (PEFT's default), B at zero, so an untrained adapter adds exactly
zero. Training keeps the product unmerged: the gradients of A and B then cost O(N r (I + O)) for N
tokens, never the O(N I O) of W's own gradient. `weight(..., merged=True)` gives W + s A B, for
decoding (where nothing is differentiated) and for exports of merged weights. Routed experts carry
one pair per expert, A [E, D, r] and B [E, r, F], applied with the experts' grouped matmuls
(r1jax/models/deepseek_v3/moe.py). Adapters are nnx Variables of type params.Adapter, stacked over layers like
their weights and sharded like them (A as W's inputs, B as W's outputs; r replicated).

Dropout (ModelConfig.lora.dropout) applies only inside `dropout(key)` (the train step), to the input
of each dense adapter; a different mask per layer and per projection.
"""
from __future__ import annotations

import contextlib
import contextvars
import string

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.models.common import quantized
from r1jax.models.common.params import Adapter, Fp8Scale, fans, split_dims


class LoRA(nnx.Module):
    """The A [stack..., in..., r] and B [stack..., r, out...] of one projection of `shape`, float32
    always (the trained master copy; the frozen base keeps its own dtype); both in the projection's
    optimizer `group`."""

    def __init__(self, shape: tuple, axes: tuple, projection: tuple[int, int], cfg, rngs: nnx.Rngs,
                 *, group: str | None = None):
        fan_in, fan_out = projection
        meta = {} if group is None else {"group": group}  # the adapted projection's optimizer group
        r = cfg.lora.rank
        stack, i, _ = split_dims(shape, fan_in, fan_out)
        n = len(stack)
        a_shape = shape[:n + fan_in] + (r,)
        bound = i ** -0.5
        a = jax.random.uniform(rngs.params(), a_shape, jnp.float32, -bound, bound)
        self.a = Adapter(a, axes=axes[:n + fan_in] + (None,), projection=(fan_in, 1), **meta)
        self.b = Adapter(jnp.zeros(shape[:n] + (r,) + shape[n + fan_in:], jnp.float32),
                         axes=axes[:n] + (None,) + axes[n + fan_in:], projection=(1, fan_out), **meta)
        self.scale = cfg.lora.scale
        self.rate = cfg.lora.dropout


# ---- dropout context -------------------------------------------------------------------------------

_DROPOUT: contextvars.ContextVar = contextvars.ContextVar("lora_dropout", default=None)


@contextlib.contextmanager
def dropout(key: jax.Array | None):
    """Within: adapters drop their inputs (at their configured rate) with masks drawn from `key`."""
    token = _DROPOUT.set(None if key is None else [key, 0])
    try:
        yield
    finally:
        _DROPOUT.reset(token)


@contextlib.contextmanager
def layer(index):
    """Within (a scanned layer's body): masks drawn from the dropout key folded with `index`."""
    state = _DROPOUT.get()
    token = _DROPOUT.set(None if state is None else [jax.random.fold_in(state[0], index), 0])
    try:
        yield
    finally:
        _DROPOUT.reset(token)


def _drop(x: jnp.ndarray, rate: float) -> jnp.ndarray:
    state = _DROPOUT.get()
    if state is None or not rate:
        return x
    key = jax.random.fold_in(state[0], state[1])
    state[1] += 1
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


# ---- projections ------------------------------------------------------------------------------------

def base_weight(owner: nnx.Module, name: str, dtype) -> jnp.ndarray:
    """owner.NAME in `dtype`: dequantized when held as FP8 codes (a sibling NAME_scale)."""
    w = getattr(owner, name)
    scale = getattr(owner, name + "_scale", None)
    if isinstance(scale, Fp8Scale):
        return quantized.dequantize(w[...], scale[...], *fans(w), dtype)
    return w[...].astype(dtype)


def adapter(owner: nnx.Module, name: str) -> LoRA | None:
    found = getattr(owner, name + "_lora", None)
    return found if isinstance(found, LoRA) else None


def delta(ad: LoRA, dtype=jnp.float32) -> jnp.ndarray:
    """s A B [stack..., in..., out...] in `dtype` (computed in float32)."""
    a, b = ad.a[...].astype(jnp.float32), ad.b[...].astype(jnp.float32)
    fan_in = fans(ad.a)[0]
    stack, i, r = split_dims(a.shape, fan_in, 1)
    out = b.shape[len(stack) + 1:]
    ab = jnp.einsum("...ir,...ro->...io", a.reshape(stack + (i, r)), b.reshape(stack + (r, -1)))
    return (ad.scale * ab).reshape(a.shape[:-1] + out).astype(dtype)


def weight(owner: nnx.Module, name: str, dtype, merged: bool = False) -> jnp.ndarray:
    """The projection owner.NAME in `dtype`; with merged, its adapter folded in (W + s A B)."""
    w = base_weight(owner, name, jnp.float32 if merged else dtype)
    ad = adapter(owner, name) if merged else None
    return w.astype(dtype) if ad is None else (w + delta(ad)).astype(dtype)


def _adapter_equations(eq: str) -> tuple[str, str]:
    """"btq,qhk->bthk" (x, W -> y) -> ("btq,qr->btr", "btr,rhk->bthk"): x A, then (x A) B."""
    ins, out = eq.split("->")
    x, w = ins.split(",")
    contracted = [c for c in w if c in x and c not in out]
    r = next(c for c in string.ascii_lowercase if c not in eq)
    mid = "".join(c for c in x if c not in contracted) + r
    produced = "".join(c for c in w if c not in contracted)
    return f"{x},{''.join(contracted)}{r}->{mid}", f"{mid},{r}{produced}->{out}"


def project(owner: nnx.Module, name: str, eq: str, x: jnp.ndarray, dtype) -> jnp.ndarray:
    """einsum(eq, x, W) for the projection owner.NAME (eq names x's axes, then W's [in..., out...]),
    plus its adapter's s (dropout(x) A) B when it has one, all in `dtype`."""
    y = jnp.einsum(eq, x, base_weight(owner, name, dtype))
    ad = adapter(owner, name)
    if ad is None:
        return y
    eq_a, eq_b = _adapter_equations(eq)
    h = jnp.einsum(eq_a, _drop(x, ad.rate), ad.a[...].astype(dtype))
    return y + jnp.einsum(eq_b, h, (ad.scale * ad.b[...]).astype(dtype))


def has_adapters(model: nnx.Module) -> bool:
    return any(isinstance(v, Adapter) for _, v in nnx.iter_graph(model))


def merged_state(model: nnx.Module, dtype=jnp.float32) -> dict:
    """The model's variables as the plain model (no adapters, no FP8 codes: the same architecture
    with lora.rank 0 and fp8_weights off) holds them, in a nested dict: every projection is
    `weight(merged=True)` (W + s A B, dequantized), floats in `dtype`, the router bias float32."""
    state = nnx.to_pure_dict(nnx.state(model))
    for path, node in nnx.iter_graph(model):
        if not isinstance(node, nnx.Module):
            continue
        entry = state
        for key in path:
            entry = entry[key]
        for name, var in list(vars(node).items()):
            if isinstance(var, nnx.Param) and not isinstance(var, Adapter) and "projection" in var.get_metadata():
                entry[name] = weight(node, name, dtype, merged=True)
                entry.pop(name + "_scale", None)
                entry.pop(name + "_lora", None)
    return jax.tree.map(lambda x: x if x.dtype == jnp.float32 or not jnp.issubdtype(x.dtype, jnp.floating)
                        else x.astype(dtype), state)
