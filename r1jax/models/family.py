"""What a model family plugs in: one `Family` record per family, found by `model_type`
(r1jax/models/registry.py). Code outside a family's folder asks the record (or reads parameter
metadata) and never tests which family it holds.

A family's model is an nnx.Module built as `model(cfg, rngs=nnx.Rngs(...))` with:
    cfg                                   its config (a RuntimeConfig subclass with `model_type`)
    hidden_states(tokens, positions=None, segment_ids=None) -> (h [B, T, D], stats dict)
    head_weight() -> the LM head [D, V] (the tied embedding transposed, where tied)
    logits(h) -> float32 [B, T, V]
    __call__(tokens, positions=None, segment_ids=None) -> (logits, stats)
    init_cache(batch, max_len, start [B]) -> its decode cache (a pytree)
    prefill(tokens [B, T] left-padded, cache) -> (logits [B, V] at the last slot, cache)
    decode(tokens [B, T], slot, cache) -> (logits [B, T, V], cache)
stats: {} for a dense model; {"load": [L, E], "aux_loss": [L]} for routed experts.

Every projection is made by r1jax/models/common/params.py `projection`, so optimizer groups,
adapters and FP8-held weights are read from its metadata. Decoder layers are stacked with a leading
"layers" axis.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Family:
    name: str                                   # the folder under r1jax/models/
    model_types: tuple[str, ...]                # config.json `model_type` values it reads
    # (d: a parsed config.json, *, source: str (named in errors), **runtime fields) -> config
    config_from_hf: Callable[..., Any]
    config_to_hf: Callable[[Any], dict]         # config -> the config.json transformers reads
    presets: Mapping[str, Callable[[], Any]]    # name -> config with the published shapes
    model: type                                 # the nnx.Module (module docstring)
    # (cfg, names=frozenset() (tensor names present), *, with_mtp) -> list[hf_layout.HFTensor]
    hf_tensors: Callable[..., list]
    active_matmul_params: Callable[[Any], int]  # matmul parameters one token passes through
    # (cfg, seq_len) -> forward + backward FLOPs per trained token
    train_flops_per_token: Callable[[Any, int], float]
    # Per-family answers whose defaults mean "none":
    # (cfg, names) -> the names (of a checkpoint's tensors) that are its MTP module's; none without one
    mtp_tensors: Callable[[Any, Iterable[str]], frozenset] = lambda cfg, names: frozenset()
    # whether its release stores projections block-scaled FP8 (r1jax/interop/fp8.py), so that convert
    # may keep FP8 codes and export may write them
    fp8_blocks: bool = False
    # (cfg, *, with_mtp, fp8) -> the config.json of an export: to_hf_dict's, saying whether MTP weights
    # and FP8 blocks follow; None: config_to_hf as is (a family without either)
    export_config: Callable[..., dict] | None = None
