"""Training does not depend on the mesh: twenty steps of the real train step and optimizer on meshes of
the 8 fake CPU devices give the single device's loss curve and parameters, and a training checkpoint
saved on one mesh resumes on another with the same continuation.

Tolerance: float32 throughout. A mesh changes only the order of the sums (per-device partial sums,
then all-reduces): float32 rounding, ~1e-7 relative per reduction. Measured after twenty steps: losses
within 2.2e-7 relative of the single device's, every parameter tensor within 2.8e-7 relative (norm of
the difference over the norm). The bounds, 1e-5 for both, leave a 35x margin for other XLA versions and
kernels while staying far below the step-to-step change of the loss (~3e-2 relative here).
"""
import functools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "configs"))
import tiny  # noqa: E402  (configs/tiny.py)

from r1jax.train import run_config, loop as train  # noqa: E402
from r1jax.parallel import sharding
from r1jax.models.registry import build, preset  # noqa: E402
from r1jax.train.optim import OptimConfig, make_optimizer, path_str  # noqa: E402
from r1jax.train.step import StepConfig  # noqa: E402
from r1jax.models.common.partition import split_model
from r1jax.train.loop import jit_train_step, opt_state_shardings  # noqa: E402
from r1jax.train.checkpoints import RunCheckpoints, abstract_of  # noqa: E402

CFG = preset("tiny", dtype="float32", vocab_size=256, num_attention_heads=4, n_routed_experts=8)
# The dense family (r1jax/models/llama/, as R1-Distill-Qwen: q/k/v biases, 2 query heads per K/V
# head), whose K/V heads split over `tensor` on their own axis ("kv_heads").
DENSE_CFG = preset("tiny-qwen2", dtype="float32", vocab_size=256)
MODELS = {"r1": CFG, "qwen2": DENSE_CFG}
MESHES = {"single": dict(data=1), "data8": dict(data=8), "fsdp8": dict(fsdp=8),
          "expert4,tensor2": dict(data=1, expert=4, tensor=2),
          "data2,expert2,tensor2": dict(data=2, expert=2, tensor=2)}
DENSE_MESH = {"data2,fsdp2,tensor2": dict(data=2, fsdp=2, tensor=2)}
STEPS, RESUME_AT, B, T = 20, 10, 8, 32
# the router bias update and the balance loss make the routing statistics (summed over the sharded
# batch) part of what must agree
SC = StepConfig(aux_loss_weight=0.01, router_bias_rate=1e-3, loss_chunk=64)
# The program (HLO, shardings, partitioning) is train.run's; only LLVM's CPU code generation is told to
# spend less effort, which halves each compile here and leaves the results unchanged.
FAST_CPU_CODEGEN = {"xla_backend_optimization_level": 0}
_STEPS_COMPILED = {}


def batches():
    """STEPS batches of two packed documents per row counting up mod 64 from random starts, the
    second document's first 4 tokens out of the loss: int32 [B, T] each."""
    rng = np.random.RandomState(0)
    out = []
    for _ in range(STEPS):
        start = rng.randint(0, 64, (B, 2))
        cut = rng.randint(8, T - 8, (B,))
        i = np.arange(T)
        second = i[None] >= cut[:, None]                                       # [B, T]
        pos = np.where(second, i[None] - cut[:, None], i[None])
        tokens = 10 + (np.where(second, start[:, 1:], start[:, :1]) + pos) % 64
        seg = 1 + second.astype(np.int32)
        seg[1, T - 5:] = 0                                                     # padding
        mask = np.where(second & (pos < 4), 0, 1)
        out.append({k: jnp.asarray(v, jnp.int32) for k, v in
                    dict(tokens=tokens, positions=pos, segment_ids=seg, loss_mask=mask).items()})
    return out


@functools.lru_cache(maxsize=None)
def initial(model="r1"):
    """(graphdef, params, rest) of the model at init, on the default device: every mesh starts here."""
    return split_model(build(MODELS[model], nnx.Rngs(0)))


