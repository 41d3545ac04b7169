"""`python -m r1jax.convert`: HF safetensors -> an r1jax checkpoint; r1jax/interop/convert.py."""
import sys

from r1jax.interop.convert import main

if __name__ == "__main__":
    sys.exit(main())
