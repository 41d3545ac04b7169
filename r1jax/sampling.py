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


CANDIDATES = 1024  # top-p looks at this many most likely tokens first (lax.top_k); sorts all only if
                   # their mass is short of top_p. A full sort of 129k logits costs ~100 ms on a CPU.


def filter_logits(logits: jnp.ndarray, temperature: float, top_k: int = 0, top_p: float = 1.0) -> jnp.ndarray:
    """logits [B, V] -> float32 logits / temperature with -inf outside the kept set [B, V].

    top_k keeps the k largest (ties broken by index); top_p then keeps the smallest set of the most
    likely tokens whose mass (renormalized after top-k) reaches top_p; the most likely token always
    stays. temperature must be > 0 here (0 is greedy, see `sample`).
    """
    x = logits.astype(jnp.float32) / temperature
    v = x.shape[-1]
    if top_k <= 0 and top_p >= 1.0:
        return x
    if top_k > 0 or v <= CANDIDATES:
        return _keep_top(x, min(top_k, v) if top_k > 0 else v, top_k, top_p)[0]
    fast, mass = _keep_top(x, CANDIDATES, top_k, top_p)
    # Exact either way: when the candidates hold at least top_p of the mass, the nucleus is among them.
    return jax.lax.cond(jnp.all(mass >= top_p), lambda: fast, lambda: _keep_top(x, v, top_k, top_p)[0])


def _keep_top(x, k: int, top_k: int, top_p: float):
    """(x with -inf outside the kept set [B, V], mass of the k most likely tokens [B]), deciding among
    the k most likely tokens only (k == V: all of them, by a full sort)."""
    rows = jnp.arange(x.shape[0])[:, None]
    if k < x.shape[-1]:
        vals, idx = jax.lax.top_k(x, k)  # [B, k] descending
    else:
        idx = jnp.argsort(-x, axis=-1, stable=True)
        vals = jnp.take_along_axis(x, idx, axis=-1)
    keep = jnp.arange(k)[None, :] < (top_k if top_k > 0 else k)
    # top-p mass is relative to what top-k kept, else to the whole vocabulary
    lse = jax.nn.logsumexp(jnp.where(keep, vals, -jnp.inf) if top_k > 0 else x, axis=-1, keepdims=True)
    probs = jnp.where(keep, jnp.exp(vals - lse), 0.0)
    if top_p < 1.0:
        keep &= (jnp.cumsum(probs, axis=-1) - probs) < top_p  # mass of strictly more likely tokens
    keep_vocab = jnp.zeros(x.shape, bool).at[rows, idx].set(keep)
    return jnp.where(keep_vocab, x, -jnp.inf), probs.sum(-1)


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
