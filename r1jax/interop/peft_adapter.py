"""A LoRA run's adapters as a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) for
transformers' DeepseekV3ForCausalLM (transformers >= 5: fused routed experts), or the dense families'
LlamaForCausalLM / Qwen2ForCausalLM (the same attention and MLP tensor names), loadable with
`peft.PeftModel.from_pretrained(model, DIR)` (peft >= 0.17 for `target_parameters`).

Names and layouts come from r1jax/interop/hf_layout.py: each HF tensor whose slots carry an adapter becomes one
PEFT target. PEFT's orientation is torch's Linear: lora_A.weight [r, In], lora_B.weight [Out, r], In
and Out flattened as the HF weight [Out, In] flattens them (heads, and o_proj's H*V input, in C
order, as layout's head splits undo); delta W = scaling lora_B @ lora_A with scaling = lora_alpha / r
(/ sqrt(r) with use_rslora) = r1jax's s, so alpha and rslora carry over unchanged.

How each group is expressed:
  attention   target_modules (peft.lora.Linear): q_a_proj, q_b_proj (or q_proj), kv_a_proj_with_mqa,
              kv_b_proj, o_proj.
  dense_mlp, shared_experts
              target_parameters NAME.weight (peft.lora.ParamWrapper, the same W + s B A): PEFT 0.21
              rewrites module targets named gate_proj/up_proj/down_proj of a DeepSeek-V3 model onto
              the fused routed experts (its transformers-5 MoE conversion), so they cannot be
              target_modules.
  routed_experts
              target_parameters mlp.experts.gate_up_proj [E, 2F, D] and mlp.experts.down_proj
              [E, D, F]: per expert e, delta_e = s lora_B_e @ lora_A_e with lora_A.weight [E*R, In]
              (rows e*R..) and lora_B.weight [Out, R*E] (column k*E + e for rank k). gate and up
              share the fused tensor, so their pairs stack into rank 2r: A = [A_gate; A_up],
              B = blockdiag(B_gate, B_up), with rank_pattern 2r and alpha_pattern keeping s.
ParamWrapper applies no dropout, so with such targets the config's lora_dropout is 0 (it only
matters for further training). A router bias the run changed is carried by modules_to_save (the
layer's `mlp.gate`: the base's router weight, the run's bias). MTP layers have no adapters.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np

from r1jax.interop import safetensors_io
from r1jax.models import hf_layout
from r1jax.models import registry
from r1jax.models.common.config import RuntimeConfig

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
FUSED_EXPERTS = "mlp.experts.gate_up_proj"


class AdapterExportError(ValueError):
    """Adapters that cannot be written as a PEFT adapter; the message names the tensor or path."""


@dataclasses.dataclass(frozen=True)
class Target:
    """One PEFT target: the HF tensor `tensor` (its layout slots say which r1jax adapters feed it),
    targeted as a module (`parameter` False) or a parameter, whose lora weights are saved under
    `key` + ".lora_A.weight" / ".lora_B.weight"."""
    tensor: hf_layout.HFTensor
    parameter: bool
    key: str

    @property
    def module(self) -> str:
        return self.tensor.name.removesuffix(".weight")


def fused_layout(cfg: RuntimeConfig) -> list[hf_layout.HFTensor]:
    """The HF tensors of transformers' DeepseekV3ForCausalLM (fused experts, no MTP)."""
    fused = {f"model.layers.{n}.{FUSED_EXPERTS}" for n in range(cfg.num_hidden_layers)}
    return registry.hf_tensors(cfg, fused, with_mtp=False)


def targets(cfg: RuntimeConfig, adapted: set[str]) -> list[Target]:
    """PEFT targets of the HF tensors any of whose slot paths is in `adapted` (r1jax projection
    paths carrying an adapter). Raises AdapterExportError for a tensor PEFT cannot adapt."""
    out = []
    for t in fused_layout(cfg):
        hit = [s.path in adapted for s in t.slots]
        if not any(hit):
            continue
        if not all(hit):
            raise AdapterExportError(f"{t.name}: adapters on part of it only ({[s.path for s in t.slots]}); "
                                     "PEFT cannot express that; export without --adapter writes merged weights")
        if not all(s.swap for s in t.slots):  # every projection is a torch [out, in] weight
            raise AssertionError(f"layout: {t.name} is not stored [out, in]")
        if ".self_attn." in t.name:
            out.append(Target(t, False, PREFIX + t.name.removesuffix(".weight")))
        elif t.name.endswith(FUSED_EXPERTS):  # the inner ParamWrapper of the experts module
            out.append(Target(t, True, PREFIX + t.name.removesuffix(".gate_up_proj") + ".base_layer"))
        elif t.name.endswith("mlp.experts.down_proj"):  # the outer one
            out.append(Target(t, True, PREFIX + t.name.removesuffix(".down_proj")))
        elif ".mlp." in t.name and t.name.endswith("_proj.weight"):
            out.append(Target(t, True, PREFIX + t.name.removesuffix(".weight")))
        else:
            raise AdapterExportError(f"{t.name}: PEFT has no LoRA target for it in transformers' "
                                     "DeepseekV3; export without --adapter writes merged weights")
    return out


