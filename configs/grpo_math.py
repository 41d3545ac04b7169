"""Stage 2 of the toy-math demonstration on a CPU: GRPO from the SFT run, rewards checked by rule.

    python -m r1jax.data toy_math --out runs/toy_math            # sft, rl, val.jsonl (add3_small)
    python -m r1jax.train --config=configs/grpo_math_sft.py       # stage 1 -> runs/grpo_math_sft (8.5 min)
    python -m r1jax.train --config=configs/grpo_math.py           # stage 2 -> runs/grpo_math (~20 min)

The policy starts from stage 1's checkpoint at step 1000 (model.checkpoint = a training run's
checkpoint: its weights, config and tokenizer), where SFT computes through its reasoning lines but
still gets some held-out problems wrong (configs/grpo_math_sft.py's table). Each step samples 8
completions of 8 prompts (64 rows) at temperature 1.0, for at most 40 tokens (a right answer is 28).
Prompts: the 40 GRPO prompts only (problems SFT never saw, like val's; GRPO sees their answers, never
a worked solution). Reward: boxed (1 when the last \\boxed{} after </think> is the sum) + 0.2 x format
(one well-formed <think> block, an answer, not truncated). Validation: the 36 held-out prompts, 8
samples each at temperature 0.6 (288 samples: val/reward, val/pass_rate = the share whose boxed
reward is 1), at step 0 (the SFT model: the baseline) and every 20 steps; RUN/reward.png plots the
rollouts' and the val reward.

lr: Adam moves every weight by about lr per step whatever the gradient's size, and a GRPO gradient
from 64 samples is noisy; 3e-4 after a 5-step warmup (measured below: 1e-3 lowered the val pass rate,
0.73 -> 0.62 at step 20). Rows are left-padded prompts (<= 32 tokens) then completions, so the LM head
runs on the 40 completion columns only.

Measured (this config after configs/grpo_math_sft.py, both alone on the 2-core machine, seed 0;
19.6 min for the 60 steps, median step 16 s: rollouts ~6 s, update ~10 s; each validation ~45 s;
the metrics and reward.png are kept in tools/results/grpo_math_cpu_2026-12-04/):

| step                  | 0     | 20    | 40    | 60    |
| --------------------- | ----- | ----- | ----- | ----- |
| val/pass_rate         | 0.726 | 0.771 | 0.854 | 0.854 |
| val/reward            | 0.926 | 0.971 | 1.054 | 1.054 |

- Held out: the pass rate rose from 0.726 (the SFT start) to 0.854 at steps 40 and 60, +0.128. Per
  val prompt (8 samples each), step 60 against step 0: 14 prompts up, 3 down, 19 the same; mean
  gain 0.128, standard error 0.045 (paired over the 36 prompts), so about 2.8 standard errors.
- The rollouts' boxed reward on the 40 training prompts (temperature 1.0), mean per 10 steps:
  0.62, 0.69, 0.71, 0.77, 0.76, 0.81. The format reward is 1 on (almost) every sample throughout;
  completions stay 28 tokens: the gain is right sums, not format.
- The same start with lr 1e-3 lost held-out accuracy (0.73 -> 0.62 at step 20). Started from the
  less faithful checkpoint 800 (lr 5e-4), the pass rate fell (0.45 -> 0.33 at step 20): GRPO rewards
  only answers, and there the answers did not follow the lines (configs/grpo_math_sft.py).
- For scale: the SFT run itself, going on from step 1000 on the worked solutions, reaches 0.89 at
  step 1100 and 0.92 at 1200, in 2 minutes (36 samples each). GRPO learns from the final answers alone (no
  worked solution for its 40 prompts) and is slower per unit of compute, as expected.
"""
from r1jax.train.run_config import defaults


def get_config():
    c = defaults()
    c.output_dir = "runs/grpo_math"
    c.model.checkpoint = "runs/grpo_math_sft/checkpoints/1000"  # stage 1, partly trained
    c.model.dtype = "float32"        # CPU: float32 is faster than emulated bf16
    c.train.objective = "grpo"
    c.data.train = "runs/toy_math/rl.jsonl"
    c.data.val = "runs/toy_math/val.jsonl"
    c.grpo.prompts_per_step = 8
    c.grpo.num_generations = 8
    c.grpo.temperature = 1.0
    c.grpo.max_new_tokens = 40
    c.grpo.rewards = "boxed:1.0,format:0.2"
    c.grpo.val_samples = 8
    c.train.batch_size = 64          # = prompts_per_step * num_generations
    c.train.seq_len = 72             # 32 prompt columns (the prompt budget) + 40 completion columns
    c.train.steps = 60
    c.train.log_every = 1
    c.train.eval_every = 20
    c.train.checkpoint_every = 20
    c.train.loss_chunk = 0           # 64 x 40 x 129k float32 logits fit: no chunking
    c.optim.lr = 3e-4
    c.optim.warmup_steps = 5
    c.optim.schedule = "constant"
    c.mesh.data = 1
    return c
