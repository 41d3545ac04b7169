"""YaRN frequencies and scales against transformers' own functions; the interleaved-pair rotation
against an independent NumPy GPT-J rotation and against transformers' de-interleaving kernel."""
import numpy as np
import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as hf_ds

import jax.numpy as jnp

from r1jax.models.registry import preset
from r1jax.models.deepseek_v3.rope import apply_rope, rope_attention_factor, rope_tables, yarn_inv_freq

# (our config, the same numbers as transformers' rope_parameters)
R1 = preset("r1-671b")
R1_HF = dict(rope_type="yarn", rope_theta=10000.0, factor=40.0, original_max_position_embeddings=4096,
             beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0)
# mscale != mscale_all_dim: the cos/sin factor is no longer 1; unusual theta/betas/lengths
SKEWED = preset("tiny", qk_rope_head_dim=64, rope_theta=50000.0, rope_factor=4.0,
                rope_original_max_position_embeddings=2048, rope_beta_fast=16.0, rope_beta_slow=2.0,
                rope_mscale=0.707, rope_mscale_all_dim=1.0, max_position_embeddings=8192)
SKEWED_HF = dict(rope_type="yarn", rope_theta=50000.0, factor=4.0, original_max_position_embeddings=2048,
                 beta_fast=16.0, beta_slow=2.0, mscale=0.707, mscale_all_dim=1.0)
# YaRN without mscale keys: transformers falls back to mscale(factor), and no softmax mscale^2
BARE = preset("tiny", rope_mscale=0.0, rope_mscale_all_dim=0.0)
BARE_HF = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=256)
CASES = {"r1": (R1, R1_HF), "skewed": (SKEWED, SKEWED_HF), "bare": (BARE, BARE_HF)}


def hf_config(cfg, rope_parameters):
    return transformers.DeepseekV3Config(
        hidden_size=cfg.hidden_size, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads, qk_rope_head_dim=cfg.qk_rope_head_dim,
        qk_nope_head_dim=cfg.qk_nope_head_dim, v_head_dim=cfg.v_head_dim,
        max_position_embeddings=cfg.max_position_embeddings, rope_parameters=dict(rope_parameters))


@pytest.mark.parametrize("case", sorted(CASES))
def test_yarn_matches_transformers(case):
    cfg, rope = CASES[case]
    hf = hf_config(cfg, rope)
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](hf)
    ours = yarn_inv_freq(cfg)
    assert ours.dtype == np.float32 and ours.shape == (cfg.qk_rope_head_dim // 2,)
    np.testing.assert_allclose(ours, inv_freq.numpy(), rtol=1e-6, atol=0)
    assert rope_attention_factor(cfg) == pytest.approx(attention_factor, rel=1e-12)
    # the attention softmax scale transformers uses for the same rope_parameters
    want_scale = hf_ds.yarn_apply_mscale(hf.rope_parameters, cfg.qk_head_dim ** -0.5)
    assert cfg.softmax_scale == pytest.approx(want_scale, rel=1e-12)


def test_skewed_attention_factor_is_not_one():
    # guards the test above against comparing 1.0 with 1.0 only
    want = (0.1 * 0.707 * np.log(4.0) + 1) / (0.1 * 1.0 * np.log(4.0) + 1)
    assert rope_attention_factor(SKEWED) == pytest.approx(want, rel=1e-12)
    assert rope_attention_factor(R1) == 1.0


def test_no_yarn_is_plain_rope():
    cfg = preset("v3-small")
    assert not cfg.uses_yarn
    d = cfg.qk_rope_head_dim
    want = 1.0 / cfg.rope_theta ** (np.arange(0, d, 2) / d)
    np.testing.assert_allclose(yarn_inv_freq(cfg), want, rtol=1e-6)
    assert rope_attention_factor(cfg) == 1.0
    hf_freq, hf_factor = hf_ds.DeepseekV3RotaryEmbedding.compute_default_rope_parameters(
        hf_config(cfg, dict(rope_type="default", rope_theta=cfg.rope_theta)))
    np.testing.assert_allclose(yarn_inv_freq(cfg), hf_freq.numpy(), rtol=1e-6)


def np_gptj_rope(x, positions, inv_freq, attention_factor):
    """x [B, T, H, R] float64; pairs (x[2i], x[2i+1]) rotated by positions * inv_freq[i]."""
    ang = (positions.astype(np.float32)[..., None] * inv_freq.astype(np.float32)).astype(np.float64)
    cos = np.cos(ang)[:, :, None, :] * attention_factor  # [B, T, 1, R/2]
    sin = np.sin(ang)[:, :, None, :] * attention_factor
    out = np.empty_like(x)
    for i in range(x.shape[-1] // 2):
        a, b = x[..., 2 * i], x[..., 2 * i + 1]
        out[..., 2 * i] = a * cos[..., i] - b * sin[..., i]
        out[..., 2 * i + 1] = a * sin[..., i] + b * cos[..., i]
    return out


def long_positions(cfg):
    """[2, 6] positions reaching past the original context up to the extended maximum."""
    orig, top = cfg.rope_original_max_position_embeddings, cfg.max_position_embeddings
    return np.array([[0, 1, orig - 1, orig, orig + 7, 3 * orig + 5],
                     [2 * orig, 2 * orig + 1, top - 2, top - 1, 17, orig + 1000]], np.int32)


@pytest.mark.parametrize("case", ["r1", "skewed"])
def test_apply_rope_is_gptj_interleaved(case):
    """rope_tables + apply_rope rotate interleaved pairs (x[2i], x[2i+1]) by pos * inv_freq[i] and
    scale by the attention factor. Frequencies come from yarn_inv_freq (pinned above against
    transformers) so that this test pins the rotation alone, at full precision."""
    cfg, _ = CASES[case]
    rng = np.random.default_rng(0)
    positions = long_positions(cfg)
    x = rng.standard_normal((2, 6, 3, cfg.qk_rope_head_dim)).astype(np.float32)
    factor = rope_attention_factor(cfg)
    want = np_gptj_rope(x.astype(np.float64), positions, yarn_inv_freq(cfg), factor)
    cos, sin = rope_tables(cfg, jnp.asarray(positions))
    got = np.asarray(apply_rope(jnp.asarray(x), cos, sin))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * max(1.0, factor))
    # the rotation preserves each pair's norm (up to the attention factor)
    pair_norm = lambda a: np.hypot(a[..., 0::2], a[..., 1::2])
    np.testing.assert_allclose(pair_norm(got), pair_norm(x) * factor, rtol=1e-5)


def test_apply_rope_keeps_dtype():
    cfg = preset("tiny")
    x = jnp.ones((1, 2, 2, cfg.qk_rope_head_dim), jnp.bfloat16)
    cos, sin = rope_tables(cfg, jnp.array([[0, 300]]))
    assert apply_rope(x, cos, sin).dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(apply_rope(x, cos, sin)[0, 0], np.float32),
                                  np.ones((2, cfg.qk_rope_head_dim), np.float32))  # position 0


