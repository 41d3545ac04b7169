"""Export back to the HF release layout: FP8 release -> convert -> export --fp8 reproduces every tensor
bit for bit (codes, scales, bf16 and float32 tensors); a BF16 export loads in transformers and scores
as r1jax does; a trainer's state saved by plain Orbax exports, MTP dropped on request,
and converts back to its own values; mismatched params are refused; an interrupted export resumes."""
import json
import os

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
import transformers
from flax import nnx
from safetensors import safe_open

from hf_oracle import hf_loss_and_logits
from release_writer import fp8_release
from r1jax.models import checkpoint
from r1jax.interop import convert, export
from r1jax.data.tokenizer import packaged_tokenizer_dir
from r1jax.eval.evaluate import score
from r1jax.models.deepseek_v3.transformer import Transformer
from task_calls import TaskCalls
from test_convert_fp8 import CFG

QUIET = lambda s: None


def tensors_of(d) -> dict[str, tuple[str, bytes]]:
    """{name: (dtype, raw bytes)} of every tensor in the safetensors files of `d`, read with the
    safetensors library (torch knows float8_e4m3fn; numpy does not)."""
    out = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(d, f), framework="pt") as fh:
                for k in fh.keys():
                    t = fh.get_tensor(k)
                    out[k] = (str(t.dtype), t.contiguous().view(torch.uint8).numpy().tobytes())
    return out


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return fp8_release(tmp_path_factory.mktemp("fp8"), CFG, seed=11)


@pytest.fixture(scope="module")
def converted(release, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("converted") / "ckpt")
    convert.convert(release[0], out, dtype="float32", workers=2, log=QUIET)
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fp8_release_converted_and_exported_is_bit_for_bit(release, tmp_path, dtype):
    hf_dir = release[0]
    ckpt = tmp_path / "ckpt"
    # Small blocks: the biggest tensors go through the row-block paths of both directions.
    convert.convert(hf_dir, str(ckpt), dtype=dtype, workers=2, block_bytes=60_000, log=QUIET)
    out = tmp_path / "out"
    limit = 400_000
    files = export.export(str(ckpt), str(out), fp8_weights=True, max_shard_bytes=limit, workers=2,
                          block_bytes=60_000, log=QUIET)
    src, got = tensors_of(hf_dir), tensors_of(out)
    assert sorted(got) == sorted(src)
    differ = [n for n in src if got[n] != src[n]]
    assert not differ, differ[:5]
    n_scales = sum(n.endswith("_scale_inv") for n in src)
    assert n_scales > 50 and any(d == "torch.float8_e4m3fn" for d, _ in got.values())
    index = json.load(open(out / "model.safetensors.index.json"))
    assert sorted(index["weight_map"]) == sorted(src) and sorted(set(index["weight_map"].values())) == files
    assert len(files) > 3 and all(os.path.getsize(out / f) <= limit + 20_000 for f in files)
    config = json.load(open(out / "config.json"))
    released = json.load(open(os.path.join(hf_dir, "config.json")))
    assert config["quantization_config"] == released["quantization_config"]


