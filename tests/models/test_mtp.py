"""The MTP module (DeepSeek-V3 sec. 2.2) against a torch composition of transformers' own parts:
its DeepseekV3DecoderLayer (the MTP block is one), RMSNorm, Linear and the main model's hidden
states, with weights passed under the release's layer-61-style names through the convert layout."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as hf_mod

from hf_oracle import hf_config, hf_state, random_hf_model
from r1jax.models import registry
from r1jax.models.checkpoint import unflatten
from r1jax.interop.convert import fill_params
from r1jax.models.losses import next_token_loss_sums
from r1jax.models.deepseek_v3.transformer import Transformer
from r1jax.models.registry import preset

CFG = preset("tiny", dtype="float32", vocab_size=256, with_mtp=True, rope_factor=4.0,
             rope_original_max_position_embeddings=32)


def _randomize(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(module.named_parameters()) + list(module.named_buffers()):
            if "inv_freq" in name:
                continue
            if name.endswith("e_score_correction_bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return module


def test_mtp_logits_and_loss_match_torch_composition():
    hf = random_hf_model(CFG, seed=11)
    hcfg = hf_config(CFG)
    n, d, v = CFG.num_hidden_layers, CFG.hidden_size, CFG.vocab_size
    block = _randomize(hf_mod.DeepseekV3DecoderLayer(hcfg, layer_idx=n).float().eval(), 1)
    enorm = _randomize(hf_mod.DeepseekV3RMSNorm(d, CFG.rms_norm_eps), 2)
    hnorm = _randomize(hf_mod.DeepseekV3RMSNorm(d, CFG.rms_norm_eps), 3)
    norm = _randomize(hf_mod.DeepseekV3RMSNorm(d, CFG.rms_norm_eps), 4)
    eh_proj = _randomize(torch.nn.Linear(2 * d, d, bias=False), 5)
    head = _randomize(torch.nn.Linear(d, v, bias=False), 6)
    embed = _randomize(torch.nn.Embedding(v, d), 7)

    state = hf_state(hf)
    m = f"model.layers.{n}."
    state.update({m + k: t.detach().numpy() for k, t in block.state_dict().items()})
    state.update({m + "enorm.weight": enorm.weight.detach().numpy(),
                  m + "hnorm.weight": hnorm.weight.detach().numpy(),
                  m + "eh_proj.weight": eh_proj.weight.detach().numpy(),
                  m + "shared_head.norm.weight": norm.weight.detach().numpy(),
                  m + "shared_head.head.weight": head.weight.detach().numpy(),
                  m + "embed_tokens.weight": embed.weight.detach().numpy()})
    assert registry.has_mtp_tensors(CFG, state)
    expected = registry.hf_tensors(CFG, set(state), with_mtp=True)
    assert {t.name for t in expected} == set(state)  # the layout names every tensor, MTP included
    params = unflatten(fill_params(CFG, expected, lambda name, i: state[name]))
    graphdef, st = nnx.split(nnx.eval_shape(lambda: Transformer(CFG, rngs=nnx.Rngs(0))))
    nnx.replace_by_pure_dict(st, jax.tree.map(jnp.asarray, params))
    model = nnx.merge(graphdef, st)

    t = 48  # past original_max_position_embeddings
    ids = np.random.RandomState(0).randint(0, v, (2, t))
    with torch.no_grad():
        ti = torch.tensor(ids)
        h = hf.model(input_ids=ti).last_hidden_state  # final-normed
        nxt = torch.cat([ti[:, 1:], torch.zeros_like(ti[:, :1])], dim=1)
        x = eh_proj(torch.cat([enorm(embed(nxt)), hnorm(h)], dim=-1))
        pos = torch.arange(t)[None].expand(2, t)
        cos_sin = hf.model.rotary_emb(x, pos)
        causal = torch.full((t, t), float("-inf")).triu(1)[None, None]
        x = block(x, attention_mask=causal, position_ids=pos, position_embeddings=cos_sin)
        ref = head(norm(x)).numpy()

    h_ours, _ = model.hidden_states(jnp.asarray(ids))
    logits, stats = model.mtp_logits(h_ours, jnp.asarray(ids))
    ours = np.asarray(logits)
    rel = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
    assert rel < 1e-4, rel
    assert stats["load"].shape == (CFG.n_routed_experts,)

    # MTP loss: position i predicts token i+2.
    total, count, _ = next_token_loss_sums(logits, jnp.asarray(ids), jnp.ones_like(jnp.asarray(ids)), k=2)
    ref_nll = torch.nn.functional.cross_entropy(torch.tensor(ref[:, :-2]).reshape(-1, v).double(),
                                                torch.tensor(ids[:, 2:]).reshape(-1))
    assert int(count) == 2 * (t - 2)
    assert abs(float(total / count) - ref_nll.item()) < 1e-5 * ref_nll.item()


def test_model_without_mtp_refuses_mtp_logits():
    cfg = CFG.replace(with_mtp=False)
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))  # no compute needed
    with pytest.raises(ValueError, match="with_mtp"):
        model.mtp_logits(jnp.zeros((1, 4, cfg.hidden_size)), jnp.zeros((1, 4), jnp.int32))
