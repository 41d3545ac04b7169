"""Evaluation: held-out loss (`python -m r1jax.evaluate`) and task metrics (pass@k, answers)."""
