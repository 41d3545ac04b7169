"""A frozen FP8 base (issue 15): `convert --dtype float8_e4m3fn` keeps the decoder layers' projections
as the release's e4m3 codes and 128x128 scales (ModelConfig.fp8_weights), everything else bf16.

Oracles: the release written by tests/release_writer.py with its own NumPy quantizer, its dequantized
float32 values (np.kron) in transformers' float32 DeepseekV3ForCausalLM, and a block recipe written
out below in plain NumPy (amax / 448 per 128x128 block)."""
import contextlib
import io
import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.torch import save_file

from hf_oracle import hf_loss_and_logits, hf_state, r1jax_params, random_hf_model
from release_writer import dequantize_ref, fp8_release, quantize_blocks, write_release
from r1jax.models import checkpoint
from r1jax.interop import convert, export, resumable, safetensors_io
from r1jax.eval import evaluate
from r1jax.inference import generate
from r1jax.data import load_tokenizer
from r1jax.inference.generate import GenerationSettings, generate_texts
from r1jax.models.deepseek_v3.transformer import Transformer
from r1jax.models.registry import preset
from r1jax.models.deepseek_v3.config import to_hf_dict as to_hf
from test_convert_fp8 import CFG
from task_calls import TaskCalls
from test_export import tensors_of

QUIET = lambda s: None
E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
# The release has kv_a_proj_with_mqa in FP8 too (its [576, 7168] codes, [5, 56] scales).
RELEASE_FP8 = ("_proj.weight", "_proj_with_mqa.weight")
FP8 = "float8_e4m3fn"


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return fp8_release(tmp_path_factory.mktemp("fp8base"), CFG, seed=5, fp8_suffixes=RELEASE_FP8)


@pytest.fixture(scope="module")
def fp8_ckpt(release, tmp_path_factory):
    """The release converted by the CLI entry point with --dtype float8_e4m3fn."""
    out = str(tmp_path_factory.mktemp("fp8ckpt") / "ckpt")
    assert convert.main(["--hf_dir", release[0], "--out", out, "--dtype", FP8, "--workers", "2"]) == 0
    return out


