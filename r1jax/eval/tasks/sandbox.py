"""Run untrusted Python (generated code) in a confined child process, one process per sample.

    results = run_many(programs, Limits(timeout_s=10), workers=8)   # -> list[SandboxResult]

Never executes the program in the evaluator's process. Each sample gets:
- a fresh temporary directory as cwd, HOME and TMPDIR, deleted afterwards (whatever the child left);
- a fresh `python -I -B` (isolated: no PYTHON* variables, no user site, no script dir on sys.path; no
  .pyc writes) with stdin on /dev/null and a minimal environment (PATH, HOME, TMPDIR, LANG, one-thread
  BLAS settings, and a per-sample marker used to find its processes; nothing inherited, no secrets).
  -I ignores PYTHON* variables, PYTHONHASHSEED included: str hashing stays randomized per sample, as
  in any plain run, so a program that passes only for some set orders is not made to look stable;
- its own session and process group; stdout/stderr go to files capped by RLIMIT_FSIZE;
- a wall-clock timeout after which the whole process group is SIGKILLed; then every process still
  carrying the sample's marker (one that left the group with setsid) is SIGKILLed too;
- the confinement of r1jax/eval/tasks/confine.py, applied in the child before the program runs: rlimits
  (CPU, memory, file size, no core, open files, processes), Landlock (writes and deletes only inside
  its directory, reads only there and in the interpreter's own paths, no TCP, no signals outside),
  seccomp (no new processes, no sockets of any family, no io_uring) and a Python-level guard.

`available_layers()` reports the layers a real sandboxed run observed binding it; `check_runs()`
raises SandboxError when a trivial passing program does not pass (task evaluation calls it first
and reports no score then).

What is contained (tests/eval/test_sandbox.py shows each): infinite loops, fork bombs, huge allocations,
deleting, overwriting or reading files outside its directory (the evaluator's environment in /proc
included), signalling the evaluator, huge output, network traffic (UDP, TCP, IPv6, raw and packet
sockets: socket creation is refused).
What is not: reading what the interpreter needs (its prefix and import path, /usr, /lib: public
code), disk use inside its directory (RLIMIT_FSIZE per file, for as long as it runs), CPU
contention with other work; and where the kernel lacks Landlock or seccomp (non-Linux, non-x86_64,
kernels before 5.13; reported on stderr and by `available_layers()`): file access as the same uid,
process creation when running as root (RLIMIT_NPROC does not bind uid 0), and sockets other than
TCP (Landlock refuses TCP only), against which only the Python guard remains, which a program can bypass (posix.*, re-imported modules). No root
tricks (uid switch, chroot, namespaces) are used. Linux only (pidfd, /proc).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid

from r1jax.eval.tasks import confine

STATUSES = ("passed", "failed", "timeout", "error", "killed")
_MARKER = "R1JAX_SANDBOX_ID"


@dataclasses.dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0                 # wall clock; CPU limit is the same, rounded up
    memory_bytes: int = 2 << 30             # RLIMIT_AS
    file_bytes: int = 16 << 20              # RLIMIT_FSIZE: any file it writes, stdout/stderr included
    open_files: int = 64
    extra_processes: int = 8                # RLIMIT_NPROC margin (not binding for uid 0; seccomp is)
    guard: bool = True                      # the Python-level guard (off: tests probe the OS layers)
    tail_bytes: int = 4096                  # how much of stdout/stderr the result keeps


@dataclasses.dataclass
class SandboxResult:
    """One program's outcome. status: passed (exit 0) | failed (non-zero exit: an exception, a failed
    assert) | timeout (wall clock) | error (does not compile, or the sandbox could not start it) |
    killed (ended by a signal: CPU or file-size limit, segfault, out of memory)."""
    status: str
    returncode: int | None
    duration_s: float
    stdout_tail: str = ""
    stderr_tail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "passed": self.passed}


def _environment(workdir: str, marker: str) -> dict[str, str]:
    tmp = os.path.join(workdir, "tmp")
    return {"PATH": os.pathsep.join([os.path.dirname(sys.executable), "/usr/bin", "/bin"]),
            "HOME": workdir, "TMPDIR": tmp, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            _MARKER: marker}


def _tail(path: str, n: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _marked_pids(marker: str) -> list[int]:
    """Processes whose initial environment holds this sample's marker (forked children keep it)."""
    needle = f"{_MARKER}={marker}".encode()
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == os.getpid():
            continue
        try:
            with open(f"/proc/{p}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(p))
        except OSError:
            pass
    return found


def _kill_all(pgid: int, marker: str) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    _sweep(marker)


def _sweep(marker: str) -> None:
    """SIGKILL every process carrying the marker, until none is left."""
    for _ in range(100):                     # a forking program may add processes while we sweep
        pids = _marked_pids(marker)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


def _rmtree(path: str) -> None:
    """Delete the sample's directory even where the program removed its own permissions."""
    def fix(func, p, _exc):
        os.chmod(os.path.dirname(p), stat.S_IRWXU)
        if os.path.isdir(p) and not os.path.islink(p):
            os.chmod(p, stat.S_IRWXU)
            shutil.rmtree(p, onerror=fix)
        else:
            func(p)
    shutil.rmtree(path, onerror=fix)


def _wait_exit(proc: subprocess.Popen, timeout_s: float) -> bool:
    """True when the child exited within timeout_s. Does not reap it, so its pid (and process
    group id) cannot be reused by an unrelated process before the group is killed."""
    fd = os.pidfd_open(proc.pid)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout_s * 1000))))
    finally:
        os.close(fd)


