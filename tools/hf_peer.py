"""The peer that tools/bench.py measures against: transformers' own model of the same config (PyTorch).

    python tools/hf_peer.py --preset v3-small --batch 2 --seq 4096 --out FILE.json          # one GPU
    python tools/hf_peer.py --preset r1-distill-qwen-7b --batch 2 --seq 4096 --remat full   # one GPU
    python tools/hf_peer.py --small --batch 2 --seq 128                                      # a CPU
    python tools/hf_peer.py --preset tiny-qwen2 --batch 2 --seq 128                          # a CPU

The model is r1jax's own preset of any family (`--small`: tools/bench.py's CPU shrink of v3-small)
written as its family's config.json (`r1jax.models.registry.to_hf_dict`) and built by transformers'
AutoConfig / AutoModelForCausalLM.from_config (DeepseekV3ForCausalLM, Qwen2ForCausalLM,
LlamaForCausalLM), so both implementations build the same architecture from one definition. Random
init, bf16 weights, SDPA attention, training mode; `--remat full` turns on transformers' gradient
checkpointing (each decoder layer recomputed in the backward pass, as r1jax's remat full). For a
model with routed experts (its r1jax parameters carry the routed_experts group) it times each expert
implementation transformers offers (`grouped_mm`, then `eager`); a dense model has one. Each row
times one forward pass with the language-model loss and its backward pass: no optimizer update, so
the peer's step is lighter than r1jax's full train step, and a ratio of our tokens/s over its
understates us.

    tokens/s      = batch * seq / median step time (2 warm-up steps, then --steps timed)
    model TFLOP/s = r1jax.models.registry.train_flops_per_token(cfg, seq) * tokens/s / 1e12

(the same formula tools/bench.py uses, on the same config). Prints one JSON row per implementation
and writes the list to --out; an implementation that fails is reported on stderr and left out.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import transformers

# JAX here only reads shapes (registry.build under nnx.eval_shape); on the CPU, so that it never
# takes the GPU memory torch measures in.
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import SMALL  # noqa: E402  (tools/bench.py: the --small shrink of v3-small)
from flax import nnx  # noqa: E402
from r1jax.models import registry  # noqa: E402
from r1jax.models.common import groups  # noqa: E402
from r1jax.models.registry import preset, train_flops_per_token  # noqa: E402

EXPERT_IMPLEMENTATIONS = ("grouped_mm", "eager")


def expert_implementations(cfg) -> tuple[str | None, ...]:
    """The transformers expert implementations to time for r1jax config `cfg`: EXPERT_IMPLEMENTATIONS
    when its model has routed experts (read from its parameters' group metadata), else (None,):
    a dense model's one implementation."""
    abstract = nnx.eval_shape(lambda: registry.build(cfg, nnx.Rngs(0)))
    has_experts = "routed_experts" in groups.present(groups.placements(abstract))
    return EXPERT_IMPLEMENTATIONS if has_experts else (None,)


def hf_config(cfg) -> transformers.PretrainedConfig:
    """transformers' config class for r1jax config `cfg`, from its family's config.json."""
    d = dict(registry.to_hf_dict(cfg))
    return transformers.AutoConfig.for_model(d.pop("model_type"), **d)


def build(cfg, experts: str | None, device: str, remat: bool = False) -> torch.nn.Module:
    """A randomly initialized bf16 HF model of r1jax config `cfg`, in training mode on `device`;
    `experts`: the expert implementation (None for a dense model); remat: gradient checkpointing."""
    kw = {} if experts is None else {"experts_implementation": experts}
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(
            hf_config(cfg), dtype=torch.bfloat16, attn_implementation="sdpa", **kw)
    if remat:
        model.gradient_checkpointing_enable()
    return model.train()


def time_steps(model, tokens: torch.Tensor, warmup: int, steps: int) -> list[float]:
    """Seconds of each timed forward (+ LM loss) and backward pass on `tokens` [B, T]."""
    cuda = tokens.is_cuda

    def step():
        model(input_ids=tokens, labels=tokens).loss.backward()
        if cuda:
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times


def measure(cfg, experts: str | None, batch: int, seq: int, warmup: int, steps: int,
            remat: bool = False) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build(cfg, experts, device, remat)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
    sec = statistics.median(time_steps(model, tokens, warmup, steps))
    tok_s = batch * seq / sec
    return {"impl": "hf" if experts is None else f"hf-{experts}", "model": type(model).__name__,
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "torch": torch.__version__, "transformers": transformers.__version__,
            "params_B": sum(p.numel() for p in model.parameters()) / 1e9, "remat": remat,
            "batch": batch, "seq": seq, "step_ms": sec * 1e3, "tokens_per_s": tok_s,
            "model_tflops": train_flops_per_token(cfg, seq) * tok_s / 1e12,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="v3-small")
    p.add_argument("--small", action="store_true", help="v3-small shrunk as tools/bench.py --small (CPU runs)")
    p.add_argument("--experts", type=int, default=0, help="override the number of routed experts")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--remat", default="none", choices=["none", "full"],
                   help="full: gradient checkpointing of every decoder layer")
    p.add_argument("--out", help="write the result rows (a JSON list) here")
    a = p.parse_args(argv)
    if a.small and a.preset != "v3-small":
        p.error("--small shrinks v3-small; use --preset v3-small")
    cfg = preset(a.preset, **(SMALL if a.small else {}))
    if a.experts:
        cfg = cfg.replace(n_routed_experts=a.experts)
    rows = []
    for experts in expert_implementations(cfg):
        try:
            rows.append(measure(cfg, experts, a.batch, a.seq, a.warmup, a.steps, a.remat == "full"))
            print(json.dumps(rows[-1]), flush=True)
        except Exception as e:  # one implementation failing (a kernel missing here) leaves the other
            print(f"hf-{experts or 'dense'} failed: {e!r}"[:600], file=sys.stderr, flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
