"""Expert parallelism: the routed experts under `shard_map`, token copies moved to the devices that
hold their experts with a ragged all-to-all and back, dropless.

Axis legend: N tokens, D model, E routed experts, El experts per `expert` shard (E / ep), K experts
per token, F expert width (F / tp per device), M token copies of one device (n K, or C K in a
chunk of C tokens), R receive-buffer rows, S slices of a ragged exchange (one per device of the
axis), ep / tp / fs the sizes of the `expert` / `tensor` / `fsdp` mesh axes, n a device's tokens,
C tokens per chunk.

Per device (one (data, fsdp, expert, tensor) coordinate), with its n tokens (the batch is split over
data, fsdp and expert; `expert` doubles as a data axis outside the MoE):
  1. sort the n K token copies by expert; since shard j holds experts [j El, (j+1) El), this also
     groups them by destination shard;
  2. exchange per-expert counts over `expert` (one all_gather of [E] ints), from which every send /
     receive size and offset follows;
  3. ragged all-to-all the copies to their shards; re-sort the received (source, expert) segments
     by local expert; grouped SwiGLU on the El local experts (tensor-split width F / tp);
  4. the reverse ragged all-to-all returns the results in the sender's sorted order; unsort,
     weighted sum in float32, psum over `tensor` (the down-projection's partial sums).

Weights arrive split as the logical-axis table places them ([E, D, F] over (expert, fsdp, tensor));
gate and up are paired into one [E, D, 2F] with interleaved columns (mlp.pair_columns), which keeps
every device's block where it is; the fsdp split of D is all-gathered here, inside the layer (and so
inside the layer scan).

Dropless buffer. A shard receives at most min(K, El) copies of each token of its expert group
(a token's K experts are distinct), so R = ep n min(K, El) rows can never overflow, whatever the
routing: with all routing collapsing on one shard that shard's buffer is exactly full. The cost is
ep times the balanced size (R = n K when routing is balanced and K <= El), in the receive buffer
[R, D], the SwiGLU activations [R, 2 F/tp] and the returned [R, D]; for R1 (K 8, E 256) on ep 8 that
is 8 n K rows of D = 7168 per device: with 4096 tokens per device, R = 262,144 rows and 3.5 GiB per
[R, D] bf16 buffer (balanced routing would need 0.44 GiB). A capacity factor would shrink it but drops tokens, and the
design makes dropping opt-in only, so the provable bound is the default (and only) choice.

Chunks (`ModelConfig.moe_chunk_tokens` = C, 0 = all). Steps 1-4 run over a device's tokens C at a
time (a `lax.scan`, every device the same number of chunks since they hold equally many tokens), so
the bound is per chunk, R = ep C min(K, El): with C = n / ep it equals the balanced size of the
whole micro-batch, and stays exact and dropless. Each chunk is rematerialized in the backward pass
(`jax.checkpoint`), or the scan would keep every chunk's buffers as residuals and give the saving
back. The cost: each chunk's exchange and SwiGLU run once more in the backward pass, and more,
smaller collectives. The fsdp gather of the weights happens once per layer, outside the chunks.

`jax.lax.ragged_all_to_all` has no XLA:CPU implementation (jax 0.10), so `ragged_all_to_all` below
is chosen per platform at lowering: the collective on GPU/TPU, and on CPU an emulation with the same
contract built from `jax.lax.all_to_all` on fixed-size padded slices (S times the operand's rows:
fine for tests on fake CPU devices, never used on accelerators). Both are differentiable: jax 0.10
defines the collective's transpose (the reverse exchange), and the emulation is made of gathers, an
all_to_all and a scatter.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from r1jax.parallel import sharding

AXIS = "expert"          # the mesh axis the experts are split over (r1jax.parallel.sharding.RULES["expert"])
TENSOR, FSDP = "tensor", "fsdp"
# Expert matrices [E, ., .] by name (r1jax/models/deepseek_v3/moe.py expert_weights): (the axis split over fsdp,
# all-gathered inside the layer; the axis split over tensor), None where not split. A split of the
# width F over tensor leaves partial sums of the down projection (and of its adapter, whose A
# contracts F), summed once at the end.
SPLITS = {"gate_up": (1, 2), "down": (2, 1),
          "a_gate_up": (1, None), "b_gate_up": (None, 2), "a_down": (None, 1), "b_down": (2, None)}


# --- permutations --------------------------------------------------------------------------------

@jax.custom_vjp
def permute_rows(x, perm, inv):
    """x[perm] for a permutation perm [M] of x's rows, inv its inverse: x [M, ...] -> [M, ...].

    Plain x[perm] would transpose to a scatter-add; for a permutation the cotangent is just
    gathered back with inv (scatters are slow on GPU), so both directions are gathers.
    """
    return x[perm]


def _permute_fwd(x, perm, inv):
    return x[perm], (perm, inv)


def _permute_bwd(res, g):
    perm, inv = res
    return g[inv], None, None


permute_rows.defvjp(_permute_fwd, _permute_bwd)


@jax.checkpoint
def combine_copies(y_copies: jnp.ndarray, weights: jnp.ndarray) -> jnp.ndarray:
    """sum_k weights[n, k] * y_copies[n, k] in float32: y_copies [N, K, D] (compute dtype), weights
    [N, K] float32 -> [N, D] float32. Recomputed in the backward pass from y_copies: autodiff would
    otherwise keep y_copies' float32 copy, the largest activation of an MoE layer (4 N K D bytes)."""
    return jnp.einsum("nkd,nk->nd", y_copies.astype(jnp.float32), weights)


