"""The dense families (r1jax/models/llama/, r1jax/models/qwen2/) against transformers'
LlamaForCausalLM / Qwen2ForCausalLM in float32 (eager attention), weights placed by r1jax's layout.

Three tiny configs together cover: tied and untied embeddings, qwen2's q/k/v biases, llama's
attention_bias (q, k, v and o), llama3 rope scaling (and plain rope), an explicit head_dim unlike
hidden_size / heads, and grouped-query ratios 1, 2 and 4.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from hf_oracle import hf_loss_and_logits
from hf_oracle_dense import hf_state, r1jax_model, random_hf_model
from r1jax.inference.generate import GenerationSettings, generate_ids
from r1jax.models.losses import next_token_loss_sums
from r1jax.models.registry import preset

pytestmark = pytest.mark.parity

CONFIGS = {
    # llama: biases on q/k/v/o, GQA 4 heads / 2 K/V heads, head_dim 24 (not 64/4), llama3 rope with
    # an original context of 32 (frequencies rescaled, some blended).
    "llama_bias_llama3": ("tiny-llama", dict(
        attention_bias=True, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
        rope_factor=8.0, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
        rope_original_max_position_embeddings=32, rope_theta=10000.0)),
    # llama: tied embeddings, no biases, plain rope, no grouping (4 heads, 4 K/V heads), 3 layers.
    "llama_tied_mha": ("tiny-llama", dict(
        tie_word_embeddings=True, num_attention_heads=4, num_key_value_heads=4, rope_factor=1.0,
        num_hidden_layers=3, vocab_size=200)),
    # qwen2: q/k/v biases, 8 heads over 2 K/V heads (ratio 4), head width 8.
    "qwen2_gqa4": ("tiny-qwen2", dict(num_attention_heads=8, num_key_value_heads=2)),
}
SEQ = 48


def build(name):
    base, overrides = CONFIGS[name]
    cfg = preset(base, dtype="float32", **overrides)
    hf = random_hf_model(cfg, seed=sum(map(ord, name)))
    return cfg, hf, r1jax_model(cfg, hf_state(hf))


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request):
    cfg, hf, model = build(request.param)
    return request.param, cfg, hf, model


def right_padded(cfg, seed=0):
    """Tokens [3, SEQ] with rows of SEQ, SEQ-17 and 9 real tokens, and their mask."""
    rng = np.random.RandomState(seed)
    tokens = rng.randint(1, cfg.vocab_size, (3, SEQ))
    mask = np.zeros((3, SEQ), np.int64)
    for row, n in enumerate((SEQ, SEQ - 17, 9)):
        mask[row, :n] = 1
    return tokens * mask, mask


@functools.cache
def _forward(graphdef):
    return jax.jit(lambda state, tokens, positions, segments: nnx.merge(graphdef, state)(
        tokens, positions, segments)[0])


def logits_of(model, tokens, positions=None, segments=None):
    """float32 logits [B, T, V] of the model (jitted per shape)."""
    tokens = jnp.asarray(tokens)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape) if positions is None \
        else jnp.asarray(positions)
    segments = jnp.ones_like(tokens) if segments is None else jnp.asarray(segments)
    graphdef, state = nnx.split(model)
    return np.asarray(_forward(graphdef)(state, tokens, positions, segments))


def our_loss(graphdef, state, tokens, mask):
    logits, _ = nnx.merge(graphdef, state)(jnp.asarray(tokens), segment_ids=jnp.asarray(mask))
    total, count, _ = next_token_loss_sums(logits, jnp.asarray(tokens), jnp.asarray(mask))
    return total / count


def test_logits_and_loss_match_transformers(case):
    """Oracle: transformers' float32 eager forward on the same weights (right-padded batch)."""
    name, cfg, hf, model = case
    tokens, mask = right_padded(cfg)
    with torch.no_grad():
        ref_loss, ref_logits = hf_loss_and_logits(hf, tokens, mask)
    logits = logits_of(model, tokens, segments=mask)
    valid = mask.astype(bool)
    ours, ref = logits[valid], ref_logits.numpy()[valid]
    rel = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
    assert rel < 1e-4, f"{name}: logits relative error {rel:.2e}"
    assert np.abs(ours - ref).max() < 1e-4 * np.abs(ref).max()
    loss = our_loss(*nnx.split(model), tokens, mask)
    assert abs(float(loss) - ref_loss.item()) <= 1e-5 * abs(ref_loss.item()), name


