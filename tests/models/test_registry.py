"""The model-family seam: the registry finds a family by config.json model_type, and shared code
reads optimizer groups and decoder-layer rows from parameter metadata (r1jax/models/common/groups.py),
never from names."""
import dataclasses
import json

import pytest
from flax import nnx

from r1jax.models import checkpoint, registry
from r1jax.models.common import groups
from r1jax.models.common.config import ConfigError, LoraConfig
from r1jax.models.family import Family
from r1jax.train.optim import OptimConfig, make_optimizer

TINY = registry.preset("tiny", with_mtp=True)   # 3 layers: layer 0 dense, layers 1-2 MoE


def _abstract(cfg):
    return nnx.eval_shape(lambda: registry.build(cfg, nnx.Rngs(0)))


@dataclasses.dataclass(frozen=True)
class _FakeConfig:
    hf: dict
    source: str
    runtime: dict
    model_type: str = "fake_lm"


def _fake_family() -> Family:
    """A family that records what it was asked: the oracle of dispatch is that its reader, not
    DeepSeek's, got the dict."""
    return Family(name="fake", model_types=("fake_lm",),
                  config_from_hf=lambda d, *, source, **rt: _FakeConfig(d, source, rt),
                  config_to_hf=lambda cfg: dict(cfg.hf), presets={}, model=object,
                  hf_tensors=lambda cfg, names=frozenset(), *, with_mtp: [],
                  active_matmul_params=lambda cfg: 0, train_flops_per_token=lambda cfg, s: 0.0)


def test_from_hf_dict_dispatches_by_model_type_and_names_an_unknown_one(monkeypatch, tmp_path):
    """Oracle: a registered stand-in family receives the parsed config.json (and the file as source)
    when model_type names it, in registry.from_hf_dict and in checkpoint.read_config; R1's dict goes
    to DeepSeek's config; an unknown model_type is a ConfigError naming it and the file."""
    monkeypatch.setattr(registry, "_BY_TYPE", {**registry._BY_TYPE, "fake_lm": _fake_family()})
    d = {"model_type": "fake_lm", "hidden_size": 8}
    got = registry.from_hf_dict(d, source="x.json", dtype="float32")
    assert got == _FakeConfig(d, "x.json", {"dtype": "float32"})

    (tmp_path / "config.json").write_text(json.dumps(d))
    (tmp_path / "r1jax.json").write_text(json.dumps({"format": 1, "with_mtp": False,
                                                      "param_dtype": "float32"}))
    got = checkpoint.read_config(str(tmp_path), dtype="float32")
    assert isinstance(got, _FakeConfig) and got.hf == d and got.runtime["dtype"] == "float32"

    assert type(registry.from_hf_dict(registry.to_hf_dict(TINY))).__name__ == "ModelConfig"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_neox", "hidden_size": 8}))
    with pytest.raises(ConfigError, match=r"config\.json.*'gpt_neox'"):
        checkpoint.read_config(str(tmp_path))


def _hand_table() -> dict[str, tuple[str, int | None]]:
    """R1's parameter tree, group and first decoder layer of each variable, written from the
    architecture (DeepSeek-V3 paper; r1jax/models/deepseek_v3/): MLA projections are attention,
    every RMSNorm scale a norm, the dense layer's MLP dense_mlp, the MoE layers' experts, shared
    experts and router theirs, the MTP module all mtp; stacks start at layers 0 (dense) and 1 (MoE)."""
    layer = {"attn.q_a": "attention", "attn.q_b": "attention", "attn.kv_a": "attention",
             "attn.kv_b": "attention", "attn.o": "attention", "attn.q_a_norm.scale": "norms",
             "attn.kv_a_norm.scale": "norms", "attn_norm.scale": "norms", "mlp_norm.scale": "norms"}
    dense_mlp = {"mlp.gate": "dense_mlp", "mlp.up": "dense_mlp", "mlp.down": "dense_mlp"}
    moe_mlp = {"mlp.gate": "routed_experts", "mlp.up": "routed_experts", "mlp.down": "routed_experts",
               "mlp.shared.gate": "shared_experts", "mlp.shared.up": "shared_experts",
               "mlp.shared.down": "shared_experts", "mlp.router": "router", "mlp.router_bias": "router"}
    table = {"embed": ("embeddings", None), "final_norm.scale": ("norms", None), "lm_head": ("head", None)}
    table |= {f"dense_layers.{k}": (g, 0) for k, g in (layer | dense_mlp).items()}
    table |= {f"moe_layers.{k}": (g, 1) for k, g in (layer | moe_mlp).items()}
    mtp = ["embed", "enorm.scale", "hnorm.scale", "eh_proj", "norm.scale", "head"]
    mtp += [f"block.{k}" for k in (layer | moe_mlp)]
    table |= {f"mtp.{k}": ("mtp", None) for k in mtp}
    return table


