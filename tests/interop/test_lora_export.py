"""Exports of a LoRA training run: its adapters as a PEFT adapter that transformers + peft load and
score as r1jax does; its merged weights equal base + s A B computed in NumPy; clear errors.

The run is built here without the trainer, as the trainer writes one: a base model checkpoint
(checkpoint.save_model), RUN/model/{config.json, r1jax.json with "lora" and "base"}, and the Orbax
state RUN/checkpoints/1/state = {"params": the adapters, "rest": {router_bias}, "opt_state"}.
"""
import dataclasses
import json
import os
import shutil

import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import peft
import pytest
import torch
from flax import nnx
from safetensors import safe_open

from hf_oracle import hf_loss_and_logits, hf_state, r1jax_params, random_hf_model
from r1jax.models import checkpoint
from r1jax.interop import export
from r1jax.eval.evaluate import score
from r1jax.models.deepseek_v3.transformer import Transformer
from r1jax.models.common.config import ADAPTABLE_GROUPS, LoraConfig
from r1jax.models.registry import preset

pytestmark = pytest.mark.parity

CFG = preset("tiny", vocab_size=256, num_hidden_layers=2, dtype="float32", param_dtype="float32")
LORA = LoraConfig(rank=2, alpha=6.0, targets=ADAPTABLE_GROUPS)
QUIET = lambda s: None


def save_state(path, tree):
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path, tree)
    ckptr.wait_until_finished()


def is_lora(path: tuple) -> bool:
    return len(path) > 1 and path[-2].endswith("_lora")


def write_run(run, cfg, lora, base, params, rest):
    """A training run directory as the trainer leaves it (r1jax.json with "lora" and "base")."""
    model_dir = os.path.join(run, "model")
    checkpoint.write_meta(model_dir, cfg)
    meta_path = os.path.join(model_dir, checkpoint.META_NAME)
    meta = json.load(open(meta_path))
    if lora is not None:
        meta["lora"] = {"rank": lora.rank, "alpha": lora.alpha, "dropout": lora.dropout,
                        "targets": list(lora.targets), "rslora": lora.rslora}
    record = getattr(checkpoint, "base_record", None)  # the trainer's digest of the base, once it has one
    meta["base"] = record(base, cfg, 0) if record else {"path": base, "digest": ""}
    json.dump(meta, open(meta_path, "w"))
    save_state(os.path.join(run, "checkpoints", "1", "state"),
               {"params": params, "rest": rest, "opt_state": {"count": np.zeros((), np.int32)}})


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """(run dir, base dir, the LoRA model in memory, HF base state, adapters {path: (a, b)}):
    base weights from a random transformers model; adapters A random, B random (nonzero); the
    router bias moved away from the base's, as training moves it."""
    root = tmp_path_factory.mktemp("lora")
    hf = random_hf_model(CFG, seed=3)
    state = hf_state(hf)
    base_params = r1jax_params(CFG, state)
    base = str(root / "base")
    checkpoint.save_model(base, CFG, base_params)

    model = Transformer(CFG.replace(lora=LORA), rngs=nnx.Rngs(7))
    graphdef, variables = nnx.split(model)
    pure = nnx.to_pure_dict(variables)
    flat = dict(checkpoint._flatten(pure))
    base_flat = dict(checkpoint._flatten(base_params))
    rng = np.random.RandomState(5)
    adapters = {}
    for path in list(flat):
        if path in base_flat:
            flat[path] = np.asarray(base_flat[path])
        elif is_lora(path) and path[-1] == "b":
            flat[path] = rng.normal(0, 0.3, flat[path].shape).astype(np.float32)
    bias_path = ("moe_layers", "mlp", "router_bias")
    flat[bias_path] = flat[bias_path] + rng.normal(0, 0.2, flat[bias_path].shape).astype(np.float32)
    for path, v in flat.items():
        if is_lora(path):
            adapters.setdefault(".".join(path[:-1]), {})[path[-1]] = np.asarray(v)
    nnx.replace_by_pure_dict(variables, checkpoint.unflatten({".".join(k): v for k, v in flat.items()}))
    model = nnx.merge(graphdef, variables)
    params = checkpoint.unflatten({".".join(k): np.asarray(v) for k, v in flat.items()
                                   if is_lora(k)})
    rest = {"moe_layers": {"mlp": {"router_bias": np.asarray(flat[bias_path])}}}
    run = str(root / "run")
    write_run(run, CFG, LORA, base, params, rest)
    return run, base, model, state, adapters, np.asarray(flat[bias_path])


def token_rows():
    rng = np.random.RandomState(1)
    return [rng.randint(0, CFG.vocab_size, n).tolist() for n in (20, 33)]


