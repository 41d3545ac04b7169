"""`python -m r1jax.evaluate`: held-out loss and task metrics; r1jax/eval/evaluate.py."""
import sys

from r1jax.eval.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
