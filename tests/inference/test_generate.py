"""Generation on MLA's latent cache against independent references.

- greedy tokens equal transformers' greedy `generate` (float32, each prompt alone) for 32 new tokens,
  while r1jax runs the prompts as one left-padded batch of different lengths;
- every decode step's logits equal a full recompute by the
  training forward (Transformer.__call__ on the right-padded sequences so far);
- sharded over an fsdp x expert x tensor mesh (routed experts under shard_map), the same tokens
  as on one device;
- a prompt fits by its own length + max_new_tokens (not its padded batch width); one past the
  model's positions raises PromptTooLong or, skipped, leaves the others' tokens as they were;
- the CLI end to end on a tiny checkpoint with the real tokenizer: --input/--output rows (the input
  row unchanged + one "generation" object, also when the row has fields named like the outputs),
  greedy tokens equal the argmax of a full forward, stop strings, --prompt streaming, a training
  run, malformed rows named by file:line, an over-long prompt skipped and counted (--input) or one
  line (--prompt), --input a directory or missing: one line.
"""
import dataclasses
import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from hf_oracle import hf_state, r1jax_params, random_hf_model
from r1jax.models import checkpoint
from r1jax.inference import generate
from r1jax.parallel import sharding
from r1jax.data import load_tokenizer
from r1jax.inference.generate import GenerationSettings, generate_ids, generate_texts
from r1jax.models.deepseek_v3.transformer import Transformer
from r1jax.models.registry import preset
from r1jax.models.deepseek_v3.latent_cache import bytes_per_token, init_cache

# Both LoRAs, grouped routing with a router bias, YaRN past its original length, 1 dense + 2 MoE.
CFG = preset("tiny", dtype="float32", vocab_size=512, rope_factor=4.0,
             rope_original_max_position_embeddings=32, max_position_embeddings=512)
LENGTHS = (7, 19, 12)
NEW = 32


@pytest.fixture(scope="module")
def case():
    hf = random_hf_model(CFG, seed=11)
    model = nnx.eval_shape(lambda: Transformer(CFG, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, r1jax_params(CFG, hf_state(hf))))
    rng = np.random.RandomState(8)  # no end-of-sentence (id 1) within the greedy tokens
    prompts = [rng.randint(2, CFG.vocab_size, n).tolist() for n in LENGTHS]
    return hf, nnx.merge(graphdef, state), prompts


@pytest.fixture(scope="module")
def greedy(case):
    _, model, prompts = case
    s = GenerationSettings(max_new_tokens=NEW, temperature=0.0, batch_size=4, steps_per_call=8)
    return generate_ids(model, prompts, s, eos_token_ids=(1,))


def test_greedy_equals_transformers_generate(case, greedy):
    hf, _, prompts = case
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: threads only add overhead on a shared CPU
    try:
        refs = []
        for p in prompts:
            with torch.no_grad():
                out = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                  do_sample=False, max_new_tokens=NEW, eos_token_id=1, pad_token_id=0)
            refs.append(out[0, len(p):].tolist())
    finally:
        torch.set_num_threads(threads)
    for ref, ours in zip(refs, greedy):
        assert len(ours["tokens"]) >= 32 and ours["finish_reason"] == "length"
        assert ours["tokens"] == ref