def child_command(limits_json: str, program: str) -> list[str]:
    """argv of the child: this interpreter, isolated, running confine.py on the program file."""
    return [sys.executable, "-I", "-B", confine.__file__, limits_json, program]


def run_program(source: str, limits: Limits = Limits()) -> SandboxResult:
    """Runs `source` as a script in a fresh confined process and classifies how it ended."""
    workdir = tempfile.mkdtemp(prefix="r1jax-sandbox-")
    marker = uuid.uuid4().hex
    t0 = time.perf_counter()
    try:
        os.mkdir(os.path.join(workdir, "tmp"))
        program = os.path.join(workdir, "program.py")
        with open(program, "w", encoding="utf-8") as f:
            f.write(source)
        child_limits = {"cpu_s": max(1, int(-(-limits.timeout_s // 1))),
                        "memory_bytes": limits.memory_bytes, "file_bytes": limits.file_bytes,
                        "open_files": limits.open_files, "extra_processes": limits.extra_processes,
                        "guard": limits.guard}
        out_path, err_path = os.path.join(workdir, "stdout"), os.path.join(workdir, "stderr")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                proc = subprocess.Popen(
                    child_command(json.dumps(child_limits), program), cwd=workdir, env=_environment(workdir, marker), stdin=subprocess.DEVNULL,
                    stdout=out, stderr=err, start_new_session=True, close_fds=True)
            except OSError as e:
                return SandboxResult("error", None, time.perf_counter() - t0, "",
                                     f"sandbox could not start the program: {e}")
        exited = _wait_exit(proc, limits.timeout_s)
        _kill_all(proc.pid, marker)          # its whole group and stray descendants, in every case
        rc = proc.wait()
        duration = time.perf_counter() - t0
        if not exited:
            status = "timeout"
        elif rc == 0:
            status = "passed"
        elif rc == confine.EXIT_SYNTAX:
            status = "error"
        elif rc < 0:
            status = "killed"
        else:
            status = "failed"
        err_tail = _tail(err_path, limits.tail_bytes)
        if rc < 0 and exited:
            err_tail += f"\nsandbox: ended by signal {signal.Signals(-rc).name}"
        return SandboxResult(status, rc, duration, _tail(out_path, limits.tail_bytes), err_tail)
    finally:
        _rmtree(workdir)


def run_many(programs: list[str], limits: Limits = Limits(), workers: int = 0) -> list[SandboxResult]:
    """run_program over many sources with at most `workers` children at once (0 = CPU count);
    results in input order. Threads only wait on children: the programs run in their own processes."""
    workers = workers or os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda s: run_program(s, limits), programs))


class SandboxError(RuntimeError):
    """The sandbox cannot run a trivial passing program here, so no program's outcome means anything;
    the message names the status, exit code and stderr tail of that program."""


TRIVIAL_PROGRAM = "assert 1 + 1 == 2\n"

# Run confined like any program; it observes which layers bind it and prints them as one JSON line.
# Each observation is harmless where its layer is absent (listing /, a UDP socket it closes, chdir .).
_PROBE = """\
import json, os
assert 1 + 1 == 2
def refused(attempt):
    try:
        attempt()
    except PermissionError:
        return True
    return False
def udp_socket():
    import _socket
    _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM).close()
limits = {ln[:26].strip(): ln[26:].split()[0] for ln in open('/proc/self/limits').read().splitlines()[1:]}
status = dict(ln.split(':', 1) for ln in open('/proc/self/status').read().splitlines() if ':' in ln)
print(json.dumps({
    'rlimits': all(limits[k] != 'unlimited' for k in ('Max cpu time', 'Max file size', 'Max address space')),
    'landlock': refused(lambda: os.listdir('/')),
    'seccomp': status.get('Seccomp', '').strip() == '2' and refused(udp_socket),
    'guard': refused(lambda: os.chdir('.')),
}))
"""
LAYERS = ("rlimits", "landlock", "seccomp", "guard")


def _broken(what: str, r: SandboxResult) -> SandboxError:
    """One line: the status, exit code and the last stderr lines joined by " | "."""
    tail = " | ".join(ln.strip() for ln in r.stderr_tail.splitlines()[-6:] if ln.strip())[-600:]
    tail = tail or "(empty)"
    return SandboxError(f"sandbox cannot run {what}: status {r.status}, exit code {r.returncode}; "
                        f"stderr tail: {tail}")


def check_runs(limits: Limits = Limits()) -> SandboxResult:
    """Runs TRIVIAL_PROGRAM under `limits`; raises SandboxError unless it passes."""
    r = run_program(TRIVIAL_PROGRAM, limits)
    if not r.passed:
        raise _broken(f"a trivial program ({TRIVIAL_PROGRAM.strip()})", r)
    return r


def available_layers(limits: Limits = Limits(timeout_s=10)) -> list[str]:
    """The confinement layers (names from LAYERS, in that order) a program run under `limits` is
    actually bound by, as observed from inside one real sandboxed run; SandboxError when that run
    does not pass (then nothing is known to be in force)."""
    r = run_program(_PROBE, limits)
    if not r.passed:
        raise _broken("the layer probe", r)
    try:
        seen = json.loads(r.stdout_tail.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise _broken("the layer probe (no JSON line on stdout)", r) from None
    return [name for name in LAYERS if seen.get(name) is True]
