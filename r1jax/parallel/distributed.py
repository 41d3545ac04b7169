"""Joining the processes of a multi-host run (JAX's multi-controller runtime), and agreeing across them.

Every host runs the same `python -m r1jax.train`; each process drives its own devices and
`jax.distributed.initialize` connects them through a coordinator service on process 0. Where the
processes are described, in order:

    config dist.coordinator / dist.num_processes / dist.process_id    any launcher; loopback tests
    the environment: SLURM_NTASKS > 1 (srun), OMPI_COMM_WORLD_SIZE > 1 (mpirun),
      JAX_COORDINATOR_ADDRESS, TPU_WORKER_HOSTNAMES naming several hosts    JAX's own detection
      fills in whatever the config leaves unset (on a Cloud TPU pod it asks the VM's metadata)
    none of these                                                       one process: nothing to do

`initialize` must run before anything touches a device (jax.devices(), jit, device_put).
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import numpy as np


class DistributedError(RuntimeError):
    """The processes of a run could not be connected; the message says with which settings."""


def launcher(environ: Mapping[str, str] = os.environ) -> str | None:
    """The launcher whose variables say this process is one of several, or None."""
    def count(key: str) -> int:
        try:
            return int(environ.get(key, "1") or 1)
        except ValueError:
            return 1
    if count("SLURM_NTASKS") > 1 and "SLURM_STEP_NODELIST" in environ:
        return "slurm"
    if count("OMPI_COMM_WORLD_SIZE") > 1:
        return "open mpi"
    if environ.get("JAX_COORDINATOR_ADDRESS"):
        return "JAX_COORDINATOR_ADDRESS"
    if len([h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]) > 1:
        return "cloud tpu"
    return None


def init_args(dist, environ: Mapping[str, str] = os.environ) -> dict | None:
    """Keyword arguments of jax.distributed.initialize for the config's `dist` section, or None for a
    single-process run. A value left unset in the config is None: JAX detects it from the launcher."""
    if dist.num_processes == 1:
        return None  # asked for one process, whatever the environment says
    explicit = bool(dist.coordinator) or dist.num_processes > 1 or dist.process_id >= 0
    if not explicit and launcher(environ) is None:
        return None
    return {"coordinator_address": dist.coordinator or None,
            "num_processes": dist.num_processes or None,
            "process_id": dist.process_id if dist.process_id >= 0 else None}


def initialize(dist, environ: Mapping[str, str] = os.environ) -> str:
    """Joins the run's other processes if it has any; returns a line for the log."""
    args = init_args(dist, environ)
    if args is None:
        return "one process"
    if jax.distributed.is_initialized():  # an in-process caller that already joined
        return f"process {jax.process_index()} of {jax.process_count()} (already initialized)"
    platforms = environ.get("JAX_PLATFORMS", "") or (jax.config.jax_platforms or "")
    if platforms.split(",")[0] == "cpu":
        # CPU devices of several processes talk over gloo (TCP); JAX 0.10 defaults to it, but an
        # environment may have chosen another implementation.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(**args)
    except (ValueError, TypeError, RuntimeError) as e:
        shown = {k: v for k, v in args.items() if v is not None}
        raise DistributedError(
            f"jax.distributed.initialize({shown or 'from the environment'}) failed: {e}. Set "
            "config keys dist.coordinator (HOST:PORT of process 0, reachable from every host), "
            "dist.num_processes and dist.process_id, or launch under SLURM / a Cloud TPU pod "
            f"(detected launcher: {launcher(environ)})") from e
    return (f"process {jax.process_index()} of {jax.process_count()} "
            f"(coordinator {args['coordinator_address'] or 'from ' + str(launcher(environ))})")


class AnyProcess:
    """Whether any process raised a flag (a SIGTERM), decided identically on every process.

    Preemption notices reach hosts at different steps; a process that stopped alone would leave the
    others waiting in a collective forever. Every process calls `poll` once per step with its own
    flag; the flags are max-reduced on the devices and the answer is read one call later, so the
    host never waits for the device and all processes act at the same step.
    """

    def __init__(self):
        self.multi = jax.process_count() > 1
        self.pending = None
        if self.multi:
            mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("all",))  # processes in order
            self.sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("all"))
            self.reduce = jax.jit(lambda x: x.max(), out_shardings=jax.sharding.NamedSharding(
                mesh, jax.sharding.PartitionSpec()))

    def poll(self, flag: bool) -> bool:
        """True when some process passed flag=True to the previous poll (this one, for one process)."""
        if not self.multi:
            return flag
        local = np.full((jax.local_device_count(),), int(flag), np.int32)  # [local devices]
        vote = self.reduce(jax.make_array_from_process_local_data(self.sharding, local))
        previous, self.pending = self.pending, vote
        return previous is not None and bool(np.asarray(previous))


def process_0_says(flag: bool) -> bool:
    """Process 0's `flag`, on every process (each passes its own; only process 0's counts). A decision
    only process 0 can make (it holds the run directory's lock) is followed by all."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils
    return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def to_host(x: jax.Array) -> np.ndarray:
    """The whole value of a device array on this host, on every process: a direct copy when this
    process holds all of it, else gathered from the processes (a collective: every process calls it)."""
    if x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def my_share(n: int) -> range:
    """The items 0..n-1 this process handles when each process takes a contiguous share (process p
    of P: items p*ceil(n/P) ... at most (p+1)*ceil(n/P) - 1; the last shares may be short or empty)."""
    per = -(-n // jax.process_count())
    first = min(n, jax.process_index() * per)
    return range(first, min(n, first + per))


def gather_rows(local: np.ndarray, n: int) -> np.ndarray:
    """Every process's `my_share(n)` rows ([len(my_share(n)), ...], any dtype) joined in item order:
    [n, ...] on every process, bit for bit (float64 travels as raw bytes: JAX would round it to
    float32). A collective: every process calls it with the same n, trailing shape and dtype."""
    local = np.ascontiguousarray(local)
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils
    per = -(-n // jax.process_count())
    row_bytes = int(np.prod(local.shape[1:], dtype=np.int64)) * local.dtype.itemsize
    raw = local.view(np.uint8).reshape(len(local), row_bytes)                # [rows, bytes]
    padded = np.zeros((per, row_bytes), np.uint8)
    padded[:len(raw)] = raw
    joined = np.asarray(multihost_utils.process_allgather(padded, tiled=True))[:n]  # [n, bytes]
    return np.ascontiguousarray(joined).view(local.dtype).reshape((n,) + local.shape[1:])
