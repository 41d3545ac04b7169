"""The Qwen2 family (the R1-Distill-Qwen models): the llama decoder (r1jax/models/llama/) with biases
on q, k and v; only its config.json dialect and presets live here."""
