"""What autodiff keeps between a function's forward and backward pass, by JAX's own accounting.

`jax.ad_checkpoint.print_saved_residuals` lists every residual (before any compiler) with its dtype,
shape and the operation that made it; `saved` returns those rows, the function's own arguments
excluded (parameters and inputs exist anyway). tools/residuals.py totals them for a train step;
tests/train/test_residuals.py checks that no float32 copy of a large activation is among them.

What attention keeps depends on the machine: a GPU's fused (flash) kernel keeps q, k, v, its output
and the float32 log-sum-exp [B, H, T]; XLA's implementations on a CPU keep more. Inside
`attention_as_fused_kernel()` the model's attention is `fused_attention`, a stand-in with exactly a
flash kernel's residuals and the same values, so the accounting is the GPU's on any machine.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import re
from unittest import mock

import jax
import jax.numpy as jnp

from r1jax.models.common import kernels

_LINE = re.compile(r"^(\w+)\[([\d,]*)\] (.*)$")
_BYTES = {"f64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
          "s8": 1, "u8": 1, "bool": 1, "pred": 1, "s64": 8, "u64": 8}


@dataclasses.dataclass(frozen=True)
class Residual:
    dtype: str              # JAX's short name: f32, bf16, s32, bool, ...
    shape: tuple[int, ...]
    where: str              # "output of <op> from <file>:<line> (<function>)"

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.elements * _BYTES.get(self.dtype, 4)


def saved(f, *args) -> list[Residual]:
    """The residuals f's backward pass keeps for f(*args), f's arguments excluded."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        jax.ad_checkpoint.print_saved_residuals(f, *args)
    rows = []
    for line in out.getvalue().splitlines():
        m = _LINE.match(line.strip())
        if m and "argument" not in m.group(3):
            shape = tuple(int(d) for d in m.group(2).split(",") if d)
            rows.append(Residual(m.group(1), shape, m.group(3)))
    return rows


@jax.custom_vjp
def fused_attention(q, k, v, mask, scale):
    """Stand-in for a fused attention kernel, for the accounting: the same output as
    kernels.attention, and the residuals of a flash kernel (q, k, v, the output, float32 log-sum-exp
    [B, H, T]). Its backward pass recomputes with plain XLA: correct, though not what a kernel runs."""
    return _plain_attention(q, k, v, mask, scale)[0]


def _plain_attention(q, k, v, mask, scale):
    """q [B, T, H, K], k [B, S, G, K], v [B, S, G, V] (G divides H: grouped-query attention, each K/V
    head serving H / G query heads) -> (out [B, T, H, V], log-sum-exp [B, H, T] float32); causal,
    mask [B, 1, T, S]."""
    t, s = q.shape[1], k.shape[1]
    groups = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    logits = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32) * scale
    allowed = mask & jnp.tril(jnp.ones((t, s), bool))
    logits = jnp.where(allowed, logits, -jnp.inf)
    lse = jax.nn.logsumexp(logits, axis=-1)
    out = jnp.einsum("bhts,bshd->bthd", jnp.exp(logits - lse[..., None]).astype(v.dtype), v)
    return out, lse


def _fused_fwd(q, k, v, mask, scale):
    out, lse = _plain_attention(q, k, v, mask, scale)
    return out, (q, k, v, mask, scale, out, lse)


def _fused_bwd(res, g):
    q, k, v, mask, scale, _, _ = res
    _, pullback = jax.vjp(lambda a, b, c: _plain_attention(a, b, c, mask, scale)[0], q, k, v)
    return (*pullback(g), None, None)


fused_attention.defvjp(_fused_fwd, _fused_bwd)


@contextlib.contextmanager
def attention_as_fused_kernel():
    """Within it, the model's attention (kernels.attention) is `fused_attention`."""
    with mock.patch.object(kernels, "attention", fused_attention):
        yield
