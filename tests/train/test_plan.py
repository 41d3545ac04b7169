"""python -m r1jax.plan: the real train step compiled ahead of time by the TPU compiler (libtpu) for
slices this machine does not have, its memory checked against an analytic count.

The R1-671B plan itself takes minutes of compilation on two cores (BUILD.md, "Pod plans": 4-8 min
each), so these tests plan a stand-in through the same code path: the `tiny` preset (R1's
architecture and vocabulary, hidden 64), whose state is dominated by its 129,280 x 64 embedding and
head, sharded over fsdp like the 671B's.
"""
import json
import math
import os
import subprocess
import sys

import jax
import pytest
from flax import nnx

from r1jax.train import plan
from r1jax.models.deepseek_v3.transformer import Transformer
from r1jax.models.registry import preset
from r1jax.train.run_config import defaults

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GIB = 1024 ** 3


def tiny_config(**over):
    c = defaults()
    c.model.preset = "tiny"
    c.model.dtype = "bfloat16"          # the TPU compiler has no float32 x float32 dot algorithm
    c.train.batch_size, c.train.seq_len, c.train.loss_chunk = 8, 128, 0
    c.mesh.data, c.mesh.fsdp = 1, -1
    for key, value in over.items():
        section, k = key.split(".")
        c[section][k] = value
    return c


def test_slice_names():
    assert plan.parse_slice("v5p-1024").topology == "v5p:8x8x8"   # v5p-N counts TensorCores
    assert plan.parse_slice("v5p-1024").chips == 512
    assert plan.parse_slice("v6e-256").topology == "v6e:16x16"    # v6e-N counts chips
    assert plan.parse_slice("v5p:4x4x8").chips == 128
    for bad in ("v5p-100", "v4-8", "v5p"):
        with pytest.raises(plan.PlanError, match=bad):
            plan.parse_slice(bad)


@pytest.fixture(scope="module")
def fitted():
    return plan.plan(tiny_config(), "v5p-8", "full")


@pytest.mark.tpu_compile
def test_plan_compiles_fits_and_memory_matches_the_analytic_count(fitted):
    r = fitted
    assert r["compiled"] and r["fits"] and r["chips"] == 4
    assert r["mesh"] == {"data": 1, "fsdp": 4, "expert": 1, "tensor": 1}
    assert r["hbm_gib"] == plan.HBM_GIB["v5p"]
    # Analytic: the tiny preset's parameter count (float32 master params, the run_config default),
    # a float32 gradient accumulator and two float32 Adam moments.
    n_params = sum(x.size for x in jax.tree.leaves(
        nnx.state(nnx.eval_shape(lambda: Transformer(preset("tiny"), rngs=nnx.Rngs(0))), nnx.Param)))
    assert n_params > 2 * 129280 * 64                       # embedding and head dominate
    per_chip_state = n_params * (4 + 4 + 8) / r["chips"]
    m = r["memory_gib"]
    # The inputs are the params and moments, split 4 ways (fsdp): within 10% of an even split.
    inputs = n_params * (4 + 8) / r["chips"] / GIB
    assert inputs <= m["arguments"] <= 1.1 * inputs + 0.01, (m, inputs)
    # Donation: every output (new params, moments) reuses its input buffer.
    assert m["aliased"] >= 0.95 * m["outputs"]
    # The whole step needs at least the state and no more than a few times it at this small batch.
    assert per_chip_state / GIB <= r["per_device_memory_gib"] <= 4 * per_chip_state / GIB + 0.5, r
    # FLOPs: the compiler's count for the slice against 6 N_active + attention (r1jax/models/deepseek_v3/flops.py).
    assert 0.7 < r["flops"] * r["chips"] / r["model_flops"] < 3.0, r


