"""`python -m r1jax.train --config=configs/NAME.py`: fine-tune; the loop is r1jax/train/loop.py."""
from r1jax.train.loop import cli

cli()
