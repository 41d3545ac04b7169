"""Training objectives: the loss a training step differentiates.

Objectives plug into the training step. SFT's is the next-token loss in r1jax/models/losses.py;
GRPO's (group relative policy optimization, the RL recipe of DeepSeek-R1) is in grpo.py here, as
pure loss math. The loop integration (sampling groups, rewards, old and reference log-probabilities)
comes next.
"""