@pytest.mark.tpu_compile
def test_cli_reports_a_slice_too_small_as_not_fitting():
    # 256 x 2048 tokens with the whole [B, T, V] logits in float32 (loss_chunk 0): 63 GiB of logits
    # per chip on 4 v6e chips (31.25 GiB usable): the compiler cannot place it, and says so early.
    cmd = [sys.executable, "-m", "r1jax.plan", "--config=configs/tiny.py", "--topology=v6e-4",
           "--variant=full", "--json", "--config.model.dtype=bfloat16", "--config.mesh.data=4",
           "--config.train.batch_size=256", "--config.train.seq_len=2048", "--config.train.loss_chunk=0"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["fits"] is False and r["topology"] == "v6e-4" and r["hbm_gib"] == plan.HBM_GIB["v6e"]
    logits_per_chip = 256 * 2048 * 129280 * 4 / 4 / GIB
    assert r["per_device_memory_gib"] > max(r["hbm_gib"], logits_per_chip), r
    assert math.isclose(r["headroom"], plan.HEADROOM)
    assert "flops" in r


def test_variants_and_bad_meshes_are_named():
    c = plan.with_variant(tiny_config(), "frozen_experts")
    assert c.optim.freeze_groups == "routed_experts" and c.optim.state_dtype == "float32"
    assert plan.with_variant(tiny_config(), "bf16_state").optim.state_dtype == "bfloat16"
    with pytest.raises(plan.PlanError, match="--variant='nope'"):
        plan.with_variant(tiny_config(), "nope")
    # 8 expert shards cannot be formed from a 4x4x4 torus: the error names the slice and the mesh.
    with pytest.raises(plan.PlanError, match="v5p-128"):
        plan.plan(tiny_config(**{"mesh.expert": 8, "mesh.fsdp": 8}), "v5p-128")


def test_float32_compute_is_a_config_error_naming_model_dtype():
    # libtpu's compiler has no float32 x float32 dot: the plan says which config key to change
    with pytest.raises(plan.PlanError, match=r"model\.dtype='float32'.*bfloat16"):
        plan.plan(tiny_config(**{"model.dtype": "float32"}), "v5p-8", "full")


# The shipped R1-671B config and BUILD.md's "Pod plans" table --------------------------------------

def _documented_plan_command() -> list[str]:
    """The `python -m r1jax.plan ...` line of configs/r1_671b.py's docstring, as argv."""
    import shlex
    doc = _load_config_module(os.path.join(ROOT, "configs", "r1_671b.py")).__doc__
    line = next(ln for ln in doc.splitlines() if "python -m r1jax.plan" in ln)
    return shlex.split(line.split("#")[0])


def _load_config_module(path: str):
    import importlib.util
    spec = importlib.util.spec_from_file_location("r1_671b_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pod_plan_table() -> dict[str, dict[str, str]]:
    """BUILD.md's pod-plan table (the first whose header starts "| slice |"): {slice: {column
    header: cell text}}."""
    return _slice_table(0)


def _slice_table(which: int) -> dict[str, dict[str, str]]:
    """BUILD.md's table number `which` (0-based) among those whose header starts "| slice |", its
    rows up to the first line that is not one: {slice: {column header: cell text}}."""
    lines = open(os.path.join(ROOT, "BUILD.md")).read().splitlines()
    header = [i for i, ln in enumerate(lines) if ln.startswith("| slice |")][which]
    names = [h.strip() for h in lines[header].strip("|").split("|")]
    table = {}
    for ln in lines[header + 2:]:
        if not ln.startswith("| "):
            break
        cells = [x.strip() for x in ln.strip("|").split("|")]
        table[cells[0]] = dict(zip(names, cells))
    return table


@pytest.mark.tpu_compile
def test_auto_grad_accum_gives_the_table_column():
    """Oracle: BUILD.md's grad_accum column (made as 512 / chips by tools/plan_table.py at f8606f4,
    before the auto value existed) for each slice's chip count; on these meshes (tensor 1) the
    batch shards are the chips. Also: an explicit value wins, and a batch the shards do not divide
    is refused naming train.grad_accum."""
    from r1jax.train import run_config
    table = _pod_plan_table()
    assert len(table) >= 5, table
    for row in table.values():
        assert run_config.resolved_grad_accum(512, 0, int(row["chips"])) == int(row["grad_accum"]), row
    assert run_config.resolved_grad_accum(512, 4, 512) == 4
    with pytest.raises(run_config.RunConfigError, match=r"train.grad_accum=0.*batch_size=12.*8 batch"):
        run_config.resolved_grad_accum(12, 0, 8)
    c = defaults()
    c.train.batch_size, c.train.grad_accum = 16, 0
    run_config.validate(c)                      # 0 (auto) is a valid value
    assert run_config.with_grad_accum(c, 4).train.grad_accum == 4 and c.train.grad_accum == 0


@pytest.mark.tpu_compile
@pytest.mark.slow
def test_documented_r1_plan_command_gives_the_documented_answer():
    """configs/r1_671b.py's docstring says its plan command tells the memory before renting; the
    command (read from that docstring) must answer what BUILD.md's table says for that slice: fits,
    and the per-chip GiB of the table's cell within 2%. Oracle: the table row (tools/plan_table.py's
    measurement); the column is the variant the command asks for, or, without --variant, the one
    the config as written equals (its optimizer keys). Compiles R1-671B for TPU: minutes."""
    argv = _documented_plan_command()
    assert argv[:3] == ["python", "-m", "r1jax.plan"], argv
    opts = dict(a.lstrip("-").split("=", 1) for a in argv[3:])
    c = _load_config_module(os.path.join(ROOT, opts["config"])).get_config()
    variant = opts.get("variant") or next(
        v for v, keys in plan.VARIANTS.items()
        if all(c[k.split(".")[0]][k.split(".")[1]] == value for k, value in keys.items()))
    want = _fitting_gib(_pod_plan_table()[opts["topology"]][variant])
    r = _run_plan(argv)
    print(f"{' '.join(argv)}: {r['per_device_memory_gib']:.2f} GiB per chip, grad_accum "
          f"{r['grad_accum']}, table {want} ({variant})")
    assert r["fits"] is True and r["compiled"] is True, r
    assert abs(r["per_device_memory_gib"] / want - 1) < 0.02, (r["per_device_memory_gib"], want)


def _fitting_gib(cell: str) -> float:
    """The per-chip GiB of a table cell that must say fits ("**fits**: 81.3 / 95.7 GiB ...")."""
    assert cell.startswith("**fits**"), cell
    return float(cell.split(":")[1].split("/")[0])


def _run_plan(argv: list[str]) -> dict:
    """The JSON report of a documented `python -m r1jax.plan ...` command (argv), run with --json."""
    p = subprocess.run([sys.executable, *argv[1:], "--json"], cwd=ROOT, capture_output=True,
                       text=True, timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


# LoRA plans and small slices -----------------------------------------------------------------------

def test_small_slices_have_presets_with_the_degree_the_torus_forms():
    """Oracle: by hand from sharding.py's stated rule (the smallest expert degree >= 8 dividing 256
    that is a product of whole physical axes): v5p 2x2x2 / 2x2x4 / 2x4x4 and v6e 2x4 / 4x8 hold a
    whole 8; v6e 4x4 has 4 and 16, so 16. fsdp takes the rest. Before, these sizes were refused."""
    from r1jax.parallel import sharding
    want = {("r1-671b-v5p", 8): 8, ("r1-671b-v5p", 16): 8, ("r1-671b-v5p", 32): 8,
            ("r1-671b-v6e", 8): 8, ("r1-671b-v6e", 16): 16, ("r1-671b-v6e", 32): 8}
    for (name, chips), expert in want.items():
        assert sharding.mesh_preset(name, chips) == {"data": 1, "fsdp": chips // expert,
                                                     "expert": expert, "tensor": 1}, (name, chips)
    # the degree is formable: a mesh of that shape is built from the slice's own devices
    for name, topo in (("r1-671b-v5p", "v5p-32"), ("r1-671b-v6e", "v6e-16")):
        devices = plan.slice_devices(plan.parse_slice(topo))
        mesh = sharding.make_mesh(**sharding.mesh_preset(name, len(devices)), devices=devices)
        assert mesh.shape["expert"] == want[(name, len(devices))]


def _adapter_formula(cfg, rank: int) -> dict[str, int]:
    """Adapter parameters per group by hand from the architecture: each adapted projection
    in -> out carries rank * (in + out); MLA's five projections per layer, three per MLP."""
    D, H, r = cfg.hidden_size, cfg.num_attention_heads, rank
    ql, kvl = cfg.q_lora_rank, cfg.kv_lora_rank
    nope, rope, v = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    attn = r * ((D + ql) + (ql + H * (nope + rope)) + (D + kvl + rope) + (kvl + H * (nope + v))
                + (H * v + D))
    n_dense, n_moe = cfg.first_k_dense_replace, cfg.num_hidden_layers - cfg.first_k_dense_replace
    return {"attention": cfg.num_hidden_layers * attn,
            "dense_mlp": n_dense * 3 * r * (D + cfg.intermediate_size),
            "shared_experts": n_moe * 3 * r * (D + cfg.n_shared_experts * cfg.moe_intermediate_size),
            "routed_experts": n_moe * cfg.n_routed_experts * 3 * r * (D + cfg.moe_intermediate_size)}


def test_adapter_counts_match_the_architecture_formula():
    """plan.adapter_counts (the abstract model's Adapter variables) against _adapter_formula (a
    hand count from ModelConfig's shapes), for the tiny preset and R1-671B, with and without
    routed-expert adapters."""
    from r1jax.models.common.config import LoraConfig
    every = ("attention", "dense_mlp", "shared_experts", "routed_experts")
    for name in ("tiny", "r1-671b"):
        for targets in (every[:3], every):
            cfg = preset(name).replace(lora=LoraConfig(rank=16, targets=targets))
            want = {g: n for g, n in _adapter_formula(cfg, 16).items() if g in targets}
            assert plan.adapter_counts(cfg) == want, (name, targets)
    assert plan.adapter_counts(preset("tiny")) == {}


def test_lora_variants_set_rank_targets_and_the_fp8_base():
    """Oracle: the issue's variants by hand: lora and lora_bf16_base = rank 16 on attention, dense
    MLP and shared experts; lora_experts adds routed experts; the base is FP8 (e4m3 codes with
    float32 *_scale siblings in the step's frozen input) except for lora_bf16_base."""
    for variant, targets in (("lora", "attention,dense_mlp,shared_experts"),
                             ("lora_bf16_base", "attention,dense_mlp,shared_experts"),
                             ("lora_experts", "attention,dense_mlp,shared_experts,routed_experts")):
        c = plan.with_variant(tiny_config(), variant)
        assert (c.lora.rank, c.lora.targets, c.optim.freeze_groups) == (16, targets, ""), variant
    devices = plan.slice_devices(plan.parse_slice("v5p-8"))
    mesh = jax.make_mesh((1, 4, 1, 1), ("data", "fsdp", "expert", "tensor"), devices=devices)
    for variant, fp8 in (("lora", True), ("lora_bf16_base", False)):
        c = plan.with_variant(tiny_config(**{"model.param_dtype": "bfloat16"}), variant)
        _, args, cfg = plan.build_step(c, mesh, fp8_base=variant in plan.FP8_BASE)
        params, _, _, _, frozen, _ = args
        names = {plan.path_str(p): x.dtype for p, x in jax.tree_util.tree_flatten_with_path(frozen)[0]}
        codes = [n for n, d in names.items() if d == jax.numpy.float8_e4m3fn]
        assert bool(codes) is fp8 and cfg.fp8_weights is fp8, variant
        assert all(names[n + "_scale"] == jax.numpy.float32 for n in codes), variant
        assert {x.dtype for x in jax.tree.leaves(params)} == {jax.numpy.dtype("float32")}


@pytest.mark.tpu_compile
def test_lora_plan_on_a_small_slice_with_the_preset_mesh():
    """A LoRA plan on an 8-chip slice (v5p-16) with the R1 preset mesh (refused before: "covers
    64..1024 chips"): compiles and fits; the trained state is the adapters in float32 and two float32
    Adam moments: 4 and 8 bytes per adapter parameter of the hand formula (_adapter_formula)."""
    r = plan.plan(tiny_config(**{"mesh.preset": "r1-671b-v5p"}), "v5p-16", "lora")
    assert r["compiled"] and r["fits"] and r["fp8_base"], r
    assert r["mesh"] == {"data": 1, "fsdp": 1, "expert": 8, "tensor": 1}
    n = sum(n for g, n in _adapter_formula(preset("tiny"), 16).items() if g != "routed_experts")
    assert r["adapter_params"] == n
    assert math.isclose(r["state_gib"]["params"] * GIB, 4 * n)
    assert 8 * n <= r["state_gib"]["opt_state"] * GIB <= 8 * n + 1024   # + Adam's step counts
    assert r["state_gib"]["frozen"] > r["state_gib"]["params"]


def _lora_plan_table() -> dict[str, dict[str, str]]:
    """BUILD.md's LoRA pod-plan table (the second one whose header starts "| slice |")."""
    return _slice_table(1)


@pytest.mark.tpu_compile
@pytest.mark.slow
def test_documented_lora_plan_command_gives_the_documented_answer():
    """configs/r1_671b_lora.py's docstring plan command (read from it) must answer what BUILD.md's
    LoRA table says for its slice (the config's 512 x 4096 batch, as configs/r1_671b.py's): fits, in
    the table's micro-batches, the cell's GiB within 2%. Oracle: the table cell, measured with
    configs/r1_671b.py. Compiles R1-671B for TPU: minutes."""
    import shlex
    doc = _load_config_module(os.path.join(ROOT, "configs", "r1_671b_lora.py")).__doc__
    argv = shlex.split(next(ln for ln in doc.splitlines() if "python -m r1jax.plan" in ln).split("#")[0])
    opts = dict(a.lstrip("-").split("=", 1) for a in argv[3:])
    assert opts["variant"] == "lora", argv
    row = _lora_plan_table()[opts["topology"]]
    want = _fitting_gib(row["lora (FP8 base)"])
    r = _run_plan(argv)
    assert r["fits"] is True and r["grad_accum"] == int(row["grad_accum"]) and r["fp8_base"] is True, r
    assert abs(r["per_device_memory_gib"] / want - 1) < 0.02, (r["per_device_memory_gib"], want)


# Dense (R1-Distill) models --------------------------------------------------------------------------

def _dense_param_count(cfg) -> int:
    """Parameters of a llama/qwen2 DenseConfig by hand: embedding V D; per layer q, k, v, o
    (D H K, D G K, D G K, H K D), q/k/v biases where the family has them (H K + 2 G K), o's bias with
    llama's attention_bias (D), gate/up/down 3 D F and two RMSNorm scales 2 D; the final norm D; the
    head D V unless tied."""
    V, D, F, L = cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    H, G, K = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_size
    layer = D * H * K + 2 * D * G * K + H * K * D + 3 * D * F + 2 * D
    layer += (H * K + 2 * G * K) if cfg.qkv_bias else 0
    layer += D if cfg.o_bias else 0
    return V * D + L * layer + D + (0 if cfg.tie_word_embeddings else D * V)


@pytest.mark.tpu_compile
@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-llama"])
def test_dense_plan_state_is_the_parameter_count(name):
    """A full fine-tuning plan of a tiny dense preset on v5p-8 (4 chips, fsdp 4): compiles and fits;
    its trained state is the hand parameter count (_dense_param_count) times 4 bytes (float32
    params) and 8 (two float32 Adam moments), and each chip's inputs hold about a quarter of it."""
    cfg = preset(name)
    n = _dense_param_count(cfg)
    r = plan.plan(tiny_config(**{"model.preset": name}), "v5p-8", "full")
    assert r["compiled"] and r["fits"] and r["chips"] == 4, r
    assert r["model_source"] == f"preset {name}"
    assert r["state_gib"]["params"] * GIB == 4 * n
    assert 8 * n <= r["state_gib"]["opt_state"] * GIB <= 8 * n + 1024   # + Adam's step counts
    per_chip = 12 * n / r["chips"] / GIB
    assert per_chip <= r["memory_gib"]["arguments"] <= 1.25 * per_chip + 0.01, (r["memory_gib"], per_chip)


@pytest.mark.parametrize("variant", ["frozen_experts", "lora_experts", "lora"])
def test_expert_and_fp8_variants_are_a_plan_error_for_a_dense_model(variant):
    """Oracle, by hand: a dense model has no shared or routed experts (frozen_experts, lora_experts
    name them) and no FP8 release (lora's base is FP8); the error names the variant, the missing
    group or the FP8 base, and the variants that apply (full, bf16_state, lora_bf16_base). Raised
    before the slice is described: no compile."""
    why = {"frozen_experts": "routed_experts", "lora_experts": "shared_experts,routed_experts",
           "lora": "block-scaled FP8"}[variant]
    with pytest.raises(plan.PlanError, match=rf"--variant={variant} .*{why}.*full, bf16_state, "
                                             r"lora_bf16_base$"):
        plan.plan(tiny_config(**{"model.preset": "tiny-qwen2"}), "v5p-8", variant)
    # the R1 preset takes every variant
    assert all(plan.variant_problem(v, ("attention", "dense_mlp", "shared_experts",
                                        "routed_experts"), True) is None for v in plan.VARIANTS)


def test_a_checkpoint_not_converted_yet_is_planned_from_the_preset(tmp_path):
    """configs/distill_qwen_7b.py names the checkpoint convert will write; before it exists the plan
    builds model.preset and says so; once a config.json is there, the checkpoint is what is read."""
    c = tiny_config(**{"model.preset": "tiny-qwen2", "model.checkpoint": str(tmp_path / "ckpt")})
    c2, source = plan.with_model_source(c)
    assert c2.model.checkpoint == "" and c.model.checkpoint == str(tmp_path / "ckpt")
    assert source == f"preset tiny-qwen2 (no checkpoint at {tmp_path / 'ckpt'} yet)"
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    c3, source = plan.with_model_source(c)
    assert c3.model.checkpoint == str(tmp_path / "ckpt") and source.startswith("checkpoint ")


# GRPO: the step's batch fields, the rollouts' decode cache and the reference -------------------------

def _grpo_tiny(**over):
    """The tiny preset with GRPO: 4 prompts x 2 generations = 8 rows, 64 new tokens after a prompt of
    at most 64 in 128 positions, the k3 penalty on (beta > 0: a reference policy)."""
    return tiny_config(**{"train.objective": "grpo", "grpo.prompts_per_step": 4,
                          "grpo.num_generations": 2, "grpo.max_new_tokens": 64, "grpo.beta": 0.04,
                          **over})


@pytest.mark.tpu_compile
def test_grpo_step_lowers_with_the_objectives_float_fields():
    """Oracle: objectives/__init__.py's contract and GRPO's fields by hand: with beta > 0 and one
    iteration the lowered step's batch is tokens, positions, segment_ids, loss_mask (int32) and
    advantages, ref_logp (float32), each [B, T] = [8, 128]; no old_logp (on-policy)."""
    from r1jax.parallel import sharding
    c = plan.with_variant(_grpo_tiny(), "lora")
    devices = plan.slice_devices(plan.parse_slice("v5p-8"))
    mesh = sharding.make_mesh(data=1, fsdp=4, expert=1, tensor=1, devices=devices)   # as plan.plan
    step_fn, args, _ = plan.build_step(c, mesh, fp8_base=True)
    with jax.set_mesh(mesh):
        lowered = step_fn.lower(*args)
    batch = lowered.args_info[0][3]
    want = {"tokens": "int32", "positions": "int32", "segment_ids": "int32", "loss_mask": "int32",
            "advantages": "float32", "ref_logp": "float32"}
    assert {k: str(v.dtype) for k, v in batch.items()} == want
    assert all(v.shape == (8, 128) for v in batch.values())


def _router_bias_count(cfg) -> int:
    """Entries of the routers' bias state (the step's `rest`), from the abstract model."""
    from r1jax.models.common.params import RouterBias
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, RouterBias)))


