"""The model under meshes of the 8 fake CPU devices: loss, gradients and MoE stats equal the
single-device ones (float32), with parameters placed by the logical-axis table; meshes with an
`expert` axis run the routed experts under shard_map with the ragged exchange.

One batch covers the dropless worst cases: the second MoE layer's router bias sends every token to
experts 2 and 3 (so every copy lands on one expert shard, whose receive buffer is exactly full), and
rows are padding-heavy (one all padding, one with 4 real tokens).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1jax.parallel import sharding
from r1jax.models.deepseek_v3.transformer import Transformer
from r1jax.models.registry import preset
from r1jax.train.step import loss_fn
from r1jax.models.common.partition import split_model

CFG = preset("tiny", dtype="float32", vocab_size=256, num_attention_heads=4, n_routed_experts=8)
# moe_chunk_tokens 24: each device's 64 tokens in 3 chunks of 22 (the last padded by 2)
# attention_mask "ranges": the same parameters, attention over key ranges with heads split over tensor
MESHES = [dict(data=8), dict(fsdp=2, expert=4), dict(expert=4, tensor=2), dict(data=2, expert=2, tensor=2),
          dict(expert=4, tensor=2, moe_chunk_tokens=24), dict(data=4, tensor=2, attention_mask="ranges")]
SKEWED = (2, 3)  # one group; on expert 4 or 2 both live on one shard


@pytest.fixture(scope="module")
def reference():
    graphdef, params, rest = split_model(Transformer(CFG, rngs=nnx.Rngs(0)))
    bias = rest["moe_layers"]["mlp"]["router_bias"]
    bias[...] = bias[...].at[1, SKEWED[0]:SKEWED[-1] + 1].set(10.0)  # MoE layer 1: all to 2 and 3
    rng = np.random.RandomState(1)
    b, t = 8, 32
    seg = np.ones((b, t), np.int32)
    seg[3, 20:] = 0
    seg[5, 4:] = 0
    seg[6, :] = 0  # a row of padding only
    batch = {"tokens": jnp.asarray(rng.randint(0, CFG.vocab_size, (b, t)), jnp.int32),
             "positions": jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)),
             "segment_ids": jnp.asarray(seg)}
    f = jax.value_and_grad(lambda p, r, bt: loss_fn(p, r, graphdef, bt), has_aux=True)
    (loss, sums), grads = jax.jit(f)(params, rest, batch)
    # the batch really exercises the worst case: every layer-1 copy of a real token on 2 or 3
    real = float((seg > 0).sum())
    load = np.asarray(sums["load"])  # [L, E]
    assert load[1, list(SKEWED)].sum() == load[1].sum() == CFG.num_experts_per_tok * real
    assert (load[0] > 0).sum() >= 6  # layer 0 spreads
    return graphdef, params, rest, batch, f, float(loss), sums, grads


@pytest.mark.parametrize("axes", MESHES, ids=lambda a: ",".join(f"{k}{v}" for k, v in a.items()))
def test_sharded_loss_and_grads_equal_single_device(reference, axes):
    graphdef, params, rest, batch, f, loss0, sums0, grads0 = reference
    axes = dict(axes)
    runtime = {k: axes.pop(k) for k in ("moe_chunk_tokens", "attention_mask") if k in axes}
    if runtime:  # the same parameters, other run-time fields of the config
        graphdef = split_model(nnx.eval_shape(
            lambda: Transformer(CFG.replace(**runtime), rngs=nnx.Rngs(0))))[0]
        f = jax.value_and_grad(lambda p, r, bt: loss_fn(p, r, graphdef, bt), has_aux=True)
    mesh = sharding.make_mesh(**{**dict(data=1, fsdp=1, expert=1, tensor=1), **axes})
    p_sh = sharding.variable_shardings(params, mesh)
    r_sh = sharding.variable_shardings(rest, mesh)
    b_sh = sharding.batch_sharding(mesh)
    params_s = jax.device_put(params, p_sh)
    rest_s = jax.device_put(rest, r_sh)
    batch_s = jax.device_put(batch, b_sh)
    with jax.sharding.use_mesh(mesh) if hasattr(jax.sharding, "use_mesh") else jax.set_mesh(mesh):
        lowered = jax.jit(f).lower(params_s, rest_s, batch_s)
        (loss, sums), grads = lowered.compile()(params_s, rest_s, batch_s)
    # the expert-parallel path ran exactly when there is an expert axis: its exchange (the CPU form
    # of the ragged one) is the program's only all-to-all before XLA's partitioner adds its own
    assert ("stablehlo.all_to_all" in lowered.as_text()) == (axes.get("expert", 1) > 1)
    assert float(loss) == pytest.approx(loss0, rel=1e-5)
    np.testing.assert_array_equal(np.asarray(sums["load"]), np.asarray(sums0["load"]))
    np.testing.assert_allclose(np.asarray(sums["aux"]), np.asarray(sums0["aux"]), rtol=1e-5)
    for (path, g), g0 in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(grads0)):
        err = np.linalg.norm(np.asarray(g) - np.asarray(g0)) / max(np.linalg.norm(np.asarray(g0)), 1e-30)
        assert err < 1e-5, (jax.tree_util.keystr(path), err)
    # parameters really are spread: the routed experts over `expert`, attention heads over `tensor`
    up = params_s["moe_layers"]["mlp"]["up"][...]  # [L, E, D, F]
    if axes.get("expert", 1) > 1:
        assert up.sharding.spec[1] == "expert"
        blocks = {tuple((sl.start, sl.stop) for sl in s.index) for s in up.addressable_shards}
        assert len(blocks) == axes["expert"] * axes.get("fsdp", 1) * axes.get("tensor", 1)


def test_parameters_split_over_fsdp_and_expert_as_far_as_their_size_divides():
    """Outside the routed experts a parameter's embed dimension is split over fsdp x expert (every
    chip holds a share); a size that does not divide by both takes fsdp alone, else stays whole;
    the routed experts' own expert axis leaves their embed dimension to fsdp."""
    mesh = jax.sharding.AbstractMesh((1, 2, 4, 1), sharding.MESH_AXES)
    state = nnx.State({
        "w16": nnx.Param(jnp.zeros((16, 3)), axes=("embed", None)),
        "w6": nnx.Param(jnp.zeros((6, 3)), axes=("embed", None)),
        "w3": nnx.Param(jnp.zeros((3, 3)), axes=("embed", None)),
        "experts": nnx.Param(jnp.zeros((4, 16, 3)), axes=("expert", "embed", "moe_mlp")),
    })
    specs = {k: v.spec for k, v in sharding.variable_shardings(state, mesh).items()}
    assert specs["w16"] == jax.sharding.PartitionSpec(("fsdp", "expert"), None)
    assert specs["w6"] == jax.sharding.PartitionSpec("fsdp", None)
    assert specs["w3"] == jax.sharding.PartitionSpec(None, None)
    assert specs["experts"] == jax.sharding.PartitionSpec("expert", "fsdp", "tensor")


