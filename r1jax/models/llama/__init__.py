"""The dense decoder family (Llama; Qwen2 reuses it, r1jax/models/qwen2/): grouped-query attention
with rotate-half rope (Llama-3 frequency scaling), a SwiGLU MLP per layer, a per-layer K/V cache."""
