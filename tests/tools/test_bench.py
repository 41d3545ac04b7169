"""tools/bench.py on CPU: the full train step and the HF peer (tools/hf_peer.py: transformers'
DeepseekV3ForCausalLM) on the same shrunken v3-small config in one run, with the ratio and the float32
loss check written to the results file."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_bench_cpu_side_by_side(tmp_path):
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    r = subprocess.run([sys.executable, "tools/bench.py", "--small", "--batch", "2", "--seq", "128",
                        "--steps", "2", "--warmup", "1", "--peer", "--out", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    data = json.loads(out.read_text())
    assert "tools/bench.py --small" in data["command"]
    ours, *peers = data["results"]
    assert ours["impl"] == "r1jax" and ours["preset"] == "v3-small/small"
    # bf16 compute agrees with the float32 forward on the same params and batch
    assert ours["loss_rel_diff"] < 1e-2
    # an untrained model's loss is near ln(vocab) = ln(1024)
    assert abs(ours["loss_f32"] - 6.93) < 0.5
    assert ours["tokens_per_s"] > 0 and ours["model_tflops"] > 0 and ours["compile_s"] > 0
    assert {p["impl"] for p in peers} >= {"hf-grouped_mm"}, r.stderr[-3000:]
    assert "r1jax full train step / HF grouped_mm fwd+bwd tokens/s" in r.stdout


def test_parts_cover_every_model_flop_of_a_step(tmp_path):
    """tools/bench_parts.py on CPU: each part timed, counted as often as a step runs it, and the
    parts' FLOPs together are the whole step's (r1jax.models.deepseek_v3.flops' formula for the model)."""
    from r1jax.models.deepseek_v3.flops import train_flops_per_token
    from r1jax.models.registry import preset
    sys.path.insert(0, str(ROOT / "tools"))
    from bench import SMALL

    out = tmp_path / "parts.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    r = subprocess.run([sys.executable, "tools/bench_parts.py", "--small", "--batch", "2", "--seq", "32",
                        "--steps", "1", "--warmup", "1", "--no_full", "--out", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    data = json.loads(out.read_text())
    cfg = preset("v3-small", **SMALL)
    counts = {p["part"]: p["count"] for p in data["parts"]}
    assert counts == {"attention": cfg.num_hidden_layers, "moe": cfg.num_moe_layers,
                      "dense_mlp": cfg.first_k_dense_replace, "head": 1, "adamw": 1}
    assert all(p["ms"] > 0 for p in data["parts"]) and data["step_ms"] is None
    step_flops = sum(p["flops_per_call"] * p["count"] for p in data["parts"] if p["flops_per_call"])
    assert step_flops == pytest.approx(train_flops_per_token(cfg, 32) * 2 * 32, rel=1e-12)


def test_residuals_tool_totals_what_the_step_keeps():
    """tools/residuals.py on the shrunken v3-small: the step's residuals by dtype with a fused
    attention kernel's and with this machine's attention, and no large float32 activation."""
    r = subprocess.run([sys.executable, "tools/residuals.py", "--small", "--batch", "2", "--seq", "64"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(r.stdout.strip().splitlines()[-1])
    assert data["model_gib"] > 0 and data["with_this_machines_attention_gib"] > 0
    assert data["model_gib"] == pytest.approx(sum(data["model_gib_by_dtype"].values()))
    assert all(row["dtype"] == "bf16" for row in data["largest"][:3]), data["largest"][:3]


def test_kernel_probe_runs_every_variant_a_cpu_has(tmp_path):
    """tools/kernel_probe.py --small on CPU: the variants that exist on a CPU (XLA, tokamax's XLA
    path, the model's paired gate/up) run and agree with the float32 XLA reference; the GPU-only
    ones report that they are not supported, not a Python error."""
    out = tmp_path / "probe.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    r = subprocess.run([sys.executable, "tools/kernel_probe.py", "--small", "--out", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    ran = [row for row in rows if "error" not in row]
    assert {(row["kernel"], row["variant"]) for row in ran} >= {
        ("attention", "tokamax mask+causal (model)"), ("ragged_dot", "tokamax"),
        ("gate_up", "two matmuls"), ("gate_up", "paired (model)")}
    assert all(row["rel_err"] < 2e-2 and row["ms"] > 0 for row in ran), ran
    assert all("Not supported on cpu" in row["error"] for row in rows if "error" in row), rows


@pytest.mark.slow
def test_bench_lora_times_the_lora_step_next_to_the_full_step(tmp_path):
    """tools/bench.py --lora on CPU: the LoRA step (rank-16 adapters, base frozen) timed next to the
    full step on the same model and batch. Oracles: the ratio is the two medians' quotient; the
    adapter count is r1jax.train.plan.adapter_counts' (the abstract model's, itself checked against a
    hand formula in tests/train/test_plan.py). The ratio itself is a measurement (BUILD.md), not a test
    (speed targets live in the benchmarks). Two CPU compiles: minutes."""
    sys.path.insert(0, str(ROOT / "tools"))
    from bench import SMALL
    from r1jax.train import plan
    from r1jax.models.registry import preset
    from r1jax.models.common.config import LoraConfig
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    r = subprocess.run([sys.executable, "tools/bench.py", "--small", "--batch", "2", "--seq", "128",
                        "--steps", "3", "--warmup", "1", "--lora", "16", "--out", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    full, lora = json.loads(out.read_text())["results"][:2]
    assert full["impl"] == "r1jax" and lora["impl"] == "r1jax-lora"
    assert lora["step_time_over_full"] == pytest.approx(lora["step_ms"] / full["step_ms"])
    cfg = preset("v3-small", **SMALL).replace(lora=LoraConfig(rank=16))
    assert lora["adapter_params"] == sum(plan.adapter_counts(cfg).values())
    assert "/ full step time:" in r.stdout


def test_bench_dense_preset_with_its_peer(tmp_path):
    """tools/bench.py on a dense family (tiny-qwen2) with bfloat16 Adam moments, remat full and the
    transformers peer (Qwen2ForCausalLM built from the family's config.json). Oracles: the peer's
    parameter count is transformers' own (a second implementation of the same config.json) and
    equals ours; both rows' TFLOP/s per token/s are registry.train_flops_per_token (one formula for
    both); the analytic state is N x (4 float32 params + 4 float32 gradient accumulator + 2 + 2
    bfloat16 moments) by hand; an untrained model's loss is near ln(256)."""
    import math
    from r1jax.models.registry import preset, train_flops_per_token
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    r = subprocess.run([sys.executable, "tools/bench.py", "--preset", "tiny-qwen2", "--batch", "2",
                        "--seq", "64", "--steps", "1", "--warmup", "1", "--peer", "--remat", "full",
                        "--loss_chunk", "64", "--state_dtype", "bfloat16", "--out", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    ours, *peers = json.loads(out.read_text())["results"]
    assert [p["impl"] for p in peers] == ["hf"], r.stderr[-3000:]
    peer = peers[0]
    assert peer["model"] == "Qwen2ForCausalLM" and peer["remat"] is True
    assert peer["params_B"] == pytest.approx(ours["params_B"], rel=1e-12)
    n = ours["params_B"] * 1e9
    assert ours["analytic_state_gib"] == pytest.approx(n * 12 / 2**30)
    fpt = train_flops_per_token(preset("tiny-qwen2"), 64)
    for row in (ours, peer):
        assert row["model_tflops"] * 1e12 / row["tokens_per_s"] == pytest.approx(fpt)
    assert abs(ours["loss_f32"] - math.log(256)) < 0.3 and ours["loss_rel_diff"] < 1e-2
    assert "r1jax full train step / HF fwd+bwd tokens/s" in r.stdout
