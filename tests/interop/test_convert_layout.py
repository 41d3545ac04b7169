"""The pieces under convert and export, each against an independent reference: the layout covers
every parameter element exactly once and its inverse undoes it (whole, transposed first, or in row
blocks); block FP8 dequantization is the release formula bit for bit and quantization keeps the
source's codes wherever it can; shards written header-first read back with the safetensors library;
a partial output started with other options is refused; the benchmark tool runs."""
import json
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors import safe_open

from r1jax.models import registry
from r1jax.models import checkpoint
from r1jax.interop import convert, fp8, resumable, safetensors_io, streaming
from r1jax.models import hf_layout
from r1jax.models.registry import preset

CFG = preset("tiny", vocab_size=96, num_hidden_layers=3, first_k_dense_replace=1, with_mtp=True)
BF16 = np.dtype(ml_dtypes.bfloat16)


def _names(fused: bool):
    return {f"model.layers.{n}.mlp.experts.gate_up_proj" for n in range(4)} if fused else set()


@pytest.mark.parametrize("fused", [False, True])
def test_layout_covers_every_parameter_element_once(fused):
    shapes = checkpoint.param_shapes(CFG)
    count = {p: np.zeros(s.shape, np.int32) for p, s in shapes.items()}
    for t in registry.hf_tensors(CFG, _names(fused), with_mtp=True):
        for slot in t.slots:
            count[slot.path][slot.index] += slot.fn(np.ones(t.shape, np.int32))
    for p, c in count.items():
        assert c.min() == c.max() == 1, p


@pytest.mark.parametrize("fused", [False, True])
def test_inverse_transposed_and_blocked_paths_agree(fused):
    rng = np.random.RandomState(0)
    for t in registry.hf_tensors(CFG, _names(fused), with_mtp=True):
        w = rng.randn(*t.shape).astype(np.float32)
        rebuilt = np.full_like(w, np.nan)
        for slot in t.slots:
            x = slot.fn(w)
            rebuilt[slot.hf_region(w.ndim)] = slot.inv(x)
            back = slot.inv(np.array(x), contiguous=True)
            assert back.flags.c_contiguous and np.array_equal(back, w[slot.hf_region(w.ndim)])
            if slot.swap:
                np.testing.assert_array_equal(slot.fn(hf_layout.transpose_last2(w), swapped=True), x)
            if w.ndim >= 2 and slot.block(0, 1, w.ndim) is not None:
                pieced = np.full_like(np.asarray(x), np.nan)
                for lo in range(0, w.shape[0], 3):
                    hi = min(lo + 3, w.shape[0])
                    pieced[slot.block(lo, hi, w.ndim)] = slot.fn(w[lo:hi])
                np.testing.assert_array_equal(pieced, x, err_msg=t.name)
        np.testing.assert_array_equal(rebuilt, w, err_msg=t.name)


def _kron_dequant(q, s):
    *lead, m, n = q.shape
    out = np.empty(q.shape, np.float32)
    for idx in np.ndindex(*lead):
        out[idx] = q[idx].astype(np.float32) * np.kron(s[idx], np.ones((128, 128), np.float32))[:m, :n]
    return out


@pytest.mark.parametrize("shape", [(300, 200), (128, 128), (5, 7), (3, 260, 130)])
def test_dequantize_is_the_release_formula_bit_for_bit(shape):
    rng = np.random.RandomState(1)
    q = rng.randint(0, 256, shape).astype(np.uint8).view(fp8.E4M3)  # NaN and subnormal codes included
    s = np.exp(rng.uniform(-12, 2, fp8.scale_shape(shape))).astype(np.float32)
    want = _kron_dequant(q, s)
    for dtype in (np.dtype(np.float32), BF16):
        w = want.astype(dtype)
        got = fp8.dequantize(q, s, dtype)
        assert got.dtype == dtype and got.tobytes() == w.tobytes()
        got_t = fp8.dequantize(q, s, dtype, transpose=True)
        assert got_t.flags.c_contiguous
        assert got_t.tobytes() == np.ascontiguousarray(np.swapaxes(w, -1, -2)).tobytes()