def inverse_permutation(perm: jnp.ndarray) -> jnp.ndarray:
    """inv with inv[perm[i]] = i, perm [M] int32 -> [M] int32 (an integer scatter, cheap)."""
    return jnp.zeros_like(perm).at[perm].set(jnp.arange(perm.shape[0], dtype=perm.dtype))


# --- the exchange --------------------------------------------------------------------------------

def emulated_ragged_all_to_all(operand, output, input_offsets, send_sizes, output_offsets,
                               recv_sizes, *, axis_name: str):
    """`jax.lax.ragged_all_to_all`'s contract from `jax.lax.all_to_all` (for XLA:CPU).

    operand [Nin, ...], output [Mout, ...], the four offset/size vectors [S] int (S divisible by the
    axis size; slice i goes to device i // (S / axis size)). Returns output with, for each received
    slice i, recv_sizes[i] rows written at all_to_all(output_offsets)[i].
    Every slice travels padded to Nin rows, so the exchange moves S Nin rows.
    """
    rows = operand.shape[0]
    r = jnp.arange(rows, dtype=jnp.int32)
    src = input_offsets.astype(jnp.int32)[:, None] + r  # [S, Nin]
    sent = r < send_sizes.astype(jnp.int32)[:, None]  # [S, Nin]
    chunks = jnp.take(operand, jnp.clip(src, 0, rows - 1), axis=0)  # [S, Nin, ...]
    chunks = jnp.where(sent.reshape(sent.shape + (1,) * (operand.ndim - 1)), chunks, 0)
    got = jax.lax.all_to_all(chunks, axis_name, 0, 0, tiled=True)  # [S, Nin, ...] by source
    at = jax.lax.all_to_all(output_offsets.astype(jnp.int32), axis_name, 0, 0, tiled=True)  # [S]
    dst = jnp.where(r < recv_sizes.astype(jnp.int32)[:, None], at[:, None] + r, output.shape[0])
    return output.at[dst.reshape(-1)].set(got.reshape((-1,) + operand.shape[1:]), mode="drop")


def _varying(x) -> set:
    """The manual mesh axes x varies over inside shard_map (jax 0.10 names them differently)."""
    t = jax.typeof(x)
    return set(t.vma) if hasattr(t, "vma") else set(t.manual_axis_type.varying)


def ragged_all_to_all(operand, output, input_offsets, send_sizes, output_offsets, recv_sizes, *,
                      axis_name: str):
    """`jax.lax.ragged_all_to_all` on GPU/TPU, its emulation on CPU (chosen when lowering)."""
    missing = tuple(sorted({axis_name, *_varying(operand)} - _varying(output)))
    if missing:  # the collective's result type is output's; received data varies like the operand
        output = jax.lax.pcast(output, missing, to="varying")
    args = (operand, output, input_offsets, send_sizes, output_offsets, recv_sizes)
    return jax.lax.platform_dependent(
        *args, cpu=functools.partial(emulated_ragged_all_to_all, axis_name=axis_name),
        default=functools.partial(jax.lax.ragged_all_to_all, axis_name=axis_name))


# --- the routed experts under shard_map ------------------------------------------------------------

def _present(entry, mesh):
    names = (entry,) if isinstance(entry, str) else tuple(entry or ())
    kept = tuple(a for a in names if a in mesh.axis_names and mesh.shape[a] > 1)
    return kept[0] if len(kept) == 1 else (kept or None)


def _size(entry, mesh) -> int:
    names = (entry,) if isinstance(entry, str) else tuple(entry or ())
    return math.prod(mesh.shape[a] for a in names)


