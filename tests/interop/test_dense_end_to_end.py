"""The dense R1-Distill families (qwen2, llama) end to end through the commands: a transformers
`save_pretrained` checkpoint (float32, sharded with an index) and a small tokenizer ->
`r1jax.convert` -> `r1jax.evaluate` -> `r1jax.train` -> `r1jax.export` -> transformers again, and
`r1jax.generate` against transformers' greedy `generate`; LoRA runs exported as a PEFT adapter and as
merged weights. The oracle throughout is transformers (and peft) in float32 on CPU.

One module-scoped fixture per family writes the checkpoint and runs the commands once; the tests
read what they left. The full fine-tuning run keeps bfloat16 parameters, so that export's BF16
tensors hold the run's weights exactly and transformers' loss on them is comparable at 1e-5.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from hf_oracle_dense import random_hf_model
from r1jax.models.registry import preset
from tokenizer_dirs import ASSISTANT, BOS, EOS, LLAMA_LIKE, QWEN_LIKE, THINK, USER, hand_ids, make_tokenizer_dir

pytestmark = pytest.mark.parity

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# qwen2: q/k/v biases, untied head, GQA 4 heads over 2; llama: tied embeddings, llama3 rope scaling
# (original context 32 < the rows' positions), GQA 8 heads over 2.
FAMILIES = {
    "qwen2": (dict(name="tiny-qwen2", vocab_size=320), QWEN_LIKE, "Qwen2ForCausalLM"),
    "llama": (dict(name="tiny-llama", vocab_size=320, num_attention_heads=8, num_key_value_heads=2,
                   tie_word_embeddings=True, rope_original_max_position_embeddings=32),
              LLAMA_LIKE, "LlamaForCausalLM"),
}
PROMPT = "Say hi."
MAX_NEW = 10


def run(module, *args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=600)


def ok(r):
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def last_json(r) -> dict:
    return json.loads(r.stdout.strip().splitlines()[-1])


def train(root, ckpt, out, *extra):
    """`python -m r1jax.train --config=configs/tiny.py` on the converted checkpoint, a few steps."""
    return run("r1jax.train", "--config=configs/tiny.py", f"--config.model.checkpoint={ckpt}",
               f"--config.output_dir={out}", f"--config.data.train={root / 'train.jsonl'}",
               "--config.data.max_examples=0", "--config.train.steps=6", "--config.train.seq_len=64",
               "--config.train.eval_every=6", "--config.train.checkpoint_every=6",
               "--config.optim.lr=0.01", *extra)


def hf_loss(model, rows) -> float:
    """transformers' mean next-token NLL (nats) over every predicted token of `rows`, one row at a
    time (no padding), float32."""
    total, count = 0.0, 0
    for r in rows:
        ids = torch.tensor([r])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
        total += -logp[torch.arange(len(r) - 1), ids[0, 1:]].sum().item()
        count += len(r) - 1
    return total / count


def load_hf(path):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    return model.eval(), info


def write_data(root, n_vocab):
    """rows.jsonl: pre-tokenized rows to score (ids below the tokenizer's size, lengths 9..40);
    train.jsonl: rows counting up by one mod 32 (learnable far below ln(vocab))."""
    rng = np.random.RandomState(0)
    rows = [rng.randint(0, n_vocab, n).tolist() for n in (17, 40, 9)]
    (root / "rows.jsonl").write_text("".join(json.dumps({"input_ids": r}) + "\n" for r in rows))
    lines = []
    for _ in range(200):
        start, n = rng.randint(0, 32), rng.randint(20, 60)
        lines.append(json.dumps({"input_ids": [100 + (start + i) % 32 for i in range(n)]}) + "\n")
    (root / "train.jsonl").write_text("".join(lines))
    (root / "prompts.jsonl").write_text(json.dumps({"prompt": PROMPT}) + "\n")
    return rows


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    """Writes the HF checkpoint (and its tokenizer) of one family and runs convert, evaluate, train,
    export, evaluate (of the run) and generate on it once."""
    name = request.param
    (spec, layout, arch) = FAMILIES[name]
    spec = dict(spec)
    cfg = preset(spec.pop("name"), **spec)
    root = tmp_path_factory.mktemp(name)
    hf = root / "hf"
    tok_dir = make_tokenizer_dir(root / "tok", layout)
    raw = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    model = random_hf_model(cfg, seed=3)
    bos, eos = raw.token_to_id(BOS), raw.token_to_id(EOS)
    for c in (model.config, model.generation_config):
        c.bos_token_id, c.eos_token_id = bos, eos
    model.save_pretrained(hf, max_shard_size="60KB")
    make_tokenizer_dir(hf, layout)
    rows = write_data(root, raw.get_vocab_size())
    out = {"name": name, "cfg": cfg, "arch": arch, "root": root, "hf": hf, "rows": rows, "raw": raw,
           "hf_model": model}
    out["convert"] = ok(run("r1jax.convert", "--hf_dir", hf, "--out", root / "ckpt", "--dtype", "float32"))
    out["eval_ckpt"] = last_json(ok(run("r1jax.evaluate", "--checkpoint", root / "ckpt", "--data",
                                        root / "rows.jsonl", "--dtype", "float32", "--json")))
    out["train"] = last_json(ok(train(root, root / "ckpt", root / "run", "--config.model.param_dtype=bfloat16")))
    ok(run("r1jax.export", "--checkpoint", root / "run", "--out", root / "export",
           "--max_shard_gb", "0.00006"))
    out["eval_run"] = last_json(ok(run("r1jax.evaluate", "--checkpoint", root / "run", "--data",
                                       root / "rows.jsonl", "--dtype", "float32", "--json")))
    ok(run("r1jax.generate", "--checkpoint", root / "run", "--input", root / "prompts.jsonl",
           "--output", root / "generated.jsonl", "--temperature", "0", "--max_new_tokens", MAX_NEW,
           "--dtype", "float32"))
    return out


def test_convert_then_evaluate_equals_transformers(family):
    """Oracle: transformers' own float32 loss (hf_loss) of the random model on the rows; the
    checkpoint really is sharded with an index."""
    hf = family["hf"]
    assert (hf / "model.safetensors.index.json").exists()
    assert len(list(hf.glob("*.safetensors"))) > 1
    got = family["eval_ckpt"]
    want = hf_loss(family["hf_model"], family["rows"])
    assert got["tokens"] == sum(len(r) - 1 for r in family["rows"])
    assert got["loss"] == pytest.approx(want, rel=1e-5)


def test_training_on_the_converted_checkpoint_lowers_the_loss(family):
    """Oracle: the counting rows are learnable: after 6 steps at lr 1e-2 the validation loss is far
    below the first one (ln 320 = 5.77 at chance)."""
    t = family["train"]
    assert t["step"] == 6
    assert t["last_val_loss"] < t["first_val_loss"] - 0.5, t


def test_export_loads_in_transformers_with_the_runs_loss(family):
    """Oracle: transformers' AutoModelForCausalLM on the exported directory: no missing or
    unexpected keys, config.json's class, model_type, tied head and token ids as the source's; its
    float32 loss (hf_loss) equals r1jax's evaluate of the run (the run's bf16 weights, exported
    without rounding)."""
    src = json.loads((family["hf"] / "config.json").read_text())
    export = family["root"] / "export"
    cfg = json.loads((export / "config.json").read_text())
    assert cfg["architectures"] == [family["arch"]] and cfg["model_type"] == family["name"]
    assert cfg.get("tie_word_embeddings", False) == src["tie_word_embeddings"] == family["cfg"].tie_word_embeddings
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (src["bos_token_id"], src["eos_token_id"])
    weight_names = lambda d: set(json.loads((d / "model.safetensors.index.json").read_text())["weight_map"])
    src_names = weight_names(family["hf"])
    assert weight_names(export) == src_names
    model, info = load_hf(export)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert ("lm_head.weight" in src_names) != family["cfg"].tie_word_embeddings
    if family["cfg"].tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert hf_loss(model, family["rows"]) == pytest.approx(family["eval_run"]["loss"], rel=1e-5)
    assert family["eval_run"]["loss"] != pytest.approx(family["eval_ckpt"]["loss"], rel=1e-3)  # trained


def test_generate_equals_transformers_greedy(family):
    """Oracle: transformers' generate(do_sample=False) on the exported weights (its generation
    config, as exported), from the R1 chat prompt's ids built by hand (tokenizer_dirs.hand_ids):
    the same number of tokens, the same text, the same reason to stop."""
    model, _ = load_hf(family["root"] / "export")
    prompt = hand_ids(family["hf"], [BOS, USER, PROMPT, ASSISTANT, THINK, "\n"])
    with torch.no_grad():
        seq = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             do_sample=False, max_new_tokens=MAX_NEW, pad_token_id=model.generation_config.eos_token_id)
    new = seq[0, len(prompt):].tolist()
    eos = family["raw"].token_to_id(EOS)
    stopped = bool(new) and new[-1] == eos
    text = family["raw"].decode(new[:-1] if stopped else new, skip_special_tokens=False)
    (row,) = [json.loads(line) for line in (family["root"] / "generated.jsonl").read_text().splitlines()]
    got = row["generation"]
    assert (got["n_tokens"], got["finish_reason"]) == (len(new), "stop" if stopped else "length")
    assert got["text"] == text


def test_expert_only_groups_are_config_errors_on_a_dense_model(family, tmp_path):
    """Oracle: exit status 2 and one line naming the key and the model's groups, by hand; nothing is
    prepared (no data directory) before the refusal."""
    cases = (("lora.targets", ["--config.lora.rank=4", "--config.lora.targets=routed_experts"]),
             ("optim.group_lr", ["--config.optim.group_lr=router=0.5"]))
    for key, flags in cases:
        out = tmp_path / key
        r = train(family["root"], family["root"] / "ckpt", out, *flags)
        assert r.returncode == 2, r.stderr[-3000:]
        assert "Traceback" not in r.stderr
        err = r.stderr.strip().splitlines()[-1]
        assert err.startswith(f"error: config key {key}: group ") and "embeddings,attention,dense_mlp" in err
        assert not (out / "data").exists()


# ---- LoRA --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_run(family):
    """A rank-4 LoRA run (attention, dense_mlp) on the family's converted float32 checkpoint, its
    evaluate, and its exports as a PEFT adapter and as merged weights."""
    root = family["root"]
    ok(train(root, root / "ckpt", root / "lora", "--config.lora.rank=4",
             "--config.lora.targets=attention,dense_mlp", "--config.train.steps=4",
             "--config.train.eval_every=4", "--config.train.checkpoint_every=4"))
    ok(run("r1jax.export", "--checkpoint", root / "lora", "--out", root / "adapter", "--adapter"))
    ok(run("r1jax.export", "--checkpoint", root / "lora", "--out", root / "merged"))
    return last_json(ok(run("r1jax.evaluate", "--checkpoint", root / "lora", "--data", root / "rows.jsonl",
                            "--dtype", "float32", "--json")))


@pytest.mark.slow
def test_lora_exports_load_in_peft_and_transformers(family, lora_run):
    """Oracles: peft's PeftModel.from_pretrained of the adapter over transformers' model of the
    source checkpoint: its float32 loss equals r1jax's evaluate of the run (1e-5), and differs from
    the base's (the adapters trained). The merged export: transformers loads it with no missing or
    unexpected keys; each tensor is the NumPy formula W + (alpha / r) B A over the source weights
    and the adapter's lora_A / lora_B, to one bfloat16 rounding (the export's dtype); its loss is
    the run's to that rounding (1e-4)."""
    import peft
    rows, root = family["rows"], family["root"]
    base, _ = load_hf(family["hf"])
    base_loss = hf_loss(base, rows)
    adapter = json.loads((root / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4
    peft_model = peft.PeftModel.from_pretrained(base, root / "adapter").eval()
    assert hf_loss(peft_model, rows) == pytest.approx(lora_run["loss"], rel=1e-5)
    assert lora_run["loss"] != pytest.approx(base_loss, rel=1e-5)

    merged, info = load_hf(root / "merged")
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    src = {k: v.detach().numpy() for k, v in family["hf_model"].state_dict().items()}
    lora = load_file(str(root / "adapter" / "adapter_model.safetensors"))
    scale = adapter["lora_alpha"] / adapter["r"]
    got = {k: v.detach().numpy() for k, v in merged.state_dict().items()}
    adapted = 0
    for key in lora:
        if not key.endswith(".lora_A.weight"):
            continue
        name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        name = name if name.endswith(".weight") else name + ".weight"
        want = src[name] + scale * lora[key.replace("lora_A", "lora_B")] @ lora[key]
        np.testing.assert_allclose(got[name], want, rtol=2 ** -8, atol=1e-6, err_msg=name)
        adapted += 1
    assert adapted == 7 * family["cfg"].num_hidden_layers  # q, k, v, o, gate, up, down per layer
    assert hf_loss(merged, rows) == pytest.approx(lora_run["loss"], rel=1e-4)
