"""Token-level losses in float32 (pure functions).

Axis legend: B batch, T time, V vocab. segment_ids [B, T] are 0 on padding and number the packed
documents otherwise; a target is predicted only from a position of the same document.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def shifted_targets(tokens: jnp.ndarray, segment_ids: jnp.ndarray, k: int = 1):
    """Targets k ahead and their mask: tokens/segment_ids [B, T] -> targets [B, T], mask [B, T] bool.

    Position t predicts tokens[t+k] when it lies in the same non-padding segment; the last k
    positions predict nothing.
    """
    b, t = tokens.shape
    pad_tok = jnp.zeros((b, k), tokens.dtype)
    pad_seg = jnp.zeros((b, k), segment_ids.dtype)
    targets = jnp.concatenate([tokens[:, k:], pad_tok], axis=1)
    seg_ahead = jnp.concatenate([segment_ids[:, k:], pad_seg], axis=1)
    return targets, (segment_ids > 0) & (seg_ahead == segment_ids)


def token_nll(logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    """-log softmax(logits)[target]: logits [B, T, V], targets [B, T] -> [B, T] float32."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return lse - picked


def next_token_loss_sums(logits, tokens, segment_ids, k: int = 1):
    """(sum of NLL, number of predicted tokens, number correct by argmax) over targets k ahead."""
    targets, mask = shifted_targets(tokens, segment_ids, k)
    nll = token_nll(logits, targets)
    m = mask.astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32) * m
    return (nll * m).sum(), m.sum(), correct.sum()
