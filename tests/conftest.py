"""Test-session environment: an 8-device CPU mesh (DESIGN.md section 6).

Both variables are read when JAX initializes, so they are set here, before any test module imports
jax. JAX_PLATFORMS is only defaulted: `JAX_PLATFORMS=cuda pytest ...` still reaches a GPU.
"""
import os

_DEVICES_FLAG = "--xla_force_host_platform_device_count=8"
_flags = os.environ.get("XLA_FLAGS", "")
if _DEVICES_FLAG not in _flags.split():
    os.environ["XLA_FLAGS"] = f"{_flags} {_DEVICES_FLAG}".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