def _hf_to_ours(cfg):
    """(r1jax path, layer or None, HF name, HF grad -> r1jax layout) for the gradients compared."""
    h, g, k, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_size, cfg.hidden_size
    last = cfg.num_hidden_layers - 1
    a = f"model.layers.{last}.self_attn."
    out = [("embed", None, "model.embed_tokens.weight", lambda x: x),
           ("final_norm.scale", None, "model.norm.weight", lambda x: x),
           ("layers.attn.q", 0, "model.layers.0.self_attn.q_proj.weight", lambda x: x.T.reshape(d, h, k)),
           ("layers.attn.k", last, a + "k_proj.weight", lambda x: x.T.reshape(d, g, k)),
           ("layers.attn.v", 0, "model.layers.0.self_attn.v_proj.weight", lambda x: x.T.reshape(d, g, k)),
           ("layers.attn.o", last, a + "o_proj.weight", lambda x: x.T.reshape(h, k, d)),
           ("layers.attn_norm.scale", 0, "model.layers.0.input_layernorm.weight", lambda x: x),
           ("layers.mlp.gate", last, f"model.layers.{last}.mlp.gate_proj.weight", lambda x: x.T),
           ("layers.mlp.down", 0, "model.layers.0.mlp.down_proj.weight", lambda x: x.T)]
    if not cfg.tie_word_embeddings:
        out.append(("lm_head", None, "lm_head.weight", lambda x: x.T))
    if cfg.qkv_bias:
        out += [("layers.attn.q_bias", last, a + "q_proj.bias", lambda x: x.reshape(h, k)),
                ("layers.attn.k_bias", 0, "model.layers.0.self_attn.k_proj.bias", lambda x: x.reshape(g, k)),
                ("layers.attn.v_bias", last, a + "v_proj.bias", lambda x: x.reshape(g, k))]
    if cfg.o_bias:
        out.append(("layers.attn.o_bias", 0, "model.layers.0.self_attn.o_proj.bias", lambda x: x))
    return out


def test_gradients_match_torch_autograd(case):
    """Oracle: torch autograd of transformers' loss; ours: jax.grad (tied: the embedding gradient
    sums both uses in each)."""
    name, cfg, hf, model = case
    tokens, mask = right_padded(cfg, seed=1)
    hf.zero_grad()
    ref_loss, _ = hf_loss_and_logits(hf, tokens, mask)
    ref_loss.backward()
    hf_grads = {n: p.grad.numpy() for n, p in hf.named_parameters() if p.grad is not None}
    graphdef, state = nnx.split(model)
    params, rest = nnx.split_state(state, nnx.Param, ...)
    grads = jax.grad(lambda p: our_loss(graphdef, nnx.merge_state(p, rest), tokens, mask))(params)
    grads = {".".join(map(str, k)): np.asarray(v.get_value()) for k, v in nnx.to_flat_state(grads)}
    for path, layer, hf_name, to_ours in _hf_to_ours(cfg):
        g = grads[path] if layer is None else grads[path][layer]
        g_ref = to_ours(hf_grads[hf_name])
        err = np.linalg.norm(g - g_ref) / np.linalg.norm(g_ref)
        assert err < 1e-4, f"{name}: grad of {path} relative error {err:.2e}"


def test_packed_documents_equal_each_alone(case):
    """Oracle: each document run alone. Two documents packed in one row (positions restarting,
    segment ids 1 and 2) give the logits of each alone, with the dense mask and with key ranges."""
    name, cfg, hf, model = case
    tokens, _ = right_padded(cfg, seed=2)
    a, b = tokens[0, :30], tokens[1, :18]
    packed = np.concatenate([a, b])[None]
    positions = np.concatenate([np.arange(30), np.arange(18)])[None]
    segments = np.concatenate([np.full(30, 1), np.full(18, 2)])[None]
    alone_a, alone_b = logits_of(model, a[None])[0], logits_of(model, b[None])[0]
    for mask_kind, m in (("dense", model), ("ranges", _with_mask(model, "ranges"))):
        logits = logits_of(m, packed, positions, segments)[0]
        np.testing.assert_allclose(logits[:30], alone_a, rtol=1e-4, atol=1e-5, err_msg=mask_kind)
        np.testing.assert_allclose(logits[30:], alone_b, rtol=1e-4, atol=1e-5, err_msg=mask_kind)


def _with_mask(model, attention_mask):
    """A model of the same weights whose config masks attention by `attention_mask`."""
    cfg = model.cfg.replace(attention_mask=attention_mask)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: type(model)(cfg, rngs=nnx.Rngs(0))))
    return nnx.merge(graphdef, nnx.state(model))


