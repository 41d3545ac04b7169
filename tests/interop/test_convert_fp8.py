"""Convert at release fidelity: an FP8 checkpoint in the release layout (written by the test with its
own NumPy quantizer: several 128x128 blocks per matrix, partial edge blocks, blocks without a +-448
code, an MTP layer, several shards), converted and scored by the CLIs, equals transformers' float32
loss on the dequantized weights; the result restores sharded onto a mesh; bad FP8 inputs fail naming
the tensor; an interrupted conversion resumes without redoing finished tensors; transformers' fused
FP8 experts convert too."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from hf_oracle import hf_loss_and_logits
from release_writer import fp8_release
from task_calls import TaskCalls
from r1jax.models import registry
from r1jax.models import checkpoint
from r1jax.interop import convert, resumable, safetensors_io
from r1jax.parallel import sharding
from r1jax.models.registry import preset

# Dimensions with several FP8 blocks per matrix and partial edge blocks (200 = 128 + 72, 300, 136,
# 160, 144); all even, so every axis splits over a mesh of 2 x 2 x 2.
CFG = preset("tiny", dtype="float32", vocab_size=512, hidden_size=200, intermediate_size=300,
             moe_intermediate_size=136, num_hidden_layers=3, first_k_dense_replace=1,
             num_attention_heads=2, q_lora_rank=160, kv_lora_rank=144, qk_nope_head_dim=32,
             qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=4, n_shared_experts=1,
             num_experts_per_tok=2, n_group=2, topk_group=1, max_position_embeddings=256,
             rope_factor=4.0, rope_original_max_position_embeddings=32)
QUIET = lambda s: None


def run(module, *args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return fp8_release(tmp_path_factory.mktemp("fp8"), CFG)


@pytest.fixture(scope="module")
def converted(release, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "ckpt"
    convert.convert(release[0], str(out), dtype="float32", workers=2, log=QUIET)
    return str(out)


def test_fp8_release_converted_and_scored_equals_transformers(release, tmp_path):
    hf_dir, hf_model = release
    rng = np.random.RandomState(0)
    rows = [rng.randint(0, CFG.vocab_size, n).tolist() for n in (40, 17, 64)]  # 64 > original_max
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps({"input_ids": r}) + "\n" for r in rows))
    ids = np.zeros((len(rows), 64), np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    with torch.no_grad():
        ref = hf_loss_and_logits(hf_model, ids, mask)[0].item()

    ckpt = tmp_path / "ckpt"
    r = run("r1jax.convert", "--hf_dir", hf_dir, "--out", str(ckpt), "--dtype", "float32", "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "tensors" in r.stderr and "GB/s" in r.stderr and "ETA" in r.stderr  # the progress line
    assert json.load(open(ckpt / "r1jax.json"))["with_mtp"]
    assert sorted(os.listdir(ckpt)) == ["config.json", checkpoint.SCALES_NAME, "params", "r1jax.json"]
    r = run("r1jax.evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--dtype", "float32",
            "--batch_size", "3", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["tokens"] == sum(len(r) - 1 for r in rows)
    assert abs(result["loss"] - ref) <= 1e-5 * ref, (result["loss"], ref)


def _shardings(cfg, mesh):
    """Target shardings from each variable's logical axes through r1jax.parallel.sharding's table."""
    state = nnx.state(checkpoint.abstract_model(cfg))
    specs = nnx.to_pure_dict(jax.tree.map(
        lambda v: sharding.logical_to_spec(v.get_metadata()["axes"]), state,
        is_leaf=lambda x: isinstance(x, nnx.Variable)))
    return jax.tree.map(lambda s: jax.sharding.NamedSharding(mesh, s), specs)


def test_converted_checkpoint_restores_sharded_onto_a_mesh(converted):
    mesh = jax.make_mesh((1, 2, 2, 2), sharding.MESH_AXES)
    cfg = checkpoint.read_config(converted)
    shardings = _shardings(cfg, mesh)
    sharded = nnx.to_pure_dict(nnx.state(checkpoint.load_model(converted, shardings=shardings)))
    plain = checkpoint.numpy_params(checkpoint.load_model(converted))
    flat_sharded = dict(checkpoint._flatten(sharded))
    flat_want = dict(checkpoint._flatten(shardings))
    split = 0
    for path, want in checkpoint._flatten(plain):
        got = flat_sharded[path]
        assert got.sharding == flat_want[path], path
        split += len(got.sharding.device_set) == 8 and got.sharding.spec != jax.sharding.PartitionSpec()
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=".".join(path))
    assert split > 20  # most arrays really are split over the mesh


def test_dequantized_values_are_the_release_formula(release, converted):
    """Every FP8 weight in the checkpoint is float32(q) * scale, q and scale read back from the
    shards, and the kept scales are the release's bytes."""
    hf_dir, _ = release
    tensors = safetensors_io.index_checkpoint(hf_dir)
    model = checkpoint.numpy_params(checkpoint.load_model(converted))
    name = "model.layers.1.mlp.experts.2.down_proj.weight"
    q = safetensors_io.load(tensors[name])
    s = safetensors_io.load(tensors[name + "_scale_inv"])
    want = q.astype(np.float32) * np.kron(s, np.ones((128, 128), np.float32))[:q.shape[0], :q.shape[1]]
    np.testing.assert_array_equal(model["moe_layers"]["mlp"]["down"][0, 2], want.T)
    kept = safetensors_io.read_header(os.path.join(converted, checkpoint.SCALES_NAME))
    assert set(kept) == {n for n in tensors if n.endswith("_scale_inv")}
    np.testing.assert_array_equal(safetensors_io.load(kept[name + "_scale_inv"]), s)


