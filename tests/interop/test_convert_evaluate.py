"""End to end through the CLIs: an HF checkpoint written by transformers (fused experts) or in the
release's per-expert sharded layout, converted by `r1jax.convert`, scored by `r1jax.evaluate
--dtype float32 --json`, equals transformers' own loss. Bad inputs fail naming the tensor or file and
leave no checkpoint behind."""
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from hf_oracle import hf_loss_and_logits, hf_state, random_hf_model
from release_writer import per_expert
from r1jax.interop import convert
from r1jax.data import encode, load_tokenizer
from r1jax.models.registry import preset

# The real R1 vocabulary, so {"text": ...} rows go through the R1 tokenizer.
CFG = preset("tiny", dtype="float32", num_hidden_layers=3, first_k_dense_replace=1, n_routed_experts=8,
             n_group=4, topk_group=2, num_experts_per_tok=3, rope_factor=4.0,
             rope_original_max_position_embeddings=32)
TEXTS = ["def add(a, b):\n    return a + b\n",
         "The quick brown fox jumps over the lazy dog, and then the dog chases the fox around the "
         "garden twice before both of them fall asleep under the old oak tree."]


def run(module, *args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def hf_model():
    return random_hf_model(CFG, seed=7)


@pytest.fixture(scope="module")
def data(tmp_path_factory, hf_model):
    """A JSONL file with text and pre-tokenized rows of different lengths, and HF's loss on it."""
    tok = load_tokenizer()
    rows = [encode(tok, t, add_bos=True) for t in TEXTS]
    rng = np.random.RandomState(3)
    rows.append(rng.randint(0, CFG.vocab_size, 50).tolist())  # longer than original_max (32)
    path = tmp_path_factory.mktemp("data") / "eval.jsonl"
    with open(path, "w") as f:
        for t in TEXTS:
            f.write(json.dumps({"text": t}) + "\n")
        f.write(json.dumps({"input_ids": rows[-1]}) + "\n")
    # Reference: HF on the padded batch, loss over all predicted tokens of all rows.
    n = max(map(len, rows))
    ids = np.zeros((len(rows), n), np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    with torch.no_grad():
        loss, _ = hf_loss_and_logits(hf_model, ids, mask)
    return str(path), loss.item(), int(sum(len(r) - 1 for r in rows))


def write_per_expert(state, out_dir, cfg, shards=3):
    """The release layout: per-expert tensors in several shards with an index json."""
    os.makedirs(out_dir)
    flat = per_expert(state, cfg.moe_intermediate_size)
    names = sorted(flat)
    weight_map = {}
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: np.ascontiguousarray(flat[n]) for n in names[s::shards]}
        save_file(part, os.path.join(out_dir, fname))
        weight_map.update({n: fname for n in part})
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {}, "weight_map": weight_map}, fh)
    with open(os.path.join(out_dir, "config.json"), "w") as fh:
        json.dump(json.load(open(os.path.join(out_dir, "..", "hf_fused", "config.json"))), fh)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory, hf_model):
    root = tmp_path_factory.mktemp("hf")
    hf_model.save_pretrained(root / "hf_fused", max_shard_size="300KB")
    write_per_expert(hf_state(hf_model), str(root / "hf_release"), CFG)
    return root


