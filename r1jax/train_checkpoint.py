"""Training checkpoints (Orbax CheckpointManager): the latest N, the best by validation loss, resume.

    OUTPUT_DIR/checkpoints/STEP/{state,meta}   the last `keep` checkpoints (async, atomic)
    OUTPUT_DIR/best/STEP/{state,meta}          the checkpoint with the lowest val/loss so far

`state` is {"params", "rest", "opt_state"} (params in the model checkpoint's nested layout, so
export and evaluate read it too); `meta` is JSON: step, the data iterator's state and the loop's
counters. A checkpoint that fails to restore (corrupt, truncated) is reported, moved aside to
STEP.corrupt-TIME (nothing is deleted), and the one before it is used.
"""
from __future__ import annotations

import os
import time

import jax
import orbax.checkpoint as ocp


class RunCheckpoints:
    def __init__(self, output_dir: str, keep: int, log=print):
        self.log = log
        opts = dict(create=True, enable_async_checkpointing=True)
        self.latest = ocp.CheckpointManager(
            os.path.abspath(os.path.join(output_dir, "checkpoints")), item_names=("state", "meta"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, **opts))
        self.best = ocp.CheckpointManager(
            os.path.abspath(os.path.join(output_dir, "best")), item_names=("state", "meta"),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m["val/loss"],
                                                 best_mode="min", **opts))

    @staticmethod
    def _args(state, meta):
        return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))

    def save(self, step: int, state, meta: dict) -> None:
        """Starts an async save of `state` and `meta` at `step` (a no-op if that step is saved)."""
        if step not in self.latest.all_steps():
            self._one_at_a_time(self.best)
            self.latest.save(step, args=self._args(state, meta))

    def save_best(self, step: int, state, meta: dict, val_loss: float) -> None:
        if step not in self.best.all_steps():
            self._one_at_a_time(self.latest)
            self.best.save(step, args=self._args(state, meta), metrics={"val/loss": val_loss})

    @staticmethod
    def _one_at_a_time(other) -> None:
        """With several processes, waits for the other manager's save: two async saves in flight
        finalize through the same named cross-process barrier, and the second fails ("Barrier
        ThreadSaveMultiHostValueHolder:set_value_start is already ongoing", orbax-checkpoint 0.12.8)."""
        if jax.process_count() > 1:
            other.wait_until_finished()

    def restore_latest(self, abstract_state):
        """(step, state, meta) of the newest checkpoint that restores, or None when there is none.

        `abstract_state` is a tree of jax.ShapeDtypeStruct with shardings: arrays are restored
        directly onto their devices."""
        for step in sorted(self.latest.all_steps(), reverse=True):
            try:
                out = self.latest.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
                return step, out.state, out.meta
            except Exception as e:  # noqa: BLE001 - any failure means "this one is unusable"
                bad = os.path.join(str(self.latest.directory), str(step))
                kept = f"{bad}.corrupt-{int(time.time())}"
                if jax.process_index() == 0:
                    os.rename(bad, kept)  # kept for inspection, out of the manager's way
                self.latest.reload()
                self.log(f"checkpoint {bad} cannot be restored ({type(e).__name__}: {str(e)[:300]}); "
                         f"moved to {kept}; trying the one before")
        return None

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def abstract_of(tree):
    """ShapeDtypeStructs (with shardings) of a tree of arrays."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
