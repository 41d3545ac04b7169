"""What an FP8 export costs: the loss of the exported FP8 weights next to the BF16 weights it was
quantized from, on a few rows (export --fp8 --fp8_check_data FILE).

Fine-tuning moves weights by small deltas, and a merged LoRA delta is often below e4m3's resolution
(3 mantissa bits: steps of 6-12% of a value): quantizing rounds part of it away. Both losses are
computed with r1jax's model in float32 on this host, so the difference is the weights' rounding alone:
    BF16  the exported variables as the BF16 export holds them (read from the source, rounded to bf16)
    FP8   the FP8 export's codes times their block scales, read back from the written shards
The whole model is held in memory twice: a check for models that fit on one host.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
from flax import nnx

from r1jax.models import checkpoint
from r1jax.interop import fp8, safetensors_io, streaming
from r1jax.interop.convert import SCALE_SUFFIX, fill_params
from r1jax.eval.evaluate import score
from r1jax.models import registry
from r1jax.models.common.config import RuntimeConfig


def _model(cfg: RuntimeConfig, flat: dict[str, np.ndarray]):
    """The plain model of `cfg` holding the variables `flat` ({dotted path: array})."""
    graphdef, state = nnx.split(checkpoint.abstract_model(cfg))
    nnx.replace_by_pure_dict(state, checkpoint.unflatten(flat))
    return nnx.merge(graphdef, state)


def bf16_variables(cfg: RuntimeConfig, store) -> dict[str, np.ndarray]:
    """{path: float32 array} of the model's variables as a BF16 export holds them: every HF tensor
    read from `store` (shapes, read(path, index)) in bf16, the router bias float32."""
    from r1jax.interop.export import _read_tensor  # noqa: PLC0415 - export imports this module

    def read(name, i):
        data = np.asarray(_read_tensor(streaming.Task(expected[i]), store), np.float32)
        if name.endswith("e_score_correction_bias"):
            return data
        return data.astype(ml_dtypes.bfloat16).astype(np.float32)

    expected = registry.hf_tensors(cfg, with_mtp=False)
    return fill_params(cfg, expected, read)


def exported_variables(cfg: RuntimeConfig, hf_dir: str) -> dict[str, np.ndarray]:
    """{path: float32 array} of the model's variables read back from the export `hf_dir`, FP8
    tensors dequantized with their scales (r1jax/interop/fp8.py)."""
    infos = safetensors_io.index_checkpoint(hf_dir)

    def read(name, i):
        data = safetensors_io.load(infos[name])
        if name + SCALE_SUFFIX in infos:
            return fp8.dequantize(data, safetensors_io.load(infos[name + SCALE_SUFFIX]))
        return np.asarray(data, np.float32)

    return fill_params(cfg, registry.hf_tensors(cfg, set(infos), with_mtp=False), read)


def losses(cfg: RuntimeConfig, store, hf_dir: str, rows: list[list[int]], batch_size: int = 4) -> dict:
    """{"bf16": loss, "fp8": loss, "tokens": n}: the mean next-token loss over `rows` of the BF16
    variables from `store` and of the FP8 export in `hf_dir`, both in float32 compute."""
    cfg = cfg.replace(dtype="float32", param_dtype="float32", with_mtp=False)
    out = {}
    for key, flat in (("bf16", lambda: bf16_variables(cfg, store)),
                      ("fp8", lambda: exported_variables(cfg, hf_dir))):
        result = score(_model(cfg, flat()), rows, batch_size)
        out[key], out["tokens"] = result["loss"], result["tokens"]
    return out
