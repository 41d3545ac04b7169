"""Training checkpoints (Orbax CheckpointManager): the latest N, the best by validation loss, resume.

    OUTPUT_DIR/checkpoints/STEP/{state,meta}   the last `keep` checkpoints (async, atomic)
    OUTPUT_DIR/best/STEP/{state,meta}          the checkpoint with the lowest val/loss so far

`state` is {"params", "rest", "opt_state"} (params in the model checkpoint's nested layout, so
export and evaluate read it too); `meta` is JSON: step, the data iterator's state and the loop's
counters (non-finite floats as null: r1jax/train/run_json.py). A checkpoint that fails to restore
(corrupt, truncated) is moved aside to STEP.corrupt-TIME (nothing is deleted) and the one before it is
used: one line on the console; the traceback and what Orbax logged meanwhile go to
OUTPUT_DIR/checkpoint_errors.log.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import traceback

import jax
import orbax.checkpoint as ocp

from r1jax.train.run_json import finite

ERRORS_LOG = "checkpoint_errors.log"


class RunCheckpoints:
    def __init__(self, output_dir: str, keep: int, log=print, best_metric: str = "val/loss",
                 best_mode: str = "min"):
        self.log = log
        self.errors = _ErrorLog(os.path.abspath(os.path.join(output_dir, ERRORS_LOG)))
        opts = dict(create=True, enable_async_checkpointing=True)
        self.latest = ocp.CheckpointManager(
            os.path.abspath(os.path.join(output_dir, "checkpoints")), item_names=("state", "meta"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, **opts))
        self.best = ocp.CheckpointManager(
            os.path.abspath(os.path.join(output_dir, "best")), item_names=("state", "meta"),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m[best_metric],
                                                 best_mode=best_mode, **opts))
        self.best_metric = best_metric

    @staticmethod
    def _args(state, meta):
        return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(finite(meta)))

    def save(self, step: int, state, meta: dict) -> None:
        """Starts an async save of `state` and `meta` at `step` (a no-op if that step is saved)."""
        if step not in self.latest.all_steps():
            self._one_at_a_time(self.best)
            self.latest.save(step, args=self._args(state, meta))

    def save_best(self, step: int, state, meta: dict, value: float) -> None:
        """Saves into OUTPUT_DIR/best, which keeps the step of the best `best_metric` value (the
        lowest val/loss by default; GRPO's highest val/reward)."""
        if step not in self.best.all_steps():
            self._one_at_a_time(self.latest)
            self.best.save(step, args=self._args(state, meta), metrics={self.best_metric: value})

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
        failed = False
        for step in sorted(self.latest.all_steps(), reverse=True):
            self.errors.catching()
            error = None
            with _orbax_logs() as logged:
                try:
                    out = self.latest.restore(step, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
                except Exception as e:  # noqa: BLE001 - any failure means "this one is unusable"
                    error, details = e, traceback.format_exc()
            if error is None:
                logged.replay()  # a good restore's log lines reach the console as usual
                if not failed:
                    self.errors.close()  # no failed reads to expect
                return step, out.state, out.meta
            failed = True
            bad = os.path.join(str(self.latest.directory), str(step))
            kept = f"{bad}.corrupt-{int(time.time())}"
            if jax.process_index() == 0:
                os.rename(bad, kept)  # kept for inspection, out of the manager's way
            self.latest.reload()
            self.errors.write(f"checkpoint {bad} (step {step}) cannot be restored; moved to {kept}\n"
                              f"{details}{logged.text()}")
            first = str(error).splitlines()[0][:200] if str(error) else ""
            self.log(f"checkpoint {bad} cannot be restored ({type(error).__name__}: {first}); moved to "
                     f"{kept}; details in {self.errors.path}; trying the one before")
        return None

    def latest_step(self) -> int | None:
        """The step of the newest checkpoint in OUTPUT_DIR/checkpoints (saved or being saved), or None."""
        return self.latest.latest_step()

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()
        self.errors.close()


class _Logged:
    """Log records held back while a restore is attempted."""

    def __init__(self):
        self.records: list[logging.LogRecord] = []

    def text(self) -> str:
        fmt = logging.Formatter("%(levelname)s %(name)s %(pathname)s:%(lineno)d: %(message)s")
        return "".join(fmt.format(r) + "\n" for r in self.records)

    def replay(self) -> None:
        for r in self.records:
            logging.getLogger(r.name).handle(r)


@contextlib.contextmanager
def _orbax_logs():
    """Holds back what Orbax logs (through absl, the Python logger "absl") during the body, instead
    of printing it: a failing restore logs a traceback per array."""
    logger, held = logging.getLogger("absl"), _Logged()

    class Hold(logging.Handler):
        def emit(self, record):
            held.records.append(record)
    handler, propagate = Hold(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield held
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


class _ErrorLog:
    """OUTPUT_DIR/checkpoint_errors.log: the details of checkpoints that failed to restore.

    A failing restore leaves tensorstore reads in flight whose completion callbacks, arriving after
    Orbax closed its event loop, raise "RuntimeError: Event loop is closed" as unraisable exceptions,
    one traceback each (thousands on a large model), during the restore and after it; a read task
    whose failure nobody awaited is reported by asyncio's logger when the task is collected, later
    still. From `catching` until `close` both go here too (held until the next `write` or `close`);
    every other unraisable exception and asyncio log record still goes where it went."""

    def __init__(self, path: str):
        self.path = path
        self._previous = None
        self._held: list[str] = []
        self._asyncio = _Holding(self._held)

    def write(self, text: str) -> None:
        """Appends an entry (a header line with the time and process, then `text`), then the
        callbacks' tracebacks caught so far."""
        held, self._held = self._held, []
        with open(self.path, "a") as f:
            f.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} process {jax.process_index()}: {text}\n")
            f.writelines(held)

    def catching(self) -> None:
        """Routes the failed reads' "Event loop is closed" tracebacks here from now on."""
        if self._previous is not None:
            return
        previous = self._previous = sys.unraisablehook

        def hook(u):
            if isinstance(u.exc_value, RuntimeError) and "Event loop is closed" in str(u.exc_value):
                self._held.append("".join(traceback.format_exception(u.exc_type, u.exc_value,
                                                                     u.exc_traceback)))
            else:
                previous(u)
        sys.unraisablehook = hook
        self._asyncio.attach(logging.getLogger("asyncio"))

    def close(self) -> None:
        if self._previous is not None:
            sys.unraisablehook, self._previous = self._previous, None
            self._asyncio.detach()
        if self._held:
            self.write(f"{len(self._held)} more failed reads of a checkpoint that could not be restored")


class _Holding(logging.Handler):
    """A log handler appending each record, formatted with its traceback, to a list, in place of the
    logger's own output while attached."""

    def __init__(self, into: list[str]):
        super().__init__()
        self.into, self.logger, self.propagate = into, None, True
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record) -> None:
        self.into.append(self.format(record) + "\n")

    def attach(self, logger: logging.Logger) -> None:
        self.logger, self.propagate = logger, logger.propagate
        logger.addHandler(self)
        logger.propagate = False

    def detach(self) -> None:
        if self.logger is not None:
            self.logger.removeHandler(self)
            self.logger.propagate, self.logger = self.propagate, None


def abstract_of(tree):
    """ShapeDtypeStructs (with shardings) of a tree of arrays."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
