"""Next-token sampling (pure functions) and stop conditions.

Axis legend: B batch, V vocab.

The warpers apply in transformers' order: temperature, then top-k, then top-p on what top-k kept
(renormalized). Temperature 0 is greedy (argmax of the raw logits). Each row draws with its own key,
so a prompt's sample does not depend on which other prompts share its batch.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 0.6     # 0: greedy. DeepSeek recommends 0.5-0.7 for R1 (0.6 in its eval)
    top_p: float = 0.95          # 1.0: off
    top_k: int = 0               # 0: off

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 is off), got {self.top_k}")


def filter_logits(logits: jnp.ndarray, temperature: float, top_k: int = 0, top_p: float = 1.0) -> jnp.ndarray:
    """logits [B, V] -> float32 logits / temperature with -inf outside the kept set [B, V].

    top_k keeps the k largest (lax.top_k's choice among ties); top_p then keeps the smallest set of
    the most likely tokens whose mass (renormalized after top-k) reaches top_p, and any token exactly
    as likely as the least likely of them; the most likely token always stays. temperature must be
    > 0 here (0 is greedy, see `sample`).
    """
    x = logits.astype(jnp.float32) / temperature
    b, v = x.shape
    keep = jnp.ones(x.shape, bool)
    if 0 < top_k < v:
        idx = jax.lax.top_k(x, top_k)[1]  # [B, k]
        keep = jnp.zeros(x.shape, bool).at[jnp.arange(b)[:, None], idx].set(True)
    if top_p < 1.0:
        keep &= nucleus(jax.nn.softmax(jnp.where(keep, x, -jnp.inf), axis=-1), top_p)
    return jnp.where(keep, x, -jnp.inf)


def nucleus(probs: jnp.ndarray, top_p: float) -> jnp.ndarray:
    """probs [B, V] (>= 0, summing to 1) -> keep [B, V]: tokens at least as likely as the k-th most
    likely, k the fewest whose mass reaches top_p.

    No sort (a full sort of 129k logits costs ~100 ms per step on a CPU): the threshold is found by
    bisection on the probabilities' float32 bit patterns, which order non-negative floats as
    integers, so 32 masked sums land exactly on the k-th largest value.
    """
    bits = jax.lax.bitcast_convert_type(probs.astype(jnp.float32), jnp.int32)  # [B, V]
    mass_from = lambda t: jnp.sum(jnp.where(bits >= t[:, None], probs, 0.0), axis=-1)  # [B]

    def halve(_, bounds):  # invariant: mass_from(lo) >= top_p > mass_from(hi)
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        ok = mass_from(mid) >= top_p
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo = jnp.zeros(bits.shape[:1], jnp.int32)
    lo, _ = jax.lax.fori_loop(0, 32, halve, (lo, bits.max(axis=-1) + 1))
    return bits >= lo[:, None]


def sample(logits: jnp.ndarray, keys: jax.Array, s: SamplingSettings) -> jnp.ndarray:
    """logits [B, V], keys [B] (one PRNG key per row) -> token ids [B] int32."""
    if s.temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    x = filter_logits(logits, s.temperature, s.top_k, s.top_p)
    return jax.vmap(jax.random.categorical)(keys, x).astype(jnp.int32)


def row_keys(seed: int, rows: jnp.ndarray, step) -> jax.Array:
    """PRNG keys [B] for prompt indices rows [B] at decode step `step`: a function of (seed, prompt,
    step) only, so a fixed seed reproduces each prompt's sample whatever the batching."""
    base = jax.random.key(seed)
    return jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(base, r), step))(rows)


def cut_at_stop(text: str, stops) -> tuple[str, bool]:
    """(text before the earliest of the stop strings, whether one occurred)."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
