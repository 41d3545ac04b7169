"""The child side of the sandbox: confine this process, then run one untrusted program.

    python -I -B confine.py LIMITS_JSON PROGRAM.py      (started by r1jax.eval.tasks.sandbox, never by hand)

Runs in the fresh child process, never in the evaluator. It applies, in this order, before a byte of
the program runs:

1. resource limits (setrlimit): CPU seconds, address space, file size (caps stdout/stderr too, as they
   are files), no core dumps, open files, and processes (RLIMIT_NPROC; the kernel ignores it for
   uid 0, hence layer 3).
2. Landlock (Linux >= 5.13, unprivileged): writing, creating, truncating, renaming and deleting files
   are allowed only beneath the sample's temporary directory; reading only there and in what the
   interpreter needs (its prefix and import path, /usr, /lib, a few /etc files, /dev/null and
   urandom), so the evaluator's files and other processes' /proc entries are out of reach; TCP
   bind/connect are denied (ABI >= 4); signals to processes outside the sandbox (e.g. the
   evaluator) are denied (ABI >= 6).
3. seccomp-bpf (x86_64): no new processes (fork, vfork, clone without CLONE_THREAD; clone3 answers
   ENOSYS so threads fall back to clone), no sockets of any address family (UDP, IPv6, raw, packet,
   netlink, Unix: socket() answers EPERM; socketpair() only for an AF_UNIX pair, which stays inside
   the process), no io_uring, and no x32/i386 syscall entry points.
4. A Python-level guard (defence in depth, bypassable by design): functions that delete, rename,
   chmod/chown files, send signals, change directory, start processes or create sockets raise
   PermissionError. The modules it patches are imported first, so their own imports see the real
   functions.

Layers 2 and 3 need `no_new_privs`; each one the kernel lacks is reported on stderr (one line starting
"sandbox: layer unavailable") and the rest still apply.
"""
from __future__ import annotations

import ctypes
import json
import os
import platform
import resource
import sys

EXIT_SYNTAX = 121        # the program does not compile: status "error", not a test failure
_PR_SET_NO_NEW_PRIVS = 38


