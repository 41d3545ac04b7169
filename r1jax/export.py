"""`python -m r1jax.export`: an r1jax checkpoint or run -> HF safetensors (or a PEFT adapter); r1jax/interop/export.py."""
import sys

from r1jax.interop.export import main

if __name__ == "__main__":
    sys.exit(main())
