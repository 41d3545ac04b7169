"""The DeepSeek-V3/R1 model in Flax NNX."""
from r1jax.models.deepseek_v3.config import ConfigError, ModelConfig, load_hf_config, preset
from r1jax.models.deepseek_v3.transformer import Transformer

__all__ = ["ConfigError", "ModelConfig", "Transformer", "load_hf_config", "preset"]
