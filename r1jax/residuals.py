"""What autodiff keeps between a function's forward and backward pass, by JAX's own accounting.

`jax.ad_checkpoint.print_saved_residuals` lists every residual (before any compiler) with its dtype,
shape and the operation that made it; `saved` returns those rows, the function's own arguments
excluded (parameters and inputs exist anyway). tools/residuals.py totals them for a train step;
tests/test_residuals.py checks that no float32 copy of a large activation is among them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import re

import jax

_LINE = re.compile(r"^(\w+)\[([\d,]*)\] (.*)$")
_BYTES = {"f64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
          "s8": 1, "u8": 1, "bool": 1, "pred": 1, "s64": 8, "u64": 8}


@dataclasses.dataclass(frozen=True)
class Residual:
    dtype: str              # JAX's short name: f32, bf16, s32, bool, ...
    shape: tuple[int, ...]
    where: str              # "output of <op> from <file>:<line> (<function>)"

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.elements * _BYTES.get(self.dtype, 4)


def saved(f, *args) -> list[Residual]:
    """The residuals f's backward pass keeps for f(*args), f's arguments excluded."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        jax.ad_checkpoint.print_saved_residuals(f, *args)
    rows = []
    for line in out.getvalue().splitlines():
        m = _LINE.match(line.strip())
        if m and "argument" not in m.group(3):
            shape = tuple(int(d) for d in m.group(2).split(",") if d)
            rows.append(Residual(m.group(1), shape, m.group(3)))
    return rows
