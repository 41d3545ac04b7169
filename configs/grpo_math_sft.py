"""Stage 1 of the toy-math GRPO demonstration on a CPU: SFT of the `tiny` preset on the toy task.

    python -m r1jax.data toy_math --out runs/toy_math        # sft, rl, val.jsonl (add3_small)
    python -m r1jax.train --config=configs/grpo_math_sft.py   # -> runs/grpo_math_sft (8.5 min here)

The task (r1jax/data/toy_math.py, difficulty add3_small): "What is 3 + 0 + 4?", reasoning
"3 + 0 = 3\\n3 + 4 = 7", answer "The answer is \\boxed{7}."; 216 problems in all, split 140 SFT / 40 GRPO
prompts / 36 held out (disjoint). Every training example is 44 tokens, so seq_len 48 holds one.
The task metric (`boxed` on the 36 held-out prompts, one sample each at temperature 0.6) runs every
100 steps, with a checkpoint: metrics.jsonl and task_eval/STEP.jsonl hold the curve, and
configs/grpo_math.py starts GRPO from checkpoints/1000, a model that solves part of the held-out
problems (the three newest checkpoints, 1000-1200, are kept).

tokens/step = batch_size * seq_len = 4 * 48 = 192, on one device (mesh.data=1). Most of a step's
arithmetic is the 129,280-row LM head (hidden 64); alone on the 2-core machine a step takes ~0.35 s
(~550 tokens/s) and the whole run 8 min 23 s (1200 steps, 13 task evals, 12 checkpoints).

Measured with this config (seed 0; the run is deterministic: two runs gave the same numbers).
acc = held-out boxed accuracy (36 samples: a standard error near 0.08); of the same samples,
chain = the reasoning copies the operands and carries the running total (whatever its sums), and
faithful = the boxed answer is the last reasoning line's result:

| step      | 100  | 200  | 300  | 400  | 500  | 600  | 700  | 800  | 900  | 1000 | 1100 | 1200 |
| --------- | ---- | ---- | ---- | ---- | ---- | ---- | ---- | ---- | ---- | ---- | ---- | ---- |
| acc       | 0.22 | 0.17 | 0.19 | 0.36 | 0.28 | 0.33 | 0.42 | 0.50 | 0.42 | 0.75 | 0.89 | 0.92 |
| chain     | 0.00 | 0.00 | 0.00 | 0.03 | 0.08 | 0.14 | 0.22 | 0.31 | 0.31 | 0.89 | 0.94 | 1.00 |
| faithful  | 0.28 | 0.17 | 0.22 | 0.36 | 0.53 | 0.44 | 0.58 | 0.61 | 0.61 | 0.89 | 0.92 | 0.89 |

The format (`</think>`, one box, no truncation) is right on every sample from step 100 but one (at 700). Up to step
~900 the model answers mostly without using its reasoning (right answers after wrong lines); between
900 and 1000 it starts to compute through the lines, and the accuracy jumps. That matters for GRPO,
which rewards only the final answer: from an unfaithful model (checkpoint 800, or an earlier
400-step run) GRPO reinforced wrong lines that preceded lucky answers and the held-out pass rate
fell (0.45 -> 0.33 in 20 steps at lr 5e-4); from checkpoint 1000 the lines carry the answer, so a
rewarded answer rewards right lines. Why GRPO starts at 1000 and not at 1200: at 1200 SFT has
nearly solved the held-out set, leaving GRPO little to show.
"""
from r1jax.train.run_config import defaults


def get_config():
    c = defaults()
    c.output_dir = "runs/grpo_math_sft"
    c.model.preset = "tiny"
    c.model.dtype = "float32"        # CPU: float32 is faster than emulated bf16
    c.data.train = "runs/toy_math/sft.jsonl"
    c.data.val_fraction = 0.05       # 7 of the 140 rows: the val/loss curve
    c.train.steps = 1200             # the table above; GRPO starts from step 1000
    c.train.batch_size = 4
    c.train.seq_len = 48             # every example is 44 tokens
    c.train.log_every = 20
    c.train.eval_every = 1200
    c.train.eval_batches = 2
    c.train.checkpoint_every = 100   # GRPO (configs/grpo_math.py) starts from runs/grpo_math_sft/checkpoints/1000
    c.train.keep_checkpoints = 3     # 1000, 1100, 1200 remain at the end
    c.train.task_eval_every = 100    # and at step 0, the baseline
    c.task.name = "boxed"
    c.task.data = "runs/toy_math/val.jsonl"
    c.task.limit = 0                 # all 36 held-out prompts
    c.task.temperature = 0.6
    c.task.max_new_tokens = 32       # a right answer is 28 tokens with its end-of-sentence
    c.optim.lr = 1e-2
    c.optim.warmup_steps = 5
    c.mesh.data = 1
    return c
