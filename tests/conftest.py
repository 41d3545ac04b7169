"""Test-session environment: an 8-device CPU mesh, and one compilation cache.

The variables are read when JAX initializes, so they are set here, before any test module imports
jax. JAX_PLATFORMS is only defaulted: `JAX_PLATFORMS=cuda pytest ...` still reaches a GPU.

The trainer tests start `python -m r1jax.train` several times on one config (interrupted, then
resumed) and compare with a run in this process: a persistent compilation cache, new for each
session and inherited by those processes, compiles each program once instead of once per process
(about a minute of the suite on 2 cores). Caching changes no numerics: the same executable runs.
"""
import atexit
import os
import shutil
import tempfile

_DEVICES_FLAG = "--xla_force_host_platform_device_count=8"
_flags = os.environ.get("XLA_FLAGS", "")
if _DEVICES_FLAG not in _flags.split():
    os.environ["XLA_FLAGS"] = f"{_flags} {_DEVICES_FLAG}".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="r1jax-test-jit-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
