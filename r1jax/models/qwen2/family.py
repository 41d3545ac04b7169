"""The qwen2 family's record for the registry (r1jax/models/family.py): its own config.json dialect
and presets (r1jax/models/qwen2/config.py) over the llama decoder, layout and FLOPs
(r1jax/models/llama/)."""
from r1jax.models.family import Family
from r1jax.models.llama import flops, layout
from r1jax.models.llama.transformer import Transformer
from r1jax.models.qwen2 import config

FAMILY = Family(
    name="qwen2", model_types=("qwen2",),
    config_from_hf=config.from_hf_dict, config_to_hf=config.to_hf_dict, presets=config.PRESETS,
    model=Transformer, hf_tensors=layout.hf_tensors,
    active_matmul_params=flops.active_matmul_params, train_flops_per_token=flops.train_flops_per_token)
