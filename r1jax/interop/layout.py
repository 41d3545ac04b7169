"""The one mapping between the released HF tensor layout and r1jax parameter paths, both directions.

HF stores torch Linear weights as [out, in]; r1jax stores kernels as [in, ...out] with heads split
out, and stacks layers (and experts) along leading axes. Each HF tensor maps to one or more `Slot`s:
a parameter path, the leading indices it fills (layer, expert), and a declarative transform (swap the
last two axes, split one axis into heads, keep a row range) that `fn` applies and `inv` undoes.
Convert (HF -> r1jax) applies `fn`; export (r1jax -> HF) walks the same list and applies `inv`.
"""
from __future__ import annotations

import dataclasses
import sys

import numpy as np

from r1jax.models.deepseek_v3.config import ModelConfig

# The release stores every tensor with one of these suffixes block-scaled FP8 (the projections,
# kv_a_proj_with_mqa among them).
FP8_SUFFIXES = ("_proj.weight", "_proj_with_mqa.weight")
# r1jax path suffix of the block scales of a projection held as FP8 codes (ModelConfig.fp8_weights):
# "moe_layers.mlp.gate" holds codes, "moe_layers.mlp.gate_scale" their scales (r1jax/models/common/params.py).
SCALE_PATH_SUFFIX = "_scale"


TRANSPOSE_BAND = 16


