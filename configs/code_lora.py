"""LoRA on the CPU: adapters trained on a frozen base, on the bundled code dataset.

    python -m r1jax.train --config=configs/code_lora.py

With no weights it runs on the `small` preset's random-init base (seed 0): the base stays frozen,
only the rank-16 adapters on attention, the dense MLP and the shared experts train (212k parameters,
0.3% of the model's 72M). It shows the mechanism end to end (adapters only in the checkpoints, the
base recorded in runs/code_lora/model/r1jax.json, evaluate and generate applying them; export needs
a base checkpoint, below), not a useful model: a random base has nothing for adapters to steer. To adapt a model that knows something, start from a
model checkpoint, e.g. the result of configs/code.py exported and converted back:

    python -m r1jax.export --checkpoint runs/code --out /tmp/code_hf
    python -m r1jax.convert --hf_dir /tmp/code_hf --out runs/code_base
    python -m r1jax.train --config=configs/code_lora.py --config.model.checkpoint=runs/code_base

tokens/step = batch_size * seq_len * grad_accum = 8 * 256 * 1 = 2,048, as configs/code.py.
"""
from r1jax.train.run_config import defaults


def get_config():
    c = defaults()
    c.output_dir = "runs/code_lora"
    c.model.preset = "small"
    c.model.dtype = "float32"        # CPU: float32 is faster than emulated bf16; use bfloat16 on GPU/TPU
    c.lora.rank = 16
    c.lora.alpha = 32.0
    c.lora.targets = "attention,dense_mlp,shared_experts"
    c.train.steps = 60
    c.train.batch_size = 8
    c.train.seq_len = 256
    c.train.log_every = 5
    c.train.eval_every = 30
    c.train.eval_batches = 8
    c.train.checkpoint_every = 30
    c.optim.lr = 5e-3                # adapters take larger steps than full fine-tuning's weights
    c.optim.warmup_steps = 5
    c.optim.schedule = "cosine"
    c.optim.weight_decay = 0.0
    c.mesh.data = 1
    return c
