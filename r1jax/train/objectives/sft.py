"""Supervised fine-tuning: the mean next-token NLL over every target of the whole batch.

    loss = sum_{targets} -log p(token) / N          N = the whole (all micro-batches) batch's targets

plus lambda * the MTP loss (DeepSeek-V3 eq. 25: the same mean over tokens predicted 2 ahead) when the
model has an MTP block and sc.mtp_loss_weight > 0. Micro-batches contribute their NLL sums over the
whole batch's N, so k micro-batches give exactly the gradient of one batch k times larger.
Targets: r1jax/models/losses.py (`shifted_targets`; a loss_mask restricts them).
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from r1jax.models.losses import chunked_loss_sums, next_token_loss_sums, shifted_targets


def target_count(batch, k: int = 1) -> jnp.ndarray:
    """Number of tokens predicted k ahead in a batch (float32 scalar)."""
    _, mask = shifted_targets(batch["tokens"], batch["segment_ids"], k, batch.get("loss_mask"))
    return mask.sum().astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class SFT:
    """Next-token NLL (module docstring); the objective of `train.objective = "sft"`."""
    fields = ("loss_mask",)

    def prepare(self, batch):
        return batch, {"tokens": jnp.maximum(target_count(batch), 1.0),
                       "mtp_tokens": jnp.maximum(target_count(batch, 2), 1.0)}

    def loss(self, model, h, batch, sc, norms):
        tokens, seg, lm = batch["tokens"], batch["segment_ids"], batch.get("loss_mask")
        if sc.loss_chunk:
            nll, count, correct = chunked_loss_sums(h, model.head_weight(), tokens, seg, loss_mask=lm,
                                                    chunk=sc.loss_chunk)
        else:
            nll, count, correct = next_token_loss_sums(model.logits(h), tokens, seg, loss_mask=lm)
        value = nll / norms["tokens"]
        sums = {"nll": nll, "tokens": count, "correct": correct}
        if model.cfg.with_mtp and sc.mtp_loss_weight:
            mtp_logits, mtp_stats = model.mtp_logits(h, tokens, batch["positions"], seg)
            m_nll, m_count, _ = next_token_loss_sums(mtp_logits, tokens, seg, k=2, loss_mask=lm)
            value = value + sc.mtp_loss_weight * m_nll / norms["mtp_tokens"]
            sums.update(mtp_nll=m_nll, mtp_tokens=m_count, mtp_load=mtp_stats["load"])
        return value, sums

    def metrics(self, sums, norms):
        out = {"loss": sums["nll"] / norms["tokens"], "tokens": sums["tokens"],
               "accuracy": sums["correct"] / norms["tokens"]}
        if "mtp_nll" in sums:
            out["mtp_loss"] = sums["mtp_nll"] / norms["mtp_tokens"]
        return out