def test_decode_steps_equal_full_forward(case):
    """Teacher-forced: prompts of 7/19/12 tokens left-padded, then 6 decode steps; each step's
    logits against the training forward over the whole sequence (right-padded)."""
    _, model, prompts = case
    graphdef, state = nnx.split(model)
    rng = np.random.RandomState(8)
    extra = [rng.randint(2, CFG.vocab_size, 6).tolist() for _ in prompts]
    t = max(LENGTHS)
    tokens = np.zeros((3, t), np.int32)
    start = np.array([t - n for n in LENGTHS], np.int32)
    for b, p in enumerate(prompts):
        tokens[b, start[b]:] = p

    @jax.jit
    def prefill(state, tokens, start):
        return nnx.merge(graphdef, state).prefill(tokens, init_cache(CFG, 3, t + 6, start))

    @jax.jit
    def decode(state, toks, slot, cache):
        return nnx.merge(graphdef, state).decode(toks, slot, cache)

    @jax.jit
    def forward(state, toks, seg):
        return nnx.merge(graphdef, state)(toks, segment_ids=seg)[0]

    full = np.zeros((3, t + 6), np.int32)
    seg = np.zeros_like(full)
    for b, (p, e) in enumerate(zip(prompts, extra)):
        full[b, :len(p) + 6], seg[b, :len(p) + 6] = p + e, 1
    ref = np.asarray(forward(state, full, seg))  # [B, T, V]
    scale = np.abs(ref).max()

    logits, cache = prefill(state, tokens, start)
    assert cache.latent.shape == (CFG.num_hidden_layers, 3, t + 6, CFG.kv_lora_rank)
    assert cache.k_rope.shape == (CFG.num_hidden_layers, 3, t + 6, CFG.qk_rope_head_dim)
    want = np.stack([ref[b, n - 1] for b, n in enumerate(LENGTHS)])
    np.testing.assert_allclose(np.asarray(logits), want, atol=2e-5 * scale)
    done = 0
    for width in (1,) * 6:
        toks = np.array([e[done:done + width] for e in extra], np.int32)
        logits, cache = decode(state, toks, t + done, cache)
        want = np.stack([ref[b, n + done:n + done + width] for b, n in enumerate(LENGTHS)])
        np.testing.assert_allclose(np.asarray(logits), want, atol=2e-5 * scale, rtol=0)
        done += width


def test_sharded_equals_one_device(case, greedy):
    _, model, prompts = case
    mesh = sharding.make_mesh(data=1, fsdp=2, expert=2, tensor=2)  # experts under shard_map
    graphdef, state = nnx.split(model)
    state = jax.device_put(state, sharding.variable_shardings(state, mesh))
    s = GenerationSettings(max_new_tokens=NEW, temperature=0.0, batch_size=4, steps_per_call=8)
    out = generate_ids(nnx.merge(graphdef, state), prompts, s, eos_token_ids=(1,), mesh=mesh)
    assert [o["tokens"] for o in out] == [g["tokens"] for g in greedy]


def test_sampling_reproduces_and_rows_do_not_depend_on_their_batch(case):
    _, model, prompts = case
    # temperature 0.1: the logits (std ~0.16 for these random weights) still decide, not only the key
    s = GenerationSettings(max_new_tokens=8, temperature=0.1, top_p=0.9, seed=3, batch_size=4)
    other = prompts[:2] + [prompts[2][::-1]]  # same shapes, a different third prompt
    a, again, b = (generate_ids(model, p, s, eos_token_ids=(1,)) for p in (prompts, prompts, other))
    assert [o["tokens"] for o in a] == [o["tokens"] for o in again]
    assert [o["tokens"] for o in a[:2]] == [o["tokens"] for o in b[:2]] and a[2] != b[2]
    seeded = generate_ids(model, prompts, dataclasses.replace(s, seed=4), eos_token_ids=(1,))
    assert all(x["tokens"] != y["tokens"] for x, y in zip(a, seeded))


