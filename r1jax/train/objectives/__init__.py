"""Training objectives: what a training step differentiates, plugged into one step (r1jax/train/step.py).

An objective is a frozen (hashable: static under jax.jit) dataclass with:

    fields: tuple[str, ...]         the batch arrays it reads besides tokens / positions / segment_ids,
                                    each [B, T] (int32 or float32)
    prepare(batch) -> (batch, norms)
        over the WHOLE batch, before it is split into micro-batches: arrays added to the batch
        (then split with it, e.g. GRPO's per-token weights) and whole-batch scalars (`norms`, e.g.
        SFT's target count), so that k micro-batches give exactly the gradient of one batch
    loss(model, h, batch, sc, norms) -> (value, sums)
        one micro-batch: h [b, T, D] the model's final-normed hidden states; value the micro-batch's
        share of the step's loss (the step differentiates the sum of the shares); sums float32
        totals for metrics, added over micro-batches
    metrics(sums, norms) -> dict    the step's metrics from the totals; "loss" is the value logged
                                    and checked for finiteness

The step adds what every objective shares: the MoE balance loss and expert loads, micro-batching,
frozen groups, the non-finite skip and the optimizer update.

    sft.SFT     next-token NLL over the loss-masked targets (supervised fine-tuning; the default)
    grpo.GRPO   the clipped group-relative policy objective over sampled completions (grpo.py)
"""
