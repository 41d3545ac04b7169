"""The sandbox contains hostile programs and leaves the machine as it was.

Attacks run with the Python-level guard OFF (they would also bypass it with `posix.*`), so what
contains them is the kernel: rlimits, Landlock and seccomp; one batch runs with the guard ON to show the
guard alone refuses the common spellings. Each attack must end as a failure/timeout and leave no
trace: the planted file outside is intact, no sandbox process survives, the evaluator got no signal.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from r1jax.eval.tasks import confine, sandbox

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


# Programs a plain CPython runs to exit 0; the standard-library imports call os.register_at_fork
# (threading, random, logging, concurrent.futures) and asyncio needs an AF_UNIX socketpair.
ORDINARY = [
    sandbox.TRIVIAL_PROGRAM,
    "import logging, random, tempfile, concurrent.futures\nrandom.seed(1)\nlogging.getLogger('x')\n",
    "import threading\nout = []\nt = threading.Thread(target=out.append, args=(1,))\nt.start()\n"
    "t.join()\nassert out == [1]\n",
    "import asyncio\nasync def f():\n    return 2\nassert asyncio.run(f()) == 2\n",
]


def test_ordinary_programs_pass_with_every_layer_on(tmp_path):
    """Oracle: the same programs run by this interpreter outside the sandbox exit 0. In the sandbox,
    with the guard on, each must pass too (the tests run in a virtualenv, where `python -I` does not
    load threading at startup: the case where a guard that patches before importing broke every
    program, HumanEval scoring 0)."""
    for src in ORDINARY:
        plain = subprocess.run([sys.executable, "-I", "-c", src], cwd=tmp_path, capture_output=True,
                               text=True, timeout=60)
        assert plain.returncode == 0, (src, plain.stderr)
    results = sandbox.run_many(ORDINARY, sandbox.Limits(timeout_s=10), workers=2)
    assert [r.status for r in results] == ["passed"] * len(ORDINARY), [r.stderr_tail for r in results]


def test_guard_does_not_depend_on_what_startup_loaded(tmp_path):
    """The child side run by an interpreter that loads nothing at startup (-S: no site, so no .pth
    file imports threading, whatever the installation): a trivial program still exits 0. Oracle:
    the exit status CPython gives `assert 1 + 1 == 2` (0), and -S leaving threading unloaded."""
    bare = subprocess.run([sys.executable, "-I", "-S", "-c", "import sys; print('threading' in sys.modules)"],
                          capture_output=True, text=True, timeout=60)
    assert bare.stdout.strip() == "False"
    (tmp_path / "program.py").write_text(sandbox.TRIVIAL_PROGRAM + "print('ran')\n")
    lim = {"cpu_s": 10, "memory_bytes": 2 << 30, "file_bytes": 1 << 20, "open_files": 64,
           "extra_processes": 8, "guard": True}
    r = subprocess.run([sys.executable, "-I", "-S", "-B", confine.__file__, json.dumps(lim), "program.py"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert (r.returncode, r.stdout) == (0, "ran\n"), r.stderr


def test_available_layers_are_observed_not_assumed(monkeypatch):
    """The layers come from a real run: with the guard off the guard is not reported; a child that
    cannot run a program (an interpreter failing before the program, as a broken prelude does)
    reports nothing and raises, naming the status and the stderr tail."""
    assert sandbox.available_layers(sandbox.Limits(timeout_s=10, guard=False)) == [
        "rlimits", "landlock", "seccomp"]
    monkeypatch.setattr(sandbox, "child_command", lambda limits_json, program: [
        sys.executable, "-I", "-c", "import sys; sys.exit('PermissionError: prelude broke')"])
    with pytest.raises(sandbox.SandboxError, match=r"status failed, exit code 1; .*prelude broke"):
        sandbox.available_layers()
    with pytest.raises(sandbox.SandboxError, match=r"trivial program .*status failed.*prelude broke"):
        sandbox.check_runs()


def test_seccomp_assembler_matches_hand_computed_offsets():
    """Oracle: the previous no-fork filter, whose jump offsets were counted by hand, written again as
    a labelled listing; plus the errors for an unknown label and a backward jump."""
    c = confine
    hand = [(0x20, 0, 0, 4), (0x15, 1, 0, 0xC000003E), (0x06, 0, 0, 0x00050001), (0x20, 0, 0, 0),
            (0x35, 7, 0, 0x40000000), (0x15, 6, 0, 57), (0x15, 5, 0, 58), (0x15, 5, 0, 435),
            (0x15, 0, 2, 56), (0x20, 0, 0, 16), (0x45, 0, 1, 0x10000), (0x06, 0, 0, 0x7FFF0000),
            (0x06, 0, 0, 0x00050001), (0x06, 0, 0, 0x00050026)]
    listing = [(c._LD_W_ABS, 0, 0, 4), (c._JEQ_K, "x86", "next", 0xC000003E), (c._RET_K, 0, 0, 0x00050001),
               "x86", (c._LD_W_ABS, 0, 0, 0), (c._JGE_K, "deny", 0, 0x40000000),
               (c._JEQ_K, "deny", 0, 57), (c._JEQ_K, "deny", 0, 58), (c._JEQ_K, "nosys", 0, 435),
               (c._JEQ_K, 0, "allow", 56), (c._LD_W_ABS, 0, 0, 16), (c._JSET_K, 0, "deny", 0x10000),
               "allow", (c._RET_K, 0, 0, 0x7FFF0000), "deny", (c._RET_K, 0, 0, 0x00050001),
               "nosys", (c._RET_K, 0, 0, 0x00050026)]
    assert c.assemble(listing) == hand
    with pytest.raises(ValueError, match="unknown label 'nowhere'"):
        c.assemble([(c._JEQ_K, "nowhere", 0, 1), (c._RET_K, 0, 0, 0)])
    with pytest.raises(ValueError, match="'top' out of range"):
        c.assemble(["top", (c._JEQ_K, "top", 0, 1), (c._RET_K, 0, 0, 0)])


def test_sockets_are_refused(confined):
    """A UDP receiver on 127.0.0.1 in this process: a sandboxed sendto to it (guard off, so only the
    kernel stands in the way; and guard on) must not arrive, and the program fails with
    PermissionError. Likewise for IPv6, TCP, raw, packet, netlink and Unix sockets and for io_uring
    (which opens sockets without socket()). Oracle: the receiver's own socket, drained after the
    programs ended."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    port = rx.getsockname()[1]
    send = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.sendto(b'escaped', ('127.0.0.1', {port}))\n")
    families = {f"{fam}/{typ}": f"import _socket as s\ns.socket(s.{fam}, s.{typ}, {proto})\n"
                for fam, typ, proto in [("AF_INET6", "SOCK_DGRAM", 0), ("AF_INET", "SOCK_STREAM", 0),
                                        ("AF_INET", "SOCK_RAW", 1), ("AF_PACKET", "SOCK_RAW", 0),
                                        ("AF_NETLINK", "SOCK_RAW", 0), ("AF_UNIX", "SOCK_STREAM", 0)]}
    families["io_uring"] = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                            "params = ctypes.create_string_buffer(120)\n"
                            "if libc.syscall(425, 4, params) < 0:\n"
                            "    raise OSError(ctypes.get_errno(), 'io_uring_setup')\n")
    try:
        results = sandbox.run_many([send, *families.values()], OPEN, workers=4)
        guarded = sandbox.run_program(send, sandbox.Limits(timeout_s=5))
        time.sleep(0.2)                       # a datagram sent would be queued by now
        arrived = []
        while True:
            try:
                arrived.append(rx.recv(64))
            except BlockingIOError:
                break
    finally:
        rx.close()
    assert arrived == []
    for name, r in zip(["udp sendto", *families], results):
        assert r.status == "failed" and "PermissionError" in r.stderr_tail, (name, r)
    assert guarded.status == "failed" and "socket.socket is disabled in the r1jax sandbox" in guarded.stderr_tail
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