def test_quantize_fresh_scales_and_reuse_of_source_scales():
    rng = np.random.RandomState(2)
    w = (rng.randn(300, 200) * 0.02).astype(np.float32)
    w[128:256, :128] = 0  # an all-zero block
    q, s = fp8.quantize(w)
    for bi in range(3):
        for bj in range(2):
            blk = w[bi * 128:(bi + 1) * 128, bj * 128:(bj + 1) * 128]
            amax = np.abs(blk).max()
            assert s[bi, bj] == (np.float32(amax) / np.float32(448) if amax else 1.0)
    assert np.abs(q.astype(np.float32)).max() == 448
    np.testing.assert_allclose(_kron_dequant(q, s), w, rtol=2**-4, atol=float(s.max()) * 2**-10)
    # Source scales that are not amax/448 (so fresh scales cannot find them) are kept where they
    # reproduce the values; a block changed afterwards gets a fresh scale.
    src_s = s * np.float32(1.37)
    src_full = np.kron(src_s, np.ones((128, 128), np.float32))[:300, :200]
    src_q = np.clip(w / src_full, -448, 448).astype(fp8.E4M3)
    values = _kron_dequant(src_q, src_s)
    fresh_q, _ = fp8.quantize(values)
    assert fresh_q.tobytes() != src_q.tobytes()
    values[0, 0] += 0.01
    q2, s2 = fp8.quantize(values, src_s)
    assert (s2 == src_s).sum() == s.size - 1 and s2[0, 0] != src_s[0, 0]
    assert q2[128:].tobytes() == src_q[128:].tobytes()
    q3, s3 = fp8.quantize(values.astype(ml_dtypes.bfloat16)[None], src_s[None])  # leading axis
    assert q3.shape == (1, 300, 200) and s3.shape == (1, 3, 2)
    with pytest.raises(ValueError, match="NaN or infinity"):
        fp8.quantize(np.full((4, 4), np.inf, np.float32))


def test_shards_written_header_first_read_back_with_safetensors(tmp_path):
    rng = np.random.RandomState(3)
    data = {"a": rng.randn(10, 3).astype(np.float32),
            "b": rng.randn(7, 5).astype(np.float32).astype(ml_dtypes.bfloat16),
            "c": rng.randint(0, 256, (4, 6)).astype(np.uint8).view(fp8.E4M3)}
    out = [safetensors_io.OutTensor(n, v.dtype, v.shape) for n, v in data.items()]
    groups = safetensors_io.plan_shards(out, 100)
    assert [[t.name for t in g] for g in groups] == [["a"], ["b", "c"]]  # 120, 70 + 24 bytes
    assert [[t.name for t in g] for g in safetensors_io.plan_shards(out, 10**6)] == [["a", "b", "c"]]
    path = str(tmp_path / "x.safetensors")
    w = safetensors_io.ShardWriter(path, out, create=True)
    w.write("c", data["c"])
    w.write("a", data["a"][4:], first_row=4)  # in any order, rows in blocks
    w.write("b", data["b"])
    w.write("a", data["a"][:4])
    w.close()
    with safe_open(path, framework="pt") as f:
        for n, v in data.items():
            t = f.get_tensor(n)
            assert t.contiguous().view(torch.uint8).numpy().tobytes() == v.tobytes()
    header = safetensors_io.read_header(path)
    assert {n: i.shape for n, i in header.items()} == {n: v.shape for n, v in data.items()}


def test_partial_output_of_other_options_is_refused(tmp_path):
    out = str(tmp_path / "o")
    job = resumable.OutputDir(out, {"dtype": "float32"}, resume=False, log=print)
    job.mark_ready()
    job.close()
    with pytest.raises(resumable.JobError, match="dtype: 'float32' then, 'bfloat16' now"):
        resumable.OutputDir(out, {"dtype": "bfloat16"}, resume=True, log=print)
    os.makedirs(str(tmp_path / "mine.partial"))
    with pytest.raises(resumable.JobError, match="not made by r1jax"):
        resumable.OutputDir(str(tmp_path / "mine"), {}, resume=True, log=print)
    with pytest.raises(resumable.JobError, match="already exists"):
        os.makedirs(out)
        resumable.OutputDir(out, {"dtype": "float32"}, resume=True, log=print)


def test_fill_params_equals_the_streamed_conversion(tmp_path):
    """The in-memory path (tests' oracle plumbing) and the streamed one agree."""
    from safetensors.numpy import save_file
    rng = np.random.RandomState(4)
    cfg = CFG.replace(with_mtp=False, param_dtype="float32")
    expected = registry.hf_tensors(cfg, with_mtp=False)
    state = {t.name: rng.randn(*t.shape).astype(np.float32) for t in expected}
    d = tmp_path / "hf"
    d.mkdir()
    save_file(state, str(d / "model.safetensors"))
    from r1jax.models.deepseek_v3.config import to_hf_dict
    (d / "config.json").write_text(json.dumps(to_hf_dict(cfg)))
    convert.convert(str(d), str(tmp_path / "ckpt"), dtype="float32", log=lambda s: None)
    model = checkpoint.load_model(str(tmp_path / "ckpt"))
    streamed = dict(checkpoint._flatten(checkpoint.numpy_params(model)))
    filled = convert.fill_params(cfg, expected, lambda name, i: state[name])
    assert sorted(".".join(k) for k in streamed) == sorted(filled)
    for k, v in streamed.items():
        np.testing.assert_array_equal(v, filled[".".join(k)])