def test_prompt_fits_by_its_own_length_and_overlong_ones_are_skipped(case, greedy):
    """CFG has 512 positions. A 500-token prompt + 8 new fits (its bucket, 512 slots, does not count):
    oracle, each token is the argmax of the training forward over what preceded it. A 600-token one
    does not: PromptTooLong naming prompts[1] and the lengths, or with skip_too_long a "skipped"
    result while prompt 2 (a 7-token prompt of `greedy`, there batched with others) keeps its tokens."""
    _, model, prompts = case
    rng = np.random.RandomState(5)
    fits, over = (rng.randint(2, CFG.vocab_size, n).tolist() for n in (500, 600))
    s = GenerationSettings(max_new_tokens=8, temperature=0.0, batch_size=4, steps_per_call=8)
    with pytest.raises(generate.PromptTooLong,
                       match=r"^prompts\[1\]: prompt of 600 tokens \+ max_new_tokens 8 = 608 > the model's "
                             r"max_position_embeddings 512$"):
        generate_ids(model, [fits, over, prompts[0]], s, eos_token_ids=(1,))
    out = generate_ids(model, [fits, over, prompts[0]], s, eos_token_ids=(1,), skip_too_long=True)
    assert out[1] == {"tokens": [], "finish_reason": "skipped",
                      "error": "prompt of 600 tokens + max_new_tokens 8 = 608 > the model's "
                               "max_position_embeddings 512"}
    assert out[2]["tokens"] == greedy[0]["tokens"][:8]
    assert out[0]["finish_reason"] == "length" and len(out[0]["tokens"]) == 8
    graphdef, state = nnx.split(model)
    seq = jnp.asarray([fits + out[0]["tokens"]], jnp.int32)
    logits = nnx.merge(graphdef, state)(seq, segment_ids=jnp.ones_like(seq))[0]
    np.testing.assert_array_equal(np.argmax(np.asarray(logits[0, 499:507]), -1), out[0]["tokens"])


def test_cache_is_576_values_per_layer_token_for_r1():
    b = bytes_per_token(preset("r1-671b"), 2)
    assert b["latent"] == 61 * (512 + 64) * 2
    assert b["per_head_kv"] == 61 * 128 * (192 + 128) * 2


# ---- the CLI on a tiny checkpoint with the real tokenizer ------------------------------------------

TINY = preset("tiny", dtype="float32", num_hidden_layers=2, n_routed_experts=4, n_group=2, topk_group=1)
ROWS = [{"prompt": "Write a haiku about JAX.", "id": 7},
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "What is 2+2?"}], "category": "math"},
        {"prompt": "def add(a, b):"}]


# The shapes --prompt streams with (batch 1, one step per call): one compilation for every CLI test;
# a subprocess with these finds them in the session's compilation cache (tests/conftest.py).
GREEDY_ARGS = ["--temperature", "0", "--max_new_tokens", "12", "--dtype", "float32", "--batch_size", "1",
               "--steps_per_call", "1"]
GREEDY = GenerationSettings(max_new_tokens=12, temperature=0.0, batch_size=1, steps_per_call=1)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """Random weights drawn in NumPy (an eager nnx init of the 129,280-row vocabulary is slow)."""
    d = tmp_path_factory.mktemp("gen") / "ckpt"
    rng = np.random.RandomState(3)
    params = {}
    for path, s in checkpoint.param_shapes(TINY).items():
        std, mean = (0.1, 1.0) if path.endswith("scale") else (0.1, 0.0) if "bias" in path else (0.02, 0.0)
        params[path] = (mean + std * rng.standard_normal(s.shape)).astype(s.dtype)
    checkpoint.save_model(str(d), TINY, checkpoint.unflatten(params))
    return str(d)


