"""The llama family's record for the registry (r1jax/models/family.py). Qwen2 has its own record
(r1jax/models/qwen2/family.py) over the same model, layout and FLOPs: one record per config.json
dialect, so each reads and writes only its own."""
from r1jax.models.family import Family
from r1jax.models.llama import config, flops, layout
from r1jax.models.llama.transformer import Transformer

FAMILY = Family(
    name="llama", model_types=("llama",),
    config_from_hf=config.from_hf_dict, config_to_hf=config.to_hf_dict, presets=config.PRESETS,
    model=Transformer, hf_tensors=layout.hf_tensors,
    active_matmul_params=flops.active_matmul_params, train_flops_per_token=flops.train_flops_per_token)
