"""Fine-tune an R1-architecture model: python -m r1jax.train --config=configs/code.py [--config.k=v]

Reads top to bottom: config, processes, mesh, data, model, shard, step, checkpoint, loop. Rerunning the
same command in the same output_dir resumes exactly (params, optimizer state, router bias, step and the
data iterator), on any mesh. SIGTERM saves a checkpoint and exits cleanly. One trainer at a time per
output_dir: it holds OUTPUT_DIR/r1jax.lock (r1jax/train/run_lock.py) from before its first write to its exit.

Multi-host: every host runs this same command (tools/launch_tpu_pod.sh, tools/launch_slurm.sh); the
processes join first (r1jax/parallel/distributed.py), each loads its own rows of every global batch, all of them
write and restore the checkpoints, and only process 0 holds the lock and writes metrics, plots and
config files.
output_dir and data.cache_dir must be one directory every host sees.
"""
from __future__ import annotations

import functools
import math
import os
import shutil
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, logging as absl_logging
from flax import nnx
from jax.experimental.layout import Format, Layout
from ml_collections import config_flags

from r1jax.models import checkpoint, sources
from r1jax.parallel import distributed, sharding
from r1jax.train import run_config, run_lock
from r1jax.data.formats import DataError
from r1jax.data.loader import make_loader
from r1jax.data import tokenizer as tokenizer_lib
from r1jax.data.token_store import TokenStore
from r1jax.models import registry
from r1jax.train.monitor import Monitor, device_memory, peak_tflops
from r1jax.train.optim import check_groups, make_optimizer, path_str
from r1jax.train.run_json import JsonlError, dumps
from r1jax.models.common.lora import has_adapters
from r1jax.train.step import StepConfig, loss_fn, train_step
from r1jax.models.common.partition import merge, split_adapters, split_model, split_trained
from r1jax.eval import rewards
from r1jax.eval.task_eval import TaskEval
from r1jax.eval.tasks import sandbox
from r1jax.eval.tasks.runner import TaskError
from r1jax.train.checkpoints import RunCheckpoints, abstract_of
from r1jax.train.run_data import prepare_data, prepare_prompts
from r1jax.data.prompt_set import read_prompts
from r1jax.train.objectives.grpo import policy_logprobs
from r1jax.train.rollouts import Rollouts, check_rows, steps_per_epoch


class TrainingError(RuntimeError):
    """A run that cannot continue; the message says why and what was kept."""


def _global_batch(local: dict, batch_sharding) -> dict:
    """This process's rows of each field (the loader's share) -> the step's global arrays."""
    return {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v)) for k, v in local.items()}


def _whole_batch(arrays: dict, batch_sharding) -> dict:
    """Every row of each field, the same on every process (GRPO's rollouts) -> global arrays: each
    process places the rows of its own devices."""
    return {k: jax.make_array_from_callback(v.shape, batch_sharding, lambda index, v=v: v[index])
            for k, v in arrays.items()}


