"""Shared by the resume tests of streamed jobs (convert, export): a per-task function that records
the tasks it runs and can be made to crash after a number of them."""
import pytest


class TaskCalls:
    """Wraps module.NAME (a function whose first argument is a streaming.Task) with monkeypatch:
    `keys` lists the keys of the tasks it ran; after `crash_after` of them it raises RuntimeError
    ("simulated crash"), as a job killed mid-way; `resume()` lets every later call through."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module, name: str, crash_after: int | None):
        self.real, self.keys, self.crash_after = getattr(module, name), [], crash_after
        monkeypatch.setattr(module, name, self)

    def __call__(self, task, *args):
        if self.crash_after is not None and len(self.keys) == self.crash_after:
            raise RuntimeError("simulated crash")
        self.keys.append(task.key)
        return self.real(task, *args)

    def resume(self) -> None:
        """From now on: no crash, and `keys` counts the calls from here."""
        self.crash_after, self.keys[:] = None, []
