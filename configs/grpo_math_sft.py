"""Stage 1 of the toy-math GRPO demonstration on a CPU: SFT of the `tiny` preset on the toy task.

    python -m r1jax.data toy_math --out runs/toy_math        # sft, rl, val.jsonl (add3_small)
    python -m r1jax.train --config=configs/grpo_math_sft.py   # -> runs/grpo_math_sft

The task (r1jax/data/toy_math.py, difficulty add3_small): "What is 3 + 0 + 4?", reasoning
"3 + 0 = 3\\n3 + 4 = 7", answer "The answer is \\boxed{7}."; 216 problems in all, split 140 SFT / 40 GRPO
prompts / 36 held out (disjoint). Every training example is 44 tokens, so seq_len 48 holds one. The
task metric (`boxed` on the 36 held-out prompts, temperature 0.6) runs at step 0 and at the end;
metrics.jsonl and task_eval/STEP.jsonl hold it. The run is meant to stop PARTWAY: the model has the
R1 format (</think>, one box) on every sample but solves only some problems, so GRPO's groups of
samples can hold right and wrong answers.

tokens/step = batch_size * seq_len = 4 * 48 = 192, on one device (mesh.data=1). Most of a step's
arithmetic is the 129,280-row LM head (hidden 64); a step took 0.4-0.6 s here, and small batches
gave the most updates per second.

Measured on the 2-core development machine, SHARED with other jobs (load average 3-5 on 2 cores
during every run, so wall times are noisy and a quiet machine should be faster, not measured; "cpu"
is user + sys seconds). acc = task/boxed_accuracy at the last step (one sample per held-out prompt,
temperature 0.6); copy = samples whose first reasoning line copies the prompt's first two operands.
Every run wrote the format right (`</think>`, a non-empty answer, no truncation) on every sample.

| task (T terms, operands 0..M) | batch x seq | steps | lr   | wall / cpu  | val loss | acc          |
| ----------------------------- | ----------- | ----- | ---- | ----------- | -------- | ------------ |
| T=3, M=9 (700 sft)            | 8 x 96      | 60    | 1e-2 | 3m09 / 3m24 | 0.609    | 0/32         |
| T=3, M=9 (700 sft)            | 16 x 96     | 80    | 1e-2 | 6m07 / 4m22 | 0.543    | 7/32         |
| T=3, M=9 (700 sft)            | 8 x 96      | 90    | 2e-2 | 5m04 / 4m45 | 0.576    | 2/32         |
| T=3, M=9 (700 sft)            | 4 x 48      | 200   | 1e-2 | 3m21 / 3m27 | 0.549    | 2/32, copy 0 |
| T=3, M=5 (150 sft)            | 4 x 48      | 200   | 1e-2 | 3m46 / 3m53 | 0.371    | 8/36, copy 4 |
| T=3, M=5: train.steps=200     | 4 x 48      | 200   | 1e-2 | 3m46 / 3m34 | 0.388    | 8/36         |
| T=3, M=5: THIS CONFIG (400)   | 4 x 48      | 400   | 1e-2 | 6m48 / 6m02 | 0.166    | 13/36        |

The 200-step run, scored again with 8 samples per held-out prompt (the size of a GRPO group):

    python -m r1jax.evaluate --task boxed --checkpoint runs/grpo_math_sft \\
        --data runs/toy_math/val.jsonl --n_samples 8 --k 1,8 --max_new_tokens 32      # 288 samples, 98 s here

gave accuracy 0.222 (pass@8 0.806), the format right on 288 of 288 samples, and 29 of the 36 groups
of 8 (81%) hold both a right and a wrong answer. Chance is 0.09 (answers drawn from the distribution
of sums of three numbers 0..5) to 0.125 (always the most common sum, 7 or 8). The reasoning is
mostly not yet faithful: 9% of samples copy the first two operands, 5% have every line's sum right;
the answers are right more often than the lines that lead to them.
This config's 400 steps (twice the 3-minute budget first aimed at) give, by the same evaluation, accuracy
0.306 (pass@8 0.861), the format right on 288 of 288, 31 of 36 groups mixed, and a model that reads
the prompt: 78% of samples copy the first two operands, 23% have every line's sum right. That is
the starting point configs/grpo_math.py uses.

Notes: with M=9 the model learns the format in ~30 steps but not to read the operands from the
prompt (its first reasoning line copies them in 0 of 32 samples): its answers are the sums' typical
values, so accuracy is near chance (the most common sum of three digits, 13 or 14, is 7.5% of
problems). M=5 has fewer facts to learn (sums 0..15) and more epochs of them in the same time; the
model starts to copy operands. An accuracy near 0.22 on 36 samples has a standard error of 0.07
from sampling alone.
"""
from r1jax.train.run_config import defaults


def get_config():
    c = defaults()
    c.output_dir = "runs/grpo_math_sft"
    c.model.preset = "tiny"
    c.model.dtype = "float32"        # CPU: float32 is faster than emulated bf16
    c.data.train = "runs/toy_math/sft.jsonl"
    c.data.val_fraction = 0.05       # 7 of the 140 rows: the val/loss curve
    c.train.steps = 400              # 200 gives 0.22 but a model that barely reads the prompt (below)
    c.train.batch_size = 4
    c.train.seq_len = 48             # every example is 44 tokens
    c.train.log_every = 20
    c.train.eval_every = 400
    c.train.eval_batches = 2
    c.train.checkpoint_every = 400   # the end: GRPO (configs/grpo_math.py) starts from runs/grpo_math_sft
    c.train.task_eval_every = 400    # and at step 0, the baseline
    c.task.name = "boxed"
    c.task.data = "runs/toy_math/val.jsonl"
    c.task.limit = 0                 # all 36 held-out prompts
    c.task.temperature = 0.6
    c.task.max_new_tokens = 32       # a right answer is 28 tokens with its end-of-sentence
    c.optim.lr = 1e-2
    c.optim.warmup_steps = 5
    c.mesh.data = 1
    return c
