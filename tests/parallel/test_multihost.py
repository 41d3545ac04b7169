"""python -m r1jax.train as 2 processes x 2 CPU devices over loopback (jax.distributed, gloo) equals
1 process x 4 devices: the same losses at every step and the same final parameters; for GRPO, the
same rollouts and rewards with each process scoring its own share.

The two processes are started the way tools/launch_slurm.sh starts them under srun: the coordinator
as a flag, the process count and ids from SLURM's variables (JAX's SLURM detection reads them)."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
from r1jax.parallel import distributed  # noqa: E402
from r1jax.train import run_config
from r1jax.train.loop import run  # noqa: E402
from r1jax.train.run_data import prepare_data  # noqa: E402
from train_fixtures import config, synthetic  # noqa: E402

STEPS = 4
TIMEOUT = 420  # seconds for the whole launch: 2 cores are shared with other test runs


def _config(data, out):
    return config(data, out, train__steps=STEPS, train__batch_size=4,  # one row per device
                  train__seq_len=32, train__log_every=1, train__eval_every=2, train__eval_batches=2,
                  train__checkpoint_every=2, mesh__data=-1)  # every device of every process


def _command(c):
    overrides = {"output_dir": c.output_dir, "data.train": c.data.train, "data.cache_dir": c.data.cache_dir,
                 "data.max_examples": 0, "train.steps": STEPS, "train.batch_size": c.train.batch_size,
                 "train.seq_len": c.train.seq_len, "train.log_every": 1, "train.eval_every": 2,
                 "train.eval_batches": 2, "train.checkpoint_every": 2, "mesh.data": -1}
    return [sys.executable, "-m", "r1jax.train", f"--config={ROOT / 'configs' / 'tiny.py'}",
            *(f"--config.{k}={v}" for k, v in overrides.items())]


def _env(devices):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "TPU_", "JAX_COORD"))}
    return dict(env, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_all(commands, meanwhile):
    """Runs the (command, env) pairs concurrently and `meanwhile()` here; all are killed if one fails
    or time runs out. Returns meanwhile's result and the processes' stderr."""
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd, env in commands]
    try:
        here = meanwhile()
        outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    failed = [f"process {i} exited with {p.returncode}:\n" + "\n".join(
        [line for line in err.splitlines() if "rror" in line or "ailed" in line or "Fatal" in line][:20]
        + ["..."] + err[-2000:].splitlines())
        for i, (p, (_, err)) in enumerate(zip(procs, outs)) if p.returncode]
    assert not failed, "\n\n".join(failed)
    return here, [err for _, err in outs]


def _records(out):
    return [json.loads(line) for line in open(Path(out) / "metrics.jsonl")]


def _final_params(out):
    """The last checkpoint's params and rest as {path: array}, restored onto this process's device 0
    (the checkpoint records the saving processes' devices)."""
    import jax
    import orbax.checkpoint as ocp
    path = Path(out) / "checkpoints" / str(STEPS) / "state"
    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(path)
        meta = getattr(meta, "item_metadata", meta)
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), dict(meta))
        tree = ckptr.restore(path, target)
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_flatten_with_path({"params": tree["params"],
                                                              "rest": tree["rest"]})[0]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    synthetic(data / "train.jsonl", n=200)
    one, two = tmp_path_factory.mktemp("one_process"), tmp_path_factory.mktemp("two_processes")
    prepare_data(_config(data, one), log=lambda s: None)  # once, here: the launches below reuse it
    port = _free_port()
    srun = lambda i: {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "127.0.0.1", "SLURM_NTASKS": "2",
                      "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i), "JAX_LOCAL_DEVICE_IDS": "0,1"}
    multi = [(_command(_config(data, two)) + [f"--config.dist.coordinator=127.0.0.1:{port}"],
              {**_env(2), **srun(i)}) for i in range(2)]
    # The reference runs in this process (8 CPU devices, conftest) on a mesh of its first 4.
    one_cfg = _config(data, one)
    one_cfg.mesh.data = 4
    summary, errs = _run_all(multi, lambda: run(one_cfg))
    return one, two, summary, errs


@pytest.mark.multihost
def test_two_processes_equal_one(runs):
    one, two, summary, (err_p0, err_p1) = runs
    assert "over 4 of 4 cpu device(s) in 2 process(es)" in err_p0, err_p0[-2000:]
    assert "process 0 of 2" in err_p0, err_p0[-2000:]
    assert summary["step"] == STEPS
    assert "compiled in" not in err_p1 and "val/loss" not in err_p1  # only process 0 logs
    ref, got = _records(one), _records(two)
    # Only process 0 writes metrics: each record once, in the same order as the single process.
    assert [(r["step"], "val/loss" in r) for r in got] == [(r["step"], "val/loss" in r) for r in ref]
    assert sum("train/loss" in r for r in got) == STEPS
    for r0, r1 in zip(ref, got):
        for key in ("train/loss", "val/loss", "grad_norm"):
            if key in r0:
                # Same math, another reduction order (gloo across processes vs in-process): float32
                # rounding only, ~1e-7 relative per step.
                assert r1[key] == pytest.approx(r0[key], rel=1e-5), (r0["step"], key)
    want, params = _final_params(one), _final_params(two)
    assert want.keys() == params.keys()
    for k, v in want.items():
        np.testing.assert_allclose(params[k], v, rtol=1e-4, atol=1e-6, err_msg=k)


VOTE = """
import json, sys
import jax
from r1jax.parallel import distributed
from r1jax.train import run_config
c = run_config.defaults()
c.dist.coordinator, c.dist.num_processes, c.dist.process_id = sys.argv[1], 2, int(sys.argv[2])
print(distributed.initialize(c.dist), file=sys.stderr)
vote = distributed.AnyProcess()
# process 1 alone raises its flag at the 4th poll (a SIGTERM that reached one host)
print(json.dumps([vote.poll(jax.process_index() == 1 and i == 3) for i in range(6)]))
"""


@pytest.mark.multihost
def test_a_flag_on_one_process_is_seen_by_all_at_the_same_poll():
    port = _free_port()
    cmd = lambda i: [sys.executable, "-c", VOTE, f"127.0.0.1:{port}", str(i)]
    procs = [subprocess.Popen(cmd(i), env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=ROOT) for i in range(2)]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "of 2" in err, err[-2000:]
        assert json.loads(out.splitlines()[-1]) == [False] * 4 + [True, False]


def test_launcher_detection_and_init_args():
    c = run_config.defaults()
    assert distributed.init_args(c.dist, {}) is None  # a plain run stays one process
    slurm = {"SLURM_NTASKS": "4", "SLURM_STEP_NODELIST": "node[01-04]", "SLURM_PROCID": "2"}
    assert distributed.launcher(slurm) == "slurm"
    assert distributed.init_args(c.dist, slurm) == {"coordinator_address": None, "num_processes": None,
                                                    "process_id": None}  # JAX reads SLURM's variables
    assert distributed.launcher({"SLURM_NTASKS": "1", "SLURM_STEP_NODELIST": "n1"}) is None
    assert distributed.launcher({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"}) == "cloud tpu"
    c.dist.num_processes = 16  # a TPU pod launch: the count given, the rest from the VM's metadata
    assert distributed.init_args(c.dist, {}) == {"coordinator_address": None, "num_processes": 16,
                                                 "process_id": None}
    c.dist.num_processes = 1
    assert distributed.init_args(c.dist, slurm) is None  # explicitly one process
    for key, value, match in (("coordinator", "nohost", "dist.coordinator"),
                              ("num_processes", 2, "dist.process_id"), ("process_id", -2, "dist.")):
        c = run_config.defaults()
        c.dist[key] = value
        if key == "num_processes":
            c.dist.process_id = 2
        with pytest.raises(run_config.RunConfigError, match=match):
            run_config.validate(c)


@pytest.mark.multihost
def test_a_held_run_directory_stops_every_process(tmp_path):
    """The run directory is locked by a live process (this test's): process 0 refuses naming it, and
    process 1, which does not take the lock, stops with it instead of waiting for process 0 forever.
    Oracle: this process's pid in process 0's message; the lock file left as it was."""
    import socket
    from r1jax.train.run_lock import LOCK_NAME
    data, out = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    out.mkdir()
    synthetic(data / "train.jsonl", n=50)
    held = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": "2026-01-01T00:00:00Z"})
    (out / LOCK_NAME).write_text(held)
    port = _free_port()
    srun = lambda i: {"SLURM_JOB_ID": "4243", "SLURM_STEP_NODELIST": "127.0.0.1", "SLURM_NTASKS": "2",
                      "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i), "JAX_LOCAL_DEVICE_IDS": "0,1"}
    cmd = _command(_config(data, out)) + [f"--config.dist.coordinator=127.0.0.1:{port}"]
    procs = [subprocess.Popen(cmd, env={**_env(2), **srun(i)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        errs = [p.communicate(timeout=180)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert [p.returncode for p in procs] == [2, 2], errs
    assert f"{out}: in use by another r1jax.train run (host {socket.gethostname()}, pid {os.getpid()}," \
        in errs[0], errs[0][-2000:]
    assert f"error: {out}: process 0 of this run could not lock it" in errs[1], errs[1][-2000:]
    assert (out / LOCK_NAME).read_text() == held
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written


# ---- GRPO over two processes: each scores its own share of the rollouts, rewards are gathered

GRPO_STEPS, P, G = 3, 2, 4
SCORER = '''
import os

def hashed(prompt, completion, row):
    """A varied reward of the text; each call noted under $GRPO_SCORE_LOG by the JAX process
    (SLURM_PROCID in the launched processes, "ref" in the single-process reference)."""
    with open(os.path.join(os.environ["GRPO_SCORE_LOG"], os.environ.get("SLURM_PROCID", "ref")), "a") as f:
        f.write(repr(completion.text) + "\\n")
    return (sum(map(ord, completion.text)) % 11) / 10
'''


def _grpo_overrides(data, out):
    return {"output_dir": str(out), "data.train": str(data / "train.jsonl"), "data.cache_dir": str(data / "cache"),
            "data.val_fraction": 0.25, "data.max_examples": 0, "train.objective": "grpo",
            "train.steps": GRPO_STEPS, "train.batch_size": P * G, "train.seq_len": 40, "train.log_every": 1,
            "train.eval_every": 2, "train.checkpoint_every": GRPO_STEPS, "mesh.data": -1,
            "grpo.prompts_per_step": P, "grpo.num_generations": G, "grpo.max_new_tokens": 10,
            "grpo.rewards": "grpo_mh_rewards.hashed:1.0,contains:0.1", "grpo.beta": 0.05,
            "grpo.iterations": 2, "grpo.workers": 1, "optim.lr": 1e-3, "optim.schedule": "constant"}


@pytest.fixture(scope="module")
def grpo_runs(tmp_path_factory):
    data = tmp_path_factory.mktemp("grpo_data")
    rows = [{"prompt": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in zip(range(1, 13), range(20, 32))]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "grpo_mh_rewards.py").write_text(SCORER)
    logs = {name: tmp_path_factory.mktemp(f"scored_{name}") for name in ("one", "two")}
    one, two = tmp_path_factory.mktemp("grpo_one_process"), tmp_path_factory.mktemp("grpo_two_processes")
    port = _free_port()
    srun = lambda i: {"SLURM_JOB_ID": "4244", "SLURM_STEP_NODELIST": "127.0.0.1", "SLURM_NTASKS": "2",
                      "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i), "JAX_LOCAL_DEVICE_IDS": "0,1"}
    cmd = [sys.executable, "-m", "r1jax.train", f"--config={ROOT / 'configs' / 'tiny.py'}",
           *(f"--config.{k}={v}" for k, v in _grpo_overrides(data, two).items()),
           f"--config.dist.coordinator=127.0.0.1:{port}"]
    env = lambda i: {**_env(2), **srun(i), "GRPO_SCORE_LOG": str(logs["two"]),
                     "PYTHONPATH": os.pathsep.join([str(data), os.environ.get("PYTHONPATH", "")])}
    # The reference: configs/tiny.py in this process (8 CPU devices, conftest) on a mesh of its first 4.
    c = config(data, one, **{k.replace(".", "__"): v for k, v in _grpo_overrides(data, one).items()
                             if k != "output_dir"})
    c.mesh.data = 4
    return data, one, two, logs, cmd, env, c


@pytest.mark.multihost
@pytest.mark.slow
def test_grpo_two_processes_equal_one(grpo_runs, monkeypatch):
    """GRPO as 2 processes x 2 devices equals 1 process x 4: the same rollouts, rewards, advantages
    and val samples (bit for bit: the sampled tokens, the gathered rewards), the same losses (float32
    reduction order aside); each process scored its own share (the user reward notes who called it)."""
    data, one, two, logs, cmd, env, c = grpo_runs
    monkeypatch.syspath_prepend(str(data))
    monkeypatch.setenv("GRPO_SCORE_LOG", str(logs["one"]))
    summary, (err_p0, _) = _run_all([(cmd, env(i)) for i in range(2)], lambda: run(c))
    assert "over 4 of 4 cpu device(s) in 2 process(es)" in err_p0, err_p0[-2000:]
    assert summary["step"] == GRPO_STEPS
    # The same rollouts, rewards and advantages, each written once (by process 0).
    for step in range(1, GRPO_STEPS + 1):
        ref = [json.loads(line) for line in open(one / "rollouts" / f"{step}.jsonl")]
        got = [json.loads(line) for line in open(two / "rollouts" / f"{step}.jsonl")]
        assert [r["completion"] for r in got] == [r["completion"] for r in ref], step
        assert [r["rewards"] for r in got] == [r["rewards"] for r in ref], step
        np.testing.assert_allclose([r["advantage"] for r in got], [r["advantage"] for r in ref], rtol=1e-6)
    for step in (0, 2, GRPO_STEPS):
        ref = (one / "rollouts" / "val" / f"{step}.jsonl").read_text()
        assert (two / "rollouts" / "val" / f"{step}.jsonl").read_text() == ref, step
    ref, got = _records(one), _records(two)
    assert [r["step"] for r in got] == [r["step"] for r in ref]
    for r0, r1 in zip(ref, got):
        for key in ("reward/mean", "reward/std", "val/reward", "val/pass_rate", "completion/length"):
            if key in r0:
                assert r1[key] == r0[key], (r0["step"], key)  # gathered bit for bit
        for key in ("train/loss", "kl", "entropy", "grad_norm"):
            if key in r0:
                assert r1[key] == pytest.approx(r0[key], rel=1e-4, abs=1e-7), (r0["step"], key)
    # Each process scored its own half of every batch: together every completion exactly once.
    scored = {p: (logs["two"] / p).read_text().splitlines() for p in ("0", "1")}
    everything = (logs["one"] / "ref").read_text().splitlines()
    # 3 steps of 8 rollouts (4 each) and 3 evals (steps 0, 2, 3) of 3 val prompts (2 and 1)
    assert (len(scored["0"]), len(scored["1"])) == (GRPO_STEPS * 4 + 3 * 2, GRPO_STEPS * 4 + 3 * 1)
    assert sorted(scored["0"] + scored["1"]) == sorted(everything)
