"""Configs of the dense families (r1jax/models/llama/config.py, r1jax/models/qwen2/config.py): the
R1-Distill config.json files read as the presets, config errors naming their key, parameter counts
and FLOPs of the presets against transformers' own models (on the meta device: nothing allocated).
"""
import copy

import numpy as np
import pytest
import torch
from flax import nnx

from hf_oracle_dense import HF_CLASSES, hf_config, hf_param_count, hf_param_count_of
from r1jax.models import registry
from r1jax.models.common.config import ConfigError

DISTILL = ("r1-distill-qwen-1.5b", "r1-distill-qwen-7b", "r1-distill-qwen-14b",
           "r1-distill-qwen-32b", "r1-distill-llama-8b", "r1-distill-llama-70b")

# The config.json files as released (DeepSeek-R1-Distill-Qwen-1.5B, -Llama-8B), written out by hand.
QWEN_1_5B_JSON = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 1536, "initializer_range": 0.02,
    "intermediate_size": 8960, "max_position_embeddings": 131072, "max_window_layers": 21,
    "model_type": "qwen2", "num_attention_heads": 12, "num_hidden_layers": 28,
    "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 10000, "sliding_window": 4096,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.44.0",
    "use_cache": True, "use_mrope": False, "use_sliding_window": False, "vocab_size": 151936}
LLAMA_8B_JSON = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 131072,
    "mlp_bias": False, "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0", "use_cache": True, "vocab_size": 128256}

# Published parameter counts (billions, as the model cards round them).
PUBLISHED_B = {"r1-distill-qwen-1.5b": 1.78, "r1-distill-qwen-7b": 7.62, "r1-distill-qwen-14b": 14.77,
               "r1-distill-qwen-32b": 32.76, "r1-distill-llama-8b": 8.03, "r1-distill-llama-70b": 70.55}


@pytest.mark.parametrize("name, release", [("r1-distill-qwen-1.5b", QWEN_1_5B_JSON),
                                           ("r1-distill-llama-8b", LLAMA_8B_JSON)])
def test_released_config_json_reads_as_the_preset(name, release):
    """Oracle: the released config.json (hand-copied) names the architecture the preset holds."""
    assert registry.from_hf_dict(release, source="config.json") == registry.preset(name)


@pytest.mark.parametrize("name", DISTILL + ("tiny-llama", "tiny-qwen2"))
def test_transformers_reads_what_we_write_and_we_read_what_it_writes(name):
    """Oracle: transformers' own config class reading our config.json, and writing it back (its
    to_dict, transformers 5 style: rope_parameters) for us to read."""
    cfg = registry.preset(name)
    hf = hf_config(cfg)
    assert (hf.hidden_size, hf.num_attention_heads, hf.num_key_value_heads, hf.tie_word_embeddings) == \
        (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, False)
    assert hf.rope_parameters["rope_theta"] == cfg.rope_theta
    assert hf.rope_parameters["rope_type"] == ("llama3" if cfg.model_type == "llama" else "default")
    back = {k: v for k, v in hf.to_dict().items() if k != "attn_implementation"}
    assert registry.from_hf_dict(back, source="hf") == cfg


def _count(cfg) -> int:
    abstract = nnx.eval_shape(lambda: registry.build(cfg, nnx.Rngs(0)))
    return sum(int(np.prod(v.get_value().shape)) for _, v in nnx.to_flat_state(nnx.state(abstract)))


@pytest.mark.parametrize("name", DISTILL)
def test_preset_parameter_counts_match_transformers(name):
    """Oracle: transformers' model of the preset's config.json on the meta device, and the model
    cards' rounded totals."""
    cfg = registry.preset(name)
    ours = _count(cfg)
    assert ours == hf_param_count(cfg)
    assert round(ours / 1e9, 2) == PUBLISHED_B[name]