def hf_rotate(cfg, rope, q, k, pos):
    """transformers' tables and interleaved rotation; q [B, T, H, R], k [B, T, 1, R] (our layout)
    -> rotated q, k in transformers' layout [B, H, T, R] (de-interleaved), and its cos/sin."""
    rotary = hf_ds.DeepseekV3RotaryEmbedding(hf_config(cfg, rope))
    tq = torch.from_numpy(q).transpose(1, 2)
    tk = torch.from_numpy(k).transpose(1, 2)
    tcos, tsin = rotary(tq, torch.from_numpy(pos).long())  # [B, T, R] = cat(freqs, freqs)
    hq, hk = hf_ds.apply_rotary_pos_emb_interleave(tq, tk, tcos, tsin)
    half = q.shape[-1] // 2
    return hq.double().numpy(), hk.double().numpy(), tcos[..., :half].numpy(), tsin[..., :half].numpy()


@pytest.mark.parametrize("case", ["r1", "skewed"])
def test_attention_logits_match_transformers(case):
    """q.k after our apply_rope equals q.k after transformers' apply_rotary_pos_emb_interleave. The
    latter returns a de-interleaved layout (evens, then odds), so only dot products compare."""
    cfg, rope = CASES[case]
    rng = np.random.default_rng(1)
    t, h, r = 6, 2, cfg.qk_rope_head_dim
    pos = long_positions(cfg)[:1]  # [1, T]
    q = rng.standard_normal((1, t, h, r)).astype(np.float32)
    k = rng.standard_normal((1, t, 1, r)).astype(np.float32)
    hq, hk, hcos, hsin = hf_rotate(cfg, rope, q, k, pos)
    theirs = np.einsum("bhtr,bsr->bhts", hq, hk[:, 0])

    def ours(cos, sin):
        qr = np.asarray(apply_rope(jnp.asarray(q), cos, sin), np.float64)
        kr = np.asarray(apply_rope(jnp.asarray(k), cos, sin), np.float64)
        return np.einsum("bthr,bsr->bhts", qr, kr[:, :, 0])

    scale = np.abs(theirs).max()
    # 1. the rotation alone: our apply_rope on transformers' own cos/sin
    np.testing.assert_allclose(ours(jnp.asarray(hcos), jnp.asarray(hsin)), theirs, rtol=0,
                               atol=1e-5 * scale)
    # the layouts differ (interleaved vs de-interleaved), yet the logits agree
    qr = np.asarray(apply_rope(jnp.asarray(q), jnp.asarray(hcos), jnp.asarray(hsin)))
    assert not np.allclose(qr[0].transpose(1, 0, 2), hq[0], atol=1e-3)

    # 2. end to end with our tables. yarn_inv_freq and transformers' inv_freq are both float32 and
    # differ by up to ~2 ulp in a few entries (numpy's vs torch's float32 pow), an angle difference
    # of pos * |d inv_freq| that reaches ~5e-3 rad at 163k, plus each side's float32 rounding of
    # the angle (half an ulp each): bound it by exactly that.
    cos, sin = rope_tables(cfg, jnp.asarray(pos))
    hf_inv = ROPE_INIT_FUNCTIONS["yarn"](hf_config(cfg, rope))[0].numpy()
    angle = pos[0].astype(np.float64)[:, None] * hf_inv  # [T, R/2]
    d_angle = (pos[0].astype(np.float64)[:, None] * np.abs(yarn_inv_freq(cfg) - hf_inv)
               + np.spacing(angle.astype(np.float32)))
    tol = 2e-6 + d_angle * rope_attention_factor(cfg)
    np.testing.assert_array_less(np.abs(np.asarray(cos[0]) - hcos[0]), tol)
    np.testing.assert_array_less(np.abs(np.asarray(sin[0]) - hsin[0]), tol)
    short = pos[0] <= cfg.rope_original_max_position_embeddings
    np.testing.assert_allclose(ours(cos, sin)[..., short][..., short, :],
                               theirs[..., short][..., short, :], rtol=0, atol=1e-4 * scale)
