"""`python -m r1jax.generate`: batched generation; r1jax/inference/generate.py."""
import sys

from r1jax.inference.generate import main

if __name__ == "__main__":
    sys.exit(main())