@functools.lru_cache(maxsize=None)
def compiled(name, model="r1"):
    """What train.run builds for a mesh (shardings, optimizer, jitted step), once per mesh."""
    mesh = sharding.make_mesh(**{**dict(data=1, fsdp=1, expert=1, tensor=1), **{**MESHES, **DENSE_MESH}[name]})
    graphdef, params, rest = initial(model)
    p_sh = sharding.variable_shardings(params, mesh)
    r_sh = sharding.variable_shardings(rest, mesh)
    tx, _, _ = make_optimizer(OptimConfig(lr=3e-3, warmup_steps=2, total_steps=STEPS),
                              nnx.merge(graphdef, params, rest), params)
    o_sh = opt_state_shardings(jax.eval_shape(tx.init, params), jax.device_put(params, p_sh), mesh)
    step_fn = jit_train_step(graphdef, tx, SC, (p_sh, r_sh, o_sh), mesh)
    return mesh, (p_sh, r_sh), jax.jit(tx.init, out_shardings=o_sh), step_fn, sharding.batch_sharding(mesh)


class Trainer:
    """Training state on one mesh, placed and stepped the way train.run does it."""

    def __init__(self, name, model="r1"):
        self.name, self.key = name, (name, model)
        self.mesh, (p_sh, r_sh), tx_init, self.step_fn, self.b_sh = compiled(name, model)
        _, params, rest = initial(model)
        with jax.set_mesh(self.mesh):
            # copies: the step donates them, and the initial state is shared by every run
            self.params = jax.device_put(jax.tree.map(jnp.copy, params), p_sh)
            self.rest = jax.device_put(jax.tree.map(jnp.copy, rest), r_sh)
            self.opt_state = tx_init(self.params)

    def run(self, data):
        """Steps over `data`; the loss of each step."""
        losses = []
        with jax.set_mesh(self.mesh):
            for batch in data:
                args = (self.params, self.rest, self.opt_state, jax.device_put(batch, self.b_sh))
                if self.key not in _STEPS_COMPILED:  # once per mesh; a layout change would fail it
                    _STEPS_COMPILED[self.key] = self.step_fn.lower(*args).compile(FAST_CPU_CODEGEN)
                self.params, self.rest, self.opt_state, m = _STEPS_COMPILED[self.key](*args)
                losses.append(m["loss"])
        return [float(x) for x in losses]

    def state(self):
        """As train.run saves it: params and rest as nested dicts."""
        return {"params": nnx.to_pure_dict(self.params), "rest": nnx.to_pure_dict(self.rest),
                "opt_state": self.opt_state}

    def load(self, state):
        nnx.replace_by_pure_dict(self.params, state["params"])
        nnx.replace_by_pure_dict(self.rest, state["rest"])
        self.opt_state = state["opt_state"]

    def flat_params(self):
        return {jax.tree_util.keystr(k): np.asarray(v)
                for k, v in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(self.params))[0]}


@pytest.fixture(scope="module")
def data():
    return batches()


@pytest.fixture(scope="module")
def reference(data):
    t = Trainer("single")
    losses = t.run(data)
    return losses, t.flat_params()


def _assert_close(losses, params, ref_losses, ref_params, skip=()):
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for k, want in ref_params.items():
        if k in skip:
            continue
        err = np.linalg.norm(params[k] - want) / max(np.linalg.norm(want), 1e-30)
        assert err < 1e-5, (k, err)