def test_groups_and_first_layers_of_every_r1_variable_match_the_hand_table():
    """Oracle: _hand_table, written from the R1 parameter tree (not from any r1jax function)."""
    got = {name: (p.group, p.first_layer) for name, p in groups.placements(_abstract(TINY)).items()}
    assert got == _hand_table()


def test_adapters_take_their_projections_group():
    """Oracle: an adapter's A and B sit on one projection, so they are in its group (hand-picked)."""
    cfg = TINY.replace(with_mtp=False, lora=LoraConfig(rank=2, targets=("attention", "routed_experts")))
    places = groups.placements(_abstract(cfg))
    assert places["moe_layers.attn.kv_b_lora.a"] == ("attention", 1)
    assert places["moe_layers.mlp.up_lora.b"] == ("routed_experts", 1)
    assert places["dense_layers.attn.o_lora.b"] == ("attention", 0)
    assert not any(n.startswith("dense_layers.mlp.") and "_lora" in n for n in places)


def test_a_group_the_model_lacks_is_an_error_naming_the_key():
    """Oracle: an R1 whose every layer is dense (first_k_dense_replace = num_hidden_layers) has no
    routed_experts, shared_experts or router; config keys naming them fail with the key and the groups
    it has (embeddings, attention, dense_mlp, norms, head, in GROUPS order)."""
    cfg = TINY.replace(with_mtp=False, first_k_dense_replace=TINY.num_hidden_layers)
    model = _abstract(cfg)
    params = nnx.state(model, nnx.Param)
    have = "embeddings,attention,dense_mlp,norms,head"
    for c, key, group in ((OptimConfig(group_lr={"routed_experts": 2.0}), "optim.group_lr", "routed_experts"),
                          (OptimConfig(group_wd={"shared_experts": 0.0}), "optim.group_wd", "shared_experts"),
                          (OptimConfig(freeze_groups=("router",)), "optim.freeze_groups", "router")):
        with pytest.raises(groups.GroupError, match=rf"config key {key}: group '{group}'.*{have}$"):
            make_optimizer(c, model, params)
    make_optimizer(OptimConfig(group_lr={"dense_mlp": 2.0}), model, params)   # a group it has

    lora = _abstract(cfg.replace(lora=LoraConfig(rank=2, targets=("attention", "routed_experts"))))
    with pytest.raises(groups.GroupError, match=r"config key lora.targets: group 'routed_experts'"):
        make_optimizer(OptimConfig(), lora, nnx.state(lora, nnx.Param))
    # the default targets (attention, dense_mlp, shared_experts) adapt the ones the model has
    lora = _abstract(cfg.replace(lora=LoraConfig(rank=2)))
    make_optimizer(OptimConfig(), lora, nnx.state(lora, nnx.Param))


def test_mtp_fp8_and_export_config_are_per_family_answers(monkeypatch):
    """Oracle, by hand: R1's MTP module is decoder layer num_hidden_layers (3 in tiny), so of these
    names exactly model.layers.3.* are MTP tensors; its release stores FP8 blocks and its export
    config says no MTP follows (num_nextn_predict_layers 0) and carries the release's
    quantization_config. A family that declares none of these (the stand-in) has no MTP tensors, no
    FP8 blocks, and exports its own config.json unchanged."""
    names = {"model.layers.2.mlp.gate.weight", "model.layers.3.eh_proj.weight",
             "model.layers.3.self_attn.o_proj.weight", "model.norm.weight"}
    assert registry.mtp_tensors(TINY, names) == {"model.layers.3.eh_proj.weight",
                                                 "model.layers.3.self_attn.o_proj.weight"}
    assert registry.fp8_blocks(TINY)
    d = registry.export_hf_config(TINY, with_mtp=False, fp8=True)
    assert d["num_nextn_predict_layers"] == 0 and d["model_type"] == "deepseek_v3"
    assert d["quantization_config"] == {"activation_scheme": "dynamic", "fmt": "e4m3",
                                        "quant_method": "fp8", "weight_block_size": [128, 128]}

    monkeypatch.setattr(registry, "_BY_TYPE", {**registry._BY_TYPE, "fake_lm": _fake_family()})
    fake = _FakeConfig({"model_type": "fake_lm", "hidden_size": 8}, "x", {})
    assert not registry.has_mtp_tensors(fake, {"model.layers.3.eh_proj.weight"})
    assert not registry.fp8_blocks(fake)
    assert registry.export_hf_config(fake, with_mtp=False, fp8=False) == {"model_type": "fake_lm", "hidden_size": 8}