def test_bench_tool_runs_tiny():
    tool = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "bench_convert.py")
    r = subprocess.run([sys.executable, tool, "--layers", "1", "2", "--hidden", "256", "--experts", "8",
                        "--moe_inter", "128", "--workers", "2", "--json"], capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert [row["layers"] for row in result["rows"]] == [1, 2]
    assert result["rss_ratio"] > 0 and result["throughput_ratio"] > 0 and result["write_bound_ratio"] > 0
    assert all(row["output_gb"] > row["input_gb"] for row in result["rows"])  # bf16 out of FP8


class _Future:
    """A stand-in for a tensorstore write future whose commit is already resolved."""

    def __init__(self, error=None):
        self.commit, self._error = self, error

    def add_done_callback(self, cb):
        cb(self)

    def exception(self):
        return self._error


def test_in_flight_writes_report_failures_instead_of_hanging():
    committed = []
    flight = streaming.InFlight(100)
    flight.submit([_Future(), _Future()], 60, lambda: committed.append("a"))
    flight.submit([], 60, lambda: committed.append("b"))  # synchronous writes
    flight.wait()
    assert committed == ["a", "b"] and flight.used == 0
    flight.submit([_Future(OSError("disk full"))], 10, lambda: committed.append("c"))
    with pytest.raises(OSError, match="disk full"):
        flight.wait()
    assert committed == ["a", "b"] and flight.used == 0
    broken = streaming.InFlight(100)
    with pytest.raises(AttributeError):
        broken.submit([object()], 10, lambda: None)  # not a future: the budget is still released
    with pytest.raises(AttributeError):
        broken.wait()


def test_buffer_pool_reuses_a_buffer_only_once_nothing_references_it():
    pool = streaming.BufferPool(keep=2)
    a = pool.array((300, 7), np.float32)
    view = np.swapaxes(a, 0, 1)[2:]  # a view of a view still pins the buffer
    del a
    b = pool.array((300, 7), np.float32)
    assert not np.shares_memory(b, view)
    del view
    c = pool.array((100, 3), ml_dtypes.bfloat16)  # same size class (1 MiB), now idle: reused
    assert c.shape == (100, 3) and c.dtype == ml_dtypes.bfloat16 and c.flags.c_contiguous
    d = pool.array((300, 7), np.float32)  # b and c busy, the pool full: a fresh, unpooled buffer
    assert not np.shares_memory(d, b) and not np.shares_memory(d, c)
    big = pool.array((1 << 19, 3), np.float32)  # 6 MiB -> an 8 MiB buffer
    assert big.nbytes == 6 << 20


def test_synced_tree_syncs_changes_once_and_write_once_files_once(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(resumable, "fsync_path", lambda p, drop=False: synced.append(
        (os.path.relpath(p, tmp_path), drop)))
    monkeypatch.setattr(resumable, "RECENT_NS", 0)  # mtimes count as settled at once
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_bytes(b"1")
    (tmp_path / "m").write_bytes(b"1")
    tree = resumable.SyncedTree(str(tmp_path), write_once=("d",))
    tree.sync()
    assert sorted(synced) == [(".", False), ("d", False), ("d/x", True), ("m", True)]
    synced.clear()
    tree.sync()
    assert synced == []  # nothing changed
    (tmp_path / "m").write_bytes(b"22")
    (tmp_path / "d" / "x").write_bytes(b"22")  # write-once files are never looked at again
    tree.sync()
    assert synced == [("m", True)]
    monkeypatch.setattr(resumable, "RECENT_NS", 10**12)  # a just-modified file is synced again
    (tmp_path / "m").write_bytes(b"333")
    synced.clear()
    tree.sync()
    tree.sync()
    assert [f for f in synced if f[1]] == [("m", True), ("m", True)]


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_transposes_into_given_buffers_with_dtype_conversion(dtype):
    rng = np.random.RandomState(3)
    x = rng.randn(2, 37, 53).astype(ml_dtypes.bfloat16)
    out = np.empty((2, 53, 37), dtype)
    assert hf_layout.transpose_last2(x, out=out) is out
    assert out.tobytes() == np.ascontiguousarray(np.swapaxes(x, -1, -2)).astype(dtype).tobytes()
    q = rng.randint(0, 256, (3, 260, 130)).astype(np.uint8).view(fp8.E4M3)
    s = np.exp(rng.uniform(-12, 2, fp8.scale_shape(q.shape))).astype(np.float32)
    want = fp8.dequantize(q, s, dtype, transpose=True)
    got = fp8.dequantize(q, s, dtype, transpose=True, out=np.empty((3, 130, 260), dtype))
    assert got.tobytes() == want.tobytes()
    with pytest.raises(ValueError, match="expected C-contiguous"):
        fp8.dequantize(q, s, dtype, out=np.empty((3, 130, 260), dtype))
