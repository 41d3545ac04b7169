"""The pure loss function and train step (jitted by the caller with explicit shardings).

A batch is a dict of int32 [B, T] arrays: `tokens`, `positions`, `segment_ids` (0 on padding) and
optionally `loss_mask` (1 = training target; without it every next token of a segment is one).
Parameters are the model's nnx.Param leaves; everything else (the router bias) is `rest`, state that
gradients never touch.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from r1jax.losses import next_token_loss_sums


def split_model(model):
    """(graphdef, params, rest): trainable nnx.Param state and everything else."""
    return nnx.split(model, nnx.Param, ...)


def loss_fn(params, rest, graphdef, batch) -> tuple[jnp.ndarray, dict[str, Any]]:
    """Mean next-token NLL over the batch's predicted tokens, and metrics (all float32)."""
    model = nnx.merge(graphdef, params, rest)
    logits, stats = model(batch["tokens"], batch["positions"], batch["segment_ids"])
    total, count, correct = next_token_loss_sums(logits, batch["tokens"], batch["segment_ids"],
                                                 loss_mask=batch.get("loss_mask"))
    count = jnp.maximum(count, 1.0)
    loss = total / count
    metrics = {"loss": loss, "tokens": count, "accuracy": correct / count}
    if "load" in stats:
        metrics["expert_load"] = stats["load"]  # [L_moe, E]
    return loss, metrics


def train_step(graphdef, optimizer: optax.GradientTransformation, params, rest, opt_state, batch):
    """One optimizer update: returns (params, opt_state, metrics). Pure; jit with donation."""
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest, graphdef, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return params, opt_state, metrics