def left_padded(prompts, width):
    """Prompts (lists of ids) left-padded to `width`: tokens [B, width] (0 in padding), start [B]."""
    tokens = np.zeros((len(prompts), width), np.int32)
    start = np.array([width - len(p) for p in prompts], np.int32)
    for r, p in enumerate(prompts):
        tokens[r, start[r]:] = p
    return tokens, start


def test_left_padding_equals_each_row_alone(case):
    """Oracle: each row run alone. Left padding as its own segment, positions counted from each
    row's first real token, leaves every real token's logits as they are alone."""
    name, cfg, hf, model = case
    rng = np.random.RandomState(3)
    prompts = [list(rng.randint(1, cfg.vocab_size, n)) for n in (SEQ, 31, 7)]
    tokens, start = left_padded(prompts, SEQ)
    slots = np.arange(SEQ)[None]
    segments = (slots >= start[:, None]).astype(np.int32)
    positions = np.maximum(slots - start[:, None], 0)
    logits = logits_of(model, tokens, positions, segments)
    for r, p in enumerate(prompts):
        alone = logits_of(model, np.asarray(p)[None])[0]
        np.testing.assert_allclose(logits[r, start[r]:], alone, rtol=1e-4, atol=1e-5, err_msg=f"row {r}")


PROMPT_LENGTHS = (13, 5, 9)
NEW_TOKENS = 6


def _greedy_uncached(model, prompt, n):
    """Oracle: argmax of the full forward (no cache) on the growing sequence, n times. The sequence
    sits in a fixed-width buffer (later slots zero): causal attention keeps them out of the logits."""
    width = len(prompt) + n
    seq = list(prompt)
    out, step_logits = [], []
    for _ in range(n):
        buf = np.zeros((1, width), np.int32)
        buf[0, :len(seq)] = seq
        logits = logits_of(model, buf)[0, len(seq) - 1]
        tok = int(np.argmax(logits))
        out.append(tok)
        step_logits.append(logits)
        seq.append(tok)
    return out, np.stack(step_logits)


def _greedy_cached(model, prompts, n):
    """init_cache / prefill / decode on left-padded prompts: tokens [B, n], logits [B, n, V]."""
    width = max(map(len, prompts))
    tokens, start = left_padded(prompts, width)
    graphdef, state = nnx.split(model)

    @jax.jit
    def prefill(state, tokens, start):
        m = nnx.merge(graphdef, state)
        return m.prefill(tokens, m.init_cache(tokens.shape[0], width + n, start))

    @jax.jit
    def decode(state, tok, slot, cache):
        return nnx.merge(graphdef, state).decode(tok[:, None], slot, cache)

    logits, cache = prefill(state, jnp.asarray(tokens), jnp.asarray(start))
    toks, all_logits = [], []
    for i in range(n):
        all_logits.append(np.asarray(logits))
        tok = jnp.argmax(logits, -1).astype(jnp.int32)
        toks.append(np.asarray(tok))
        if i + 1 < n:
            step, cache = decode(state, tok, jnp.asarray(width + i, jnp.int32), cache)
            logits = step[:, 0]
    return np.stack(toks, 1), np.stack(all_logits, 1)


@pytest.mark.parametrize("name", ["llama_bias_llama3", "qwen2_gqa4", "llama_tied_mha"])
def test_cached_greedy_equals_uncached_greedy(name):
    """Oracle: argmax of the uncached forward on the growing sequence (_greedy_uncached), per
    prompt alone; ours: left-padded prompts of different lengths through init_cache / prefill /
    decode, and through inference/generate.py generate_ids at temperature 0."""
    cfg, _, model = build(name)
    rng = np.random.RandomState(4)
    prompts = [list(map(int, rng.randint(1, cfg.vocab_size, n))) for n in PROMPT_LENGTHS]
    toks, logits = _greedy_cached(model, prompts, NEW_TOKENS)
    for r, p in enumerate(prompts):
        ref_toks, ref_logits = _greedy_uncached(model, p, NEW_TOKENS)
        np.testing.assert_allclose(logits[r], ref_logits, rtol=1e-4, atol=1e-5, err_msg=f"row {r}")
        assert list(toks[r]) == ref_toks, f"{name} row {r}"
    eos = next(t for t in range(cfg.vocab_size) if t not in toks)  # never generated: no early stop
    settings = GenerationSettings(max_new_tokens=NEW_TOKENS, temperature=0.0, batch_size=4,
                                  steps_per_call=3)
    results = generate_ids(model, prompts, settings, eos_token_ids=[eos])
    assert [r["tokens"] for r in results] == [list(map(int, t)) for t in toks]