def opt_state_shardings(opt_state, params, mesh) -> object:
    """Each optimizer-state leaf sharded like the parameter it belongs to (Adam's moments; its dotted
    path ends with the parameter's and the shapes agree), anything else (counters) replicated.

    `jax.jit(tx.init)` alone replicates the moments: its zeros do not depend on the parameters.
    """
    by_name = {path_str(p): (x.shape, x.sharding)
               for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def one(path, leaf):
        name = path_str(path)
        owners = [p for p, (shape, _) in by_name.items()
                  if (name == p or name.endswith("." + p)) and leaf.shape == shape]
        return by_name[max(owners, key=len)][1] if owners else replicated
    return jax.tree_util.tree_map_with_path(one, opt_state)


def jit_train_step(graphdef, tx, sc: StepConfig, state_shardings: tuple, mesh, frozen_shardings=None):
    """train_step jitted with donated (params, rest, opt_state) that keep `state_shardings` step after
    step: left free, XLA may hand back another layout, which recompiles the step (or fails the
    ahead-of-time compiled one). Metrics come back replicated, readable on every process.

    frozen_shardings (a run with adapters): the frozen base's shardings. Its memory layout is left to
    the compiler (Layout.AUTO): in a layout fixed beforehand, the step converts the whole base once
    it loops over micro-batches, a second copy of it per chip (BUILD.md "Pod plans"). Lower such a
    step with an abstract base and place the base as `frozen_format` says before the first step."""
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    kw = {}
    if frozen_shardings is not None:
        auto = jax.tree.map(lambda s: Format(Layout.AUTO, s), frozen_shardings)
        kw["in_shardings"] = (*state_shardings, sharding.batch_sharding(mesh), auto, replicated)
    return jax.jit(functools.partial(train_step, graphdef, tx, sc), donate_argnums=(0, 1, 2),
                   out_shardings=(*state_shardings, replicated), **kw)


def frozen_format(compiled_step):
    """The formats (layout and sharding) the compiled step takes its frozen base in (argument 4)."""
    return compiled_step.input_formats[0][4]


def evaluate_split(eval_fn, params, rest, frozen, prefix, c, batch_sharding, max_batches: int) -> dict:
    """val/loss, val/perplexity, val/accuracy, val/tokens over a split (or its first max_batches)."""
    loader = make_loader(prefix, seq_len=c.train.seq_len, batch_size=c.train.batch_size, shuffle=False,
                         num_epochs=1, packing=c.data.packing, process_index=jax.process_index(),
                         process_count=jax.process_count())
    nll = count = correct = 0.0
    for i, batch in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        s = jax.device_get(eval_fn(params, rest, _global_batch(batch, batch_sharding), frozen))
        nll, count, correct = nll + float(s["nll"]), count + float(s["tokens"]), correct + float(s["correct"])
    loader.close()
    loss = nll / max(count, 1.0)
    return {"val/loss": loss, "val/perplexity": math.exp(min(loss, 700.0)),
            "val/accuracy": correct / max(count, 1.0), "val/tokens": int(count)}


def run(c) -> dict:
    """Runs (or resumes) training as configured; returns the final summary."""
    run_config.validate(c)
    # ---- processes: joined before anything touches a device
    joined = distributed.initialize(c.dist)
    is_main = jax.process_index() == 0
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if is_main else (lambda s: None)
    run_config.make_config_dir(c.output_dir, "output_dir")
    # ---- run directory: one trainer writes it; process 0 holds the lock for all processes
    with run_lock.held(c.output_dir, log, hold=is_main, agree=distributed.process_0_says):
        return _run_locked(c, joined, is_main, log)


def _run_locked(c, joined: str, is_main: bool, log) -> dict:
    if is_main:
        with open(os.path.join(c.output_dir, "config.json"), "w") as f:
            f.write(c.to_json_best_effort(indent=2))
    log(f"processes: {joined}")

    # ---- mesh: set for the whole run, so that code tracing under it (shard_map) sees its axes
    try:  # mesh.preset, when set, picks the sizes for this device count
        mesh = sharding.make_mesh(**sharding.mesh_sizes(c.mesh, jax.device_count()))
    except ValueError as e:
        raise run_config.RunConfigError(f"config section mesh: {e}") from None
    shards = mesh.shape["data"] * mesh.shape["fsdp"] * mesh.shape["expert"]  # the batch's row shards
    c = run_config.with_grad_accum(c, shards)  # train.grad_accum 0 (auto) -> one row per shard
    micro = c.train.batch_size // c.train.grad_accum
    if micro % shards or c.train.batch_size % jax.process_count():
        raise run_config.RunConfigError(
            f"config key train.batch_size={c.train.batch_size}: each micro-batch ({micro} rows with "
            f"train.grad_accum={c.train.grad_accum}) must divide by the mesh's batch shards "
            f"(data x fsdp x expert = {shards}, mesh {dict(mesh.shape)}), and the batch by the "
            f"{jax.process_count()} process(es)")
    log(f"mesh {dict(mesh.shape)} over {mesh.devices.size} of {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s) in {jax.process_count()} process(es)")
    with jax.set_mesh(mesh):
        return _train(c, mesh, is_main, log)


def _train(c, mesh, is_main: bool, log) -> dict:
    batch_sharding = sharding.batch_sharding(mesh)

    # ---- model config, and the config keys naming its groups: checked before data or weights are read
    model_cfg = run_config.model_config(c)
    abstract = nnx.eval_shape(lambda: registry.build(model_cfg, nnx.Rngs(c.seed)))
    check_named_groups(c, abstract)

    # ---- data (tokenized with the checkpoint's own tokenizer when it has one, else the packaged R1 one)
    tokenizer = tokenizer_lib.load_checkpoint_tokenizer(run_config.model_dir(c), log)
    tokenizer_lib.check_fits(tokenizer, model_cfg.vocab_size, c.model.checkpoint or f"preset {c.model.preset}")
    grpo = c.train.objective == "grpo"
    if grpo:  # prompts with references; each step samples its batch (r1jax/train/rollouts.py)
        rollouts = _grpo_rollouts(c, tokenizer, mesh, log)
        loader = None
        total_steps = c.train.steps or c.train.epochs * steps_per_epoch(len(rollouts.train_rows),
                                                                        c.grpo.prompts_per_step)
        log(f"data: {len(rollouts.train_rows)} training prompts, {len(rollouts.val_rows)} val prompts; "
            f"{total_steps} steps of {c.grpo.prompts_per_step} prompts x {c.grpo.num_generations} "
            f"completions of <= {c.grpo.max_new_tokens} tokens")
    else:
        rollouts = None
        train_prefix, val_prefix = prepare_data(c, log)
        train_store = TokenStore(train_prefix)
        loader = make_loader(train_prefix, seq_len=c.train.seq_len, batch_size=c.train.batch_size,
                             seed=c.seed, packing=c.data.packing, process_index=jax.process_index(),
                             process_count=jax.process_count(),
                             num_epochs=None if c.train.steps else c.train.epochs)
        total_steps = c.train.steps or loader.total_steps
        log(f"data: {len(train_store)} training examples, {int(train_store.lengths().sum())} tokens; "
            f"{total_steps} steps of {c.train.batch_size} x {c.train.seq_len} tokens")
        if int(train_store.ids.max(initial=0)) >= model_cfg.vocab_size:
            raise TrainingError(f"{train_prefix}: token id {int(train_store.ids.max())} >= the model's "
                                f"vocab_size {model_cfg.vocab_size}")

    # ---- model: with adapters (section lora) they are the trained params, the weights `frozen`
    if model_cfg.fp8_weights and not model_cfg.lora.rank:
        raise TrainingError(f"model.checkpoint={c.model.checkpoint}: its projections are FP8 (a frozen "
                            "base for adapters): set lora.rank > 0, or convert with --dtype bfloat16 "
                            "for full fine-tuning")
    base = sources.lora_base(run_config.model_source(c), model_cfg, c.seed) if model_cfg.lora.rank else None
    _check_same_base(c.output_dir, base)
    graphdef, abs_params, abs_rest, abs_frozen = split_trained(abstract)
    p_shard = sharding.variable_shardings(abs_params, mesh)
    r_shard = sharding.variable_shardings(abs_rest, mesh)
    f_shard = None if abs_frozen is None else sharding.variable_shardings(abs_frozen, mesh)

    # ---- shard: params are created or restored directly on their devices
    params, rest, frozen = _place_model(c, model_cfg, abstract, (p_shard, r_shard, f_shard), mesh)
    log(f"model: {c.model.checkpoint}" if c.model.checkpoint else
        f"model: preset {c.model.preset}, random init (seed {c.seed})")
    if is_main:  # what export and evaluate need to read this run's checkpoints
        checkpoint.write_meta(os.path.join(c.output_dir, "model"), model_cfg, base=base,
                             token_ids=checkpoint.token_ids(run_config.model_dir(c)))
        _copy_side_files(run_config.model_dir(c), os.path.join(c.output_dir, "model"))
    n_params = sum(x.size for x in jax.tree.leaves(params))
    log(f"model: {n_params:,} trained parameters, compute {model_cfg.dtype}, params "
        f"{'float32 adapters' if frozen is not None else model_cfg.param_dtype}")
    if frozen is not None:
        n_frozen = sum(x.size for x in jax.tree.leaves(frozen))
        lc = model_cfg.lora
        log(f"lora: rank {lc.rank}, alpha {lc.alpha:g} (scale {lc.scale:g}), on {','.join(lc.targets)}; "
            f"{n_frozen / 1e6:.1f}M frozen base parameters"
            f"{' (FP8 projections)' if model_cfg.fp8_weights else ''}"
            f"{'; routed-expert adapters take no dropout' if lc.dropout and 'routed_experts' in lc.targets else ''}")

    # ---- step (GRPO: grpo.iterations optimizer updates per step's rollouts)
    updates_per_step = c.grpo.iterations if grpo else 1
    tx, lr_by_group, stage_at = make_optimizer(run_config.optim_config(c, total_steps * updates_per_step),
                                               abstract, params)
    o_shard = opt_state_shardings(jax.eval_shape(tx.init, params), params, mesh)
    opt_state = jax.jit(tx.init, out_shardings=o_shard)(params)
    sc = run_config.step_config(c)
    step_fn = jit_train_step(graphdef, tx, sc, (p_shard, r_shard, o_shard), mesh, f_shard)
    dropout_key = jax.random.key(c.seed) if model_cfg.lora.rank and model_cfg.lora.dropout else None
    eval_sc = StepConfig(loss_chunk=c.train.loss_chunk)
    eval_fn = jax.jit(  # the sums, replicated: every process reads them
        lambda p, r, b, f: {k: v for k, v in loss_fn(p, r, graphdef, b, eval_sc, frozen=f)[1].items()
                            if k in ("nll", "tokens", "correct")},
        out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    flops_per_token = registry.train_flops_per_token(model_cfg, c.train.seq_len)
    # GRPO's log-probabilities of the rollouts: the reference's (beta > 0) and, with several updates
    # per batch, the sampling policy's; the reference is the starting weights (with adapters: the
    # base, all adapters zero), kept before a resume replaces params.
    logprob_fns = {}
    if grpo:
        logprobs = jax.jit(lambda p, r, f, b: policy_logprobs(
            merge(graphdef, p, r, f), b, sc.objective.temperature, c.train.loss_chunk,
            sc.objective.window(c.train.seq_len)), out_shardings=batch_sharding)
        if c.grpo.beta > 0:
            ref = _reference(params, rest, frozen is not None)
            log(f"grpo: reference policy = {'the base, adapters off' if frozen is not None else 'a frozen copy of the starting weights'}"
                f" ({sum(x.nbytes for x in jax.tree.leaves(ref)) / 2**30:.2f} GiB)")
            logprob_fns["ref_logp"] = lambda b: logprobs(*ref, frozen, b)
        if c.grpo.iterations > 1:
            logprob_fns["old_logp"] = lambda b: logprobs(params, rest, frozen, b)

    # ---- checkpoint: resume if this output_dir has one
    best_metric = "val/reward" if grpo else "val/loss"  # the best checkpoint's: higher / lower is better
    best_name = best_metric.replace("/", "_")  # summary.json: first_/last_/best_val_loss or _val_reward
    ckpts = RunCheckpoints(c.output_dir, c.train.keep_checkpoints, log, best_metric, "max" if grpo else "min")
    monitor = Monitor(c.output_dir, total_steps, enabled=is_main)
    meta = {"step": 0, "nonfinite": 0, "best_val": None, "evals_without_gain": 0}
    # params and rest are saved as nested dicts (the model checkpoint layout: export reads them).
    state = {"params": nnx.to_pure_dict(params), "rest": nnx.to_pure_dict(rest), "opt_state": opt_state}
    restored = ckpts.restore_latest(abstract_of(state))
    if restored is not None:
        step0, state, meta = restored
        nnx.replace_by_pure_dict(params, state["params"])
        nnx.replace_by_pure_dict(rest, state["rest"])
        opt_state = state["opt_state"]
        if loader is not None:  # GRPO's prompts and keys follow from (seed, step) alone
            loader.set_state(meta["data"])
        log(f"resumed from {c.output_dir}/checkpoints/{step0}")
    step = meta["step"]
    monitor.truncate_after(step if restored is not None else -1)  # this run rewrites what follows

    def snapshot():
        return ({"params": nnx.to_pure_dict(params), "rest": nnx.to_pure_dict(rest), "opt_state": opt_state},
                {**meta, "step": step, "data": loader.get_state() if loader is not None else None})

    stop = {"signal": None}
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum))
    stop_agreed = distributed.AnyProcess()  # a SIGTERM on one host stops every host at the same step

    task_eval = TaskEval(c) if c.train.task_eval_every else None

    def do_task_eval(at_step: int) -> None:
        """The task metric (generation + scoring) of the current params on the held-out items;
        the per-sample records go to OUTPUT_DIR/task_eval/STEP.jsonl."""
        t = time.perf_counter()
        metrics = task_eval.run_model(merge(graphdef, params, rest, frozen), tokenizer, mesh)
        monitor.write({"step": at_step, **metrics})
        if is_main:
            os.makedirs(os.path.join(c.output_dir, "task_eval"), exist_ok=True)
            with open(os.path.join(c.output_dir, "task_eval", f"{at_step}.jsonl"), "w") as f:
                f.writelines(dumps(r) + "\n" for r in task_eval.last_records)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if not k.endswith("_seconds"))
        log(f"step {at_step}: {shown} ({time.perf_counter() - t:.1f} s)")

    def do_eval(at_step: int, train_loss: float | None) -> bool:
        """Validation at `at_step`: logs, keeps the best checkpoint; True to stop early.
        SFT: val/loss of the val split; GRPO: val/reward and val/pass_rate of sampled answers."""
        if grpo:
            t = time.perf_counter()
            ev, records = rollouts.validate(merge(graphdef, params, rest, frozen))
            _write_records(c.output_dir, os.path.join("rollouts", "val"), at_step, records, is_main)
            shown = f"val/reward {ev['val/reward']:.4f}, val/pass_rate {ev['val/pass_rate']:.4f}"
            ev["time/val_s"] = time.perf_counter() - t
        else:
            ev = evaluate_split(eval_fn, params, rest, frozen, val_prefix, c, batch_sharding,
                                c.train.eval_batches)
            if train_loss is not None:
                ev["train_val_gap"] = ev["val/loss"] - train_loss  # the overfitting indicator
            shown = f"val/loss {ev['val/loss']:.4f} (perplexity {ev['val/perplexity']:.2f})"
        ev["step"] = at_step
        monitor.write(ev)
        monitor.plot()
        log(f"step {at_step}: {shown}")
        value = ev[best_metric]
        summary.setdefault(f"first_{best_name}", value)
        summary[f"last_{best_name}"] = value
        if at_step == 0:
            return False  # the baseline: not a candidate for the best checkpoint
        finite = math.isfinite(value)  # a diverged model is never the best one
        better = meta["best_val"] is None or (value > meta["best_val"] if grpo else value < meta["best_val"])
        if finite and better:
            meta["best_val"], meta["evals_without_gain"] = value, 0
            ckpts.save_best(at_step, *snapshot(), value)
        else:
            meta["evals_without_gain"] += 1
        if c.train.early_stop_patience and meta["evals_without_gain"] >= c.train.early_stop_patience:
            log(f"step {at_step}: no val improvement in {meta['evals_without_gain']} evals; stopping early")
            return True
        return False

    # ---- loop
    summary = {"start_step": step}
    stage = int(stage_at(step))
    pending = None
    int_fields = ("tokens", "positions", "segment_ids", "loss_mask")
    batch_spec = {k: jax.ShapeDtypeStruct((c.train.batch_size, c.train.seq_len),
                                          jnp.int32 if k in int_fields else jnp.float32, sharding=batch_sharding)
                  for k in ("tokens", "positions", "segment_ids", *sc.objective.fields)}
    t0 = time.perf_counter()
    step_key = lambda at: None if dropout_key is None else jax.random.fold_in(dropout_key, at)
    step_fn = step_fn.lower(params, rest, opt_state, batch_spec, None if frozen is None else
                            abstract_of(frozen), step_key(0)).compile()
    if frozen is not None:  # the base, once, into the layout the compiled step chose for it
        frozen = jax.device_put(frozen, frozen_format(step_fn), donate=True)
    log(f"train step compiled in {time.perf_counter() - t0:.1f} s")
    if step == 0:
        do_eval(0, None)  # the starting model: every curve has its baseline
        if task_eval:
            do_task_eval(0)
    t_last = time.perf_counter()
    try:
        while step < total_steps:
            if stop_agreed.poll(stop["signal"] is not None):
                log(f"SIGTERM at step {step}: saving a checkpoint and exiting")
                ckpts.save(step, *snapshot())
                ckpts.wait()
                summary.update(stopped="SIGTERM", step=step)
                return summary
            if grpo:
                t_step = time.perf_counter()
                batch, info, records = rollouts.sample(merge(graphdef, params, rest, frozen), step,
                                                       lambda a: _whole_batch(a, batch_sharding), logprob_fns)
                t_update = time.perf_counter()
                for it in range(updates_per_step):
                    params, rest, opt_state, m = step_fn(params, rest, opt_state, batch, frozen,
                                                         step_key(step * updates_per_step + it))
            else:
                try:
                    local = next(loader)
                except StopIteration:
                    break
                params, rest, opt_state, m = step_fn(params, rest, opt_state, _global_batch(local, batch_sharding),
                                                     frozen, step_key(step))
            step += 1
            # The previous step's scalars are read after this step is dispatched: no stall.
            if pending is not None:
                _check_finite(pending, meta, c, log, ckpts)
            pending = {"step": step, "skipped": m["skipped"]}
            new_stage = int(stage_at(step))
            if new_stage != stage:
                stage = new_stage
                log(f"step {step}: unfreezing stage {stage} starts ({c.optim.stages.split(';')[stage]})")

            if grpo:  # every step: the rollouts' rewards and the update's policy statistics
                mm = jax.device_get(m)
                now = time.perf_counter()
                rec = {"step": step, "train/loss": float(mm["loss"]), "grad_norm": float(mm["grad_norm"]),
                       **{k: float(mm[k]) for k in GRPO_METRICS if k in mm}, **info,
                       "time/update_s": now - t_update, "step_time_s": now - t_step,
                       **{f"lr/{g}": v for g, v in lr_by_group(step * updates_per_step).items()},
                       **device_memory()}
                monitor.write(rec)
                _write_records(c.output_dir, "rollouts", step, records, is_main)
                monitor.progress(step, f"reward {info['reward/mean']:.3f} loss {rec['train/loss']:.4f}")
            elif step % c.train.log_every == 0 or step == total_steps:
                jax.block_until_ready(m["loss"])
                now = time.perf_counter()
                steps_done = c.train.log_every if step % c.train.log_every == 0 else step % c.train.log_every
                mm = jax.device_get(m)
                step_time = (now - t_last) / steps_done
                t_last = now
                tok_s = c.train.batch_size * c.train.seq_len / step_time
                tflops = flops_per_token * tok_s / 1e12
                peak = peak_tflops()
                rec = {"step": step, "train/loss": float(mm["loss"]), "train/accuracy": float(mm["accuracy"]),
                       "grad_norm": float(mm["grad_norm"]), "tokens_per_s": tok_s, "model_tflops": tflops,
                       "step_time_s": step_time, **{f"lr/{g}": v for g, v in lr_by_group(step).items()},
                       **device_memory()}
                if peak:
                    rec["mfu"] = tflops / peak
                if "expert_load" in mm:
                    load = np.asarray(mm["expert_load"])
                    rec["moe/expert_load"] = load.round(5).tolist()
                    rec["moe/max_over_mean"] = (load.max(-1) * load.shape[-1]).round(4).tolist()
                    rec["moe/aux_loss"] = float(mm["aux_loss"])
                if "mtp_loss" in mm:
                    rec["train/mtp_loss"] = float(mm["mtp_loss"])
                monitor.write(rec)
                monitor.progress(step, f"loss {rec['train/loss']:.4f} {tok_s:.0f} tok/s")

            if task_eval and (step % c.train.task_eval_every == 0 or step == total_steps):
                do_task_eval(step)
            if step % c.train.eval_every == 0 or step == total_steps:
                if do_eval(step, float(jax.device_get(m["loss"]))):
                    break
            if step % c.train.checkpoint_every == 0:
                ckpts.save(step, *snapshot())
        if pending is not None:
            _check_finite(pending, meta, c, log, ckpts)
        ckpts.save(step, *snapshot())
        ckpts.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        ckpts.wait()
        ckpts.close()
        if loader is not None:
            loader.close()
    summary.update(step=step, **{f"best_{best_name}": meta["best_val"]})
    if is_main:
        with open(os.path.join(c.output_dir, "summary.json"), "w") as f:
            f.write(dumps(summary, indent=1))
    return summary


