"""r1jax: fine-tune DeepSeek-R1 (DeepSeek-V3 architecture) in JAX."""
__version__ = "0.1.0"