@pytest.fixture(scope="module")
def cli_out(tiny_ckpt, tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    with open(d / "in.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in ROWS)
    args = ["--checkpoint", tiny_ckpt, "--input", str(d / "in.jsonl"), "--output", str(d / "out.jsonl"),
            *GREEDY_ARGS]
    assert generate.main(args) == 0
    return [json.loads(line) for line in open(d / "out.jsonl")]


def test_cli_rows_keep_fields_and_are_greedy(tiny_ckpt, cli_out):
    tok = load_tokenizer()
    model, _ = generate.load(tiny_ckpt, "float32")
    ours = generate_texts(model, tok, [r.get("prompt", r.get("messages")) for r in ROWS],
                          GenerationSettings(max_new_tokens=12, temperature=0.0, batch_size=1,
                                                             steps_per_call=1))
    graphdef, state = nnx.split(model)
    prompts = [tok.encode(generate.render_prompt(r.get("prompt", r.get("messages"))), add_special_tokens=False)
               for r in ROWS]
    # Independent check: each generated token is the argmax of a full forward over what preceded it
    # (the training forward on the right-padded batch of prompt + generated tokens).
    seqs = [p + o["tokens"] for p, o in zip(prompts, ours)]
    full = np.zeros((len(seqs), max(map(len, seqs))), np.int32)
    seg = np.zeros_like(full)
    for b, q in enumerate(seqs):
        full[b, :len(q)], seg[b, :len(q)] = q, 1
    logits, _ = nnx.merge(graphdef, state)(jnp.asarray(full), segment_ids=jnp.asarray(seg))
    for row, out, o, prompt, lg in zip(ROWS, cli_out, ours, prompts, np.asarray(logits)):
        assert out == {**row, "generation": out["generation"]}  # the input's fields, one object added
        gen = out["generation"]
        assert list(gen) == ["text", "reasoning", "answer", "n_tokens", "finish_reason"]
        assert gen["finish_reason"] in ("stop", "length")
        assert gen["text"] == o["text"] and gen["n_tokens"] == len(o["tokens"])
        assert gen["text"] == tok.decode([t for t in o["tokens"] if t != tok.eos_token_id])
        assert (gen["reasoning"], gen["answer"]) == generate.split_output(gen["text"])
        assert tok.decode(prompt).endswith("<｜Assistant｜><think>\n")
        n = len(o["tokens"])
        np.testing.assert_array_equal(np.argmax(lg[len(prompt) - 1:len(prompt) - 1 + n], -1), o["tokens"])


def test_stop_string_cuts_text_and_ends_generation(tiny_ckpt, cli_out):
    tok = load_tokenizer()
    model, _ = generate.load(tiny_ckpt, "float32")
    full = cli_out[0]["generation"]["text"]
    stop = full[4:7]
    assert stop and full.find(stop) >= 1
    out = generate_texts(model, tok, [ROWS[0]["prompt"]], GenerationSettings(
        max_new_tokens=12, temperature=0.0, batch_size=1, steps_per_call=1, stop=(stop,)))[0]
    assert out["text"] == full[:full.find(stop)]
    assert out["finish_reason"] == "stop" and out["n_tokens"] < 12


def test_prompt_streams_the_same_text(tiny_ckpt, cli_out, capsys):
    args = ["--checkpoint", tiny_ckpt, "--prompt", ROWS[0]["prompt"], "--temperature", "0",
            "--max_new_tokens", "12", "--dtype", "float32"]
    assert generate.main(args) == 0
    assert capsys.readouterr().out == cli_out[0]["generation"]["text"] + "\n"


def test_training_run_generates_like_its_params(tiny_ckpt, cli_out, tmp_path):
    """A trainer's checkpoint (RUN/checkpoints/STEP/state, RUN/model) resolves as export does."""
    from r1jax.train.checkpoints import RunCheckpoints
    model, _ = generate.load(tiny_ckpt, "float32")
    _, params, rest = nnx.split(model, nnx.Param, ...)
    checkpoint.write_meta(str(tmp_path / "run" / "model"), TINY)
    ck = RunCheckpoints(str(tmp_path / "run"), keep=1, log=lambda s: None)
    state = {"params": nnx.to_pure_dict(params), "rest": nnx.to_pure_dict(rest),
             "opt_state": {"mu": jnp.zeros((3,))}}
    ck.save(5, state, {"step": 5})
    ck.wait()
    ck.close()
    mesh = generate.parse_mesh("fsdp=2,tensor=2")  # data takes the other 2 of 8 devices
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "expert": 1, "tensor": 2}
    loaded, meta_dir = generate.load(str(tmp_path / "run"), "float32", mesh)
    assert meta_dir.endswith("model")
    want = jax.tree.leaves(sharding.variable_shardings(nnx.state(loaded), mesh))
    for a, b, sh in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(loaded)), want):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert b.sharding == sh
    with pytest.raises(ValueError, match="AXIS=N"):
        generate.parse_mesh("model=2")