GRPO_METRICS = ("kl", "clip_fraction", "clip_low_fraction", "clip_high_fraction", "ratio_mean", "entropy")


def _grpo_rollouts(c, tokenizer, mesh, log) -> Rollouts:
    """The prompt rows of data.train / data.val, prepared (r1jax/data/prompt_set.py) with a prompt
    budget of train.seq_len - grpo.max_new_tokens tokens, checked against the rewards' fields."""
    train_path, val_path = prepare_prompts(c, log, max_tokens=c.train.seq_len - c.grpo.max_new_tokens)
    train_rows, val_rows = read_prompts(train_path), read_prompts(val_path)
    for rows in (train_rows, val_rows):
        check_rows(rows, c.grpo.rewards)
    if "code_tests" in c.grpo.rewards:  # fail at start-up, not at the first rollout
        try:
            sandbox.check_runs(rewards.CODE_LIMITS)
        except sandbox.SandboxError as e:
            raise TrainingError(f"grpo.rewards code_tests: {e}") from None
    return Rollouts(train_rows, val_rows, tokenizer, run_config.rollout_settings(c), seed=c.seed,
                    seq_len=c.train.seq_len, mesh=mesh, meta_dir=run_config.model_dir(c) or None, log=log)


def _reference(params, rest, adapters: bool):
    """GRPO's reference policy as (params, rest): with adapters, every adapter zero (x A B = 0: the
    base alone); else a copy of the starting weights (its memory is the params' again)."""
    weights = jax.tree.map(jnp.zeros_like if adapters else jnp.copy, params)
    return weights, jax.tree.map(jnp.copy, rest)  # the step donates rest: the reference keeps its own