def test_expert_parallel_experts_equal_single_program_at_the_dropless_bound():
    """routed_experts over {fsdp 2, expert 2, tensor 2} (so the fsdp gather and the tensor psum run),
    in one exchange and in chunks (moe_chunk_tokens: a scan of rematerialized chunks, the last one
    padded), equals the single-program dropless_experts, values and gradients, for random routing
    and for every copy on one shard (its receive buffer exactly full: the last row counts here)."""
    from r1jax.models.deepseek_v3 import expert_parallel
    from r1jax.models.common.mlp import pair_columns
    from r1jax.models.deepseek_v3.moe import Routing, dropless_experts, grouped_swiglu

    rng = np.random.default_rng(9)
    n, d, f, e, k = 32, 16, 8, 8, 2
    x, ct = (jnp.asarray(rng.standard_normal((n, d)), jnp.float32) for _ in range(2))
    gate, up = (jnp.asarray(rng.standard_normal((e, d, f)) * 0.3, jnp.float32) for _ in range(2))
    down = jnp.asarray(rng.standard_normal((e, f, d)) * 0.3, jnp.float32)
    weights = jnp.asarray(rng.uniform(0.1, 1.0, (n, k)), jnp.float32)
    spread = np.stack([rng.choice(e, k, replace=False) for _ in range(n)])
    skewed = np.stack([rng.permutation([2, 3]) for _ in range(n)])  # experts 0-3 live on shard 0
    mesh = sharding.make_mesh(data=1, fsdp=2, expert=2, tensor=2)

    def run(fn, experts):
        return jax.vjp(lambda *a: fn(*a, Routing(weights, experts, None)), x, gate, up, down)

    def parallel(x, gate, up, down, r, chunk_tokens=0):
        layout = expert_parallel.plan(n, d, e, f)
        assert layout is not None and layout["fsdp"] == "fsdp" and layout["tensor"] == "tensor"
        return expert_parallel.routed_experts(x, r.experts, r.weights,
                                              {"gate_up": pair_columns(gate, up), "down": down},
                                              grouped_swiglu, layout, chunk_tokens=chunk_tokens)

    def both(experts):  # single program, one exchange, and each device's 8 tokens as 3 + 3 + 2 (+1 pad)
        y0, vjp0 = run(lambda x, g, u, dn, r: dropless_experts(
            x, r, {"gate_up": pair_columns(g, u), "down": dn}), experts)
        y, vjp = run(parallel, experts)
        yc, vjpc = run(lambda *a: parallel(*a, chunk_tokens=3), experts)
        return (y0, *vjp0(ct)), (y, *vjp(ct)), (yc, *vjpc(ct))

    both = jax.jit(both)
    with jax.set_mesh(mesh):
        assert "stablehlo.all_to_all" in both.lower(jnp.asarray(spread, jnp.int32)).as_text()
        for experts in (spread, skewed):
            want, *gots = both(jnp.asarray(experts, jnp.int32))
            for got in gots:
                for name, a, b in zip(("y", "dx", "dgate", "dup", "ddown"), got, want):
                    err = np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b))
                    assert err < 1e-5, (name, err)
