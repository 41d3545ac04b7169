"""The sandbox contains hostile programs and leaves the machine as it was.

Attacks run with the Python-level guard OFF (they would also bypass it with `posix.*`), so what
contains them is the kernel: rlimits, Landlock and seccomp; one batch runs with the guard ON to show the
guard alone refuses the common spellings. Each attack must end as a failure/timeout and leave no
trace: the planted file outside is intact, no sandbox process survives, the evaluator got no signal.
"""
import os
import signal
import subprocess
import sys
import time

import pytest

from r1jax.tasks import sandbox

OPEN = sandbox.Limits(timeout_s=1.5, guard=False)


def _sandbox_processes() -> list[int]:
    """Every live process carrying a sandbox marker in its environment (none should outlive a run)."""
    found = []
    for p in os.listdir("/proc"):
        if p.isdigit() and int(p) != os.getpid():
            try:
                with open(f"/proc/{p}/environ", "rb") as f:
                    if b"R1JAX_SANDBOX_ID=" in f.read():
                        found.append(int(p))
            except OSError:
                pass
    return found


@pytest.fixture(scope="module")
def confined():
    """The attack tests below are only safe where every confinement layer is in force: fail loudly."""
    layers = sandbox.available_layers()
    assert layers == ["rlimits", "landlock", "seccomp", "guard"], f"this kernel lacks layers: {layers}"
    return layers


@pytest.fixture
def planted(tmp_path):
    d = tmp_path / "outside"
    d.mkdir()
    f = d / "precious.txt"
    f.write_text("keep me")
    return f


def test_outcomes_are_classified():
    progs = {"passed": "print('ok')", "failed": "assert 1 + 1 == 3", "error": "def f(:\n",
             "killed": "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)",
             "timeout": "while True:\n    pass\n"}
    t0 = time.perf_counter()
    results = sandbox.run_many(list(progs.values()), OPEN, workers=5)
    wall = time.perf_counter() - t0
    got = {want: r for want, r in zip(progs, results)}
    for want, r in got.items():
        assert r.status == want, (want, r)
    assert got["passed"].passed and got["passed"].stdout_tail == "ok\n"
    assert "AssertionError" in got["failed"].stderr_tail
    assert "SyntaxError" in got["error"].stderr_tail
    assert "SIGSEGV" in got["killed"].stderr_tail
    assert 1.5 <= got["timeout"].duration_s < 4, got["timeout"].duration_s
    assert wall < 6                      # ran side by side, not one after another
    assert _sandbox_processes() == []


def test_fresh_directory_environment_and_stdin(monkeypatch):
    monkeypatch.setenv("R1JAX_TEST_SECRET", "s3cret")
    src = ("import os, sys, json\n"
           "open('scratch.txt', 'w').write('x')\n"
           "print(json.dumps({'cwd': os.getcwd(), 'env': dict(os.environ), 'isolated': sys.flags.isolated,"
           " 'files': sorted(os.listdir('.'))}))\n"
           "input()\n")
    r = sandbox.run_program(src, sandbox.Limits(timeout_s=5))
    assert r.status == "failed" and "EOFError" in r.stderr_tail       # stdin is /dev/null
    import json
    info = json.loads(r.stdout_tail)
    assert not os.path.exists(info["cwd"])                              # deleted afterwards
    assert info["files"] == ["program.py", "scratch.txt", "stderr", "stdout", "tmp"]
    assert set(info["env"]) == {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "OMP_NUM_THREADS",
                                "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "R1JAX_SANDBOX_ID"}
    assert info["env"]["HOME"] == info["cwd"] and info["env"]["TMPDIR"].startswith(info["cwd"])
    assert info["isolated"] == 1


def test_attacks_are_contained(confined, planted):
    """Infinite loop, fork bomb, 10 GB allocation, deleting/overwriting/renaming/reading a file
    outside, reading the evaluator's environment, signalling it, huge output, a subprocess: each
    fails, and the machine is unharmed."""
    hits = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: hits.append(1))
    p, d = str(planted), str(planted.parent)
    attacks = {
        "infinite loop": "while True:\n    pass\n",
        "fork bomb": "import os\nwhile True:\n    os.fork()\n",
        "10 GB allocation": "x = bytearray(10 * 1024 ** 3)\nx[-1] = 1\n",
        "unlink outside": f"import posix\nposix.unlink({p!r})\n",
        "rmtree outside": f"import shutil\nshutil.rmtree({d!r})\n",
        "rename outside": f"import os\nos.rename({p!r}, 'stolen.txt')\n",
        "truncate outside": f"open({p!r}, 'w').write('gone')\n",
        "read outside": f"print(open({p!r}).read())\n",
        "read the evaluator's environment":
            "import os\nprint(open(f'/proc/{os.getppid()}/environ').read())\n",
        "signal the evaluator": "import os, signal\nos.kill(os.getppid(), signal.SIGUSR1)\n",
        "huge output": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
        "subprocess": "import subprocess\nsubprocess.run(['rm', '-rf', " + repr(d) + "])\n",
    }
    try:
        results = sandbox.run_many(list(attacks.values()), OPEN, workers=len(attacks))
        # the guard alone (kernel layers still on) refuses the usual spellings with its own message
        guarded = sandbox.run_many([f"import os\nos.remove({p!r})\n", "import os\nos.fork()\n",
                                    f"import shutil\nshutil.rmtree({d!r})\n"],
                                   sandbox.Limits(timeout_s=5), workers=3)
        time.sleep(0.05)                  # a stray signal would have been delivered by now
    finally:
        signal.signal(signal.SIGUSR1, previous)
    for name, r in zip(attacks, results):
        assert not r.passed, (name, r)
        assert r.status in ("failed", "timeout"), (name, r)
    by_name = dict(zip(attacks, results))
    assert by_name["infinite loop"].status == "timeout"
    assert "MemoryError" in by_name["10 GB allocation"].stderr_tail
    assert "PermissionError" in by_name["fork bomb"].stderr_tail
    assert "File too large" in by_name["huge output"].stderr_tail
    assert len(by_name["huge output"].stdout_tail) <= OPEN.tail_bytes
    for r in guarded:
        assert r.status == "failed" and "disabled in the r1jax sandbox" in r.stderr_tail, r
    assert "keep me" not in by_name["read outside"].stdout_tail
    assert "PermissionError" in by_name["read the evaluator's environment"].stderr_tail
    assert planted.read_text() == "keep me"
    assert hits == []
    assert _sandbox_processes() == []


def test_escaped_processes_are_swept():
    """A process that left the sandbox's process group (setsid) is still found by its marker."""
    marker = "sweep-test-marker"
    proc = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                            env={"R1JAX_SANDBOX_ID": marker}, start_new_session=True, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"up\n"           # exec'd: /proc shows its own environment
        assert sandbox._marked_pids(marker) == [proc.pid]
        sandbox._sweep(marker)
        assert proc.wait(timeout=5) == -signal.SIGKILL
        assert sandbox._marked_pids(marker) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
