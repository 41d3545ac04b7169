"""A run that takes seconds: the real R1 tokenizer and vocabulary, a 3-layer R1-shaped model.

    python -m r1jax.train --config=configs/tiny.py
    python -m r1jax.train --config=configs/tiny.py --config.data.train=mine.jsonl --config.train.steps=50

tokens/step = batch_size * seq_len * grad_accum = 4 * 128 = 512, on one device (mesh.data=1).
"""
from r1jax.train.run_config import defaults


def get_config():
    c = defaults()
    c.output_dir = "runs/tiny"
    c.model.preset = "tiny"
    c.model.dtype = "float32"        # CPU: float32 is faster than emulated bf16
    c.data.max_examples = 400        # of the bundled code dataset
    c.data.val_fraction = 0.1
    c.train.steps = 20
    c.train.batch_size = 4
    c.train.seq_len = 128
    c.train.log_every = 5
    c.train.eval_every = 10
    c.train.eval_batches = 4
    c.train.checkpoint_every = 10
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 2
    c.mesh.data = 1
    return c