@pytest.mark.parametrize("rslora", [False, True])
def test_peft_adapter_loads_in_transformers_and_scores_as_r1jax(lora_run, tmp_path, rslora):
    """Oracle: transformers' DeepseekV3ForCausalLM (float32, the base weights) with the exported
    adapter loaded by peft.PeftModel.from_pretrained scores the same tokens as r1jax's model with
    the adapters (unmerged forward), rtol 1e-5, with scale alpha/r and (rslora) alpha/sqrt(r);
    every saved tensor is one peft loaded."""
    run, _, model, _, _, _ = lora_run
    if rslora:  # the same run trained with rslora: only its config and r1jax's scale differ
        run = str(tmp_path / "run")
        shutil.copytree(lora_run[0], run)
        meta_path = os.path.join(run, "model", checkpoint.META_NAME)
        meta = json.load(open(meta_path))
        meta["lora"]["rslora"] = True
        json.dump(meta, open(meta_path, "w"))
        graphdef, variables = nnx.split(model)
        model = nnx.merge(nnx.graphdef(Transformer(CFG.replace(lora=dataclasses.replace(LORA, rslora=True)),
                                                   rngs=nnx.Rngs(0))), variables)
    out = tmp_path / "adapter"
    assert export.main(["--checkpoint", run, "--out", str(out), "--adapter"]) == 0
    config = json.load(open(out / "adapter_config.json"))
    assert (config["r"], config["lora_alpha"], config["use_rslora"]) == (2, 6.0, rslora)

    rows = token_rows()
    ids = np.zeros((2, 33), np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    base = random_hf_model(CFG, seed=3)
    with torch.no_grad():
        base_loss = hf_loss_and_logits(base, ids, mask)[0].item()
    pm = peft.PeftModel.from_pretrained(base, str(out)).eval()
    with torch.no_grad():
        hf_loss = hf_loss_and_logits(pm, ids, mask)[0].item()
    ours = score(model, rows, batch_size=2)["loss"]
    assert abs(hf_loss - base_loss) > 1e-2, (hf_loss, base_loss)  # the adapters matter
    assert hf_loss == pytest.approx(ours, rel=1e-5), (hf_loss, ours)

    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as f:
        saved = set(f.keys())
    loaded = set(peft.get_peft_model_state_dict(pm))
    assert saved == loaded
    assert any("mlp.experts.base_layer.lora_A" in k for k in saved)  # routed experts included


def per_expert_delta(adapters, name, layer, expert):
    a, b = adapters[name + "_lora"]["a"][layer, expert], adapters[name + "_lora"]["b"][layer, expert]
    return (a @ b).T  # [out, in]


def test_merged_export_is_base_plus_scaled_lora_product(lora_run, tmp_path):
    """Oracle: NumPy W_hf + s (A B)^T per HF tensor, A and B reshaped by hand ([in..., r] -> [In, r],
    heads flattened in C order), from the transformers base state; the export is BF16, so equal
    to bf16 rounding (rtol 2^-8)."""
    run, _, _, state, ad, bias = lora_run
    s = LORA.alpha / LORA.rank
    out = tmp_path / "merged"
    export.export(run, str(out), workers=2, log=QUIET)
    got = {}
    for f in os.listdir(out):
        if f.endswith(".safetensors"):
            with safe_open(str(out / f), framework="pt") as fh:
                got.update({k: fh.get_tensor(k).float().numpy() for k in fh.keys()})

    def lin(prefix, layer):
        a, b = ad[prefix + "_lora"]["a"][layer], ad[prefix + "_lora"]["b"][layer]
        r = a.shape[-1]
        return (a.reshape(-1, r) @ b.reshape(r, -1)).T

    want = {}  # name: (base, delta)
    for n, stack, j in ((0, "dense_layers", 0), (1, "moe_layers", 0)):
        for hf, ours in (("q_a_proj", "q_a"), ("q_b_proj", "q_b"), ("kv_a_proj_with_mqa", "kv_a"),
                         ("kv_b_proj", "kv_b"), ("o_proj", "o")):
            name = f"model.layers.{n}.self_attn.{hf}.weight"
            want[name] = state[name], s * lin(f"{stack}.attn.{ours}", j)
    for proj in ("gate", "up", "down"):
        name = f"model.layers.0.mlp.{proj}_proj.weight"
        want[name] = state[name], s * lin(f"dense_layers.mlp.{proj}", 0)
        name = f"model.layers.1.mlp.shared_experts.{proj}_proj.weight"
        want[name] = state[name], s * lin(f"moe_layers.mlp.shared.{proj}", 0)
    f = CFG.moe_intermediate_size
    for e in range(CFG.n_routed_experts):
        fused = state["model.layers.1.mlp.experts.gate_up_proj"][e]
        x = f"model.layers.1.mlp.experts.{e}."
        want[x + "gate_proj.weight"] = fused[:f], s * per_expert_delta(ad, "moe_layers.mlp.gate", 0, e)
        want[x + "up_proj.weight"] = fused[f:], s * per_expert_delta(ad, "moe_layers.mlp.up", 0, e)
        want[x + "down_proj.weight"] = (state["model.layers.1.mlp.experts.down_proj"][e],
                                        s * per_expert_delta(ad, "moe_layers.mlp.down", 0, e))
    for name, (w, delta) in want.items():
        assert np.abs(delta).max() > 0.05 * np.abs(w + delta).max(), name  # well above bf16 rounding
        np.testing.assert_allclose(got[name], w + delta, rtol=2 ** -8, atol=1e-7, err_msg=name)
    np.testing.assert_array_equal(got["model.layers.1.mlp.gate.e_score_correction_bias"], bias[0])
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.1.mlp.gate.weight"):
        np.testing.assert_array_equal(got[name], state[name].astype(ml_dtypes.bfloat16).astype(np.float32))


def test_adapter_export_of_runs_without_adapters_is_one_clear_error(lora_run, tmp_path, capsys):
    """Hand-written expectation: --adapter on a model checkpoint, or on a full fine-tuning run, and
    any export of a LoRA run whose base checkpoint is gone, exit 2 with one error
    line naming the path, and write nothing."""
    _, base, _, _, _, _ = lora_run
    assert export.main(["--checkpoint", base, "--out", str(tmp_path / "a"), "--adapter"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and base in err[0] and "not a training run" in err[0]

    run = str(tmp_path / "full_run")
    params = {"final_norm": {"scale": np.ones((CFG.hidden_size,), np.float32)}}
    write_run(run, CFG, None, base, params, {"moe_layers": {"mlp": {"router_bias": np.zeros(
        (CFG.num_moe_layers, CFG.n_routed_experts), np.float32)}}})
    assert export.main(["--checkpoint", run, "--out", str(tmp_path / "b"), "--adapter"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no adapters" in err[0] and os.path.join(run, "checkpoints") in err[0]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

    moved = str(tmp_path / "moved_base_run")  # a LoRA run whose base checkpoint is gone
    shutil.copytree(lora_run[0], moved)
    meta_path = os.path.join(moved, "model", checkpoint.META_NAME)
    meta = json.load(open(meta_path))
    meta["base"] = {"path": str(tmp_path / "gone"), "digest": ""}
    json.dump(meta, open(meta_path, "w"))
    for extra in ([], ["--adapter"]):
        assert export.main(["--checkpoint", moved, "--out", str(tmp_path / "c"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(tmp_path / "gone") in err[0] and "does not exist" in err[0]
    assert not (tmp_path / "c").exists()



@pytest.mark.parametrize("base_dtype", ["float32", "float8_e4m3fn"])
def test_fp8_merged_export_keeps_unadapted_codes_and_prints_what_fp8_costs(tmp_path, capsys, base_dtype):
    """A LoRA run (attention adapters) on a base converted from an FP8 release (float32, with the
    release's scales kept aside, or holding the FP8 codes themselves), exported --fp8:
    oracle 1, the release itself: every FP8 tensor without an adapter comes back with the release's
    codes and scales bit for bit, every adapted one differs; oracle 2, the printed losses equal
    r1jax's score of models built another way: BF16 = lora.merged_state of the run's model rounded
    to bf16; FP8 = the export converted back by `convert` (float32 compute for both)."""
    from release_writer import fp8_release
    from test_convert_fp8 import CFG as FP8_CFG
    from test_export import tensors_of
    from r1jax.interop import convert
    from r1jax.models.common import lora

    hf_dir, _ = fp8_release(tmp_path / "release", FP8_CFG, seed=4)
    base = str(tmp_path / "base")
    convert.convert(hf_dir, base, dtype=base_dtype, log=QUIET)
    cfg = checkpoint.read_config(base)  # with the release's MTP layer, dropped on export
    lora_cfg = LoraConfig(rank=2, alpha=4.0, targets=("attention",))
    model = Transformer(cfg.replace(lora=lora_cfg), rngs=nnx.Rngs(2))
    graphdef, variables = nnx.split(model)
    flat = dict(checkpoint._flatten(nnx.to_pure_dict(variables)))
    base_flat = dict(checkpoint._flatten(checkpoint.numpy_params(checkpoint.load_model(base, cfg))))
    rng = np.random.RandomState(0)
    for path in flat:
        if path in base_flat:
            flat[path] = base_flat[path]
        elif is_lora(path) and path[-1] == "b":
            flat[path] = rng.normal(0, 0.05, flat[path].shape).astype(np.float32)
    nnx.replace_by_pure_dict(variables, checkpoint.unflatten({".".join(k): v for k, v in flat.items()}))
    model = nnx.merge(graphdef, variables)
    run = str(tmp_path / "run")
    write_run(run, cfg, lora_cfg, base,
              checkpoint.unflatten({".".join(k): np.asarray(v) for k, v in flat.items() if is_lora(k)}),
              {"moe_layers": {"mlp": {"router_bias": np.asarray(flat[("moe_layers", "mlp", "router_bias")])}}})
    rows = [np.random.RandomState(i).randint(0, cfg.vocab_size, 40).tolist() for i in range(3)]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"input_ids": r}) + "\n" for r in rows))

    out = tmp_path / "fp8"
    assert export.main(["--checkpoint", run, "--out", str(out), "--fp8", "--drop_mtp",
                        "--fp8_check_data", str(data)]) == 0
    line = [x for x in capsys.readouterr().err.splitlines() if "FP8 check" in x]
    assert len(line) == 1
    printed_bf16 = float(line[0].split("loss BF16 ")[1].split(",")[0])
    printed_fp8 = float(line[0].split(", FP8 ")[1].split(" ")[0])

    src, got = tensors_of(hf_dir), tensors_of(out)
    fp8_names = [n for n, (d, _) in got.items() if d == "torch.float8_e4m3fn"]
    adapted = [n for n in fp8_names if ".self_attn." in n]
    assert adapted and len(fp8_names) > len(adapted)
    for n in fp8_names:
        same = got[n] == src[n] and got[n + "_scale_inv"] == src[n + "_scale_inv"]
        assert same == (n not in adapted), n

    f32 = cfg.replace(dtype="float32", with_mtp=False, fp8_weights=False)
    merged = {k: np.asarray(v) for k, v in checkpoint._flatten(lora.merged_state(model)) if k[0] != "mtp"}
    rounded = {".".join(k): v if k[-1] == "router_bias" else v.astype(ml_dtypes.bfloat16).astype(np.float32)
               for k, v in merged.items()}
    graphdef, variables = nnx.split(checkpoint.abstract_model(f32))
    nnx.replace_by_pure_dict(variables, checkpoint.unflatten(rounded))
    bf16_loss = score(nnx.merge(graphdef, variables), rows, batch_size=4)["loss"]
    back = str(tmp_path / "back")
    convert.convert(str(out), back, dtype="float32", log=QUIET)
    fp8_loss = score(checkpoint.load_model(back, checkpoint.read_config(back, dtype="float32")),
                     rows, batch_size=4)["loss"]
    assert printed_bf16 == pytest.approx(bf16_loss, abs=2e-5)
    assert printed_fp8 == pytest.approx(fp8_loss, abs=2e-5)
    assert printed_fp8 != printed_bf16


def test_peft_factors_multiply_to_the_layout_inverse_of_the_r1jax_delta():
    """Oracle: layout.py's own inverse transform (Slot.inv, what export applies to weights) of the
    r1jax delta A B [in..., out...], per slot rows; PEFT's product lora_B @ lora_A (per expert e:
    rows e*R.. of lora_A, columns k*E + e of lora_B) must equal it for every target of the model."""
    from r1jax.interop import peft_adapter
    rng = np.random.RandomState(0)
    shapes = {p: s.shape for p, s in checkpoint.param_shapes(CFG.replace(lora=LORA)).items()}
    adapted = {p[:-len("_lora.a")] for p in shapes if p.endswith("_lora.a")}
    found = peft_adapter.targets(CFG, adapted)
    assert len(found) == 2 * 5 + 3 + 3 + 2
    for tg in found:
        t = tg.tensor
        pairs = [(rng.normal(size=shapes[s.path + "_lora.a"][len(s.index):]),
                  rng.normal(size=shapes[s.path + "_lora.b"][len(s.index):])) for s in t.slots]
        lora_a, lora_b = peft_adapter.lora_pair(t, pairs)
        want = np.zeros(t.shape)
        for slot, (a, b) in zip(t.slots, pairs):
            r = a.shape[-1]
            lead = a.shape[:1] if len(t.shape) == 3 else ()
            ab = np.matmul(a.reshape(lead + (-1, r)), b.reshape(lead + (r, -1)))
            want[slot.hf_region(len(t.shape))] = slot.inv(ab.reshape(shapes[slot.path][len(slot.index):]))
        if len(t.shape) == 3:
            e = t.shape[0]
            big_r = lora_a.shape[0] // e
            got = np.stack([lora_b[:, i::e] @ lora_a[i * big_r:(i + 1) * big_r] for i in range(e)])
        else:
            got = lora_b @ lora_a
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=t.name)  # float32 factors