def _write_records(output_dir: str, sub: str, step: int, records: list[dict], is_main: bool) -> None:
    """OUTPUT_DIR/SUB/STEP.jsonl: one JSON object per rollout (process 0 writes)."""
    if not is_main:
        return
    os.makedirs(os.path.join(output_dir, sub), exist_ok=True)
    with open(os.path.join(output_dir, sub, f"{step}.jsonl"), "w") as f:
        f.writelines(dumps(r) + "\n" for r in records)


def _place_model(c, model_cfg, abstract, shardings, mesh):
    """(params, rest, frozen) on their devices (`shardings`: theirs, frozen's None without
    adapters): what model.checkpoint names (sources.start_model: a model checkpoint's or a run's
    weights, whose adapters continue or are merged; adapters on a model checkpoint start fresh,
    A random and B zero) or randomly initialized from the seed."""
    p_shard, r_shard, f_shard = shardings
    init = lambda: split_trained(registry.build(model_cfg, nnx.Rngs(c.seed)))[1:]
    if not c.model.checkpoint:
        params, rest, frozen = jax.jit(init, out_shardings=(p_shard, r_shard, f_shard))()
        return params, rest, frozen
    loaded = sources.start_model(run_config.model_source(c), model_cfg, mesh)
    if f_shard is not None and has_adapters(loaded):  # a run's adapters, continued
        _, params, frozen, rest = split_adapters(loaded)
        return params, rest, frozen
    if f_shard is None:
        _, params, rest = split_model(loaded)
        return params, rest, None
    # Only the adapters are initialized (the jitted init's base weights are dead code, never made).
    params = jax.jit(lambda: init()[0], out_shardings=p_shard)()
    _, _, frozen, rest = split_adapters(nnx.merge(split_trained(abstract)[0], params, nnx.state(loaded)))
    return params, rest, frozen