def test_bf16_export_loads_in_transformers_and_scores_as_r1jax(converted, tmp_path):
    out = tmp_path / "out"
    assert export.main(["--checkpoint", converted, "--out", str(out), "--max_shard_gb", "0.001"]) == 0
    files = set(json.load(open(out / "model.safetensors.index.json"))["weight_map"].values())
    assert len(files) > 1 and all(os.path.getsize(out / f) <= 1_000_000 + 20_000 for f in files)
    got = tensors_of(out)
    assert not any(n.endswith("_scale_inv") for n in got)
    assert {d for n, (d, _) in got.items() if not n.endswith("e_score_correction_bias")} == {"torch.bfloat16"}
    assert {d for n, (d, _) in got.items() if n.endswith("e_score_correction_bias")} == {"torch.float32"}
    assert f"model.layers.{CFG.num_hidden_layers}.eh_proj.weight" in got  # MTP kept
    assert "model.layers.1.mlp.experts.3.down_proj.weight" in got  # per-expert names
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the packaged R1 tokenizer
        assert (out / name).read_bytes() == (packaged_tokenizer_dir() / name).read_bytes()
    assert "quantization_config" not in json.load(open(out / "config.json"))

    rng = np.random.RandomState(1)
    rows = [rng.randint(0, CFG.vocab_size, n).tolist() for n in (30, 51)]
    ids = np.zeros((2, 51), np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    hf = transformers.DeepseekV3ForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32,
                                                            attn_implementation="eager").eval()
    with torch.no_grad():
        hf_loss = hf_loss_and_logits(hf, ids, mask)[0].item()
    ours = score(checkpoint.load_model(converted, checkpoint.read_config(converted, dtype="float32")),
                 rows, batch_size=2)["loss"]
    assert abs(hf_loss - ours) <= 5e-3 * ours, (hf_loss, ours)  # the weights were rounded to bf16


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A trainer's state item written by plain Orbax ({"params", "rest", "opt_state"} as
    r1jax/train/checkpoints.py saves it, with Orbax's own chunking and compression): random params,
    MTP included."""
    cfg = CFG.replace(with_mtp=True, param_dtype="float32")
    _, params, rest = nnx.split(Transformer(cfg, rngs=nnx.Rngs(5)), nnx.Param, ...)
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
    rest["moe_layers"]["mlp"]["router_bias"] = np.random.RandomState(0).normal(
        0, 0.1, rest["moe_layers"]["mlp"]["router_bias"].shape).astype(np.float32)
    state = {"params": params, "rest": rest,
             "opt_state": {"mu": jax.tree.map(np.zeros_like, params), "count": np.zeros((), np.int32)}}
    d = str(tmp_path_factory.mktemp("trained") / "state")
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(d, state)
    ckptr.wait_until_finished()
    variables = {**dict(checkpoint._flatten(jax.tree.map(np.asarray, params))),
                 **dict(checkpoint._flatten(jax.tree.map(np.asarray, rest)))}
    return d, cfg, variables


def test_trainer_state_exports_without_mtp_and_converts_back(trained, tmp_path):
    d, cfg, variables = trained
    out = tmp_path / "hf"
    export.export_params(d, cfg, str(out), drop_mtp=True, workers=2, roots=("params", "rest"), log=QUIET)
    config = json.load(open(out / "config.json"))
    assert config["num_nextn_predict_layers"] == 0
    assert not any(n.startswith(f"model.layers.{cfg.num_hidden_layers}.") for n in tensors_of(out))
    back = tmp_path / "back"
    convert.convert(str(out), str(back), dtype="float32", log=QUIET)
    assert not checkpoint.read_config(str(back)).with_mtp
    got = dict(checkpoint._flatten(checkpoint.numpy_params(checkpoint.load_model(str(back)))))
    want = {k: v for k, v in variables.items() if k[0] != "mtp"}
    assert sorted(got) == sorted(want)
    for path, w in want.items():
        exact = path[-1] == "router_bias"  # float32 in the release layout; the rest bf16
        w = w if exact else w.astype(ml_dtypes.bfloat16).astype(np.float32)
        np.testing.assert_array_equal(got[path], w, err_msg=".".join(path))


def test_params_of_another_model_are_refused(trained, tmp_path):
    d, cfg, _ = trained
    with pytest.raises(export.ExportError, match=r"moe_layers\.mlp\.gate .*expected"):
        export.export_params(d, cfg.replace(moe_intermediate_size=144), str(tmp_path / "hf"),
                             roots=("params", "rest"), log=QUIET)
    assert not list(tmp_path.glob("hf*"))


def test_interrupted_export_resumes_to_the_same_files(converted, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    export.export(converted, str(whole), fp8_weights=True, max_shard_bytes=500_000, log=QUIET)
    calls = TaskCalls(monkeypatch, export, "_export_task", crash_after=25)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated crash"):
        export.export(converted, str(out), fp8_weights=True, max_shard_bytes=500_000, log=QUIET)
    finished = set(calls.keys)
    calls.resume()
    export.export(converted, str(out), fp8_weights=True, max_shard_bytes=500_000, resume=True, log=QUIET)
    assert not finished & set(calls.keys) and calls.keys
    assert tensors_of(out) == tensors_of(whole)
    assert sorted(os.listdir(out)) == sorted(os.listdir(whole))