@pytest.mark.parametrize("name", [n for n in MESHES if n != "single"])
def test_twenty_steps_equal_single_device(data, reference, name):
    ref_losses, ref_params = reference
    assert ref_losses[-1] < 0.8 * ref_losses[0]  # the curve really moves: training happens
    t = Trainer(name)
    losses = t.run(data)
    _assert_close(losses, t.flat_params(), ref_losses, ref_params)
    if "expert" in name:  # the routed experts really are split over `expert`
        up = t.params["moe_layers"]["mlp"]["up"][...]  # [L, E, D, F]
        assert up.sharding.spec[1] == "expert" and not up.is_fully_replicated
    # Adam's moments live where their parameters do (not replicated on every device)
    flat = {path_str(k): v.sharding for k, v in jax.tree_util.tree_flatten_with_path(t.params)[0]}
    moments = [(path_str(k), v) for k, v in jax.tree_util.tree_flatten_with_path(t.opt_state)[0]
               if ".mu." in path_str(k) or ".nu." in path_str(k)]
    assert len(moments) == 2 * len(flat)
    for k, v in moments:
        owner = k.split(".mu.")[-1].split(".nu.")[-1]
        assert v.sharding.is_equivalent_to(flat[owner], v.ndim), k


def test_dense_family_on_a_data_fsdp_tensor_mesh_equals_single_device(data):
    """The dense family trains the same on a data 2 x fsdp 2 x tensor 2 mesh as on one device.
    Oracle: the single device, as above (same tolerance); its K/V heads really are split over
    `tensor`. Not compared: the key bias. It adds q.b_k to every score of a query alike, which
    softmax cancels: its gradient is zero but for rounding, so Adam's normalized steps follow
    rounding noise, which any change of summation order changes."""
    ref = Trainer("single", "qwen2")
    ref_losses = ref.run(data)
    assert ref_losses[-1] < 0.8 * ref_losses[0]
    t = Trainer("data2,fsdp2,tensor2", "qwen2")
    _assert_close(t.run(data), t.flat_params(), ref_losses, ref.flat_params(),
                  skip={"['layers']['attn']['k_bias']"})
    k = t.params["layers"]["attn"]["k"][...]  # [L, D, G, K]
    assert k.sharding.spec[2] == "tensor" and not k.is_fully_replicated


def test_checkpoint_resumes_on_another_mesh(data, reference, tmp_path):
    ref_losses, ref_params = reference
    save_on, resume_on = "fsdp8", "expert4,tensor2"
    first = Trainer(save_on)
    head = first.run(data[:RESUME_AT])
    ckpts = RunCheckpoints(str(tmp_path), keep=1, log=lambda s: None)
    ckpts.save(RESUME_AT, first.state(), {"step": RESUME_AT})
    ckpts.wait()

    second = Trainer(resume_on)
    step, state, meta = ckpts.restore_latest(abstract_of(second.state()))
    ckpts.close()
    assert step == RESUME_AT and meta == {"step": RESUME_AT}
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(second.state())):
        assert got.sharding == want.sharding  # restored straight onto the new mesh's layout
    # the same state carried over in memory (no checkpoint) is the exact expectation
    direct = Trainer(resume_on)
    direct.load(jax.device_put(first.state(), jax.tree.map(lambda x: x.sharding, direct.state())))
    second.load(state)
    tail, direct_tail = second.run(data[RESUME_AT:]), direct.run(data[RESUME_AT:])
    assert tail == direct_tail  # the checkpoint round trip is exact
    _assert_close(head + tail, second.flat_params(), ref_losses, ref_params)


def test_batch_that_does_not_split_over_the_mesh_is_named(tmp_path):
    c = tiny.get_config()
    c.output_dir = str(tmp_path)
    c.mesh.data, c.train.batch_size = 8, 12  # 12 rows over 8 batch shards
    with pytest.raises(run_config.RunConfigError, match=r"train.batch_size=12.*data x fsdp x expert = 8"):
        train.run(c)
    c.mesh.data, c.mesh.preset = -1, "r1-671b-gpu"  # the preset's sizes for 8 devices: expert 8
    with pytest.raises(run_config.RunConfigError, match=r"train.batch_size=12.*'expert': 8"):
        train.run(c)