def check_named_groups(c, abstract) -> None:
    """The groups config keys name (optim.group_lr, optim.group_wd, optim.freeze_groups, lora.targets)
    are groups of the run's model `abstract` (optim.check_groups); else a RunConfigError naming the
    key and the model's groups, e.g. lora.targets=routed_experts on a dense model."""
    try:
        check_groups(run_config.optim_config(c, 1), abstract)
    except ValueError as e:  # GroupError, or a name outside GROUPS: both name the key
        raise run_config.RunConfigError(str(e)) from None


def _check_same_base(output_dir: str, base: dict | None) -> None:
    """A run with adapters resumes only on the base it started from (its RUN/model/r1jax.json)."""
    if base is None:
        return
    had = checkpoint.read_meta(os.path.join(output_dir, "model")).get("base")
    has_ckpt = os.path.isdir(os.path.join(output_dir, "checkpoints")) and any(
        d.isdigit() for d in os.listdir(os.path.join(output_dir, "checkpoints")))
    if had is not None and has_ckpt and had.get("digest") != base["digest"]:
        what = lambda b: b["path"] or f"the random-init base of seed {b.get('seed')}"
        raise TrainingError(f"{output_dir} holds adapters trained on {what(had)} (digest "
                            f"{had.get('digest')}), not on {what(base)} (digest {base['digest']}): "
                            "resume with the same base (model.checkpoint), or start a new output_dir")