def set_limits(lim: dict) -> None:
    """setrlimit for this process (inherited by anything it starts)."""
    cpu = int(lim["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (lim["memory_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["file_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (lim["open_files"],) * 2)
    # RLIMIT_NPROC counts every process of the real uid, so the cap is "what it has now + the margin".
    uid = os.getuid()
    mine = sum(1 for p in os.listdir("/proc") if p.isdigit() and _owner(p) == uid)
    resource.setrlimit(resource.RLIMIT_NPROC, (mine + lim["extra_processes"],) * 2)


def _owner(pid: str) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return -1


# -- Landlock (include/uapi/linux/landlock.h) -------------------------------------------------------

_SYS_LANDLOCK = {"create_ruleset": 444, "add_rule": 445, "restrict_self": 446}  # same on all arches
_FS_WRITE_FILE, _FS_REMOVE_DIR, _FS_REMOVE_FILE = 1 << 1, 1 << 4, 1 << 5
_FS_MAKE = sum(1 << b for b in range(6, 13))        # char, dir, reg, sock, fifo, block, sym
_FS_REFER, _FS_TRUNCATE = 1 << 13, 1 << 14          # ABI 2, ABI 3
_NET_BIND_TCP, _NET_CONNECT_TCP = 1, 2              # ABI 4
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1, 2          # ABI 6


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_FS_EXECUTE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 2, 1 << 3
_FILE_ONLY = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE   # rights a file rule may hold
# What the interpreter and its libraries need to read; everything else (other users' and the
# evaluator's files, /proc/PID/environ of other processes, /work, ~/.ssh) stays unreadable.
_SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/etc/alternatives", "/etc/ssl/certs",
                "/sys/devices/system/cpu", "/proc/self")   # /proc/self: this process's own entry only
_SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/etc/locale.alias", "/etc/mime.types",
                 "/dev/urandom", "/dev/random", "/proc/cpuinfo", "/proc/meminfo")
_DEV_SINKS = ("/dev/null", "/dev/zero")


def readable_paths() -> list[str]:
    """The interpreter's prefixes and import path, and the system libraries it loads."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    paths.update(p for p in sys.path if p)
    return sorted(p for p in paths | set(_SYSTEM_DIRS) if os.path.isdir(p))


def _add_rule(libc, rfd: int, path: str, access: int) -> None:
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        rule = _PathBeneath(access, fd)
        if libc.syscall(_SYS_LANDLOCK["add_rule"], rfd, 1, ctypes.byref(rule), 0) < 0:  # PATH_BENEATH
            raise OSError(ctypes.get_errno(), f"landlock_add_rule {path}")
    finally:
        os.close(fd)


def landlock(writable_dir: str, libc) -> str:
    """Full access beneath `writable_dir`, read/execute beneath readable_paths(), nothing elsewhere;
    no TCP (ABI >= 4), no signals or abstract sockets outside the sandbox (ABI >= 6)."""
    abi = libc.syscall(_SYS_LANDLOCK["create_ruleset"], None, 0, 1)   # 1 = ..._CREATE_RULESET_VERSION
    if abi < 1:
        raise OSError(ctypes.get_errno(), "landlock is not available")
    fs = (_FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_READ_DIR | _FS_REMOVE_DIR
          | _FS_REMOVE_FILE | _FS_MAKE)
    fs |= (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
    attr = _RulesetAttr(fs, (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0,
                        (_SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL) if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8    # older kernels reject fields they lack
    rfd = libc.syscall(_SYS_LANDLOCK["create_ruleset"], ctypes.byref(attr), size, 0)
    if rfd < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    try:
        _add_rule(libc, rfd, writable_dir, fs)
        for d in readable_paths():
            _add_rule(libc, rfd, d, _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR)
        for f in _SYSTEM_FILES + _DEV_SINKS:
            if os.path.exists(f):
                sink = f in _DEV_SINKS
                _add_rule(libc, rfd, f, fs & _FILE_ONLY & (_FS_READ_FILE | (
                    _FS_WRITE_FILE | _FS_TRUNCATE if sink else 0)))
        if libc.syscall(_SYS_LANDLOCK["restrict_self"], rfd, 0) < 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    finally:
        os.close(rfd)
    return f"landlock abi {abi}"


# -- seccomp-bpf (include/uapi/linux/seccomp.h, filter.h) -------------------------------------------

_AUDIT_ARCH_X86_64 = 0xC000003E
_X86_64 = {"clone": 56, "fork": 57, "vfork": 58, "clone3": 435, "socket": 41, "socketpair": 53,
           "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427}
_CLONE_THREAD = 0x00010000
_AF_UNIX = 1
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000
_EPERM, _ENOSYS = 1, 38
_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
# struct seccomp_data {int nr; u32 arch; u64 instruction_pointer; u64 args[6]}: byte offsets
_NR, _ARCH, _ARG0_LOW = 0, 4, 16


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def assemble(program: list) -> list[tuple[int, int, int, int]]:
    """BPF instructions (code, jt, jf, k) from a listing whose entries are either a label (a str: the
    next instruction's name) or (code, jt, jf, k) where jt/jf may name a label ("next" or 0: the
    following instruction). Raises ValueError naming an unknown label or a jump out of range."""
    labels, n = {}, 0
    for entry in program:
        if isinstance(entry, str):
            labels[entry] = n
        else:
            n += 1
    out = []
    for entry in program:
        if isinstance(entry, str):
            continue
        code, jt, jf, k = entry
        here = len(out) + 1                            # jumps count from the next instruction

        def offset(target):
            if target in (0, "next"):
                return 0
            if target not in labels:
                raise ValueError(f"seccomp listing: unknown label {target!r}")
            off = labels[target] - here
            if not 0 <= off <= 255:
                raise ValueError(f"seccomp listing: jump to {target!r} out of range ({off})")
            return off
        out.append((code, offset(jt), offset(jf), k))
    return out


def syscall_filter() -> list[tuple[int, int, int, int]]:
    """The BPF program (code, jt, jf, k) of the seccomp layer (x86_64):
    - i386 and x32 entry points: EPERM (they would bypass the checks below);
    - fork, vfork, clone without CLONE_THREAD: EPERM (no new processes; threads are allowed);
      clone3: ENOSYS (its flags sit behind a pointer; glibc then falls back to clone);
    - socket(): EPERM for every address family (the runner needs none: the child talks to the
      evaluator only through its exit status and its stdout/stderr files); socketpair(): AF_UNIX
      only (both ends stay inside the process; asyncio's event loop needs one);
    - io_uring_setup/enter/register: EPERM (io_uring can open sockets without the socket() call)."""
    deny, nosys, allow = _RET_ERRNO | _EPERM, _RET_ERRNO | _ENOSYS, _RET_ALLOW
    x = _X86_64
    return assemble([
        (_LD_W_ABS, 0, 0, _ARCH),
        (_JEQ_K, "next", "deny", _AUDIT_ARCH_X86_64),
        (_LD_W_ABS, 0, 0, _NR),
        (_JGE_K, "deny", "next", 0x40000000),          # x32 ABI
        (_JEQ_K, "deny", "next", x["fork"]),
        (_JEQ_K, "deny", "next", x["vfork"]),
        (_JEQ_K, "nosys", "next", x["clone3"]),
        (_JEQ_K, "deny", "next", x["socket"]),
        (_JEQ_K, "deny", "next", x["io_uring_setup"]),
        (_JEQ_K, "deny", "next", x["io_uring_enter"]),
        (_JEQ_K, "deny", "next", x["io_uring_register"]),
        (_JEQ_K, "socketpair", "next", x["socketpair"]),
        (_JEQ_K, "next", "allow", x["clone"]),
        (_LD_W_ABS, 0, 0, _ARG0_LOW),                  # clone flags
        (_JSET_K, "allow", "deny", _CLONE_THREAD),
        "socketpair",
        (_LD_W_ABS, 0, 0, _ARG0_LOW),                  # address family
        (_JEQ_K, "allow", "deny", _AF_UNIX),
        "allow",
        (_RET_K, 0, 0, allow),
        "deny",
        (_RET_K, 0, 0, deny),
        "nosys",
        (_RET_K, 0, 0, nosys),
    ])


def seccomp(libc) -> str:
    if platform.machine() != "x86_64":
        raise OSError(0, f"no seccomp filter for {platform.machine()}")
    prog = syscall_filter()
    arr = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
    fprog = _SockFprog(len(prog), arr)
    # prctl(PR_SET_SECCOMP=22, SECCOMP_MODE_FILTER=2, &fprog)
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
    return "seccomp no-fork no-socket"


# -- Python-level guard -----------------------------------------------------------------------------

# os.register_at_fork is not here: it only adds callbacks run around a fork, which cannot happen, and
# the standard library calls it when it is imported (threading, random, logging, concurrent.futures).
_GUARDED = {
    "os": ("kill", "killpg", "system", "popen", "fork", "forkpty", "remove",
           "unlink", "rmdir", "removedirs", "rename", "renames", "replace", "truncate", "ftruncate",
           "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown", "chroot", "chdir", "fchdir",
           "setuid", "setgid", "setsid", "setpgid", "execv", "execve", "execl", "execle", "execlp",
           "execlpe", "execvp", "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv",
           "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp"),
    "shutil": ("rmtree", "move", "chown", "copytree"),
    "subprocess": ("Popen", "run", "call", "check_call", "check_output", "getoutput",
                   "getstatusoutput"),
    "signal": ("pthread_kill",),
    "socket": ("create_connection", "create_server"),
}


def _disabled(name: str):
    def refuse(*args, **kwargs):
        raise PermissionError(f"{name} is disabled in the r1jax sandbox")
    return refuse


def _socket_class_without_new_sockets(base: type) -> type:
    """A subclass of socket.socket that refuses to create a socket (any family) but still wraps an
    existing descriptor (fileno=...), as socket.socketpair() does with its AF_UNIX pair."""
    class socket(base):
        __slots__ = ()

        def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
            if fileno is None:
                raise PermissionError("socket.socket is disabled in the r1jax sandbox")
            super().__init__(family, type, proto, fileno)
    socket.__module__ = base.__module__
    return socket


def guard() -> None:
    """Replace dangerous functions with ones that raise (posix is os's C half: guard it too).
    Every guarded module is imported before anything is replaced, so their own imports (subprocess
    pulls in threading, socket pulls in selectors) run against the real functions whatever the
    interpreter happened to load at startup (a virtualenv loads less than a system Python)."""
    import importlib
    import posix
    modules = {name: importlib.import_module(name) for name in _GUARDED}
    for mod_name, names in _GUARDED.items():
        mod = modules[mod_name]
        for n in names:
            if hasattr(mod, n):
                setattr(mod, n, _disabled(f"{mod_name}.{n}"))
            if mod_name == "os" and hasattr(posix, n):
                setattr(posix, n, _disabled(f"os.{n}"))
    modules["socket"].socket = _socket_class_without_new_sockets(modules["socket"].socket)
    for mod_name in ("ctypes", "_ctypes", "multiprocessing", "resource", "pty"):
        sys.modules[mod_name] = None          # import now raises ImportError


def main(argv) -> None:
    limits_json, program_path = argv[1], argv[2]
    lim = json.loads(limits_json)
    with open(program_path, encoding="utf-8") as f:
        source = f.read()
    set_limits(lim)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        print("sandbox: layer unavailable: no_new_privs", file=sys.stderr)
    layers = (("landlock", lambda: landlock(os.getcwd(), libc)), ("seccomp", lambda: seccomp(libc)))
    for name, layer in layers:
        try:
            layer()
        except OSError as e:
            print(f"sandbox: layer unavailable: {name}: {e}", file=sys.stderr)
    if lim["guard"]:
        guard()
    try:
        code = compile(source, "program.py", "exec")
    except (SyntaxError, ValueError) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(EXIT_SYNTAX)
    del argv[:]                                # the program sees a clean argv
    argv.append("program.py")
    exec(code, {"__name__": "__main__", "__file__": "program.py", "__builtins__": __builtins__})


if __name__ == "__main__":
    main(sys.argv)