@pytest.mark.parametrize("name", DISTILL + ("tiny-llama", "tiny-qwen2"))
def test_flops_count_the_matmul_parameters(name):
    """Oracle: transformers' parameters less embeddings, norms and biases (the matmul weights,
    lm_head included) for the 6 x params term; a hand count of the causal attention-score term."""
    cfg = registry.preset(name)
    family = registry.family_of(cfg)
    matmul = hf_param_count_of(cfg, lambda n: n.endswith("proj.weight") or n == "lm_head.weight")
    others = hf_param_count_of(cfg, lambda n: "embed_tokens" in n or "norm" in n or n.endswith(".bias"))
    assert matmul + others == hf_param_count(cfg)
    assert 6 * family.active_matmul_params(cfg) == 6 * matmul
    seq = 4096
    l, h, k = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    scores = 2 * (2 * h * k * seq / 2)  # QK^T and PV, 2 FLOPs a multiply-add, over half the keys
    assert registry.train_flops_per_token(cfg, seq) == pytest.approx(6 * matmul + 3 * l * scores)


def _bad_json(family, **changes):
    """The released config.json of `family` with keys changed (None: removed)."""
    d = copy.deepcopy(QWEN_1_5B_JSON if family == "qwen2" else LLAMA_8B_JSON)
    for k, v in changes.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    return d


@pytest.mark.parametrize("model_type, changes, key", [
    ("llama", {"frobnicate": 1}, "frobnicate"),
    ("qwen2", {"attention_bias": True}, "attention_bias"),   # llama's key, not qwen2's
    ("qwen2", {"use_sliding_window": True}, "use_sliding_window"),
    ("qwen2", {"use_mrope": True}, "use_mrope"),
    ("qwen2", {"layer_types": ["full_attention"] * 27 + ["sliding_attention"]}, "layer_types"),
    ("llama", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_type"),
    ("llama", {"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_type"),
    ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor"),
    ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
                                "beta_fast": 32}}, "beta_fast"),
    ("llama", {"mlp_bias": True}, "mlp_bias"),
    ("llama", {"hidden_act": "gelu"}, "hidden_act"),
    ("qwen2", {"hidden_act": "relu"}, "hidden_act"),
    ("llama", {"attention_dropout": 0.1}, "attention_dropout"),
    ("llama", {"num_key_value_heads": 5}, "num_key_value_heads"),
    ("llama", {"vocab_size": None}, "vocab_size"),
    ("qwen2", {"hidden_size": 1536.0}, "hidden_size"),
    ("llama", {"tie_word_embeddings": "false"}, "tie_word_embeddings"),
    ("qwen2", {"model_type": "llama"}, "model_type"),
])
def test_config_json_errors_name_the_key_and_file(model_type, changes, key):
    family = registry.family(model_type)
    with pytest.raises(ConfigError) as e:
        family.config_from_hf(_bad_json(model_type, **changes), source="ckpt/config.json")
    msg = str(e.value)
    assert key in msg and "ckpt/config.json" in msg and "\n" not in msg, msg


def test_qwen2_sliding_window_keys_are_ignored_when_off():
    """Oracle: transformers' Qwen2Config, which leaves sliding_window unused (None) with
    use_sliding_window false."""
    d = _bad_json("qwen2", sliding_window=131072, max_window_layers=3)
    assert HF_CLASSES["qwen2"][0](**d).sliding_window is None
    assert registry.from_hf_dict(d) == registry.preset("r1-distill-qwen-1.5b")


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
@pytest.mark.parametrize("key, value", [("fp8_weights", True), ("with_mtp", True),
                                        ("moe_chunk_tokens", 64)])
def test_runtime_fields_these_families_lack_are_errors(name, key, value):
    with pytest.raises(ConfigError, match=key):
        registry.preset(name, **{key: value})
    with pytest.raises(ConfigError, match=key):
        registry.from_hf_dict(registry.to_hf_dict(registry.preset(name)), **{key: value})


def test_layout_refuses_mtp():
    with pytest.raises(ConfigError, match="with_mtp"):
        registry.hf_tensors(registry.preset("tiny-qwen2"), with_mtp=True)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_layout_names_every_tensor_of_the_transformers_model(name):
    """Oracle: the parameter names and shapes of transformers' model (meta device)."""
    cfg = registry.preset(name, tie_word_embeddings=(name == "tiny-qwen2"))
    with torch.device("meta"):
        model = HF_CLASSES[cfg.model_type][1](hf_config(cfg))
    hf = {n: tuple(p.shape) for n, p in model.named_parameters()}  # tied: no lm_head.weight
    ours = {t.name: t.shape for t in registry.hf_tensors(cfg, with_mtp=False)}
    assert ours == hf
