"""Training: the run config, the loop (`python -m r1jax.train`), the step and losses it takes, the
optimizer groups, run checkpoints, metrics, and plans for TPU slices."""
