"""What a layer keeps for its backward pass: no float32 copy of a large activation.

r1jax.train.residuals lists the residuals autodiff saves between the forward and the backward pass of a
function (JAX's own accounting, before any compiler). For a bf16 dense block and an MoE block, none
may be a float32 array of a token-sized activation ([tokens, D] or larger):
RMSNorm's statistics input, the router's input and the MoE combine's [N, K, D] are recomputed from
their bf16 inputs instead. Attention is counted as a GPU's fused kernel keeps it
(`residuals.attention_as_fused_kernel`: on a CPU tokamax runs XLA implementations that keep float32
statistics per block, which a fused kernel does not; the stand-in's values and gradients equal the
model's attention, checked below against tokamax's float32 XLA implementation). Nor does the
SwiGLU keep silu's sigmoid and output: it is recomputed from its two inputs. And the MoE keeps its
sorted token copies [N K, D] once, not once per grouped matmul that reads them."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1jax.train import residuals
from r1jax.models.common import kernels
from r1jax.models.registry import preset
from r1jax.models.common.masks import attention_mask
from r1jax.models.deepseek_v3.rope import rope_tables
from r1jax.models.deepseek_v3.transformer import Block

CFG = preset("tiny", dtype="bfloat16", param_dtype="float32")
B, T = 2, 32


def block_residuals(cfg, moe: bool) -> list[residuals.Residual]:
    """What a bf16 Block of `cfg` with float32 parameters keeps for its backward pass, [B, T] tokens."""
    graphdef, params, rest = nnx.split(Block(cfg, moe, rngs=nnx.Rngs(0)), nnx.Param, ...)
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    cos, sin = rope_tables(cfg, positions)
    segment_ids = jnp.ones((B, T), jnp.int32)
    x = jax.random.normal(jax.random.key(0), (B, T, cfg.hidden_size), jnp.bfloat16)

    def layer(p, h):
        return nnx.merge(graphdef, p, rest)(h, cos, sin, segment_ids)[0]

    with residuals.attention_as_fused_kernel():
        return residuals.saved(layer, params, x)


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_no_float32_copy_of_a_token_sized_activation_is_kept(moe):
    rows = block_residuals(CFG, moe)
    tokens_by_d = B * T * CFG.hidden_size
    assert any(r.dtype == "bf16" and r.elements >= tokens_by_d for r in rows)  # the listing is read
    big_f32 = [r for r in rows if r.dtype == "f32" and r.elements >= tokens_by_d]
    assert not big_f32, big_f32
    assert not [r for r in rows if "silu" in r.where]


def test_moe_keeps_its_sorted_token_copies_once():
    """Gate and up read the same sorted copies; as two grouped matmuls each kept its own."""
    cfg = CFG.replace(moe_intermediate_size=48)  # 2F != D: no other [N K, D] activation
    copies = (B * T * cfg.num_experts_per_tok, cfg.hidden_size)
    rows = block_residuals(cfg, moe=True)
    assert [r.dtype for r in rows if r.shape == copies] == ["bf16"], [r for r in rows if r.shape == copies]


def test_fused_attention_stand_in_is_the_models_attention():
    """The stand-in computes the model's attention (tokamax's XLA implementation, float32): the same
    output and gradients on packed rows."""
    ks = jax.random.split(jax.random.key(0), 4)
    q, k = (jax.random.normal(kk, (2, 12, 3, 8), jnp.float32) for kk in ks[:2])
    v = jax.random.normal(ks[2], (2, 12, 3, 5), jnp.float32)
    ct = jax.random.normal(ks[3], (2, 12, 3, 5), jnp.float32)
    mask = attention_mask(jnp.array([[1] * 5 + [2] * 7, [1] * 12], jnp.int32))
    want, pull_want = jax.vjp(lambda *a: kernels.attention(*a, mask, 0.3), q, k, v)
    got, pull_got = jax.vjp(lambda *a: residuals.fused_attention(*a, mask, 0.3), q, k, v)
    for a, b in zip((got, *pull_got(ct)), (want, *pull_want(ct))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_fused_attention_stand_in_takes_grouped_keys_and_values():
    """Grouped-query attention (the dense families: 6 query heads over 3 K/V heads): the stand-in's
    output and gradients equal the model's attention (tokamax, float32) on the same grouped
    inputs (tools/residuals.py accounts the R1-Distill presets through it)."""
    ks = jax.random.split(jax.random.key(1), 4)
    q = jax.random.normal(ks[0], (2, 12, 6, 8), jnp.float32)
    k = jax.random.normal(ks[1], (2, 12, 3, 8), jnp.float32)
    v = jax.random.normal(ks[2], (2, 12, 3, 5), jnp.float32)
    ct = jax.random.normal(ks[3], (2, 12, 6, 5), jnp.float32)
    mask = attention_mask(jnp.array([[1] * 5 + [2] * 7, [1] * 12], jnp.int32))
    want, pull_want = jax.vjp(lambda *a: kernels.attention(*a, mask, 0.3), q, k, v)
    got, pull_got = jax.vjp(lambda *a: residuals.fused_attention(*a, mask, 0.3), q, k, v)
    for a, b in zip((got, *pull_got(ct)), (want, *pull_want(ct))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