def test_malformed_input_names_file_and_line(tiny_ckpt, tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"messages": [{"role": "robot", "content": "x"}]})
                    + "\n")
    args = ["--checkpoint", tiny_ckpt, "--input", str(path), "--output", str(tmp_path / "o.jsonl")]
    assert generate.main(args) == 2
    err = capsys.readouterr().err
    assert f"{path}:2" in err and "robot" in err
    path.write_text("\n" + json.dumps({"completion": "no prompt"}) + "\n")
    assert generate.main(args) == 2
    assert f"{path}:2" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


# ---- what generation adds never replaces an input field; prompts too long for the model ----------

ADDED_NAMES = {"text": "t", "reasoning": "r", "answer": "moon dog hill", "n_tokens": -1,
               "finish_reason": "f", "error": "e", "tokens": [1, 2]}  # every name generation writes
LONG_WORDS = 1100  # "word " x 1100 renders to over 1100 tokens: past TINY's 1024 positions


def _run_cli(*args: str):
    """`python -m r1jax.generate ARGS` in a subprocess -> CompletedProcess (text)."""
    return subprocess.run([sys.executable, "-m", "r1jax.generate", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def cli_mixed(tiny_ckpt, tmp_path_factory):
    """The CLI in a subprocess on: a row holding every name generation adds, a prompt longer than the
    model's positions, and ROWS[0] -> (input rows, output rows, CompletedProcess)."""
    d = tmp_path_factory.mktemp("mixed")
    rows = [{"prompt": "reverse: hill dog moon", **ADDED_NAMES}, {"prompt": "word " * LONG_WORDS, "id": "long"},
            ROWS[0]]
    with open(d / "in.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    proc = _run_cli("--checkpoint", tiny_ckpt, "--input", str(d / "in.jsonl"), "--output",
                    str(d / "out.jsonl"), *GREEDY_ARGS)
    assert proc.returncode == 0, proc.stderr
    return rows, [json.loads(line) for line in open(d / "out.jsonl")], proc


def test_cli_keeps_input_fields_named_like_the_outputs(tiny_ckpt, cli_mixed):
    """Oracle: the output row equals the input row, every field unchanged (hand-written), plus a
    "generation" object equal to generate_texts' result for that prompt (the Python path)."""
    rows, outs, _ = cli_mixed
    assert outs[0] == {**rows[0], "generation": outs[0]["generation"]}
    assert outs[0]["answer"] == "moon dog hill" and outs[0]["tokens"] == [1, 2]
    model, _ = generate.load(tiny_ckpt, "float32")
    want = generate_texts(model, load_tokenizer(), [rows[0]["prompt"]], GREEDY)[0]
    assert outs[0]["generation"] == {k: want[k] for k in ("text", "reasoning", "answer", "n_tokens",
                                                          "finish_reason")}
    assert want["n_tokens"] > 0


def test_cli_skips_an_overlong_prompt_and_generates_the_rest(cli_mixed, cli_out):
    """Oracles: the skipped row's lengths (the prompt has at least LONG_WORDS tokens, + 12 new, against
    TINY's 1024 positions); the row after it generates exactly what it did in a file without the long
    row (cli_out, itself checked against a full forward); stderr names file:line and the count."""
    rows, outs, proc = cli_mixed
    assert "Traceback" not in proc.stderr
    assert len(outs) == 3 and outs[1] == {**rows[1], "generation": outs[1]["generation"]}
    gen = outs[1]["generation"]
    assert {k: gen[k] for k in ("text", "reasoning", "answer", "n_tokens", "finish_reason")} == {
        "text": "", "reasoning": "", "answer": "", "n_tokens": 0, "finish_reason": "skipped"}
    m = re.fullmatch(r"prompt of (\d+) tokens \+ max_new_tokens 12 = (\d+) > the model's "
                     r"max_position_embeddings 1024", gen["error"])
    assert m and int(m[1]) >= LONG_WORDS and int(m[2]) == int(m[1]) + 12
    assert outs[2] == cli_out[0]
    where = proc.stderr.split("generate: skipped ")[1].split(": ")[0]
    assert where.endswith("in.jsonl:2")
    assert "1 skipped (prompt too long)" in proc.stderr.splitlines()[-1]


def test_cli_input_directory_or_missing_is_one_line(tiny_ckpt, tmp_path):
    """Oracle: the OS's own words for each case, on one stderr line, exit 2."""
    for path, words in ((tmp_path, "is a directory"), (tmp_path / "absent.jsonl", "no such file")):
        proc = _run_cli("--checkpoint", tiny_ckpt, "--input", str(path), "--output", str(tmp_path / "o.jsonl"))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and str(path) in proc.stderr
        assert words in proc.stderr.lower()


def test_prompt_too_long_is_one_line(tiny_ckpt, capsys):
    """Oracle: the prompt's length is at least LONG_WORDS tokens, the limit TINY's 1024 positions."""
    args = ["--checkpoint", tiny_ckpt, "--prompt", "word " * LONG_WORDS, *GREEDY_ARGS]
    assert generate.main(args) == 2
    cap = capsys.readouterr()
    line = cap.err.strip().splitlines()[-1]
    assert line.startswith("error: --prompt: prompt of ") and line.endswith("max_position_embeddings 1024")
    assert int(line.split("prompt of ")[1].split()[0]) >= LONG_WORDS and cap.out == ""


def test_input_row_with_the_generation_key_is_refused_then_renamed(tiny_ckpt, cli_out, tmp_path, capsys):
    """A row already holding "generation": refused before the model loads (file:line named, nothing
    written); with --generation_key gen it is kept unchanged and gen holds what cli_out generated
    for the same prompt. An --output that is a directory is refused before generating."""
    path = tmp_path / "in.jsonl"
    mine = {**ROWS[0], "generation": {"text": "mine"}}
    path.write_text(json.dumps(mine) + "\n")
    out = tmp_path / "sub" / "o.jsonl"
    args = ["--checkpoint", tiny_ckpt, "--input", str(path), "--output", str(out), *GREEDY_ARGS]
    assert generate.main(args) == 2
    err = capsys.readouterr().err
    assert f"{path}:1" in err and "'generation'" in err and "--generation_key" in err
    assert not out.exists()
    assert generate.main([*args, "--generation_key", "gen"]) == 0
    assert [json.loads(line) for line in open(out)] == [{**mine, "gen": cli_out[0]["generation"]}]
    path.write_text(json.dumps(ROWS[0]) + "\n")
    assert generate.main([*args[:4], "--output", str(tmp_path), *GREEDY_ARGS]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_bench_decode_runs_on_cpu(greedy):
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).parents[2] / "tools" / "bench_decode.py"
    spec = importlib.util.spec_from_file_location("bench_decode", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # The config and shapes of `greedy` (batch 4, prompts padded to 64, 96 slots, greedy steps of 8):
    # its compiled prefill and decode are reused.
    over = ["vocab_size=512", "rope_original_max_position_embeddings=32", "max_position_embeddings=512"]
    r = bench.main(["--preset", "tiny", "--set", *over, "--batch", "4", "--prompt_len", "64",
                    "--new_tokens", "16", "--steps_per_call", "8", "--repeats", "1", "--dtype", "float32",
                    "--temperature", "0"])
    c = preset("tiny")
    assert r["cache_bytes_per_token"] == c.num_hidden_layers * (c.kv_lora_rank + c.qk_rope_head_dim) * 4
    assert r["per_head_kv_bytes_per_token"] == c.num_hidden_layers * c.num_attention_heads * (
        c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim) * 4
    assert r["cache_total_bytes"] == r["cache_bytes_per_token"] * 4 * r["cache_slots"]
    assert r["decode_steps"] == 16 and r["decode_tokens_per_s"] > 0 and r["prefill_tokens_per_s"] > 0
