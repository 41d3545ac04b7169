"""GRPO stage of the toy-math demonstration (draft)."""
from r1jax.train.run_config import defaults


def get_config():
    c = defaults()
    c.output_dir = "runs/grpo_math"
    c.model.checkpoint = "runs/grpo_math_sft"
    c.model.dtype = "float32"
    c.train.objective = "grpo"
    c.data.train = "data/toy_math/rl.jsonl"
    c.data.val = "data/toy_math/val.jsonl"
    c.grpo.prompts_per_step = 4
    c.grpo.num_generations = 8
    c.grpo.max_new_tokens = 40
    c.grpo.temperature = 1.0
    c.grpo.rewards = "boxed:1.0,format:0.2"
    c.train.batch_size = 32
    c.train.seq_len = 72
    c.train.steps = 30
    c.train.log_every = 1
    c.train.eval_every = 10
    c.train.checkpoint_every = 1000
    c.train.loss_chunk = 0
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 0
    c.optim.schedule = "constant"
    c.mesh.data = 1
    return c