@pytest.mark.tpu_compile
@pytest.mark.parametrize("variant", ["lora", "full"])
def test_grpo_plan_reports_the_rollout_cache_and_the_reference(variant):
    """A GRPO plan of the tiny preset on v5p-8 (4 chips, fsdp 4). Oracles, by hand from the model
    config: the decode cache is MLA's latent + rope key for every layer, row and slot in bfloat16
    (the compute dtype), rows split over the 4 batch shards, plus each row's int32 start slot:
    L x 8 x 128 x (kv_lora_rank + qk_rope_head_dim) x 2 / 4 + 8 x 4 / 4 bytes per chip (128 slots =
    a 64-token prompt bucket + 64 new tokens in whole decode calls of 8 = train.seq_len); the
    reference (beta > 0) is a zero adapter tree, 4 bytes per adapter parameter of _adapter_formula
    (lora), or the float32 params again (full), each plus a copy of the router biases (float32).
    The prefill and decode compile; the verdicts fit at this size."""
    cfg = preset("tiny")
    r = plan.plan(_grpo_tiny(), "v5p-8", variant)
    ro = r["rollout"]
    assert r["objective"] == "grpo" and r["compiled"] and ro["compiled"], r
    assert (ro["rows"], ro["cache_slots"], ro["batch_shards"], ro["cache_dtype"]) == (8, 128, 4, "bfloat16")
    cache = (cfg.num_hidden_layers * 8 * 128 * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * 2 + 8 * 4) / 4
    assert math.isclose(ro["cache_gib"] * GIB, cache), (ro["cache_gib"] * GIB, cache)
    if variant == "lora":
        weights = 4 * sum(n for g, n in _adapter_formula(cfg, 16).items() if g != "routed_experts")
    else:
        weights = 4 * sum(x.size for x in jax.tree.leaves(nnx.state(
            nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))), nnx.Param)))
    assert math.isclose(ro["reference_global_gib"] * GIB, weights + 4 * _router_bias_count(cfg))
    assert ro["reference"] == ("the base, adapters zero" if variant == "lora" else "a copy of the params")
    # both phases hold the model state, so each needs at least the cache's shard on top of it
    for phase in ("prefill", "decode"):
        assert ro[phase]["per_device_memory_gib"] >= ro["cache_gib"], ro
    assert ro["fits"] and ro["step_fits"] and r["step_fits"] and r["fits"]
    text = plan.format_report(r)
    assert "GRPO rollouts: 8 rows x 128 cache slots" in text and "GRPO step (rollouts + update): FITS" in text
