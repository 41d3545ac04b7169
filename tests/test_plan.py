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

from r1jax import plan
from r1jax.model import Transformer, preset
from r1jax.run_config import defaults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
    # FLOPs: the compiler's count for the slice against 6 N_active + attention (r1jax/flops.py).
    assert 0.7 < r["flops"] * r["chips"] / r["model_flops"] < 3.0, r


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
    """BUILD.md's pod-plan table: {slice: {column header: cell text}}."""
    rows = [ln for ln in open(os.path.join(ROOT, "BUILD.md")).read().splitlines()
            if ln.startswith("| ")]
    header = next(r for r in rows if r.startswith("| slice |"))
    names = [h.strip() for h in header.strip("|").split("|")]
    table = {}
    for r in rows[rows.index(header) + 1:]:
        cells = [x.strip() for x in r.strip("|").split("|")]
        if len(cells) != len(names):
            break
        table[cells[0]] = dict(zip(names, cells))
    return table


def test_auto_grad_accum_gives_the_table_column():
    """Oracle: BUILD.md's grad_accum column (made as 512 / chips by tools/plan_table.py at f8606f4,
    before the auto value existed) for each slice's chip count; on these meshes (tensor 1) the
    batch shards are the chips. Also: an explicit value wins, and a batch the shards do not divide
    is refused naming train.grad_accum."""
    from r1jax import run_config
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
    cell = _pod_plan_table()[opts["topology"]][variant]
    assert cell.startswith("**fits**"), cell
    want = float(cell.split(":")[1].split("/")[0])
    p = subprocess.run([sys.executable, *argv[1:], "--json"], cwd=ROOT, capture_output=True,
                       text=True, timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"{' '.join(argv)}: {r['per_device_memory_gib']:.2f} GiB per chip, grad_accum "
          f"{r['grad_accum']}, table {want} ({variant})")
    assert r["fits"] is True and r["compiled"] is True, r
    assert abs(r["per_device_memory_gib"] / want - 1) < 0.02, (r["per_device_memory_gib"], want)
