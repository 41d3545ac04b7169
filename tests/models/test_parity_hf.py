"""r1jax against transformers' DeepseekV3ForCausalLM in float32: logits, loss, gradients, bf16.

Two tiny configs together cover: n_group > 1 with topk_group < n_group and a non-zero router bias,
norm_topk_prob true and false, one and two shared experts, one and two dense layers, the q_lora and
full-rank query paths, YaRN (factor > 1, also mscale != mscale_all_dim) on sequences longer than
original_max_position_embeddings, and right-padded batches.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from hf_oracle import hf_loss_and_logits, hf_state, r1jax_params, random_hf_model
from r1jax.models.losses import next_token_loss_sums
from r1jax.models.deepseek_v3.transformer import Transformer
from r1jax.models.registry import preset

pytestmark = pytest.mark.parity

CONFIGS = {
    # 1 dense layer, 1 shared expert, normalized top-k, 4 groups keep 2, YaRN x4 past 128 tokens.
    "a": dict(vocab_size=512, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
              num_hidden_layers=3, first_k_dense_replace=1, num_attention_heads=4, q_lora_rank=32,
              kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
              n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=3, n_group=4, topk_group=2,
              norm_topk_prob=True, routed_scaling_factor=2.5, rope_factor=4.0,
              rope_original_max_position_embeddings=128, max_position_embeddings=1024),
    # 2 dense layers, 2 shared experts, unnormalized top-k, full-rank q, mscale != mscale_all_dim.
    "b": dict(vocab_size=384, hidden_size=48, intermediate_size=96, moe_intermediate_size=24,
              num_hidden_layers=4, first_k_dense_replace=2, num_attention_heads=3, q_lora_rank=None,
              kv_lora_rank=24, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=12,
              n_routed_experts=12, n_shared_experts=2, num_experts_per_tok=4, n_group=3, topk_group=2,
              norm_topk_prob=False, routed_scaling_factor=1.7, rope_factor=8.0,
              rope_original_max_position_embeddings=64, rope_mscale=0.707, rope_mscale_all_dim=1.0,
              rope_beta_fast=16.0, max_position_embeddings=2048),
}
SEQ = {"a": 160, "b": 96}  # both past original_max_position_embeddings


def build(name, dtype="float32"):
    cfg = preset("tiny", dtype=dtype, **CONFIGS[name])
    hf = random_hf_model(cfg, seed=len(name) + ord(name))
    params = r1jax_params(cfg, hf_state(hf))
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
    return cfg, hf, graphdef, state


def padded_batch(cfg, seq, seed=0):
    """Tokens [3, seq] with rows of length seq, seq-37 and 20 (right padding) and their mask."""
    rng = np.random.RandomState(seed)
    tokens = rng.randint(0, cfg.vocab_size, (3, seq))
    mask = np.zeros((3, seq), np.int64)
    for row, n in enumerate((seq, seq - 37, 20)):
        mask[row, :n] = 1
    return tokens * mask, mask


def our_loss(graphdef, state, tokens, mask):
    logits, _ = nnx.merge(graphdef, state)(jnp.asarray(tokens), segment_ids=jnp.asarray(mask))
    total, count, _ = next_token_loss_sums(logits, jnp.asarray(tokens), jnp.asarray(mask))
    return total / count, logits


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request):
    name = request.param
    cfg, hf, graphdef, state = build(name)
    tokens, mask = padded_batch(cfg, SEQ[name])
    return name, cfg, hf, graphdef, state, tokens, mask


def test_logits_and_loss_match(case):
    name, cfg, hf, graphdef, state, tokens, mask = case
    with torch.no_grad():
        ref_loss, ref_logits = hf_loss_and_logits(hf, tokens, mask)
    loss, logits = our_loss(graphdef, state, tokens, mask)
    valid = mask.astype(bool)
    ours, ref = np.asarray(logits)[valid], ref_logits.numpy()[valid]
    rel = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
    assert rel < 1e-4, f"config {name}: logits relative error {rel:.2e}"
    assert np.abs(ours - ref).max() < 1e-4 * np.abs(ref).max()
    assert abs(float(loss) - ref_loss.item()) <= 1e-5 * abs(ref_loss.item())


def test_each_row_alone_equals_padded_batch(case):
    """Right padding changes nothing: each sequence scored alone gives the batch's logits."""
    name, cfg, hf, graphdef, state, tokens, mask = case
    _, batch_logits = our_loss(graphdef, state, tokens, mask)
    for row in (1, 2):
        n = int(mask[row].sum())
        _, alone = our_loss(graphdef, state, tokens[row:row + 1, :n], mask[row:row + 1, :n])
        np.testing.assert_allclose(np.asarray(alone)[0], np.asarray(batch_logits)[row, :n],
                                   rtol=1e-4, atol=1e-5)


