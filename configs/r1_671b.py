"""Fine-tune the released DeepSeek-R1 (671B) on a pod, from converted weights.

    python -m r1jax.convert --hf_dir /data/DeepSeek-R1 --out /ckpt/r1
    python -m r1jax.train --config=configs/r1_671b.py --config.model.checkpoint=/ckpt/r1 \\
        --config.data.train=/data/mine.jsonl
    python -m r1jax.plan --config=configs/r1_671b.py --topology=v5p-1024   # memory, before renting it

tokens/step = batch_size * seq_len = 512 * 4096 = 2.1M, in grad_accum micro-batches; grad_accum 0
(auto) takes 512 / the mesh's batch shards (data x fsdp x expert, the chip count on these meshes), so
each micro-batch gives every chip one sequence: 1 micro-batch on v5p-1024 (512 chips), where the plan
above answers fits, 35.9 GiB per chip (40.4 with float32 moments, --variant full; BUILD.md, "Pod
plans"). Memory per parameter: bf16 params (2) + float32 gradient accumulator (4) + bf16 Adam
moments (4) = 10 bytes: 6.7 TB for the model, spread over every chip (fsdp x expert x tensor).
The mesh comes from mesh.preset for the device count (r1jax/parallel/sharding.py: r1-671b-v5p, r1-671b-v6e,
r1-671b-gpu; sharding.mesh_sizes). Multi-host launch and pod plans: BUILD.md.
"""
from r1jax.train.run_config import defaults


def get_config():
    c = defaults()
    c.output_dir = "runs/r1_671b"
    c.model.preset = "r1-671b"       # the checkpoint's own config.json is what is used
    c.model.checkpoint = ""          # required: an r1jax checkpoint from python -m r1jax.convert
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "bfloat16"
    c.model.remat = "full"
    # Routed experts over each chip's tokens 512 at a time: the dropless receive buffer is then
    # expert x 512 x 8 rows per chunk, the balanced size of a whole 4096-token sequence at expert 8
    # (-10.4 GiB per chip on v5p-1024 against one chunk; BUILD.md, "Pod plans").
    c.model.moe_chunk_tokens = 512
    c.train.steps = 1000
    c.train.batch_size = 512         # a multiple of the chips: every chip gets whole sequences
    c.train.seq_len = 4096
    c.train.grad_accum = 0           # auto: 512 / chips, one sequence per chip per micro-batch
    c.train.eval_every = 100
    # LM head + cross-entropy over ~262k positions at a time, i.e. 262144 / micro-batch rows steps of
    # time per row: 512 steps (252 MiB of float32 logits per chip) at one sequence per chip.
    c.train.loss_chunk = 262144
    c.train.eval_batches = 16
    c.train.checkpoint_every = 100
    c.train.router_bias_rate = 1e-3  # keep the aux-loss-free balancing of pre-training alive
    c.optim.lr = 1e-5
    c.optim.warmup_steps = 50
    c.optim.state_dtype = "bfloat16"
    c.optim.layer_decay = 0.95
    c.mesh.preset = "r1-671b-v5p"    # r1-671b-v6e on Trillium, r1-671b-gpu on 8-GPU hosts
    return c
