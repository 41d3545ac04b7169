"""LoRA on the released DeepSeek-R1 (671B): rank-16 adapters on a frozen FP8 base, small slices.

    python -m r1jax.convert --hf_dir /data/DeepSeek-R1 --out /ckpt/r1-fp8 --dtype float8_e4m3fn
    python -m r1jax.train --config=configs/r1_671b_lora.py --config.model.checkpoint=/ckpt/r1-fp8 \\
        --config.data.train=/data/mine.jsonl
    python -m r1jax.plan --config=configs/r1_671b_lora.py --topology=v5p-32 --variant=lora   # before renting it

Measured plan (BUILD.md, "Pod plans", LoRA table): v5p-32 (16 chips, mesh fsdp 2 x expert 8),
512 x 4096 tokens per step in 32 micro-batches (grad_accum 0: auto, 512 / 16 chips): **fits**, 81.3
GiB per chip of 95.74 (arguments 42.9: the FP8 base's share; temporaries 38.3). The adapters
(attention, dense MLP, shared experts: 126.4M parameters, r1jax.train.plan.adapter_counts) with float32
Adam moments are 1.4 GiB for the whole slice. The base's memory layout is the compiler's choice
(train.jit_train_step): in the default layout the micro-batch loop held a second copy of it and the
same plan needed >= 155 GiB per chip.
"""
from r1jax.train.run_config import defaults


def get_config():
    c = defaults()
    c.output_dir = "runs/r1_671b_lora"
    c.model.preset = "r1-671b"       # the checkpoint's own config.json is what is used
    c.model.checkpoint = ""          # required: python -m r1jax.convert ... --dtype float8_e4m3fn
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "bfloat16"
    c.model.remat = "full"
    c.model.moe_chunk_tokens = 512   # as configs/r1_671b.py: the dropless buffer of one sequence
    c.train.steps = 1000
    c.train.seq_len = 4096
    c.train.eval_every = 100
    c.train.loss_chunk = 262144      # as configs/r1_671b.py
    c.train.eval_batches = 16
    c.train.checkpoint_every = 100
    c.train.router_bias_rate = 1e-3
    c.optim.warmup_steps = 50
    c.mesh.preset = "r1-671b-v5p"    # r1-671b-v6e on Trillium, r1-671b-gpu on 8-GPU hosts
    c.lora.rank = 16                 # default targets: attention, dense_mlp, shared_experts
    c.lora.alpha = 16.0
    c.optim.state_dtype = "float32"  # the adapters' Adam moments: 0.9 GiB for the whole slice
    c.optim.lr = 1e-4                # adapters take a larger rate than full fine-tuning
    c.train.batch_size = 512         # as configs/r1_671b.py: 2.1M tokens per step
    c.train.grad_accum = 0           # auto: batch_size / chips, one sequence per chip per micro-batch
    return c
