"""The default job: fine-tune an R1-architecture model on the bundled code-instruction dataset.

    python -m r1jax.train --config=configs/code.py

With no weights and no downloads it trains the `small` preset (R1 architecture: MLA, 16 routed + 1
shared experts in groups, YaRN; real R1 tokenizer and 129,280-token vocabulary) from random init on
code examples built from this machine's Python standard library, on CPU, in about 15 minutes on 2
cores. The real run starts from converted R1 weights on a mesh:

    python -m r1jax.train --config=configs/code.py --config.model.checkpoint=CKPT \\
        --config.model.preset=r1-671b --config.model.dtype=bfloat16 --config.mesh.expert=8

On several hosts every host runs the same command (BUILD.md "Multi-host"); batch_size is the global
batch and must divide by the process count:

    tools/launch_tpu_pod.sh --tpu NAME --zone ZONE -- --config=configs/code.py --config.output_dir=/shared/run
    sbatch --nodes=2 tools/launch_slurm.sh -- --config=configs/code.py --config.output_dir=/shared/run

tokens/step = batch_size * seq_len * grad_accum = 8 * 256 * 1 = 2,048.
"""
from r1jax.train.run_config import defaults


def get_config():
    c = defaults()
    c.output_dir = "runs/code"
    c.model.preset = "small"
    c.model.dtype = "float32"        # CPU: float32 is faster than emulated bf16; use bfloat16 on GPU/TPU
    c.data.train = ""                # "" = the bundled stdlib code dataset (HumanEval-decontaminated)
    c.data.val_fraction = 0.05
    c.train.steps = 60
    c.train.batch_size = 8
    c.train.seq_len = 256
    c.train.log_every = 5
    c.train.eval_every = 30
    c.train.eval_batches = 8         # 8 x 8 x 256 = 16k validation tokens per eval
    c.train.checkpoint_every = 30
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 5
    c.optim.schedule = "cosine"
    c.optim.layer_decay = 0.9        # lower layers move less (layer-wise LR decay)
    c.mesh.data = 1
    return c