def recipe(w: np.ndarray):
    """[M, N] float32 -> (codes e4m3, scale [ceil(M/128), ceil(N/128)] float32): per block, scale =
    amax / 448 (1 for an all-zero block), codes = w / scale rounded to nearest even, clipped to 448."""
    m, n = w.shape
    s = np.ones((-(-m // 128), -(-n // 128)), np.float32)
    q = np.zeros((m, n), E4M3)
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            blk = w[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
            amax = np.abs(blk).max()
            if amax > 0:
                s[i, j] = amax / np.float32(448)
            q[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = np.clip(blk / s[i, j], -448, 448).astype(E4M3)
    return q, s


def flat(ckpt) -> dict[str, np.ndarray]:
    params = checkpoint.numpy_params(checkpoint.load_model(ckpt))
    return {".".join(k): v for k, v in checkpoint._flatten(params)}


def bits(x):
    return np.asarray(x).view(f"u{np.asarray(x).dtype.itemsize}")


def test_checkpoint_holds_release_codes_and_scales_and_bf16_rest(release, fp8_ckpt):
    """Oracle: the release's own bytes (read from its shards). Codes at their path are the release's
    codes transposed to [in, out] (heads split where the model splits them), PATH_scale its scale_inv
    swapped; norms/embeddings/router/head bf16, router bias float32; the MTP block dequantized to bf16
    with its source scales kept in fp8_scales.safetensors; r1jax.json records fp8_weights."""
    src = safetensors_io.index_checkpoint(release[0])
    got = flat(fp8_ckpt)
    meta = json.load(open(os.path.join(fp8_ckpt, "r1jax.json")))
    assert meta["fp8_weights"] is True and meta["format"] == 1 and meta["param_dtype"] == "bfloat16"
    assert checkpoint.read_config(fp8_ckpt).fp8_weights

    def hf(name):
        return safetensors_io.load(src[name]), safetensors_io.load(src[name + "_scale_inv"])
    h, k = CFG.num_attention_heads, CFG.qk_head_dim
    cases = {  # r1jax path, index -> HF name, [in, out] view of the r1jax codes
        ("dense_layers.attn.kv_a", 0): ("model.layers.0.self_attn.kv_a_proj_with_mqa.weight", lambda c: c),
        ("dense_layers.mlp.down", 0): ("model.layers.0.mlp.down_proj.weight", lambda c: c),
        ("dense_layers.attn.q_b", 0): ("model.layers.0.self_attn.q_b_proj.weight",
                                       lambda c: c.reshape(-1, h * k)),
        ("moe_layers.attn.o", 1): ("model.layers.2.self_attn.o_proj.weight",
                                   lambda c: c.reshape(-1, CFG.hidden_size)),
        ("moe_layers.mlp.shared.up", 0): ("model.layers.1.mlp.shared_experts.up_proj.weight", lambda c: c),
    }
    for (path, layer), (name, view) in cases.items():
        q, s = hf(name)
        np.testing.assert_array_equal(bits(view(got[path][layer]).T), bits(q), err_msg=path)
        np.testing.assert_array_equal(got[path + "_scale"][layer].T, s, err_msg=path)
    for j in range(CFG.n_routed_experts):
        q, s = hf(f"model.layers.2.mlp.experts.{j}.gate_proj.weight")
        np.testing.assert_array_equal(bits(got["moe_layers.mlp.gate"][1, j].T), bits(q))
        np.testing.assert_array_equal(got["moe_layers.mlp.gate_scale"][1, j].T, s)
    codes = {p for p, v in got.items() if v.dtype == E4M3}
    attn = ("attn.q_a", "attn.q_b", "attn.kv_a", "attn.kv_b", "attn.o")
    assert codes == {f"dense_layers.{n}" for n in attn + ("mlp.gate", "mlp.up", "mlp.down")} | {
        f"moe_layers.{n}" for n in attn + ("mlp.gate", "mlp.up", "mlp.down", "mlp.shared.gate",
                                           "mlp.shared.up", "mlp.shared.down")}
    assert {p + "_scale" for p in codes} == {p for p in got if p.endswith("_scale")}
    assert got["moe_layers.mlp.router"].dtype == got["embed"].dtype == ml_dtypes.bfloat16
    assert got["moe_layers.mlp.router_bias"].dtype == np.float32
    mtp = f"model.layers.{CFG.num_hidden_layers}.mlp.experts.1.down_proj.weight"
    np.testing.assert_array_equal(got["mtp.block.mlp.down"][1].T,
                                  dequantize_ref(*hf(mtp)).astype(ml_dtypes.bfloat16))
    kept = safetensors_io.read_header(os.path.join(fp8_ckpt, checkpoint.SCALES_NAME))
    assert kept and all(n.startswith(f"model.layers.{CFG.num_hidden_layers}.") for n in kept)


def test_forward_equals_transformers_on_the_dequantized_values(release, fp8_ckpt, tmp_path):
    """Oracle: transformers' float32 model holding release_writer's dequantized float32 values.
    float32 compute: `python -m r1jax.evaluate` on the FP8 checkpoint scores the loss to 1e-5
    (relative; the weights are the same float32 numbers, only summation order differs).
    bfloat16 compute (the FP8 model's own numerics): each logit within 2% of the largest |logit|,
    the mean error within 0.5%. bf16 keeps 8 significant bits (a rounding moves a value by up to
    2^-9 relative); the weights are dequantized then rounded to bf16 once, and every matmul, norm
    and residual add of the 3 layers rounds its output, so a logit carries a few such roundings of
    values near the largest logit's size: 2% is ~10 roundings' worth (measured: 1.0% max, 0.17%
    mean; a bf16 checkpoint of the same release computes the very same bf16 logits)."""
    hf_dir, hf_model = release
    rng = np.random.RandomState(0)
    rows = [rng.randint(0, CFG.vocab_size, n).tolist() for n in (40, 17, 64)]
    ids = np.zeros((len(rows), 64), np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    with torch.no_grad():
        ref_loss, ref_logits = hf_loss_and_logits(hf_model, ids, mask)
    ref_loss, ref_logits = ref_loss.item(), ref_logits.numpy()

    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps({"input_ids": r}) + "\n" for r in rows))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert evaluate.main(["--checkpoint", fp8_ckpt, "--data", str(data), "--dtype", "float32",
                              "--batch_size", "3", "--json"]) == 0
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    assert abs(result["loss"] - ref_loss) <= 1e-5 * ref_loss, (result["loss"], ref_loss)

    model = checkpoint.load_model(fp8_ckpt, checkpoint.read_config(fp8_ckpt, dtype="bfloat16"))
    assert model.cfg.fp8_weights and model.moe_layers.mlp.gate[...].dtype == jnp.float8_e4m3fn
    logits, _ = jax.jit(lambda m, t, s: m(t, segment_ids=s))(model, jnp.asarray(ids, jnp.int32),
                                                             jnp.asarray(mask, jnp.int32))
    logits = np.asarray(logits, np.float32)
    keep = mask.astype(bool)
    top = np.abs(ref_logits[keep]).max()
    err = np.abs(logits[keep] - ref_logits[keep])
    assert err.max() <= 0.02 * top and err.mean() <= 0.005 * top, (err.max(), err.mean(), top)


def test_converted_then_exported_fp8_is_the_release_bit_for_bit(release, fp8_ckpt, tmp_path):
    """Oracle: the release's bytes. export --fp8 writes every tensor (codes, scales, bf16 and the
    float32 router bias, the MTP layer's too) exactly as released; small row blocks take the
    128-row band paths of both directions. Without --fp8, every tensor is the release's
    dequantized value (release_writer.dequantize_ref) rounded to bf16, the router bias float32."""
    hf_dir = release[0]
    ckpt = tmp_path / "ckpt"
    convert.convert(hf_dir, str(ckpt), dtype=FP8, workers=2, block_bytes=20_000, log=QUIET)
    src = tensors_of(hf_dir)
    assert export.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "fp8"), "--fp8"]) == 0
    export.export(fp8_ckpt, str(tmp_path / "fp8b"), fp8_weights=True, block_bytes=20_000, workers=2,
                  log=QUIET)
    for out in ("fp8", "fp8b"):
        got = tensors_of(tmp_path / out)
        assert sorted(got) == sorted(src)
        assert [n for n in src if got[n] != src[n]] == []

    assert export.main(["--checkpoint", fp8_ckpt, "--out", str(tmp_path / "bf16")]) == 0
    files = safetensors_io.index_checkpoint(hf_dir)
    got = safetensors_io.index_checkpoint(str(tmp_path / "bf16"))
    assert sorted(got) == sorted(n for n in files if not n.endswith("_scale_inv"))
    for name, info in files.items():
        if name.endswith("_scale_inv"):
            continue
        w = safetensors_io.load(info)
        if name + "_scale_inv" in files:
            w = dequantize_ref(w, safetensors_io.load(files[name + "_scale_inv"]))
        bias = name.endswith("e_score_correction_bias")
        want = w if bias else np.asarray(w, np.float32).astype(ml_dtypes.bfloat16)
        have = safetensors_io.load(got[name])
        assert have.dtype == want.dtype, name
        np.testing.assert_array_equal(bits(have), bits(want), err_msg=name)


def test_bf16_source_is_quantized_by_the_block_recipe(tmp_path):
    """Oracle: `recipe` above on the source's bf16 values, per HF [out, in] matrix. A user's own
    bf16 export converted with --dtype float8_e4m3fn holds those codes and scales (transposed)."""
    state = hf_state(random_hf_model(CFG, seed=9))
    values = write_release(state, CFG, str(tmp_path / "hf"), shards=2, fp8_suffixes=())
    (tmp_path / "hf" / "config.json").write_text(json.dumps(to_hf(CFG)))
    convert.convert(str(tmp_path / "hf"), str(tmp_path / "ckpt"), dtype=FP8, workers=2,
                    block_bytes=20_000, log=QUIET)
    got = flat(str(tmp_path / "ckpt"))
    assert not os.path.exists(tmp_path / "ckpt" / checkpoint.SCALES_NAME)
    f = CFG.moe_intermediate_size
    cases = {  # r1jax path, index, [in, out] view -> the HF [out, in] values
        ("dense_layers.mlp.up", (0,), lambda c: c): values["model.layers.0.mlp.up_proj.weight"],
        ("dense_layers.attn.kv_b", (0,), lambda c: c.reshape(CFG.kv_lora_rank, -1)):
            values["model.layers.0.self_attn.kv_b_proj.weight"],
        ("moe_layers.attn.q_a", (1,), lambda c: c): values["model.layers.2.self_attn.q_a_proj.weight"],
        ("moe_layers.mlp.up", (0, 3), lambda c: c): values["model.layers.1.mlp.experts.gate_up_proj"][3, f:],
        ("moe_layers.mlp.down", (1, 2), lambda c: c): values["model.layers.2.mlp.experts.down_proj"][2],
    }
    for (path, idx, view), w in cases.items():
        q, s = recipe(w)
        np.testing.assert_array_equal(bits(view(got[path][idx]).T), bits(q), err_msg=path)
        np.testing.assert_array_equal(got[path + "_scale"][idx].T, s, err_msg=path)


def _fused_fp8_source(d, cfg, seed):
    """transformers' fused FP8 save format (gate_up_proj [E, 2F, D] codes with [E, ceil(2F/128),
    ceil(D/128)] scales) written with release_writer's quantizer -> {HF name: (codes, scales)}."""
    state = hf_state(random_hf_model(cfg, seed=seed))
    rng = np.random.RandomState(seed)
    stored, fp8_pairs = {}, {}
    for name, w in state.items():
        fused = name.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj"))
        if name.endswith(RELEASE_FP8) or fused:
            pairs = [quantize_blocks(m, rng) for m in (w if fused else w[None])]
            q, s = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
            q, s = (q, s) if fused else (q[0], s[0])
            stored[name], stored[name + "_scale_inv"] = q, s
            fp8_pairs[name] = (q, s)
        else:
            stored[name] = w.astype(ml_dtypes.bfloat16) if not name.endswith("correction_bias") else w
    d.mkdir()
    torch_dtype = {FP8: torch.float8_e4m3fn, "bfloat16": torch.bfloat16, "float32": torch.float32}
    save_file({k: torch.from_numpy(np.ascontiguousarray(v).view(np.uint8)).view(torch_dtype[v.dtype.name])
               .reshape(v.shape) for k, v in stored.items()}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(to_hf(cfg)))
    return fp8_pairs


@pytest.mark.parametrize("f", [256, 136])
def test_fused_gate_up_source_splits_its_scale_rows(tmp_path, f):
    """Oracle: the source's own codes and scales (release_writer's quantizer). F = 256: the halves of
    gate_up_proj are whole 128-row bands, so gate holds code rows 0:256 and scale rows 0:2, up rows
    256:512 and scale rows 2:4, unchanged. F = 136: a band straddles gate and up, so each half is the
    `recipe` of the source's dequantized rows (dequantize_ref)."""
    cfg = CFG.replace(moe_intermediate_size=f)
    pairs = _fused_fp8_source(tmp_path / "hf", cfg, seed=2)
    convert.convert(str(tmp_path / "hf"), str(tmp_path / "ckpt"), dtype=FP8, workers=2,
                    block_bytes=100_000, log=QUIET)
    got = flat(str(tmp_path / "ckpt"))
    q, s = pairs["model.layers.2.mlp.experts.gate_up_proj"]
    for j in range(cfg.n_routed_experts):
        for half, path in ((slice(0, f), "moe_layers.mlp.gate"), (slice(f, 2 * f), "moe_layers.mlp.up")):
            if f % 128 == 0:
                want_q, want_s = q[j, half], s[j, half.start // 128:half.stop // 128]
            else:
                want_q, want_s = recipe(dequantize_ref(q[j], s[j])[half])
            np.testing.assert_array_equal(bits(got[path][1, j].T), bits(want_q), err_msg=f"{path} {j}")
            np.testing.assert_array_equal(got[path + "_scale"][1, j].T, want_s, err_msg=f"{path} {j}")
    q, s = pairs["model.layers.1.mlp.experts.down_proj"]
    np.testing.assert_array_equal(bits(got["moe_layers.mlp.down"][0, 3].T), bits(q[3]))
    np.testing.assert_array_equal(got["moe_layers.mlp.down_scale"][0, 3].T, s[3])


def test_interrupted_fp8_conversion_resumes_to_the_same_checkpoint(release, fp8_ckpt, tmp_path,
                                                                   monkeypatch):
    """Oracle: the uninterrupted conversion (fp8_ckpt). A run stopped after 30 tasks resumes with
    --resume, redoing none of the journaled ones; every array, codes and scales, is bit-identical."""
    out = tmp_path / "ckpt"
    calls = TaskCalls(monkeypatch, convert, "_convert_task", crash_after=30)
    with pytest.raises(RuntimeError, match="simulated crash"):
        convert.convert(release[0], str(out), dtype=FP8, workers=1, log=QUIET)
    journal = (tmp_path / "ckpt.partial" / resumable.JOURNAL_NAME).read_text().splitlines()
    finished = {json.loads(line)["task"] for line in journal}
    assert len(finished) >= 20
    calls.resume()
    assert convert.main(["--hf_dir", release[0], "--out", str(out), "--dtype", FP8, "--resume"]) == 0
    assert not finished & set(calls.keys)
    got, want = flat(str(out)), flat(fp8_ckpt)
    assert sorted(got) == sorted(want)
    for p in want:
        np.testing.assert_array_equal(bits(got[p]), bits(want[p]), err_msg=p)


def _broken_copy(fp8_ckpt, d, edit):
    """The FP8 checkpoint's arrays, edited by `edit(flat dict)`, saved as a checkpoint whose
    r1jax.json says fp8_weights (save_model with the FP8 config)."""
    arrays = flat(fp8_ckpt)
    edit(arrays)
    checkpoint.save_model(str(d), checkpoint.read_config(fp8_ckpt), checkpoint.unflatten(arrays))
    return str(d)


@pytest.mark.parametrize("edit, message", [
    (lambda a: a.pop("moe_layers.mlp.up_scale"), "moe_layers.mlp.up_scale: missing"),
    (lambda a: a.update({"dense_layers.attn.q_b_scale": a["dense_layers.attn.q_b_scale"][:, :1]}),
     "dense_layers.attn.q_b_scale: shape [1, 1, 1], expected [1, 2, 1]"),
    (lambda a: a.update({"moe_layers.attn.o": a["moe_layers.attn.o"].astype(ml_dtypes.bfloat16)}),
     "moe_layers.attn.o: bfloat16, expected float8_e4m3fn codes"),
])
def test_broken_fp8_checkpoint_is_a_checkpoint_error_naming_the_array(fp8_ckpt, tmp_path, edit, message,
                                                                      capsys):
    """Oracle: the hand-written message. load_model and export (API and CLI) refuse an FP8
    checkpoint lacking a scale array, with a mis-shaped one, or with codes that are not float8,
    naming the array path, before reading any data; the export leaves no output."""
    d = _broken_copy(fp8_ckpt, tmp_path / "bad", edit)
    with pytest.raises(checkpoint.CheckpointError, match=message.replace("[", r"\[")):
        checkpoint.load_model(d)
    with pytest.raises(checkpoint.CheckpointError, match=message.replace("[", r"\[")):
        export.export(d, str(tmp_path / "out"), log=QUIET)
    assert export.main(["--checkpoint", d, "--out", str(tmp_path / "out"), "--fp8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not list(tmp_path.glob("out*"))


# Full vocabulary (the packaged tokenizer's ids), dimensions under one block.
TINY = preset("tiny", dtype="float32", num_hidden_layers=2, n_routed_experts=4, n_group=2, topk_group=1)


def test_generate_cli_on_an_fp8_checkpoint_is_greedy_on_the_dequantized_model(tmp_path):
    """Oracle: a plain float32 model (no FP8 variables) holding release_writer's dequantized values;
    each token `python -m r1jax.generate` writes from the FP8 checkpoint (float32 compute) is the
    argmax of that model's forward over what precedes it."""
    state = hf_state(random_hf_model(TINY, seed=6))
    values = write_release(state, TINY, str(tmp_path / "hf"), shards=1, fp8_suffixes=RELEASE_FP8)
    (tmp_path / "hf" / "config.json").write_text(json.dumps(to_hf(TINY)))
    ckpt = str(tmp_path / "ckpt")
    convert.convert(str(tmp_path / "hf"), ckpt, dtype=FP8, log=QUIET)
    (tmp_path / "in.jsonl").write_text(json.dumps({"prompt": "Write a haiku about JAX."}) + "\n")
    assert generate.main(["--checkpoint", ckpt, "--input", str(tmp_path / "in.jsonl"), "--output",
                          str(tmp_path / "out.jsonl"), "--temperature", "0", "--max_new_tokens", "6",
                          "--dtype", "float32", "--batch_size", "1", "--steps_per_call", "1"]) == 0
    gen = json.loads((tmp_path / "out.jsonl").read_text())["generation"]
    tok = load_tokenizer()
    prompt = tok.encode(generate.render_prompt("Write a haiku about JAX."), add_special_tokens=False)
    model, _ = generate.load(ckpt, "float32")  # the CLI's loader and generation, for the tokens
    assert model.moe_layers.mlp.gate[...].dtype == jnp.float8_e4m3fn
    (ours,) = generate_texts(model, tok, ["Write a haiku about JAX."], GenerationSettings(
        max_new_tokens=6, temperature=0.0, batch_size=1, steps_per_call=1))
    tokens = ours["tokens"]
    assert gen["n_tokens"] == len(tokens) >= 1 and gen["text"] == ours["text"]

    model = nnx.eval_shape(lambda: Transformer(TINY, rngs=nnx.Rngs(0)))
    graphdef, st = nnx.split(model)
    nnx.replace_by_pure_dict(st, jax.tree.map(jnp.asarray, r1jax_params(TINY, values)))
    seq = jnp.asarray([prompt + tokens], jnp.int32)
    logits, _ = nnx.merge(graphdef, st)(seq, segment_ids=jnp.ones_like(seq))
    want = np.argmax(np.asarray(logits)[0, len(prompt) - 1:len(prompt) - 1 + len(tokens)], -1)
    np.testing.assert_array_equal(want, tokens)
