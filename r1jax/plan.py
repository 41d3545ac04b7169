"""`python -m r1jax.plan --config=... --topology=v5p-N`: compile a run for a TPU slice; r1jax/train/plan.py."""
from r1jax.train.plan import cli

if __name__ == "__main__":
    cli()
