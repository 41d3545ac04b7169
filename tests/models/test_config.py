"""ModelConfig: the released config.json, its error paths, the transformers round trip, derived
quantities, and the parameter count of the full-size model (from shapes only, no memory)."""
import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest
import transformers
from flax import nnx

from r1jax.models.deepseek_v3.transformer import Transformer
from r1jax.models.common.config import ConfigError
from r1jax.models.deepseek_v3.config import from_hf_dict, to_hf_dict
from r1jax.models.registry import load_hf_config, preset
from r1jax.models.common.params import RouterBias

DATA = Path(__file__).resolve().parents[1] / "fixtures"
R1_CONFIG = DATA / "deepseek-r1-config.json"
# A byte-for-byte copy of the released DeepSeek-R1 config.json.


def released() -> dict:
    return json.loads(R1_CONFIG.read_text())


def test_released_config_is_the_r1_preset():
    assert load_hf_config(str(R1_CONFIG)) == preset("r1-671b")
    assert preset("v3-671b") == preset("r1-671b")


def test_runtime_fields_pass_through():
    c = load_hf_config(str(R1_CONFIG), param_dtype="bfloat16", with_mtp=True)
    assert c == preset("r1-671b", param_dtype="bfloat16", with_mtp=True)


def _mutated(**changes):
    d = released()
    d.update(changes)
    return d


@pytest.mark.parametrize("changes, must_name", [
    ({"n_experts_per_group": 32}, ["n_experts_per_group"]),                       # unknown key
    ({"num_key_value_heads": 64}, ["num_key_value_heads"]),
    ({"topk_group": 9}, ["topk_group"]),                                          # > n_group=8
    ({"n_group": 7, "topk_group": 3}, ["n_group", "n_routed_experts"]),           # 256 % 7 != 0
    ({"scoring_func": "softmax"}, ["scoring_func"]),
    ({"rope_scaling": {"type": "linear", "factor": 4.0}}, ["rope", "linear"]),
    ({"first_k_dense_replace": 62}, ["first_k_dense_replace"]),                   # > 61 layers
])
def test_from_hf_dict_errors_name_the_key(changes, must_name):
    with pytest.raises(ConfigError) as e:
        from_hf_dict(_mutated(**changes), source="my/config.json")
    msg = str(e.value)
    assert msg.startswith("my/config.json"), msg
    for word in must_name:
        assert word in msg, (word, msg)


def test_load_hf_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_hf_config(str(tmp_path / "missing.json"))
    bad = tmp_path / "config.json"
    bad.write_text('{"vocab_size": 1,\n')
    with pytest.raises(ConfigError, match="invalid JSON"):
        load_hf_config(str(tmp_path))  # a directory holding config.json


@pytest.mark.parametrize("name", ["tiny", "r1-671b", "v3-small"])
def test_round_trip_through_transformers(name):
    """to_hf_dict -> DeepseekV3Config -> to_dict -> from_hf_dict is the identity; transformers 5
    rewrites rope_scaling as rope_parameters (with rope_theta inside), so this pins that we read
    what transformers writes, not just what we wrote."""
    c = preset(name)
    hf = transformers.DeepseekV3Config(**to_hf_dict(c))
    d = hf.to_dict()
    assert from_hf_dict(d) == c
    # and the numbers transformers itself sees are ours
    assert hf.num_attention_heads == c.num_attention_heads
    assert hf.n_routed_experts == c.n_routed_experts and hf.topk_group == c.topk_group
    assert hf.rope_parameters["rope_theta"] == c.rope_theta
    if c.uses_yarn:
        assert hf.rope_parameters["factor"] == c.rope_factor
        assert hf.rope_parameters["mscale_all_dim"] == c.rope_mscale_all_dim
    else:
        assert hf.rope_parameters["rope_type"] == "default"


def test_r1_softmax_scale():
    want = 192 ** -0.5 * (0.1 * math.log(40) + 1) ** 2
    assert preset("r1-671b").softmax_scale == pytest.approx(want, rel=1e-12)
    assert preset("v3-small").softmax_scale == pytest.approx(192 ** -0.5, rel=1e-12)  # no YaRN


# Parameter count -----------------------------------------------------------------------------------

def _expected_params(c, mtp: bool) -> int:
    """Independent count from the config numbers (released tensor shapes, norms included)."""
    D, V, H = c.hidden_size, c.vocab_size, c.num_attention_heads
    qk = c.qk_nope_head_dim + c.qk_rope_head_dim
    attn = (D * c.q_lora_rank + c.q_lora_rank                          # q_a_proj, q_a_layernorm
            + c.q_lora_rank * H * qk                                   # q_b_proj
            + D * (c.kv_lora_rank + c.qk_rope_head_dim)                # kv_a_proj_with_mqa
            + c.kv_lora_rank                                           # kv_a_layernorm
            + c.kv_lora_rank * H * (c.qk_nope_head_dim + c.v_head_dim)  # kv_b_proj
            + H * c.v_head_dim * D)                                    # o_proj
    norms = 2 * D                                                      # input/post-attention
    dense_mlp = 3 * D * c.intermediate_size
    moe = (c.n_routed_experts * 3 * D * c.moe_intermediate_size        # routed experts
           + D * c.n_routed_experts                                    # router (gate.weight)
           + 3 * D * c.moe_intermediate_size * c.n_shared_experts)     # shared expert
    n_dense = c.first_k_dense_replace
    n_moe = c.num_hidden_layers - n_dense
    total = (2 * V * D                                                 # embed_tokens, lm_head
             + n_dense * (attn + norms + dense_mlp)
             + n_moe * (attn + norms + moe)
             + D)                                                      # final norm
    if mtp:
        total += (attn + norms + moe) + 2 * V * D + 2 * D * D + 3 * D  # block, embed+head, eh_proj, enorm/hnorm/head norm
    return total


def _count(cfg):
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert {x.dtype for x in leaves} == {np.dtype(cfg.param_dtype)}
    biases = jax.tree.leaves(nnx.state(model, RouterBias))
    return sum(math.prod(x.shape) for x in leaves), sum(math.prod(x.shape) for x in biases)


@pytest.mark.parametrize("with_mtp, billions", [(False, 671.0), (True, 685.0)])
def test_r1_parameter_count(with_mtp, billions):
    c = preset("r1-671b", param_dtype="bfloat16", with_mtp=with_mtp)
    n, n_bias = _count(c)
    assert n == _expected_params(c, with_mtp)
    assert abs(n / (billions * 1e9) - 1) < 0.005, n
    # the router biases exist (state, not params): one [E] per MoE layer, plus the MTP block's
    n_moe = c.num_hidden_layers - c.first_k_dense_replace + (1 if with_mtp else 0)
    assert n_bias == n_moe * c.n_routed_experts

