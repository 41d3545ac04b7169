"""configs/distill_qwen_7b.py and configs/distill_llama_8b.py: the R1-Distill full fine-tuning configs
validate, describe the published models, hold the state their docstrings count, and their docstring
commands (convert, LoRA overrides) agree with the config. Abstract shapes only: no weights, no compile.
"""
import importlib.util
import math
import os
import re
import shlex

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from r1jax.models import registry
from r1jax.models.checkpoint import CheckpointError
from r1jax.train import plan, run_config
from r1jax.train.optim import make_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GIB = 2 ** 30
# Parameter counts of the releases (their model cards / safetensors index totals), written by hand.
PUBLISHED = {"distill_qwen_7b": ("r1-distill-qwen-7b", 7_615_616_512),
             "distill_llama_8b": ("r1-distill-llama-8b", 8_030_261_248)}


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, f"{ROOT}/configs/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _docstring_command(doc: str, program: str) -> list[str]:
    """The argv of the docstring's (backslash-continued) command line running `program`."""
    text = doc.replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if program in ln)
    argv = shlex.split(line.split("#")[0])
    return argv[argv.index("python"):]


def _overrides(argv: list[str]) -> dict[str, str]:
    return {a[len("--config."):].split("=", 1)[0]: a.split("=", 1)[1]
            for a in argv if a.startswith("--config.")}


def _apply(c, overrides: dict[str, str]):
    """Config c with --config.KEY=VALUE overrides, each parsed as the key's default type."""
    c = c.copy_and_resolve_references()
    for key, text in overrides.items():
        *section, k = key.split(".")
        node = c[section[0]] if section else c
        kind = type(node[k])
        node[k] = text == "true" if kind is bool else kind(text)
    return c


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_distill_config_validates_and_matches_the_release(name):
    """Oracles: the release's parameter count (PUBLISHED, by hand) against the preset's abstract
    model; bytes per parameter by dtype (float32 params 4, bfloat16 moments 2 + 2) against the
    abstract optimizer state; the docstring's "12 bytes x N = X GiB" against 12 * N / 2^30."""
    c = _module(name).get_config()
    run_config.validate(c)
    preset, n_published = PUBLISHED[name]
    assert c.model.preset == preset
    # The checkpoint the config names is where the docstring's convert command writes.
    convert = _docstring_command(_module(name).__doc__, "r1jax.convert")
    assert convert[convert.index("--out") + 1] == c.model.checkpoint
    # Not converted here: naming the path, one line, before any weight is read.
    with pytest.raises(CheckpointError, match=re.escape(c.model.checkpoint)):
        run_config.model_config(c)
    c.model.checkpoint = ""              # the preset's architecture, as the checkpoint's would be
    cfg = run_config.model_config(c)
    assert (cfg.param_dtype, cfg.dtype, cfg.remat) == ("float32", "bfloat16", "full")
    abstract = nnx.eval_shape(lambda: registry.build(cfg, nnx.Rngs(0)))
    params = nnx.state(abstract, nnx.Param)
    n = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    assert n == n_published
    tx, _, _ = make_optimizer(run_config.optim_config(c, c.train.steps), abstract, params)
    opt = jax.eval_shape(tx.init, params)
    size = lambda t: sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(t))
    assert size(params) == 4 * n
    assert 4 * n <= size(opt) <= 4 * n + 1024          # + the step counters
    doc = _module(name).__doc__
    stated = float(re.search(r"12 bytes x N = ([0-9.]+) GiB", doc).group(1))
    assert stated == round(12 * n / GIB, 1)
    assert c.train.batch_size % c.train.grad_accum == 0


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_distill_lora_overrides_validate_and_give_the_documented_adapters(name):
    """The docstring's LoRA command (its --config overrides) validates; its adapters, counted by
    plan.adapter_counts, are the hand formula rank * (in + out) per adapted projection (q, k, v, o;
    gate, up, down) and the docstring's count in millions."""
    doc = _module(name).__doc__
    argv = _docstring_command(doc.split("LoRA instead")[1], "r1jax.train")
    c = _apply(_module(name).get_config(), _overrides(argv))
    run_config.validate(c)
    c.model.checkpoint = ""
    cfg = run_config.model_config(c)
    r, D, F, L = c.lora.rank, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    HK, GK = cfg.num_attention_heads * cfg.head_size, cfg.num_key_value_heads * cfg.head_size
    want = {"attention": L * r * ((D + HK) + 2 * (D + GK) + (HK + D)), "dense_mlp": L * 3 * r * (D + F)}
    assert plan.adapter_counts(cfg) == want
    stated = float(re.search(r"adapters\s+([0-9.]+)M parameters", doc).group(1))
    assert stated == round(sum(want.values()) / 1e6, 1)
    assert cfg.param_dtype == "bfloat16" and c.optim.state_dtype == "float32"