def plan(n_tokens: int, d: int, e: int, f: int, mesh=None) -> dict | None:
    """The shard_map layout for the active mesh, or None when the single-program path applies.

    None when no mesh is set, `expert` is absent or 1, E does not divide by it, or the N tokens do
    not divide over the batch axes (e.g. decoding one token): then the experts run on the global
    token set under XLA's propagation (MoE.dropless_experts).
    """
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    if mesh.empty or mesh.shape.get(AXIS, 1) == 1 or e % mesh.shape[AXIS]:
        return None
    batch = _present(sharding.logical_to_spec(("batch",))[0], mesh)
    if n_tokens % _size(batch, mesh):
        return None
    fs = FSDP if FSDP in mesh.axis_names and mesh.shape[FSDP] > 1 and d % mesh.shape[FSDP] == 0 else None
    tp = TENSOR if TENSOR in mesh.axis_names and mesh.shape[TENSOR] > 1 and f % mesh.shape[TENSOR] == 0 else None
    return dict(mesh=mesh, batch=batch, fsdp=fs, tensor=tp)


def exchange_layout(counts: jnp.ndarray, ep: int, me) -> dict:
    """Sizes and offsets of both exchanges from every shard's per-expert counts.

    counts [ep, E] int32: counts[i, x] copies of shard i's tokens routed to expert x. me: this
    shard's index. Returns per-destination (send) and per-source (recv) sizes/offsets [ep], the
    offsets at which this shard's slices land on each receiver (`land`) and at which each
    source's results must land back on it (`land_back`), and `segments` [ep, El]: the received
    (source, local expert) segment sizes, in buffer order.
    """
    e = counts.shape[1]
    per = counts.reshape(ep, ep, e // ep)  # [source, destination, local expert]
    sizes = per.sum(-1)  # [source, destination]
    recv_at = jnp.cumsum(sizes, 0) - sizes  # where source i's slice starts in destination j's buffer
    send_at = jnp.cumsum(sizes, 1) - sizes  # where source i's slice to j starts in i's sorted copies
    return dict(send_sizes=sizes[me], send_offsets=send_at[me], land=recv_at[me],
                recv_sizes=sizes[:, me], recv_offsets=recv_at[:, me], land_back=send_at[:, me],
                segments=per[:, me, :])


def chunk_size(n: int, chunk_tokens: int) -> tuple[int, int]:
    """(chunks, C): a device's n tokens in `chunks` chunks of C tokens (the last padded), with
    C <= chunk_tokens and as little padding as that allows; chunk_tokens 0 (or >= n): one chunk."""
    if chunk_tokens <= 0 or chunk_tokens >= n:
        return 1, n
    chunks = -(-n // chunk_tokens)
    return chunks, -(-n // chunks)


def _exchange_chunk(x, experts, weights, w, *, ffn, e, rows):
    """One chunk of a device's tokens through the experts of every shard and back: x [C, D],
    experts/weights [C, K]; w the local experts' matrices (gate_up [El, D, 2F/tp], down
    [El, F/tp, D], adapters; the fsdp split gathered) -> [C, D] float32, this device's partial sum
    over `tensor`. rows: R, the dropless bound."""
    n, k = experts.shape
    d = x.shape[1]
    ep, me = jax.lax.axis_size(AXIS), jax.lax.axis_index(AXIS)
    el = e // ep
    flat = experts.reshape(-1)  # [M] copy c = token c // K, choice c % K
    order = jnp.argsort(flat, stable=True).astype(jnp.int32)  # by expert, hence by destination
    inv = inverse_permutation(order)
    x_sorted = permute_rows(jnp.repeat(x, k, axis=0), order, inv)  # [M, D]
    counts = jax.lax.all_gather(jnp.bincount(flat, length=e).astype(jnp.int32), AXIS)  # [ep, E]
    lay = exchange_layout(counts, ep, me)

    buf = ragged_all_to_all(x_sorted, jnp.zeros((rows, d), x.dtype), lay["send_offsets"],
                            lay["send_sizes"], lay["land"], lay["recv_sizes"], axis_name=AXIS)
    # the buffer holds (source, local expert) segments; regroup by local expert for ragged_dot
    seg_end = jnp.cumsum(lay["segments"].reshape(-1))  # [ep El]
    seg = jnp.searchsorted(seg_end, jnp.arange(rows, dtype=jnp.int32), side="right")  # [R]
    local = jnp.where(seg < ep * el, seg % el, el)  # unused tail rows sort last
    order2 = jnp.argsort(local, stable=True).astype(jnp.int32)
    inv2 = inverse_permutation(order2)
    y = ffn(permute_rows(buf, order2, inv2), lay["segments"].sum(0), w)  # [R, D]
    y = permute_rows(y, inv2, order2)  # back to buffer order

    y_sorted = ragged_all_to_all(y, jnp.zeros((n * k, d), y.dtype), lay["recv_offsets"],
                                 lay["recv_sizes"], lay["land_back"], lay["send_sizes"],
                                 axis_name=AXIS)  # [M, D]
    return combine_copies(permute_rows(y_sorted, inv, order).reshape(n, k, d), weights)


def _local_experts(x, experts, weights, w, *, ffn, e, fsdp, tensor, chunks, rows):
    """One device's share: x [n, D], experts/weights [n, K]; w the local experts' matrices split as
    SPLITS says (gate_up [El, D/fs, 2F/tp], down [El, F/tp, D/fs], ...) -> [n, D] float32 (summed
    over `tensor`), its tokens in `chunks` chunks."""
    if fsdp:  # per-layer gather of the fsdp-split embed dims (its transpose reduce-scatters grads)
        w = {k: v if SPLITS[k][0] is None else jax.lax.all_gather(v, fsdp, axis=SPLITS[k][0], tiled=True)
             for k, v in w.items()}
    one = functools.partial(_exchange_chunk, ffn=ffn, e=e, rows=rows)
    if chunks == 1:
        out = one(x, experts, weights, w)
    else:
        out = _scan_chunks(one, x, experts, weights, w, chunks, e)
    return jax.lax.psum(out, tensor) if tensor else out


def _scan_chunks(one, x, experts, weights, w, chunks: int, e: int):
    """one() over `chunks` chunks of the n tokens in turn -> [n, D] float32.

    Each chunk is rematerialized in the backward pass (jax.checkpoint): otherwise the scan would
    keep every chunk's receive buffers and SwiGLU activations as residuals, ep times the balanced
    size again in all. Tokens that pad the last chunk have zero inputs and weights and distinct
    experts 0..K-1 (the buffer bound assumes a token's experts are distinct), so they add nothing.
    """
    n, k = experts.shape
    c = -(-n // chunks)
    pad = chunks * c - n
    if pad:
        x = jnp.concatenate([x, jnp.zeros((pad, x.shape[1]), x.dtype)])
        fill = jnp.broadcast_to(jnp.arange(k, dtype=experts.dtype) % e, (pad, k))
        experts = jnp.concatenate([experts, fill])
        weights = jnp.concatenate([weights, jnp.zeros((pad, k), weights.dtype)])
    xs = tuple(a.reshape((chunks, c) + a.shape[1:]) for a in (x, experts, weights))
    step = jax.checkpoint(lambda xc, ec, wc, mats: one(xc, ec, wc, mats))
    _, out = jax.lax.scan(lambda carry, t: (carry, step(*t, w)), None, xs)
    return out.reshape(chunks * c, -1)[:n]


def routed_experts(x, experts, weights, w: dict, ffn: Callable, layout: dict, chunk_tokens: int = 0):
    """Dropless routed experts over the mesh in `layout` (from `plan`).

    x [N, D] (compute dtype), experts [N, K] int32, weights [N, K] float32, w the experts' matrices
    by name (moe.expert_weights: gate_up [E, D, 2F] = mlp.pair_columns(gate, up), down [E, F, D],
    adapters), each split over devices as SPLITS says; ffn(x_sorted [R, D], group_sizes [El], w)
    -> [R, D] (the grouped SwiGLU).
    chunk_tokens: each device's tokens go through the exchange at most this many at a time
    (0: all at once), which bounds R per chunk (module docstring). Returns [N, D] in x.dtype,
    weights applied in float32.
    """
    n, k = experts.shape
    e = w["down"].shape[0]
    mesh, batch, fs, tp = layout["mesh"], layout["batch"], layout["fsdp"], layout["tensor"]
    ep = mesh.shape[AXIS]
    chunks, c = chunk_size(n // _size(batch, mesh), chunk_tokens)
    rows = ep * c * min(k, e // ep)  # the dropless bound for one chunk (module docstring)
    body = functools.partial(_local_experts, ffn=ffn, e=e, fsdp=fs, tensor=tp, chunks=chunks,
                             rows=rows)
    tok = P(batch, None)
    specs = {k: weight_spec(k, fs, tp) for k in w}
    out = jax.shard_map(body, mesh=mesh, in_specs=(tok, tok, tok, specs), out_specs=tok)(
        x, experts, weights, w)
    return out.astype(x.dtype)


def weight_spec(name: str, fsdp, tensor) -> P:
    """PartitionSpec of expert matrix `name` [E, ., .] inside the shard_map (SPLITS)."""
    fs_axis, tp_axis = SPLITS[name]
    spec = [AXIS, None, None]
    if fs_axis is not None:
        spec[fs_axis] = fsdp
    if tp_axis is not None:
        spec[tp_axis] = tensor
    return P(*spec)
