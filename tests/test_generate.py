"""Generation on MLA's latent cache against independent references.

- greedy tokens equal transformers' greedy `generate` (float32, each prompt alone) for 32 new tokens,
  while r1jax runs the prompts as one left-padded batch of different lengths;
- every decode step's logits equal a full recompute by the
  training forward (Transformer.__call__ on the right-padded sequences so far);
- sharded over an fsdp x expert x tensor mesh (routed experts under shard_map), the same tokens
  as on one device;
- the CLI end to end on a tiny checkpoint with the real tokenizer: --input/--output rows, greedy
  tokens equal the argmax of a full forward, stop strings, --prompt streaming, a training run,
  malformed rows named by file:line.
"""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from hf_oracle import hf_state, r1jax_params, random_hf_model
from r1jax import checkpoint, generate, sharding
from r1jax.data import load_tokenizer
from r1jax.generate import GenerationSettings, generate_ids, generate_texts
from r1jax.model import Transformer, preset
from r1jax.model.latent_cache import bytes_per_token, init_cache

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
            "--temperature", "0", "--max_new_tokens", "12", "--dtype", "float32", "--batch_size", "1",
            "--steps_per_call", "1"]  # the shapes --prompt streams with: one compilation for both
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
        assert {k: out[k] for k in row} == row
        assert out["finish_reason"] in ("stop", "length")
        assert out["text"] == o["text"] and out["n_tokens"] == len(o["tokens"])
        assert out["text"] == tok.decode([t for t in o["tokens"] if t != tok.eos_token_id])
        assert (out["reasoning"], out["answer"]) == generate.split_output(out["text"])
        assert tok.decode(prompt).endswith("<｜Assistant｜><think>\n")
        n = len(o["tokens"])
        np.testing.assert_array_equal(np.argmax(lg[len(prompt) - 1:len(prompt) - 1 + n], -1), o["tokens"])


def test_stop_string_cuts_text_and_ends_generation(tiny_ckpt, cli_out):
    tok = load_tokenizer()
    model, _ = generate.load(tiny_ckpt, "float32")
    full = cli_out[0]["text"]
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
    assert capsys.readouterr().out == cli_out[0]["text"] + "\n"


def test_training_run_generates_like_its_params(tiny_ckpt, cli_out, tmp_path):
    """A trainer's checkpoint (RUN/checkpoints/STEP/state, RUN/model) resolves as export does."""
    from r1jax.train_checkpoint import RunCheckpoints
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


def test_bench_decode_runs_on_cpu(greedy):
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).parent.parent / "tools" / "bench_decode.py"
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
