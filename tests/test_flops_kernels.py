"""Model-FLOP accounting against a count of the model's own parameter shapes, and the kernel fallback."""
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import flops
from r1jax.checkpoint import param_shapes
from r1jax.model import kernels, preset


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
