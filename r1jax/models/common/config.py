"""What every model family's configuration shares: the run-time choices, adapters, and config errors.

A family's config class (e.g. r1jax/models/deepseek_v3/config.py ModelConfig) is a frozen dataclass
that inherits RuntimeConfig: its own fields are the architecture, named as in the family's HF
config.json; the fields here are ours and choose numerics and optional modules, never the
architecture. Its __post_init__ validates both (validate_runtime for these).
"""
from __future__ import annotations

import dataclasses
import math


class ConfigError(ValueError):
    """A model configuration that is malformed or contradicts itself; the message names the key."""


# The optimizer groups (r1jax/train/optim.py GROUPS) whose weights are projections an adapter can sit on.
ADAPTABLE_GROUPS = ("attention", "dense_mlp", "shared_experts", "routed_experts")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters on frozen projections (r1jax/models/common/lora.py): W x + scale B A x.

    rank 0 turns them off; scale = alpha / rank, or alpha / sqrt(rank) with rslora; dropout on the
    adapters' input while training; targets: groups of ADAPTABLE_GROUPS whose projections get one."""
    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("attention", "dense_mlp", "shared_experts")
    rslora: bool = False

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    def on(self, group: str) -> bool:
        """Whether projections of optimizer group `group` carry adapters."""
        return self.rank > 0 and group in self.targets


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Run-time choices (not in config.json), the same for every family."""
    dtype: str = "bfloat16"                 # compute dtype of matmuls and activations
    param_dtype: str = "float32"            # storage dtype of parameters
    with_mtp: bool = False                  # instantiate the multi-token-prediction module (a family
                                            # without one refuses True)
    remat: str = "none"                     # rematerialization policy of a scanned layer
                                            # (r1jax/models/common/stack.py)
    moe_chunk_tokens: int = 0               # routed experts over a device's tokens this many at a time
                                            # (expert_parallel.py: bounds the dropless buffers); 0 = all
    attention_mask: str = "dense"           # how packed attention is masked (r1jax/models/common/
                                            # masks.py): "dense", a [B, 1, T, S] same-segment mask;
                                            # "ranges", each query's key range, no mask array
    fp8_weights: bool = False               # the decoder layers' projections held as e4m3 codes +
                                            # 128x128 scales, dequantized per layer
                                            # (r1jax/models/common/params.py); frozen: a base for adapters
    lora: LoraConfig = LoraConfig()         # adapters on the projections (r1jax/models/common/lora.py)

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)


DTYPES = ("float32", "bfloat16", "float16")
REMAT = ("none", "full", "dots", "dots_no_batch")
ATTENTION_MASKS = ("dense", "ranges")


def validate_runtime(c: RuntimeConfig) -> None:
    """Raises ConfigError naming the first out-of-range run-time field of `c`."""
    def bad(key, why):
        raise ConfigError(f"model config: {key}={getattr(c, key)!r}: {why}")

    if c.dtype not in DTYPES:
        bad("dtype", f"must be one of {DTYPES}")
    if c.param_dtype not in DTYPES:
        bad("param_dtype", f"must be one of {DTYPES}")
    if c.remat not in REMAT:
        bad("remat", f"must be one of {REMAT}")
    if not isinstance(c.moe_chunk_tokens, int) or isinstance(c.moe_chunk_tokens, bool) or \
            c.moe_chunk_tokens < 0:
        bad("moe_chunk_tokens", "must be a non-negative integer (0 = one chunk)")
    if c.attention_mask not in ATTENTION_MASKS:
        bad("attention_mask", f"must be one of {ATTENTION_MASKS}")
    lora = c.lora
    if not isinstance(lora.rank, int) or isinstance(lora.rank, bool) or lora.rank < 0:
        raise ConfigError(f"model config: lora.rank={lora.rank!r}: must be an integer >= 0 (0 = off)")
    if lora.rank and not lora.alpha > 0:
        raise ConfigError(f"model config: lora.alpha={lora.alpha!r}: must be > 0")
    if not 0 <= lora.dropout < 1:
        raise ConfigError(f"model config: lora.dropout={lora.dropout!r}: must be in [0, 1)")
    unknown = [t for t in lora.targets if t not in ADAPTABLE_GROUPS]
    if unknown:
        raise ConfigError(f"model config: lora.targets={','.join(lora.targets)!r}: {unknown[0]!r} is not "
                          f"a group with projections to adapt; choose from {','.join(ADAPTABLE_GROUPS)}")
    if lora.rank and not lora.targets:
        raise ConfigError("model config: lora.targets is empty with lora.rank > 0")
