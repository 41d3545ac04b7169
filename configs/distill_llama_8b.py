"""Full fine-tuning of DeepSeek-R1-Distill-Llama-8B on one H200, from converted weights.

    python -m r1jax.convert --hf_dir /data/DeepSeek-R1-Distill-Llama-8B --out ckpt/r1-distill-llama-8b
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 python -m r1jax.train --config=configs/distill_llama_8b.py \\
        --config.data.train=/data/mine.jsonl          # default: the bundled code dataset
    python -m r1jax.plan --config=configs/distill_llama_8b.py --topology=v5p-8 \\
        --config.mesh.data=1 --config.mesh.fsdp=-1   # a TPU slice instead (BUILD.md)

Data: "" is the bundled code-instruction dataset (HumanEval-decontaminated); the tokenizer is the
checkpoint's own (convert copies it). tokens/step = batch_size * seq_len = 32 * 4096 = 131,072, in
grad_accum = 8 micro-batches of 4 sequences.

Memory on one H200 (141 GB = 131 GiB; JAX takes 75% of it unless XLA_PYTHON_CLIENT_MEM_FRACTION
says more, hence the 0.95 above: 124.8 GiB). N = 8,030,261,248 parameters (the preset's; the release's):
    state     float32 master params (4) + float32 gradient accumulator (4, train/step.py) + bfloat16
              Adam moments (2 + 2) = 12 bytes x N = 89.7 GiB
    activations, remat full, micro-batch 4 x 4096 = 16,384 tokens (bytes per token from
              r1jax/train/residuals.py with a fused attention kernel; method: BUILD.md, "R1-Distill:
              what fits where"): layer inputs kept for the backward pass, 270,852 B per token
              = 4.1 GiB; one layer recomputed in the backward pass, 139,552 B per token =
              2.1 GiB; LM head + cross-entropy over 4096 positions at a time, float32 logits and
              their gradient 2 x 4096 x 128,256 x 4 B = 3.9 GiB: 10.2 GiB
    total ~100 GiB when the compiler updates parameters and moments in place. The CPU
              compiler's schedule of the same step (plan.build_step on one CPU device, its
              memory_analysis) needs 145.5 GiB (arguments 59.8, temporaries 85.6): besides the
              gradient accumulator it holds about one more parameter-sized float32 tree while it
              updates. Which an H200 gets is what tools/gpu_check.sh distill measures (peak memory);
              if the second, use a node: --config.mesh.data=1 --config.mesh.fsdp=-1 (1/8 each).
Why float32 master params with bfloat16 moments, not all-bfloat16 (8 bytes x N = 60 GiB): an update
smaller than half a bfloat16 step of its weight is lost (lr 1e-5 against |w| ~ 0.02, whose half
step is 0.02 x 2^-9 = 3.9e-5), so bfloat16 params stop learning at fine-tuning rates; float32
moments too (16 bytes x N = 120 GiB) leave no room for activations.

LoRA instead (rank 16 on attention and the MLP; a frozen bfloat16 base of 15.0 GiB, adapters
41.9M parameters with float32 Adam moments: 0.5 GiB):

    python -m r1jax.train --config=configs/distill_llama_8b.py --config.lora.rank=16 \\
        --config.lora.alpha=32 --config.lora.targets=attention,dense_mlp \\
        --config.model.param_dtype=bfloat16 --config.optim.state_dtype=float32 \\
        --config.optim.lr=1e-4 --config.optim.weight_decay=0.0 --config.output_dir=runs/distill_llama_8b_lora
"""
from r1jax.train.run_config import defaults


def get_config():
    c = defaults()
    c.output_dir = "runs/distill_llama_8b"
    c.model.preset = "r1-distill-llama-8b"    # the checkpoint's own config.json is what is used
    c.model.checkpoint = "ckpt/r1-distill-llama-8b"   # python -m r1jax.convert --out (above)
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"          # master weights: fine-tuning updates survive
    c.model.remat = "full"                   # keep each layer's input only; recompute the rest
    c.data.train = ""                        # "" = the bundled code dataset
    c.data.val_fraction = 0.02
    c.train.steps = 500
    c.train.batch_size = 32
    c.train.seq_len = 4096
    c.train.grad_accum = 8                   # micro-batches of 4 x 4096
    c.train.loss_chunk = 4096
    c.train.log_every = 10
    c.train.eval_every = 100
    c.train.eval_batches = 16
    c.train.checkpoint_every = 100
    c.optim.lr = 1e-5
    c.optim.warmup_steps = 25
    c.optim.schedule = "cosine"
    c.optim.state_dtype = "bfloat16"         # Adam moments: 4 bytes per parameter
    c.mesh.data = -1                         # one GPU: data 1; several: data-parallel copies
    return c