@pytest.mark.parametrize("layout_dir", ["hf_fused", "hf_release"])
def test_convert_then_evaluate_equals_transformers(hf_dirs, data, tmp_path, layout_dir):
    src = hf_dirs / layout_dir
    assert len([f for f in os.listdir(src) if f.endswith(".safetensors")]) > 1  # really sharded
    ckpt = tmp_path / "ckpt"
    r = run("r1jax.convert", "--hf_dir", str(src), "--out", str(ckpt), "--dtype", "float32")
    assert r.returncode == 0, r.stderr
    path, ref_loss, ref_tokens = data
    r = run("r1jax.evaluate", "--checkpoint", str(ckpt), "--data", path, "--dtype", "float32",
            "--batch_size", "2", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["tokens"] == ref_tokens
    assert abs(result["loss"] - ref_loss) <= 1e-5 * ref_loss, (result["loss"], ref_loss)
    assert abs(result["perplexity"] - np.exp(ref_loss)) <= 1e-4 * np.exp(ref_loss)


def _edited_copy(hf_dirs, tmp_path, edit):
    """A copy of the release-layout checkpoint with `edit(dir)` applied (a break or an addition)."""
    import shutil
    d = tmp_path / "edited"
    shutil.copytree(hf_dirs / "hf_release", d)
    edit(d)
    return d


def _rewrite_shard(d, change):
    from safetensors.numpy import load_file
    index = json.load(open(d / "model.safetensors.index.json"))
    fname = sorted(set(index["weight_map"].values()))[0]
    tensors = load_file(str(d / fname))
    change(tensors, index, fname)
    save_file(tensors, str(d / fname))
    json.dump(index, open(d / "model.safetensors.index.json", "w"))


def _drop(name):
    def change(tensors, index, fname):
        del tensors[name]
        del index["weight_map"][name]
    return change


def _first_name(d):
    index = json.load(open(d / "model.safetensors.index.json"))
    fname = sorted(set(index["weight_map"].values()))[0]
    return sorted(n for n, f in index["weight_map"].items() if f == fname)[0]


def test_missing_tensor_is_named(hf_dirs, tmp_path, capsys):
    victim = {}

    def edit(d):
        victim["name"] = _first_name(d)
        _rewrite_shard(d, _drop(victim["name"]))
    d = _edited_copy(hf_dirs, tmp_path, edit)
    out = tmp_path / "ckpt"
    assert convert.main(["--hf_dir", str(d), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "missing tensor" in err and victim["name"] in err
    assert not out.exists() and not list(tmp_path.glob("ckpt*"))


def test_unexpected_tensor_is_named(hf_dirs, tmp_path, capsys):
    def edit(d):
        def change(tensors, index, fname):
            tensors["model.layers.1.mlp.experts.99.up_proj.weight"] = np.zeros((4, 4), np.float32)
            index["weight_map"]["model.layers.1.mlp.experts.99.up_proj.weight"] = fname
        _rewrite_shard(d, change)
    d = _edited_copy(hf_dirs, tmp_path, edit)
    assert convert.main(["--hf_dir", str(d), "--out", str(tmp_path / "ckpt")]) == 2
    err = capsys.readouterr().err
    assert "unexpected tensor" in err and "model.layers.1.mlp.experts.99.up_proj.weight" in err
    assert not list(tmp_path.glob("ckpt*"))


def test_wrong_shape_is_named(hf_dirs, tmp_path, capsys):
    victim = {}

    def edit(d):
        victim["name"] = _first_name(d)

        def change(tensors, index, fname):
            tensors[victim["name"]] = np.zeros((3,) + tensors[victim["name"]].shape, np.float32)
        _rewrite_shard(d, change)
    d = _edited_copy(hf_dirs, tmp_path, edit)
    assert convert.main(["--hf_dir", str(d), "--out", str(tmp_path / "ckpt")]) == 2
    err = capsys.readouterr().err
    assert "wrong shape" in err and victim["name"] in err
    assert not list(tmp_path.glob("ckpt*"))


def test_truncated_shard_is_named(hf_dirs, tmp_path, capsys):
    def edit(d):
        shard = sorted(d.glob("*.safetensors"))[1]
        data = shard.read_bytes()
        shard.write_bytes(data[:len(data) - 100])
        edit.shard = shard.name
    d = _edited_copy(hf_dirs, tmp_path, edit)
    assert convert.main(["--hf_dir", str(d), "--out", str(tmp_path / "ckpt")]) == 2
    err = capsys.readouterr().err
    assert "truncated" in err and edit.shard in err
    assert not list(tmp_path.glob("ckpt*"))


def test_existing_output_is_not_touched(hf_dirs, tmp_path, capsys):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    assert convert.main(["--hf_dir", str(hf_dirs / "hf_release"), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "user data"


def _add_mtp_shard(d, cfg):
    """Adds a release-style MTP layer (index num_hidden_layers) as its own shard: a copy of the last
    MoE layer plus enorm, hnorm, eh_proj, embed_tokens and shared_head, all with random values."""
    from safetensors.numpy import load_file
    index = json.load(open(d / "model.safetensors.index.json"))
    last, mtp = f"model.layers.{cfg.num_hidden_layers - 1}.", f"model.layers.{cfg.num_hidden_layers}."
    rng = np.random.RandomState(5)
    tensors = {}
    for fname in sorted(set(index["weight_map"].values())):
        for name, w in load_file(str(d / fname)).items():
            if name.startswith(last):
                tensors[mtp + name[len(last):]] = w + rng.normal(0, 0.01, w.shape).astype(np.float32)
    dd, v = cfg.hidden_size, cfg.vocab_size
    for name, shape in [("enorm.weight", (dd,)), ("hnorm.weight", (dd,)), ("eh_proj.weight", (dd, 2 * dd)),
                        ("embed_tokens.weight", (v, dd)), ("shared_head.norm.weight", (dd,)),
                        ("shared_head.head.weight", (v, dd))]:
        tensors[mtp + name] = rng.normal(0, 0.02, shape).astype(np.float32)
    save_file(tensors, str(d / "model-mtp.safetensors"))
    index["weight_map"].update({n: "model-mtp.safetensors" for n in tensors})
    json.dump(index, open(d / "model.safetensors.index.json", "w"))
    return tensors


def test_mtp_layer_kept_by_default_and_dropped_on_request(hf_dirs, tmp_path):
    from r1jax.models import checkpoint
    added = {}
    d = _edited_copy(hf_dirs, tmp_path, lambda d: added.update(_add_mtp_shard(d, CFG)))
    quiet = lambda s: None
    kept = convert.convert(str(d), str(tmp_path / "kept"), dtype="float32", log=quiet)
    assert kept.with_mtp
    model = checkpoint.load_model(str(tmp_path / "kept"))
    n = CFG.num_hidden_layers
    eh = added[f"model.layers.{n}.eh_proj.weight"]
    np.testing.assert_array_equal(np.asarray(model.mtp.eh_proj[...]), eh.T)
    up3 = added[f"model.layers.{n}.mlp.experts.3.up_proj.weight"]
    np.testing.assert_array_equal(np.asarray(model.mtp.block.mlp.up[...])[3], up3.T)

    dropped = convert.convert(str(d), str(tmp_path / "dropped"), drop_mtp=True, log=quiet)
    assert not dropped.with_mtp and dropped.param_dtype == "bfloat16"
    model = checkpoint.load_model(str(tmp_path / "dropped"))
    assert not hasattr(model, "mtp")
    assert model.embed[...].dtype == jnp.bfloat16 and model.moe_layers.mlp.router_bias[...].dtype == jnp.float32


def test_batching_does_not_change_the_score(hf_dirs, data, tmp_path):
    """Rows of different lengths scored one by one, or padded together in one batch, agree."""
    from r1jax.models import checkpoint
    from r1jax.data import read_scoring_rows
    from r1jax.eval.evaluate import score
    convert.convert(str(hf_dirs / "hf_release"), str(tmp_path / "ckpt"), dtype="float32",
                    log=lambda s: None)
    model = checkpoint.load_model(str(tmp_path / "ckpt"))
    rows = read_scoring_rows(data[0])
    assert len({len(r) for r in rows}) == len(rows)  # all lengths differ
    alone, together = score(model, rows, batch_size=1), score(model, rows, batch_size=len(rows))
    assert alone["tokens"] == together["tokens"] == data[2]
    assert abs(alone["loss"] - together["loss"]) <= 1e-6 * alone["loss"]
    assert abs(alone["accuracy"] - together["accuracy"]) < 1e-9
