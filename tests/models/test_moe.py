"""Routing, dropless expert compute, load counts and the sequence-wise aux loss, each against an
independent NumPy reference of the released algorithm."""
import numpy as np
import pytest

import jax.numpy as jnp

from r1jax.models.registry import preset
from r1jax.models.common.mlp import pair_columns
from r1jax.models.deepseek_v3.moe import Routing, dropless_experts, expert_load, route, sequence_aux_loss


def np_sigmoid(x):
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


def np_route(logits, bias, cfg):
    """Released noaux_tc routing, one token at a time. -> weights [N, K], experts [N, K], scores."""
    n, e = logits.shape
    per = e // cfg.n_group
    scores = np_sigmoid(logits)                                     # float32
    choice = scores + bias.astype(np.float32)                       # biased, choice only
    weights = np.zeros((n, cfg.num_experts_per_tok), np.float64)
    experts = np.zeros((n, cfg.num_experts_per_tok), np.int64)
    for t in range(n):
        groups = choice[t].reshape(cfg.n_group, per)
        group_score = np.sort(groups, axis=1)[:, -2:].sum(1)       # sum of the top-2 per group
        kept = np.argsort(-group_score, kind="stable")[:cfg.topk_group]
        masked = np.full(e, -np.inf)
        for g in kept:
            masked[g * per:(g + 1) * per] = choice[t, g * per:(g + 1) * per]
        top = np.argsort(-masked, kind="stable")[:cfg.num_experts_per_tok]
        w = scores[t, top].astype(np.float64)                       # unbiased scores
        if cfg.norm_topk_prob:
            w = w / (w.sum() + 1e-20)
        weights[t], experts[t] = w * cfg.routed_scaling_factor, top
    return weights, experts, scores


def by_expert(weights, experts):
    """Sorts each token's (expert, weight) pairs by expert id, for an order-free comparison."""
    order = np.argsort(experts, axis=1)
    return np.take_along_axis(experts, order, 1), np.take_along_axis(weights, order, 1)


ROUTE_CASES = {
    # 16 experts in 4 groups, keep 2 groups, pick 6 of their 8 experts
    "grouped-norm": dict(n_routed_experts=16, n_group=4, topk_group=2, num_experts_per_tok=6,
                         norm_topk_prob=True, routed_scaling_factor=2.5),
    "grouped-raw": dict(n_routed_experts=16, n_group=4, topk_group=2, num_experts_per_tok=6,
                        norm_topk_prob=False, routed_scaling_factor=1.5),
    "r1-shape": {},  # 256 experts, 8 groups, keep 4, top-8
}


