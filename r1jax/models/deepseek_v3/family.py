"""The DeepSeek-V3 / R1 family's record for the registry (r1jax/models/family.py)."""
from r1jax.models.deepseek_v3 import config, flops, layout
from r1jax.models.deepseek_v3.transformer import Transformer
from r1jax.models.family import Family

FAMILY = Family(
    name="deepseek_v3", model_types=("deepseek_v3", "kimi_k2"),
    config_from_hf=config.from_hf_dict, config_to_hf=config.to_hf_dict, presets=config.PRESETS,
    model=Transformer, hf_tensors=layout.hf_tensors,
    active_matmul_params=flops.active_matmul_params, train_flops_per_token=flops.train_flops_per_token,
    mtp_tensors=layout.mtp_tensors, fp8_blocks=True, export_config=layout.export_config)
