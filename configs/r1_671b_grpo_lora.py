"""GRPO on the released DeepSeek-R1 (671B): rank-16 adapters on a frozen FP8 base, verifiable rewards.

    python -m r1jax.convert --hf_dir /data/DeepSeek-R1 --out /ckpt/r1-fp8 --dtype float8_e4m3fn
    python -m r1jax.train --config=configs/r1_671b_grpo_lora.py --config.model.checkpoint=/ckpt/r1-fp8 \\
        --config.data.train=/data/math.parquet --config.data.columns=prompt=problem,answer=final_answer
    python -m r1jax.plan --config=configs/r1_671b_grpo_lora.py --topology=v5p-64 --variant=lora   # before renting it (v5p-32: the rollouts do not fit)

The model, mesh and adapters are configs/r1_671b_lora.py's (rank 16 on attention, dense MLP and
shared experts; the base as FP8 codes + scales). The recipe is R1-style RL with verifiable rewards:
32 prompts x 16 generations = 512 rows per step, up to 3072 new tokens each after a prompt of at
most 1024 (train.seq_len 4096 holds both: the prompts are prepared with that budget), reward
boxed:1.0 (the \\boxed{} answer against the row's `answer`) + format:0.2 (the <think> layout),
rollouts at temperature 1.0 (R1's RL sampling; its 0.6 is for evaluation: grpo.val_temperature),
one optimizer update per batch of rollouts (grpo.iterations 1: on-policy, no old log-probs).

grpo.beta = 0.001, R1's KL coefficient: with adapters the reference is the base itself (adapters
zero), so the penalty costs no second model (a zero adapter tree, 0.5 GiB for the whole slice) but
one more forward pass over the batch per step; set it to 0 to drop that pass.

Measured plan (BUILD.md, "Pod plans", GRPO with LoRA; GiB per chip of 95.74, fits <= 86.2):
v5p-32 (16 chips, mesh fsdp 2 x expert 8, 32 micro-batches): the update step fits, 81.3 (81.6 with
the reference beside it), but the rollouts do not: the decode cache of 512 rows x 4096 slots is
137.3 GiB on the slice, 8.58 per chip; the compiled decode needs 87.5 (the model state 39.5 + the
cache, temporaries 39.4), the prefill 67.7; with the Adam state 0.62 and the reference 0.31 the
rollout phase is 88.4: DOES NOT FIT.
v5p-64 (32 chips, fsdp 4 x expert 8, 16 micro-batches): **fits**: update 48.5 (48.8 with the
reference), rollout phase 46.7 (decode 45.8: the model state 19.9 + the cache 4.3, temporaries 21.5;
prefill 34.1), each with the Adam state and the reference resident.
"""
from r1jax.train.run_config import defaults


def get_config():
    c = defaults()
    c.output_dir = "runs/r1_671b_grpo_lora"
    c.model.preset = "r1-671b"       # the checkpoint's own config.json is what is used
    c.model.checkpoint = ""          # required: python -m r1jax.convert ... --dtype float8_e4m3fn
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "bfloat16"
    c.model.remat = "full"
    c.model.moe_chunk_tokens = 512   # as configs/r1_671b.py: the dropless buffer of one sequence
    c.mesh.preset = "r1-671b-v5p"    # r1-671b-v6e on Trillium, r1-671b-gpu on 8-GPU hosts
    c.lora.rank = 16                 # default targets: attention, dense_mlp, shared_experts
    c.lora.alpha = 16.0
    c.optim.state_dtype = "float32"  # the adapters' Adam moments
    c.optim.lr = 1e-5                # RL steps are smaller than SFT's (configs/r1_671b_lora.py: 1e-4)
    c.optim.warmup_steps = 10
    c.data.train = "/data/math_prompts/train.jsonl"   # placeholder: prompt rows with an `answer` (above)
    c.train.objective = "grpo"
    c.train.steps = 500
    c.train.seq_len = 4096           # prompt (<= 1024) + completion (<= grpo.max_new_tokens)
    c.train.batch_size = 512         # = grpo.prompts_per_step * grpo.num_generations
    c.train.grad_accum = 0           # auto: batch_size / chips, one sequence per chip per micro-batch
    c.train.loss_chunk = 262144      # as configs/r1_671b.py
    c.train.mtp_loss_weight = 0.0    # an SFT term: refused with train.objective=grpo
    c.train.router_bias_rate = 1e-3
    c.train.eval_every = 50
    c.train.checkpoint_every = 50
    c.grpo.prompts_per_step = 32
    c.grpo.num_generations = 16
    c.grpo.max_new_tokens = 3072
    c.grpo.rewards = "boxed:1.0,format:0.2"
    c.grpo.temperature = 1.0         # rollouts; validation samples at grpo.val_temperature = 0.6
    c.grpo.top_p = 1.0
    c.grpo.beta = 0.001              # R1's KL coefficient; the reference is the base (adapters zero)
    c.grpo.iterations = 1
    c.grpo.val_samples = 1
    return c
