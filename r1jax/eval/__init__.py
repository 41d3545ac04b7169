"""Evaluation: held-out loss (`python -m r1jax.evaluate`), task metrics (pass@k, answers) and the
verifiable rewards GRPO scores completions with (rewards.py)."""
