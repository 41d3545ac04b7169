"""Model-FLOP accounting against a count of the model's own parameter shapes, and the kernel fallback."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.models.deepseek_v3 import flops
from r1jax.models.checkpoint import param_shapes
from r1jax.models.common import kernels
from r1jax.models.registry import preset


def _active_from_shapes(cfg):
    """Matmul params one token uses, read off the real parameter shapes: all 2D+ weights except the
    embedding, norms, router bias and MTP; routed experts scaled by top-k / E."""
    total = 0
    for path, s in param_shapes(cfg).items():
        n = int(np.prod(s.shape))
        if path == "embed" or path.endswith("scale") or "router_bias" in path or path.startswith("mtp"):
            continue
        if path.split(".")[-1] in ("gate", "up", "down") and ".mlp." in path and "shared" not in path \
                and path.startswith("moe_layers"):
            n = n * cfg.num_experts_per_tok // cfg.n_routed_experts
        total += n
    return total


@pytest.mark.parametrize("name", ["r1-671b", "v3-small", "tiny"])
def test_active_params_match_parameter_shapes(name):
    cfg = preset(name)
    assert flops.active_matmul_params(cfg) == _active_from_shapes(cfg)


def test_train_flops_formula():
    cfg = preset("v3-small")
    s = 4096
    attn = cfg.num_hidden_layers * 2 * 16 * (192 + 128) * s / 2
    assert flops.train_flops_per_token(cfg, s) == 6 * flops.active_matmul_params(cfg) + 3 * attn
    assert abs(flops.active_matmul_params(cfg) / 1e9 - 0.8036) < 1e-3  # the benchmark model's 0.80B


def test_failing_kernel_falls_back_with_one_warning(monkeypatch):
    calls = []

    def fake(lhs, rhs, group_sizes, implementation=None):
        calls.append(implementation)
        if implementation != "xla":
            raise TypeError("kernel does not lower here")
        return jnp.zeros((lhs.shape[0], rhs.shape[-1]), lhs.dtype)

    monkeypatch.setattr(kernels.tokamax, "ragged_dot", fake)
    monkeypatch.setattr(kernels, "_warned", set())
    x = jnp.ones((4, 3), jnp.bfloat16)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        kernels.ragged_dot(x, jnp.ones((2, 3, 5), jnp.bfloat16), jnp.array([1, 3]))
        kernels.ragged_dot(x, jnp.ones((2, 3, 5), jnp.bfloat16), jnp.array([1, 3]))
    assert calls == [None, "triton", "xla", None, "triton", "xla"]
    assert len([m for m in w if "ragged_dot" in str(m.message)]) == 1
    calls.clear()
    kernels.ragged_dot(x.astype(jnp.float32), jnp.ones((2, 3, 5)), jnp.array([1, 3]))
    assert calls == ["xla"]  # float32 goes straight to XLA


# Packed rows as the loader makes them (documents, then padding id 0), a left-padded prompt row as
# generation makes it, and one document filling its row.
SEGMENTS = np.array([[1, 1, 1, 2, 2, 3, 3, 3, 3, 0, 0, 0],
                     [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1],
                     [5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5]], np.int32)


def test_segment_starts_are_where_each_run_begins():
    from r1jax.models.common.masks import segment_starts
    want = np.zeros_like(SEGMENTS)
    for b, row in enumerate(SEGMENTS):
        for t in range(len(row)):
            s = t
            while s > 0 and row[s - 1] == row[t]:
                s -= 1
            want[b, t] = s
    np.testing.assert_array_equal(np.asarray(segment_starts(jnp.asarray(SEGMENTS))), want)


def _attention_inputs(dtype, b=3, t=12, h=2, qk=24, v=16):
    rng = np.random.RandomState(0)
    q, k = (jnp.asarray(rng.randn(b, t, h, qk), dtype) for _ in range(2))
    return q, k, jnp.asarray(rng.randn(b, t, h, v), dtype)


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-6), (jnp.bfloat16, 2e-2)])
def test_attention_over_key_ranges_equals_the_same_segment_mask(dtype, tol, monkeypatch):
    from r1jax.models.common.masks import attention_mask, segment_starts
    q, k, v = _attention_inputs(dtype)
    seg = jnp.asarray(SEGMENTS)
    want = kernels.attention(q, k, v, attention_mask(seg), 0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the tokamax path itself, not the fallback
        got = kernels.attention_ranges(q, k, v, segment_starts(seg), 0.2)
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=tol, rtol=tol)

    def moved(*a, **kw):
        raise AttributeError("tokamax internals moved")
    monkeypatch.setattr(kernels, "_tokamax_ranges", moved)
    monkeypatch.setattr(kernels, "_warned", set())
    with pytest.warns(UserWarning, match="using a dense mask"):
        again = kernels.attention_ranges(q, k, v, segment_starts(seg), 0.2)
    np.testing.assert_allclose(np.asarray(again, np.float32), np.asarray(want, np.float32), atol=tol, rtol=tol)


def test_bf16_attention_on_long_packed_rows_keeps_no_score_matrix():
    """Where no fused kernel runs (here a CPU), bf16 attention is tokamax's chunked XLA one: over
    several blocks of queries and keys (the last one partial) of packed rows it equals the float32
    attention, values and gradients, and keeps no [.., T, S] scores for the backward pass."""
    from r1jax.train import residuals
    from r1jax.models.common.masks import attention_mask
    t = 1536  # tokamax's XLA chunks: 512 queries x 1024 keys
    q, k, v = _attention_inputs(jnp.float32, b=1, t=t, h=2, qk=16, v=8)
    seg = jnp.asarray(np.repeat([[1, 2, 3]], [700, 600, 236], axis=1).astype(np.int32))
    mask, ct = attention_mask(seg), jnp.asarray(np.random.RandomState(1).randn(1, t, 2, 8), jnp.float32)
    want, pull_want = jax.vjp(lambda *a: kernels.attention(*a, mask, 0.25), q, k, v)
    bf = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    got, pull_got = jax.vjp(lambda *a: kernels.attention(*a, mask, 0.25), *bf)
    for a, b in zip((got, *pull_got(ct.astype(jnp.bfloat16))), (want, *pull_want(ct))):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.linalg.norm(a - b) / np.linalg.norm(b) < 2e-2
    kept = residuals.saved(lambda *a: kernels.attention(*a, mask, 0.25).astype(jnp.float32).sum(), *bf)
    assert kept and not [r for r in kept if r.shape[-2:] == (t, t)], kept


def test_model_with_key_ranges_equals_dense_mask_forward_and_gradients():
    import jax
    from flax import nnx
    from r1jax.models.deepseek_v3.transformer import Transformer
    from r1jax.models.common.config import ConfigError
    tokens = jnp.asarray(np.random.RandomState(1).randint(0, 256, SEGMENTS.shape))
    outs = {}
    for mode in ("dense", "ranges"):
        cfg = preset("tiny", dtype="float32", param_dtype="float32", attention_mask=mode)
        graphdef, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))

        def loss(state):
            logits, _ = nnx.merge(graphdef, state)(tokens, segment_ids=jnp.asarray(SEGMENTS))
            return (logits * (jnp.asarray(SEGMENTS) > 0)[..., None]).sum() / 1e3, logits
        outs[mode] = jax.value_and_grad(loss, has_aux=True)(state)
    (_, dense_logits), dense_grads = outs["dense"]
    (_, range_logits), range_grads = outs["ranges"]
    np.testing.assert_allclose(range_logits, dense_logits, atol=1e-5, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(range_grads), jax.tree.leaves(dense_grads)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="attention_mask"):
        preset("tiny", attention_mask="sparse")
