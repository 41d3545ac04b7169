"""The parameter -> PartitionSpec map of the r1-671b preset (with MTP) on its v5p-1024 mesh preset,
against the reviewed golden file tests/fixtures/r1_671b_partition.json, and the sharding's balance.

The map is rebuilt from nnx.eval_shape (no memory) and r1jax.parallel.sharding.variable_shardings on an
abstract mesh of the preset's shape (no devices). After a deliberate change to the table or the
model, regenerate and review the diff:

    python tests/parallel/test_partition_golden.py
"""
import functools
import json
import math
import os
import sys

import jax
from flax import nnx

from r1jax.parallel import sharding
from r1jax.models.deepseek_v3.transformer import Transformer
from r1jax.models.registry import preset
from r1jax.train.optim import path_str

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "fixtures", "r1_671b_partition.json")
PRESET, CHIPS = "r1-671b-v5p", 512   # v5p-1024


@functools.cache
def partition_map() -> tuple[dict, dict]:
    """({dotted name: {"shape", "dtype", "spec"}}, mesh sizes) of every variable of the 671B."""
    sizes = sharding.mesh_preset(PRESET, CHIPS)
    mesh = jax.sharding.AbstractMesh(tuple(sizes[a] for a in sharding.MESH_AXES), sharding.MESH_AXES)
    cfg = preset("r1-671b", param_dtype="bfloat16", with_mtp=True)
    state = nnx.state(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    shardings = sharding.variable_shardings(state, mesh)
    out = {}
    for (path, v), sh in zip(jax.tree_util.tree_flatten_with_path(state)[0], jax.tree.leaves(shardings)):
        out[path_str(path)] = {"shape": list(v.shape), "dtype": str(v.dtype),
                               "spec": [list(e) if isinstance(e, tuple) else e for e in sh.spec]}
    return out, sizes


def _diff(want: dict, got: dict) -> str:
    lines = [f"  missing now: {k} {want[k]}" for k in sorted(set(want) - set(got))]
    lines += [f"  new:         {k} {got[k]}" for k in sorted(set(got) - set(want))]
    lines += [f"  changed:     {k}\n      golden {want[k]}\n      now    {got[k]}"
              for k in sorted(set(want) & set(got)) if want[k] != got[k]]
    return "\n".join(lines)


def test_partition_map_matches_golden():
    got, sizes = partition_map()
    with open(GOLDEN) as f:
        golden = json.load(f)
    assert golden["mesh"] == sizes, f"mesh preset {PRESET} on {CHIPS} chips changed: {sizes}"
    diff = _diff(golden["params"], got)
    assert not diff, ("parameter -> PartitionSpec map differs from " + GOLDEN + " (if intended, "
                      "regenerate with `python tests/parallel/test_partition_golden.py` and review):\n" + diff)


def test_every_large_parameter_is_sharded_and_the_split_is_balanced():
    got, sizes = partition_map()
    n = math.prod(sizes.values())
    per_chip = total = 0
    replicated = []
    for name, e in got.items():
        elems = math.prod(e["shape"])
        axes = [a for entry in e["spec"] if entry for a in ([entry] if isinstance(entry, str) else entry)]
        ways = math.prod(sizes[a] for a in axes)
        if elems > 1_000_000 and ways == 1:
            replicated.append(name)
        width = {"bfloat16": 2, "float32": 4}[e["dtype"]]
        total += elems * width
        per_chip += elems * width // ways
    assert not replicated, f"parameters over 1M elements left fully replicated: {replicated}"
    # 671B + MTP in bf16: 1.37 TB (an independent count from the released config: 685B weights).
    assert 1.35e12 < total < 1.39e12, total
    # Balanced: a chip holds at most 25% more than an even 1/512 share (the non-expert 3% of the
    # model is split 64 ways only, over fsdp; anything replicated would break this bound).
    assert per_chip <= 1.25 * total / n, (per_chip / 2 ** 30, total / n / 2 ** 30)


if __name__ == "__main__":
    params, mesh_sizes = partition_map()
    with open(GOLDEN, "w") as f:
        json.dump({"preset": "r1-671b (with MTP)", "mesh_preset": PRESET, "chips": CHIPS,
                   "mesh": mesh_sizes, "params": params}, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {GOLDEN}: {len(params)} variables", file=sys.stderr)
