"""Fine-tune the released DeepSeek-R1 (671B) on a pod, from converted weights.

    python -m r1jax.convert --hf_dir /data/DeepSeek-R1 --out /ckpt/r1
    python -m r1jax.train --config=configs/r1_671b.py --config.model.checkpoint=/ckpt/r1 \\
        --config.data.train=/data/mine.jsonl

tokens/step = batch_size * seq_len * grad_accum = 256 * 4096 * 4 = 4.2M.
Memory per parameter: bf16 params (2) + bf16 grads (2) + bf16 Adam moments (4) = 8 bytes: 5.4 TB for
the model, spread over the mesh (fsdp x expert x tensor). Multi-host launch and pod plans: BUILD.md.
"""
from r1jax.run_config import defaults


def get_config():
    c = defaults()
    c.output_dir = "runs/r1_671b"
    c.model.preset = "r1-671b"       # the checkpoint's own config.json is what is used
    c.model.checkpoint = ""          # required: an r1jax checkpoint from python -m r1jax.convert
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "bfloat16"
    c.model.remat = "full"
    c.train.steps = 1000
    c.train.batch_size = 256
    c.train.seq_len = 4096
    c.train.grad_accum = 4
    c.train.eval_every = 100
    c.train.eval_batches = 16
    c.train.checkpoint_every = 100
    c.train.router_bias_rate = 1e-3  # keep the aux-loss-free balancing of pre-training alive
    c.optim.lr = 1e-5
    c.optim.warmup_steps = 50
    c.optim.state_dtype = "bfloat16"
    c.optim.layer_decay = 0.95
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.expert = 8
    c.mesh.tensor = 1
    return c