def _copy_side_files(checkpoint_dir: str, model_dir: str) -> None:
    """The checkpoint's tokenizer and generation config (checkpoint.SIDE_FILES) into the run's
    model directory, so generate / evaluate / export of the run use them; one the checkpoint lacks
    (or a preset's run: all) is removed there, not left from an earlier run."""
    for name in checkpoint.SIDE_FILES:
        src, dst = os.path.join(checkpoint_dir or "", name), os.path.join(model_dir, name)
        if checkpoint_dir and os.path.isfile(src):
            shutil.copyfile(src, dst)
        elif os.path.exists(dst):
            os.remove(dst)


def _check_finite(pending: dict, meta: dict, c, log, ckpts: RunCheckpoints) -> None:
    """Counts consecutive skipped (non-finite) steps; too many in a row stop the run, naming the
    newest checkpoint (skipped steps leave the parameters unchanged: it is good), or saying there is
    none."""
    skipped = int(jax.device_get(pending["skipped"]))
    meta["nonfinite"] = meta["nonfinite"] + 1 if skipped else 0
    if skipped:
        log(f"step {pending['step']}: non-finite loss or gradient; update skipped "
            f"({meta['nonfinite']} in a row)")
    if meta["nonfinite"] >= c.train.max_nonfinite:
        last = ckpts.latest_step()
        kept = (f"the last good checkpoint is {os.path.join(c.output_dir, 'checkpoints', str(last))} "
                f"(step {last})" if last is not None else
                f"there is no checkpoint to go back to in {os.path.join(c.output_dir, 'checkpoints')}")
        raise TrainingError(f"{meta['nonfinite']} non-finite steps in a row at step {pending['step']}; "
                            f"stopping; {kept}")


_CONFIG = config_flags.DEFINE_config_file("config", None, "a configs/*.py file with get_config()",
                                          lock_config=True)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (app.run's flags_parser), after run_config.check_overrides: an unknown
    --config.KEY is one line naming it and the nearest key, exit status 2 (the flag library itself
    answers it with a traceback)."""
    try:
        run_config.check_overrides(argv[1:])
    except run_config.RunConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return app.parse_flags_with_usage(argv)


def main(argv) -> None:
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax narrates every save at INFO
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None:
        raise app.UsageError("--config=configs/NAME.py is required")
    try:
        summary = run(_CONFIG.value)
    except (TrainingError, run_config.RunConfigError, distributed.DistributedError, DataError, TaskError,
            run_lock.RunLockError, JsonlError, checkpoint.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(dumps(summary))


def cli() -> None:
    """`python -m r1jax.train` (r1jax/train/__main__.py)."""
    app.run(main, flags_parser=parse_flags)
