"""Token-level losses in float32 (pure functions).

Axis legend: B batch, T time, V vocab. segment_ids [B, T] are 0 on padding and number the packed
documents otherwise; a target is predicted only from a position of the same document. An optional
loss_mask [B, T] (1 = training target, as the data pipeline writes it) further restricts the targets
to the tokens it marks, e.g. the final assistant turn of a chat example.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _ahead(x: jnp.ndarray, k: int) -> jnp.ndarray:
    """x[:, t+k] at position t, zero-filled past the end: [B, T] -> [B, T]."""
    return jnp.concatenate([x[:, k:], jnp.zeros((x.shape[0], k), x.dtype)], axis=1)


def shifted_targets(tokens: jnp.ndarray, segment_ids: jnp.ndarray, k: int = 1,
                    loss_mask: jnp.ndarray | None = None):
    """Targets k ahead and their mask: tokens/segment_ids [B, T] -> targets [B, T], mask [B, T] bool.

    Position t predicts tokens[t+k] when it lies in the same non-padding segment and, given a
    loss_mask [B, T], when loss_mask[t+k] == 1; the last k positions predict nothing.
    """
    targets = _ahead(tokens, k)
    mask = (segment_ids > 0) & (_ahead(segment_ids, k) == segment_ids)
    if loss_mask is not None:
        mask = mask & (_ahead(loss_mask, k) == 1)
    return targets, mask


def token_nll(logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    """-log softmax(logits)[target]: logits [B, T, V], targets [B, T] -> [B, T] float32."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return lse - picked


def next_token_loss_sums(logits, tokens, segment_ids, k: int = 1, loss_mask=None):
    """(sum of NLL, number of predicted tokens, number correct by argmax) over targets k ahead
    (restricted to loss_mask's targets when given; see shifted_targets)."""
    targets, mask = shifted_targets(tokens, segment_ids, k, loss_mask)
    nll = token_nll(logits, targets)
    m = mask.astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32) * m
    return (nll * m).sum(), m.sum(), correct.sum()


def chunked_loss_sums(h, kernel, tokens, segment_ids, k: int = 1, loss_mask=None, chunk: int = 4096):
    """next_token_loss_sums without materializing the logits: h [B, T, D] (final-normed hidden
    states) times kernel [D, V] in chunks of about `chunk` positions (B rows x `span` steps of
    time, at least one step), each rematerialized in the backward pass, so at most [B, span, V]
    float32 logits exist at a time instead of [B, T, V].

    Chunks run along time over all B rows, so the batch axis keeps its split over the mesh; chunks
    of the flattened B*T positions would each hold one device's rows, and XLA would gather every
    row's hidden states on every device (28 GiB per chip for R1-671B on v5p-1024).
    """
    targets, mask = shifted_targets(tokens, segment_ids, k, loss_mask)
    b, t, d = h.shape
    span = max(1, min(t, chunk // b))
    pad = (-t) % span

    def split(a):  # [B, T, ...] -> [T / span, B, span, ...]
        a = jnp.pad(a, ((0, 0), (0, pad)) + ((0, 0),) * (a.ndim - 2))
        return jnp.swapaxes(a.reshape((b, -1, span) + a.shape[2:]), 0, 1)

    hs, ts, ms = split(h), split(targets), split(mask.astype(jnp.float32))

    @jax.checkpoint
    def one(h_c, t_c, m_c):
        logits = jnp.einsum("bsd,dv->bsv", h_c, kernel.astype(h_c.dtype),
                            preferred_element_type=jnp.float32)  # [B, span, V]
        nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, t_c[..., None], -1)[..., 0]
        hit = (jnp.argmax(logits, -1) == t_c).astype(jnp.float32)
        return (nll * m_c).sum(), m_c.sum(), (hit * m_c).sum()

    def body(acc, xs):
        return tuple(a + s for a, s in zip(acc, one(*xs))), None

    zero = jnp.zeros((), jnp.float32)
    (total, count, correct), _ = jax.lax.scan(body, (zero, zero, zero), (hs, ts, ms))
    return total, count, correct


def token_logprobs(h, kernel, targets, temperature: float = 1.0, chunk: int = 0):
    """Per-token log-probability and entropy under the tempered next-token distribution
    p = softmax(h @ kernel / temperature): h [B, T, D] (final-normed hidden states), kernel [D, V],
    targets [B, T] -> (log p[targets] [B, T], entropy -sum_v p log p [B, T]), float32.

    chunk > 0 computes the logits `chunk` positions at a time along time (as chunked_loss_sums:
    B rows x span steps, rematerialized in the backward pass), so at most [B, span, V] float32
    logits exist at once; chunk = 0 in one piece. Differentiable in h and kernel.
    """
    b, t, _ = h.shape
    inv_t = 1.0 / temperature

    def one(h_c, t_c):
        logits = jnp.einsum("bsd,dv->bsv", h_c, kernel.astype(h_c.dtype),
                            preferred_element_type=jnp.float32) * inv_t
        logq = jax.nn.log_softmax(logits, -1)
        logp = jnp.take_along_axis(logq, t_c[..., None], -1)[..., 0]
        entropy = -jnp.sum(jnp.exp(logq) * logq, -1)
        return logp, entropy

    if not chunk:
        return one(h, targets)
    span = max(1, min(t, chunk // b))
    pad = (-t) % span

    def split(a):  # [B, T, ...] -> [T / span, B, span, ...]
        a = jnp.pad(a, ((0, 0), (0, pad)) + ((0, 0),) * (a.ndim - 2))
        return jnp.swapaxes(a.reshape((b, -1, span) + a.shape[2:]), 0, 1)

    def merge(a):  # [T / span, B, span] -> [B, T]
        return jnp.swapaxes(a, 0, 1).reshape(b, -1)[:, :t]

    logp, entropy = jax.lax.map(lambda xs: jax.checkpoint(one)(*xs), (split(h), split(targets)))
    return merge(logp), merge(entropy)