def lora_pair(t: hf_layout.HFTensor, pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(lora_A.weight, lora_B.weight) of HF tensor `t` from the r1jax (A, B) of each of its slots, in
    slot order: A [E?, in..., r], B [E?, r, out...] (E, the expert axis, for a 3-D `t`).

    2-D t [Out, In]: [R, In], [Out, R]; 3-D t [E, Out, In]: [E*R, In], [Out, R*E]; R = r * slots."""
    experts = len(t.shape) == 3
    lead = (t.shape[0],) if experts else ()
    out_dim, in_dim = t.shape[-2:]
    r = pairs[0][0].shape[-1]
    big_r = r * len(pairs)
    lora_a = np.zeros(lead + (big_r, in_dim), np.float32)
    lora_b = np.zeros(lead + (out_dim, big_r), np.float32)
    for k, (slot, (a, b)) in enumerate(zip(t.slots, pairs)):
        a = np.asarray(a, np.float32).reshape(lead + (-1, r))   # [E?, In, r]
        b = np.asarray(b, np.float32).reshape(lead + (r, -1))   # [E?, r, Out_slot]
        rows = slice(*slot.rows) if slot.rows else slice(None)
        if a.shape[-2] != in_dim or b.shape[-1] != len(range(out_dim)[rows]):
            raise AdapterExportError(f"{t.name}: adapter of {slot.path} is {list(a.shape)} x {list(b.shape)}, "
                                     f"not a factorization of its [{out_dim}, {in_dim}] weight")
        lora_a[..., k * r:(k + 1) * r, :] = np.swapaxes(a, -1, -2)
        lora_b[..., rows, k * r:(k + 1) * r] = np.swapaxes(b, -1, -2)
    if experts:
        return lora_a.reshape(-1, in_dim), lora_b.transpose(1, 2, 0).reshape(out_dim, -1)
    return lora_a, lora_b


def adapter_config(cfg: RuntimeConfig, found: list[Target], routers: list[str]) -> dict:
    """adapter_config.json for PEFT's LoraConfig: r, lora_alpha, use_rslora as trained; fused
    gate_up_proj at rank 2r with the alpha that keeps the scaling."""
    lc = cfg.lora
    modules = sorted(t.module for t in found if not t.parameter)
    params = sorted(t.tensor.name for t in found if t.parameter)
    fused = max((len(t.tensor.slots) for t in found if t.tensor.name.endswith(FUSED_EXPERTS)), default=1)
    d = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": None,
         "auto_mapping": None, "inference_mode": True,
         "r": lc.rank, "lora_alpha": lc.alpha, "use_rslora": lc.rslora,
         "lora_dropout": 0.0 if params else lc.dropout,
         "target_modules": modules, "target_parameters": params,
         "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": routers or None,
         "bias": "none", "fan_in_fan_out": False, "init_lora_weights": True, "use_dora": False,
         "layers_to_transform": None, "layers_pattern": None}
    if fused > 1:
        pattern = r".*\.mlp\.experts\.gate_up_proj"
        d["rank_pattern"][pattern] = lc.rank * fused
        d["alpha_pattern"][pattern] = lc.alpha * (math.sqrt(fused) if lc.rslora else fused)
    return d


def write_adapter(out: str, cfg: RuntimeConfig, read, adapters: dict[str, str],
                  routers: dict[str, tuple[np.ndarray, np.ndarray]], dtype, log=print) -> list[str]:
    """Writes the PEFT adapter into the new directory `out`; returns the saved tensor names.

    read(path, index) -> array: the run's arrays; adapters: {projection path: adapter prefix};
    routers: {layer router module "model.layers.N.mlp.gate": (weight [E, D], bias [E])} to carry as
    modules_to_save; dtype: of the lora weights (the run's param dtype)."""
    found = targets(cfg, set(adapters))
    if not found:
        raise AdapterExportError("the run has no adapters on a decoder projection")
    tensors: dict[str, np.ndarray] = {}
    for tg in found:
        pairs = [(read(adapters[s.path] + ".a", s.index), read(adapters[s.path] + ".b", s.index))
                 for s in tg.tensor.slots]
        a, b = lora_pair(tg.tensor, pairs)
        tensors[tg.key + ".lora_A.weight"] = a.astype(dtype)
        tensors[tg.key + ".lora_B.weight"] = b.astype(dtype)
    for module, (weight, bias) in routers.items():
        tensors[PREFIX + module + ".weight"] = np.asarray(weight, np.float32)
        tensors[PREFIX + module + ".e_score_correction_bias"] = np.asarray(bias, np.float32)
    os.makedirs(out)
    specs = [safetensors_io.OutTensor(n, v.dtype, v.shape) for n, v in tensors.items()]
    writer = safetensors_io.ShardWriter(os.path.join(out, WEIGHTS_NAME), specs, create=True)
    for n, v in tensors.items():
        writer.write(n, np.ascontiguousarray(v))
    writer.close()
    with open(os.path.join(out, CONFIG_NAME), "w") as f:
        json.dump(adapter_config(cfg, found, sorted(routers)), f, indent=2)
    if any(t.parameter for t in found) and cfg.lora.dropout:
        log(f"export: lora_dropout {cfg.lora.dropout} written as 0: PEFT applies no dropout to "
            "target_parameters (inference is unaffected)")
    log(f"export: wrote PEFT adapter {out} ({len(found)} targets, rank {cfg.lora.rank}, "
        f"{len(routers)} router(s) as modules_to_save)")
    return sorted(tensors)