# (r1jax path, HF name, HF [out, in] -> r1jax layout) for the gradients compared.
GRADS = [
    ("embed", "model.embed_tokens.weight", lambda g, c: g),
    ("lm_head", "lm_head.weight", lambda g, c: g.T),
    ("final_norm.scale", "model.norm.weight", lambda g, c: g),
    ("dense_layers.attn.kv_b", "model.layers.0.self_attn.kv_b_proj.weight",
     lambda g, c: g.T.reshape(c.kv_lora_rank, c.num_attention_heads, -1)),
    ("moe_layers.attn.o", "model.layers.{m}.self_attn.o_proj.weight",
     lambda g, c: g.T.reshape(c.num_attention_heads, c.v_head_dim, c.hidden_size)),
    ("moe_layers.attn.kv_a_norm.scale", "model.layers.{m}.self_attn.kv_a_layernorm.weight", lambda g, c: g),
    ("moe_layers.mlp.router", "model.layers.{m}.mlp.gate.weight", lambda g, c: g.T),
    ("moe_layers.mlp.down", "model.layers.{m}.mlp.experts.down_proj", lambda g, c: np.swapaxes(g, 1, 2)),
    ("moe_layers.mlp.gate", "model.layers.{m}.mlp.experts.gate_up_proj",
     lambda g, c: np.swapaxes(g[:, :c.moe_intermediate_size], 1, 2)),
    ("moe_layers.mlp.shared.up", "model.layers.{m}.mlp.shared_experts.up_proj.weight", lambda g, c: g.T),
]


def _get(tree, path):
    for k in path.split("."):
        tree = tree[k]
    return tree


def test_gradients_match_torch_autograd(case):
    name, cfg, hf, graphdef, state, tokens, mask = case
    hf.zero_grad()
    ref_loss, _ = hf_loss_and_logits(hf, tokens, mask)
    ref_loss.backward()
    hf_grads = {n: p.grad.numpy() for n, p in hf.named_parameters() if p.grad is not None}

    params, rest = nnx.split_state(state, nnx.Param, ...) if hasattr(nnx, "split_state") else \
        state.split(nnx.Param, ...)
    grads = jax.grad(lambda p: our_loss(graphdef, nnx.merge_state(p, rest), tokens, mask)[0])(params)
    grads = nnx.to_pure_dict(grads)
    m = cfg.num_hidden_layers - 1  # the last MoE layer: index -1 of the MoE stack
    for path, hf_name, to_ours in GRADS:
        g_ref = to_ours(hf_grads[hf_name.format(m=m)], cfg)
        g = np.asarray(_get(grads, path))
        if path.startswith(("dense_layers", "moe_layers")) and "{m}" in hf_name:
            g = g[-1]
        elif path.startswith("dense_layers"):
            g = g[0]
        err = np.linalg.norm(g - g_ref) / np.linalg.norm(g_ref)
        assert err < 1e-4, f"config {name}: grad of {path} relative error {err:.2e}"


def test_bf16_compute_close_to_float32(case):
    name, cfg, hf, graphdef, state, tokens, mask = case
    loss32, _ = our_loss(graphdef, state, tokens, mask)
    cfg16, _, graphdef16, _ = build(name, dtype="bfloat16")
    loss16, _ = our_loss(graphdef16, state, tokens, mask)
    rel = abs(float(loss16) - float(loss32)) / float(loss32)
    assert rel < 1e-2, f"config {name}: bf16 loss {float(loss16):.5f} vs float32 {float(loss32):.5f}"
    assert float(loss16) != float(loss32)  # really computed in bf16


def test_packed_documents_never_attend_across(case):
    """Two documents packed in one row (positions restarting, segment ids 1 and 2) give the same
    logits as each document alone: attention never crosses a segment boundary."""
    name, cfg, hf, graphdef, state, tokens, mask = case
    model = nnx.merge(graphdef, state)
    a, b = tokens[0, :40], tokens[1, :30]
    packed = jnp.asarray(np.concatenate([a, b])[None])
    positions = jnp.asarray(np.concatenate([np.arange(40), np.arange(30)])[None])
    segments = jnp.asarray(np.concatenate([np.full(40, 1), np.full(30, 2)])[None])
    logits, _ = model(packed, positions, segments)
    alone_a, _ = model(jnp.asarray(a[None]))
    alone_b, _ = model(jnp.asarray(b[None]))
    np.testing.assert_allclose(np.asarray(logits)[0, :40], np.asarray(alone_a)[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(logits)[0, 40:], np.asarray(alone_b)[0], rtol=1e-4, atol=1e-5)
