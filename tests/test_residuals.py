"""What a layer keeps for its backward pass: no float32 copy of a large activation.

r1jax.residuals lists the residuals autodiff saves between the forward and the backward pass of a
function (JAX's own accounting, before any compiler). For a bf16 dense block and an MoE block, none
may be a float32 array of a token-sized activation ([tokens, D] or larger):
RMSNorm's statistics input, the router's input and the MoE combine's [N, K, D] are recomputed from
their bf16 inputs instead (the attention kernel's own internals excepted: on CPU it is XLA's
reference implementation, whose float32 scores a GPU or TPU kernel does not keep). Nor does the
SwiGLU keep silu's sigmoid and output: it is recomputed from its two inputs."""
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from r1jax import residuals
from r1jax.model import preset
from r1jax.model.rope import rope_tables
from r1jax.model.transformer import Block

CFG = preset("tiny", dtype="bfloat16", param_dtype="float32")
B, T = 2, 32


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_no_float32_copy_of_a_token_sized_activation_is_kept(moe):
    graphdef, params, rest = nnx.split(Block(CFG, moe, rngs=nnx.Rngs(0)), nnx.Param, ...)
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    cos, sin = rope_tables(CFG, positions)
    segment_ids = jnp.ones((B, T), jnp.int32)
    x = jax.random.normal(jax.random.key(0), (B, T, CFG.hidden_size), jnp.bfloat16)

    def layer(p, h):
        return nnx.merge(graphdef, p, rest)(h, cos, sin, segment_ids)[0]

    rows = residuals.saved(layer, params, x)
    tokens_by_d = B * T * CFG.hidden_size
    assert any(r.dtype == "bf16" and r.elements >= tokens_by_d for r in rows)  # the listing is read
    big_f32 = [r for r in rows if r.dtype == "f32" and r.elements >= tokens_by_d
               and "kernels.py" not in r.where]
    assert not big_f32, big_f32
    assert not [r for r in rows if "silu" in r.where]