def transpose_last2(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """[..., M, N] -> C-contiguous [..., N, M] (into `out` when given, converting to its dtype).
    Copied 16 source rows at a time, so that each tile stays in cache: 2-3x faster than numpy's
    one-pass transposed copy of a large matrix."""
    if out is None:
        out = np.empty(x.shape[:-2] + (x.shape[-1], x.shape[-2]), x.dtype)
    src, dst = x, out
    if x.dtype == out.dtype:  # moved as unsigned integers: numpy copies bfloat16 through slow dtype hooks
        bits = np.dtype(f"u{x.dtype.itemsize}")
        src, dst = x.view(bits), out.view(bits)
    for r in range(0, x.shape[-2], TRANSPOSE_BAND):
        dst[..., r:r + TRANSPOSE_BAND] = np.swapaxes(src[..., r:r + TRANSPOSE_BAND, :], -1, -2)
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class Slot:
    """Where (part of) an HF tensor lands: target[index] = fn(hf data).

    The transform, in order: keep HF rows `rows` of axis -2 (the halves of a fused gate_up_proj), swap
    the last two axes when `swap` ([out, in] -> [in, out]), then split axis `split[0]` into
    (split[1] heads, rest).
    """
    path: str                              # dotted r1jax path, e.g. "moe_layers.mlp.gate"
    index: tuple[int, ...]                 # leading indices into the target array (layer[, expert])
    swap: bool = False
    split: tuple[int, int] | None = None   # (axis after the swap, number of heads)
    rows: tuple[int, int] | None = None    # HF rows lo:hi of axis -2

    def fn(self, w: np.ndarray, swapped: bool = False) -> np.ndarray:
        """HF data (or a block of its axis-0 rows, see `block`) -> data of target[index] (a view
        where possible). swapped: `w` comes with its last two axes already swapped (by
        `transpose_last2` or a transposing reader), as this slot swaps them."""
        if self.rows is not None:
            lo, hi = self.rows
            w = w[..., lo:hi] if swapped else w[..., lo:hi, :]
        if self.swap and not swapped:
            w = np.swapaxes(w, -1, -2)
        if self.split is not None:
            axis, heads = self.split
            w = w.reshape(w.shape[:axis] + (heads, w.shape[axis] // heads) + w.shape[axis + 1:])
        return w

    def inv(self, x: np.ndarray, contiguous: bool = False) -> np.ndarray:
        """data of target[index] -> the HF data it came from (rows `hf_region` of the HF tensor); a
        view, or a C-contiguous array when `contiguous`."""
        if self.split is not None:
            axis = self.split[0]
            x = x.reshape(x.shape[:axis] + (-1,) + x.shape[axis + 2:])
        if self.swap:
            return transpose_last2(x) if contiguous else np.swapaxes(x, -1, -2)
        return np.ascontiguousarray(x) if contiguous else x

    def hf_region(self, ndim: int) -> tuple:
        """Index of the HF tensor (of `ndim` axes) that this slot's data comes from."""
        if self.rows is None:
            return ()
        return (slice(None),) * (ndim - 2) + (slice(*self.rows),)

    def block(self, lo: int, hi: int, ndim: int) -> tuple | None:
        """Index into target[index] holding HF rows lo:hi of axis 0 (of an `ndim`-axis HF tensor), or
        None when those rows do not land in one box (split heads; row ranges of axis 0)."""
        if self.split is not None or (self.rows is not None and ndim == 2):
            return None
        if self.swap and ndim == 2:  # HF rows are the output features: the last target axis
            return (slice(None), slice(lo, hi))
        return (slice(lo, hi),)


@dataclasses.dataclass(frozen=True, slots=True)
class HFTensor:
    """One HF tensor and where it lands. A job keeps one per tensor of the release (~48,000), so no
    per-instance dict, and every slot of a parameter shares its (interned) path string."""
    name: str
    shape: tuple[int, ...]
    slots: tuple[Slot, ...]

    @property
    def fp8_in_release(self) -> bool:
        """Whether the release stores this tensor block-scaled FP8 (FP8_SUFFIXES)."""
        return self.name.endswith(FP8_SUFFIXES)


def _block_tensors(cfg: ModelConfig, n: int, prefix: str, idx: tuple[int, ...], moe: bool,
                   fused_experts: bool) -> list[HFTensor]:
    """HF tensors of decoder layer `n` landing under r1jax `prefix` at leading indices `idx`."""
    d, h = cfg.hidden_size, cfg.num_attention_heads
    hf = f"model.layers.{n}."
    out: list[HFTensor] = []

    def add(name, shape, path, extra=(), **transform):
        out.append(HFTensor(hf + name, tuple(shape),
                            (Slot(sys.intern(f"{prefix}.{path}"), idx + extra, **transform),)))

    add("input_layernorm.weight", (d,), "attn_norm.scale")
    add("post_attention_layernorm.weight", (d,), "mlp_norm.scale")
    a = "self_attn."
    # [H*K, X] -> [X, H, K]: a projection into per-head features.
    split_out = dict(swap=True, split=(1, h))
    if cfg.q_lora_rank is None:
        add(a + "q_proj.weight", (h * cfg.qk_head_dim, d), "attn.q_proj", **split_out)
    else:
        add(a + "q_a_proj.weight", (cfg.q_lora_rank, d), "attn.q_a", swap=True)
        add(a + "q_a_layernorm.weight", (cfg.q_lora_rank,), "attn.q_a_norm.scale")
        add(a + "q_b_proj.weight", (h * cfg.qk_head_dim, cfg.q_lora_rank), "attn.q_b", **split_out)
    add(a + "kv_a_proj_with_mqa.weight", (cfg.kv_lora_rank + cfg.qk_rope_head_dim, d), "attn.kv_a",
        swap=True)
    add(a + "kv_a_layernorm.weight", (cfg.kv_lora_rank,), "attn.kv_a_norm.scale")
    add(a + "kv_b_proj.weight", (h * (cfg.qk_nope_head_dim + cfg.v_head_dim), cfg.kv_lora_rank),
        "attn.kv_b", **split_out)
    # [D, H*V] -> [H, V, D]: the output projection from per-head values.
    add(a + "o_proj.weight", (d, h * cfg.v_head_dim), "attn.o", swap=True, split=(0, h))
    if not moe:
        f = cfg.intermediate_size
        add("mlp.gate_proj.weight", (f, d), "mlp.gate", swap=True)
        add("mlp.up_proj.weight", (f, d), "mlp.up", swap=True)
        add("mlp.down_proj.weight", (d, f), "mlp.down", swap=True)
        return out
    e, f = cfg.n_routed_experts, cfg.moe_intermediate_size
    add("mlp.gate.weight", (e, d), "mlp.router", swap=True)
    add("mlp.gate.e_score_correction_bias", (e,), "mlp.router_bias")
    if fused_experts:
        # [E, 2F, D] -> gate and up [E, D, F] each; down [E, D, F] -> [E, F, D].
        out.append(HFTensor(hf + "mlp.experts.gate_up_proj", (e, 2 * f, d), (
            Slot(f"{prefix}.mlp.gate", idx, swap=True, rows=(0, f)),
            Slot(f"{prefix}.mlp.up", idx, swap=True, rows=(f, 2 * f)))))
        add("mlp.experts.down_proj", (e, d, f), "mlp.down", swap=True)
    else:
        for j in range(e):
            x = f"mlp.experts.{j}."
            add(x + "gate_proj.weight", (f, d), "mlp.gate", (j,), swap=True)
            add(x + "up_proj.weight", (f, d), "mlp.up", (j,), swap=True)
            add(x + "down_proj.weight", (d, f), "mlp.down", (j,), swap=True)
    if cfg.n_shared_experts:
        fs = f * cfg.n_shared_experts
        add("mlp.shared_experts.gate_proj.weight", (fs, d), "mlp.shared.gate", swap=True)
        add("mlp.shared_experts.up_proj.weight", (fs, d), "mlp.shared.up", swap=True)
        add("mlp.shared_experts.down_proj.weight", (d, fs), "mlp.shared.down", swap=True)
    return out


def scale_slot(slot: Slot) -> Slot:
    """Where the block scales of `slot`'s rows go when its path holds FP8 codes: PATH_scale at the
    same leading index, swapped as the codes are ([out/128, in/128] -> [in/128, out/128]), without a
    head split (a block of the [out, in] matrix spans heads) and without a row range (the caller
    hands over the scale rows of the slot's own rows, r1jax/interop/fp8.py take_rows)."""
    return Slot(sys.intern(slot.path + SCALE_PATH_SUFFIX), slot.index, swap=slot.swap)


def fp8_held(expected, paths) -> frozenset[str]:
    """Names of the HF tensors of `expected` that land on projections held as FP8 codes: those whose
    every slot's path has a PATH_scale among `paths` (a model's variable paths). Raises
    AssertionError for a tensor split between held and plain paths (a layout bug)."""
    paths = set(paths)
    held = set()
    for t in expected:
        flags = {s.path + SCALE_PATH_SUFFIX in paths for s in t.slots}
        if len(flags) != 1:
            raise AssertionError(f"{t.name}: slots both FP8 and not: {[s.path for s in t.slots]}")
        if flags.pop():
            held.add(t.name)
    return frozenset(held)


def is_fused_layer(names, n: int) -> bool:
    """Whether HF layer `n` stores its experts fused (transformers >= 5 save format)."""
    return f"model.layers.{n}.mlp.experts.gate_up_proj" in names


def hf_tensors(cfg: ModelConfig, names=frozenset(), *, with_mtp: bool) -> list[HFTensor]:
    """Every HF tensor a checkpoint of `cfg` must hold, in file order of the release.

    `names` (the tensor names present) decides per layer between per-expert and fused experts; the
    default (no names) is the release's per-expert layout.
    `with_mtp` includes layer `num_hidden_layers` (the MTP module).
    """
    d, v, k = cfg.hidden_size, cfg.vocab_size, cfg.first_k_dense_replace
    out = [HFTensor("model.embed_tokens.weight", (v, d), (Slot("embed", ()),))]
    for n in range(cfg.num_hidden_layers):
        if n < k:
            out += _block_tensors(cfg, n, "dense_layers", (n,), False, False)
        else:
            out += _block_tensors(cfg, n, "moe_layers", (n - k,), True, is_fused_layer(names, n))
    out.append(HFTensor("model.norm.weight", (d,), (Slot("final_norm.scale", ()),)))
    out.append(HFTensor("lm_head.weight", (v, d), (Slot("lm_head", (), swap=True),)))
    if with_mtp:
        n = cfg.num_hidden_layers
        out += _block_tensors(cfg, n, "mtp.block", (), True, is_fused_layer(names, n))
        m = f"model.layers.{n}."
        out += [
            HFTensor(m + "embed_tokens.weight", (v, d), (Slot("mtp.embed", ()),)),
            HFTensor(m + "enorm.weight", (d,), (Slot("mtp.enorm.scale", ()),)),
            HFTensor(m + "hnorm.weight", (d,), (Slot("mtp.hnorm.scale", ()),)),
            HFTensor(m + "eh_proj.weight", (d, 2 * d), (Slot("mtp.eh_proj", (), swap=True),)),
            HFTensor(m + "shared_head.norm.weight", (d,), (Slot("mtp.norm.scale", ()),)),
            HFTensor(m + "shared_head.head.weight", (v, d), (Slot("mtp.head", (), swap=True),)),
        ]
    return out


def has_mtp_tensors(cfg: ModelConfig, names) -> bool:
    prefix = f"model.layers.{cfg.num_hidden_layers}."
    return any(n.startswith(prefix) for n in names)