@pytest.mark.parametrize("bias_offset", [0.0, -2.0], ids=["bias", "negative-bias"])
@pytest.mark.parametrize("case", sorted(ROUTE_CASES))
def test_route_matches_reference(case, bias_offset):
    base = "r1-671b" if case == "r1-shape" else "tiny"
    cfg = preset(base, **ROUTE_CASES[case])
    rng = np.random.default_rng(sorted(ROUTE_CASES).index(case))
    n, e = 64, cfg.n_routed_experts
    logits = (rng.standard_normal((n, e)) * 2).astype(np.float32)
    # a non-zero bias, large enough to change choices; with -2 every biased score is negative, so
    # a mask that fills dropped groups with 0 (not -inf) would pick experts from dropped groups
    bias = (rng.standard_normal(e) * 0.3 + bias_offset).astype(np.float32)
    want_w, want_e, want_s = np_route(logits, bias, cfg)

    r = route(jnp.asarray(logits), jnp.asarray(bias), cfg)
    assert r.weights.dtype == jnp.float32 and r.experts.dtype == jnp.int32
    assert r.weights.shape == r.experts.shape == (n, cfg.num_experts_per_tok)
    got_e, got_w = by_expert(np.asarray(r.weights), np.asarray(r.experts))
    want_e, want_w = by_expert(want_w, want_e)
    np.testing.assert_array_equal(got_e, want_e)
    np.testing.assert_allclose(got_w, want_w, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(r.scores), want_s, rtol=1e-6, atol=1e-7)

    # the bias changed at least one choice (else the test would not pin where it enters)
    unbiased_w, unbiased_e, _ = np_route(logits, np.zeros_like(bias), cfg)
    assert (by_expert(unbiased_w, unbiased_e)[0] != want_e).any()
    per = e // cfg.n_group
    assert all(len(set(row // per)) <= cfg.topk_group for row in got_e)  # within kept groups
    if cfg.norm_topk_prob:
        np.testing.assert_allclose(got_w.sum(1), cfg.routed_scaling_factor, rtol=1e-6)


def test_route_negative_bias_never_leaves_kept_groups():
    """All biased scores < 0: experts come only from the topk_group best groups (-inf masking)."""
    cfg = preset("tiny", n_routed_experts=16, n_group=4, topk_group=1, num_experts_per_tok=4)
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((32, 16)).astype(np.float32)
    bias = np.full(16, -2.0, np.float32)
    r = route(jnp.asarray(logits), jnp.asarray(bias), cfg)
    choice = np_sigmoid(logits) + bias
    best_group = np.argmax(np.sort(choice.reshape(32, 4, 4), -1)[..., -2:].sum(-1), axis=1)
    np.testing.assert_array_equal(np.asarray(r.experts) // 4, np.repeat(best_group[:, None], 4, 1))


def np_swiglu(x, gate, up, down):
    g = x @ gate
    return ((g / (1 + np.exp(-g))) * (x @ up)) @ down


def matrices(gate, up, down) -> dict:
    """The experts' matrices as moe.expert_weights hands them to the grouped SwiGLU."""
    return {"gate_up": pair_columns(jnp.asarray(gate), jnp.asarray(up)), "down": jnp.asarray(down)}


def test_dropless_experts_matches_loop():
    rng = np.random.default_rng(3)
    n, d, f, e, k = 24, 16, 8, 6, 3
    x = rng.standard_normal((n, d)).astype(np.float32)
    gate = (rng.standard_normal((e, d, f)) * 0.3).astype(np.float32)
    up = (rng.standard_normal((e, d, f)) * 0.3).astype(np.float32)
    down = (rng.standard_normal((e, f, d)) * 0.3).astype(np.float32)
    # distinct experts per token; experts 0, 3 and 5 (first, middle, last) receive no tokens
    used = np.array([1, 2, 4])
    experts = np.stack([rng.permutation(used) for _ in range(n)])
    experts[:5] = [2, 1, 4]  # uneven group sizes
    weights = rng.uniform(0.1, 1.0, (n, k)).astype(np.float32)
    routing = Routing(jnp.asarray(weights), jnp.asarray(experts, jnp.int32), jnp.zeros((n, e)))

    got = np.asarray(dropless_experts(jnp.asarray(x), routing, matrices(gate, up, down)))
    x64, g64, u64, d64 = (a.astype(np.float64) for a in (x, gate, up, down))
    want = np.zeros((n, d))
    for t in range(n):
        for j in range(k):
            ex = experts[t, j]
            want[t] += weights[t, j] * np_swiglu(x64[t], g64[ex], u64[ex], d64[ex])
    assert got.dtype == np.float32 and got.shape == (n, d)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_dropless_experts_all_tokens_one_expert():
    """Every copy on one expert (the others empty), and the same expert twice for a token."""
    rng = np.random.default_rng(4)
    n, d, f, e = 5, 8, 4, 4
    x = rng.standard_normal((n, d)).astype(np.float32)
    w = [(rng.standard_normal(s) * 0.3).astype(np.float32) for s in ((e, d, f), (e, d, f), (e, f, d))]
    experts = np.full((n, 2), 2, np.int32)
    weights = rng.uniform(0.1, 1.0, (n, 2)).astype(np.float32)
    got = np.asarray(dropless_experts(jnp.asarray(x), Routing(jnp.asarray(weights), jnp.asarray(experts),
                                                              jnp.zeros((n, e))), matrices(*w)))
    want = weights.sum(1, keepdims=True) * np_swiglu(x.astype(np.float64), *(a[2].astype(np.float64) for a in w))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_expert_load_counts_real_tokens():
    rng = np.random.default_rng(5)
    n, e, k = 40, 10, 3
    experts = np.stack([rng.choice(e - 1, k, replace=False) for _ in range(n)])  # expert 9 unused
    mask = rng.uniform(size=n) < 0.6
    got = np.asarray(expert_load(jnp.asarray(experts, jnp.int32), jnp.asarray(mask), e))
    want = np.zeros(e)
    for t in range(n):
        if mask[t]:
            for ex in experts[t]:
                want[ex] += 1
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    assert got.sum() == k * mask.sum() and got[9] == 0


def np_sequence_aux_loss(scores, experts, mask, batch, e, k):
    """DeepSeek-V3 eqs. 17-20 (alpha = 1) per sequence over its real tokens, mean over the
    sequences that have any (an all-padding row is not a sequence):
    f_i = E / (K T) sum_t 1[i routed at t];  P_i = 1/T sum_t s_i,t / sum_j s_j,t;  L = sum_i f_i P_i."""
    scores = scores.astype(np.float64).reshape(batch, -1, e)
    experts = experts.reshape(batch, -1, k)
    mask = mask.reshape(batch, -1)
    losses = []
    for b in range(batch):
        real = np.nonzero(mask[b])[0]
        t = len(real)
        if t == 0:
            continue
        f = np.zeros(e)
        p = np.zeros(e)
        for i in real:
            f[experts[b, i]] += 1
            p += scores[b, i] / scores[b, i].sum()
        losses.append(((e / (k * t)) * f * (p / t)).sum())
    return np.mean(losses)


def test_sequence_aux_loss_matches_formula_with_padding():
    cfg = preset("tiny", n_routed_experts=16, n_group=4, topk_group=2, num_experts_per_tok=4)
    rng = np.random.default_rng(6)
    b, t, e = 4, 10, cfg.n_routed_experts
    logits = (rng.standard_normal((b * t, e)) * 2).astype(np.float32)
    bias = (rng.standard_normal(e) * 0.3).astype(np.float32)
    mask = np.ones((b, t), bool)
    mask[0, 7:] = False  # right padding
    mask[2, :4] = False  # left padding
    mask[3, :] = False  # an unused batch row: must not dilute the mean
    r = route(jnp.asarray(logits), jnp.asarray(bias), cfg)
    got = float(sequence_aux_loss(r, jnp.asarray(mask.reshape(-1)), b, cfg))
    want = np_sequence_aux_loss(np.asarray(r.scores), np.asarray(r.experts), mask.reshape(-1), b, e,
                                cfg.num_experts_per_tok)
    assert got == pytest.approx(want, rel=1e-5)
    # padding is really excluded: changing padded tokens' logits changes nothing
    logits2 = logits.copy()
    logits2[~mask.reshape(-1)] = rng.standard_normal((int((~mask).sum()), e)) * 5
    r2 = route(jnp.asarray(logits2), jnp.asarray(bias), cfg)
    assert float(sequence_aux_loss(r2, jnp.asarray(mask.reshape(-1)), b, cfg)) == pytest.approx(got, rel=1e-6)
    # perfectly balanced routing with uniform scores gives the minimum, 1
    n = 8  # 8 tokens x 4 copies = 2 per expert
    uniform = Routing(jnp.ones((n, 4)), jnp.asarray(np.arange(n * 4).reshape(n, 4) % e, jnp.int32),
                      jnp.full((n, e), 0.5))
    assert float(sequence_aux_loss(uniform, jnp.ones(n, bool), 1, cfg)) == pytest.approx(1.0, rel=1e-6)


def np_ragged_all_to_all(operands, outputs, input_offsets, send_sizes, output_offsets, recv_sizes):
    """jax.lax.ragged_all_to_all's documented semantics, per device of an axis of size P, with S
    slices per device (slice s goes to device s // (S / P)): lists over devices -> results."""
    p, s = len(operands), len(input_offsets[0])
    per = s // p
    results = [o.copy() for o in outputs]
    for src in range(p):
        for i in range(s):
            dst, q = divmod(i, per)
            data = operands[src][input_offsets[src][i]:input_offsets[src][i] + send_sizes[src][i]]
            # on dst this is slice src * per + q, written at the sender's output_offsets[i]
            assert recv_sizes[dst][src * per + q] == len(data)
            results[dst][output_offsets[src][i]:output_offsets[src][i] + len(data)] = data
    return results


def test_ragged_exchange_matches_documented_semantics():
    """The exchange (the CPU emulation here) against the docs' pseudo-code: 4 devices, 2 slices per
    destination, internal padding in the operand, gaps and kept values in the output, empty slices;
    and its gradient: each received row's cotangent returns to the row it came from."""
    import jax
    from jax.sharding import PartitionSpec as P
    from r1jax.models.deepseek_v3.expert_parallel import ragged_all_to_all

    rng = np.random.default_rng(8)
    p, per, nin, mout, f = 4, 2, 20, 28, 3
    s = p * per
    sizes = rng.integers(0, 3, (p, s))  # sizes[src, slice]
    sizes[0, :] = 0
    sizes[1, 2 * per:3 * per] = 3  # a full slice pair to device 2
    in_off, out_off = np.zeros((p, s), np.int32), np.zeros((p, s), np.int32)
    for src in range(p):  # slices placed in a shuffled order, with gaps
        at = 0
        for i in rng.permutation(s):
            at += rng.integers(0, 2)
            in_off[src, i], at = at, at + sizes[src, i]
        assert at <= nin
    recv = np.zeros((p, s), np.int32)
    for dst in range(p):
        at = 0
        for src in rng.permutation(p):
            for q in range(per):
                i = dst * per + q
                at += rng.integers(0, 2)
                out_off[src, i], at = at, at + sizes[src, i]
                recv[dst, src * per + q] = sizes[src, i]
        assert at <= mout
    operands = rng.standard_normal((p, nin, f)).astype(np.float32)
    outputs = rng.standard_normal((p, mout, f)).astype(np.float32)
    want = np.stack(np_ragged_all_to_all(operands, outputs, in_off, sizes, out_off, recv))

    mesh = jax.make_mesh((p,), ("x",), devices=jax.devices()[:p], axis_types=(jax.sharding.AxisType.Auto,))
    flat = lambda a: jnp.asarray(a.reshape((-1,) + a.shape[2:]))  # devices stacked on axis 0
    ints = [flat(a.astype(np.int32)) for a in (in_off, sizes, out_off, recv)]
    exchange = jax.shard_map(lambda op, out, *i: ragged_all_to_all(op, out, *i, axis_name="x"),
                             mesh=mesh, in_specs=P("x"), out_specs=P("x"))
    got, vjp = jax.vjp(lambda op, out: exchange(op, out, *ints), flat(operands), flat(outputs))
    np.testing.assert_array_equal(np.asarray(got).reshape(want.shape), want)

    ct = rng.standard_normal(want.shape).astype(np.float32)
    d_op, d_out = (np.asarray(g).reshape(a.shape) for g, a in zip(vjp(flat(ct)), (operands, outputs)))
    want_op, want_out = np.zeros_like(operands), ct.copy()
    for src in range(p):
        for i in range(s):
            dst, n = i // per, sizes[src, i]
            want_op[src, in_off[src, i]:in_off[src, i] + n] = ct[dst, out_off[src, i]:out_off[src, i] + n]
            want_out[dst, out_off[src, i]:out_off[src, i] + n] = 0  # overwritten rows
    np.testing.assert_array_equal(d_op, want_op)
    np.testing.assert_array_equal(d_out, want_out)


def test_moe_chunk_tokens_split_and_bad_values_named():
    """A device's n tokens in chunks of at most C (as even as possible, the last padded); C 0 or
    >= n is one chunk; a negative C is an error naming the key, in the model and the run config."""
    from r1jax.train import run_config
    from r1jax.models.common.config import ConfigError
    from r1jax.models.deepseek_v3.expert_parallel import chunk_size
    assert chunk_size(64, 24) == (3, 22) and chunk_size(4096, 512) == (8, 512)
    assert chunk_size(8, 0) == chunk_size(8, 8) == chunk_size(8, 100) == (1, 8)
    with pytest.raises(ConfigError, match="moe_chunk_tokens=-1"):
        preset("tiny", moe_chunk_tokens=-1)
    c = run_config.defaults()
    c.model.moe_chunk_tokens = -1
    with pytest.raises(run_config.RunConfigError, match="model.moe_chunk_tokens=-1"):
        run_config.validate(c)