def _copy_release(hf_dir, tmp_path):
    import shutil
    d = tmp_path / "edited"
    shutil.copytree(hf_dir, d)
    return d


def _edit_tensor(d, name, new=None):
    """Rewrites the shard holding `name` without it, or with its data replaced by `new`."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    index = json.load(open(d / "model.safetensors.index.json"))
    fname = index["weight_map"][name]
    with safe_open(str(d / fname), framework="pt") as f:
        kept = {k: f.get_tensor(k) for k in f.keys() if k != name}
    if new is None:
        del index["weight_map"][name]
    else:
        kept[name] = new
    save_file(kept, str(d / fname), metadata={"format": "pt"})
    json.dump(index, open(d / "model.safetensors.index.json", "w"))


@pytest.mark.parametrize("victim, new, message", [
    ("model.layers.2.mlp.experts.1.up_proj.weight_scale_inv", None, "has no"),
    ("model.layers.0.self_attn.q_b_proj.weight", None, "missing tensor"),
    ("model.layers.1.input_layernorm.weight", torch.ones(200, dtype=torch.int32), "wrong dtype"),
])
def test_bad_fp8_input_is_named_and_leaves_nothing(release, tmp_path, capsys, victim, new, message):
    d = _copy_release(release[0], tmp_path)
    _edit_tensor(d, victim, new)
    assert convert.main(["--hf_dir", str(d), "--out", str(tmp_path / "ckpt")]) == 2
    err = capsys.readouterr().err
    assert message in err and victim in err
    assert not list(tmp_path.glob("ckpt*"))


def test_shard_changing_during_conversion_is_named(release, tmp_path, capsys, monkeypatch):
    """Validation while writing: a shard truncated after the checks names the file; the partial
    output stays for --resume and the final directory never appears."""
    d = _copy_release(release[0], tmp_path)
    shard = sorted(d.glob("*.safetensors"))[1]
    ready = resumable.OutputDir.mark_ready

    def truncate_then_ready(self):
        ready(self)
        shard.write_bytes(shard.read_bytes()[:-4096])
    monkeypatch.setattr(resumable.OutputDir, "mark_ready", truncate_then_ready)
    assert convert.main(["--hf_dir", str(d), "--out", str(tmp_path / "ckpt"), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert shard.name in err and "changed while being read" in err and "--resume" in err
    assert not (tmp_path / "ckpt").exists() and (tmp_path / "ckpt.partial").exists()


def test_resume_skips_finished_tensors_and_equals_an_uninterrupted_run(release, converted, tmp_path,
                                                                        monkeypatch):
    d = _copy_release(release[0], tmp_path)
    out = tmp_path / "ckpt"
    calls = TaskCalls(monkeypatch, convert, "_convert_task", crash_after=40)
    with pytest.raises(RuntimeError, match="simulated crash"):
        convert.convert(str(d), str(out), dtype="float32", workers=2, log=QUIET)
    journal = (tmp_path / "ckpt.partial" / resumable.JOURNAL_NAME).read_text().splitlines()
    finished = {json.loads(line)["task"] for line in journal}
    assert 30 <= len(finished) <= 40 and not out.exists()

    # Without --resume the partial output is refused, not overwritten.
    with pytest.raises(resumable.JobError, match="--resume"):
        convert.convert(str(d), str(out), dtype="float32", log=QUIET)
    # One shard changes (its mtime): its finished tensors are redone, the others are not.
    index = json.load(open(d / "model.safetensors.index.json"))["weight_map"]
    touched = index[sorted(finished)[0]]
    os.utime(d / touched, ns=(1, 1))
    redo = {k for k in finished if index[k.split("[")[0]] == touched}
    calls.resume()
    logs = []
    convert.convert(str(d), str(out), dtype="float32", workers=2, resume=True, log=logs.append)
    assert not (finished - redo) & set(calls.keys) and redo <= set(calls.keys)
    assert any(f"resuming: {len(finished - redo)} of" in line for line in logs)
    got = checkpoint.numpy_params(checkpoint.load_model(str(out)))
    want = checkpoint.numpy_params(checkpoint.load_model(converted))
    for path, w in checkpoint._flatten(want):
        np.testing.assert_array_equal(dict(checkpoint._flatten(got))[path], w, err_msg=".".join(path))
    assert sorted(os.listdir(out)) == sorted(os.listdir(converted))  # no bookkeeping files left


def test_fused_fp8_experts_as_transformers_saves_them(tmp_path):
    """transformers >= 5 saves FP8 experts fused ([E, 2F, D] codes, [E, ceil(2F/128), ceil(D/128)]
    scales named `gate_up_proj_scale_inv`): converted in blocks of experts, equal to the formula."""
    import ml_dtypes
    from safetensors.torch import save_file

    from hf_oracle import hf_state, random_hf_model
    from release_writer import dequantize_ref, quantize_blocks
    from r1jax.models.deepseek_v3.config import to_hf_dict
    state = hf_state(random_hf_model(CFG, seed=4))
    rng = np.random.RandomState(4)
    stored, values = {}, {}
    for name, w in state.items():
        fused = name.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj"))
        if name.endswith("_proj.weight") or fused:
            pairs = [quantize_blocks(m, rng) for m in (w if fused else w[None])]
            q, s = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
            values[name] = np.stack([dequantize_ref(a, b) for a, b in pairs])
            stored[name], stored[name + "_scale_inv"] = (q, s) if fused else (q[0], s[0])
            values[name] = values[name] if fused else values[name][0]
        else:
            stored[name] = w.astype(ml_dtypes.bfloat16) if not name.endswith("correction_bias") else w
            values[name] = stored[name].astype(np.float32)
    d = tmp_path / "hf"
    d.mkdir()
    torch_dtype = {"float8_e4m3fn": torch.float8_e4m3fn, "bfloat16": torch.bfloat16, "float32": torch.float32}

    def as_torch(v):  # same bytes, torch's dtype (numpy has no float8 for safetensors.numpy)
        return torch.from_numpy(np.ascontiguousarray(v).view(np.uint8)).view(torch_dtype[v.dtype.name])
    save_file({k: as_torch(v).reshape(v.shape) for k, v in stored.items()}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(to_hf_dict(CFG)))
    # Blocks of one expert: the fused tensors stream expert by expert.
    convert.convert(str(d), str(tmp_path / "ckpt"), dtype="float32", workers=2, block_bytes=300_000,
                    log=QUIET)
    model = checkpoint.load_model(str(tmp_path / "ckpt"))
    got = dict(checkpoint._flatten(checkpoint.numpy_params(model)))
    expected = registry.hf_tensors(CFG, set(values), with_mtp=False)
    want = convert.fill_params(CFG.replace(param_dtype="float32"), expected, lambda n, i: values[n])
    for path, w in want.items():
        np.testing.assert_array_equal(got[tuple(path.split("."))], w, err_msg=path)
