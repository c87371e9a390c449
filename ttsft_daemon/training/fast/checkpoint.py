"""Checkpoints written in the background, at a bounded share of the wall time (used by the launcher's
`AtomicCheckpointIO` and `TtsftSupervisor` on CUDA in fast mode).

A Piper checkpoint is ~850 MB; writing it took 1.1-1.4 s on the GPU hosts measured, more than an epoch of
a small dataset once the loop is fast. In the background mode the training thread only copies the state to
host memory (`host_snapshot`, one device sync) and a writer thread streams it to disk with the launcher's
atomic protocol (temporary name, fsync, rename, then last.ckpt is switched), so a kill at any moment still
leaves last.ckpt pointing at a complete checkpoint. `CheckpointThrottle` skips a due save while the time
since the previous save is under (its blocking cost / share), so saving costs at most `share` of the wall
time; the final epoch is always saved and the writer is joined before the trainer exits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import torch


def host_snapshot(value: Any) -> Any:
    """A copy of a checkpoint dict whose tensors are on the host and owned by the copy (one device sync)."""
    copied = _copy(value)
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        torch.cuda.synchronize()
    return copied


def _copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        if value.is_cuda:
            return value.detach().to("cpu", non_blocking=True)  # into pinned memory; synced by the caller
        return value.detach().clone()
    if isinstance(value, dict):
        return type(value)((k, _copy(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_copy(v) for v in value)
    return value


class BackgroundWriter:
    """Runs one write at a time on a thread; `wait()` joins it and re-raises its error."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, work: Callable[[], None]) -> None:
        self.wait()

        def run() -> None:
            try:
                work()
            except BaseException as exc:  # reported by the next wait()
                self._error = exc

        self._thread = threading.Thread(target=run, name="checkpoint-writer")
        self._thread.start()

    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


class CheckpointThrottle:
    """Decides whether a due checkpoint is saved now, keeping saving under `share` of the wall time."""

    def __init__(self, share: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.share = share
        self.clock = clock
        self._last_end: float | None = None
        self._last_cost = 0.0

    def should_save(self, final: bool) -> bool:
        if final or self.share <= 0 or self._last_end is None:
            return True
        return self.clock() - self._last_end >= self._last_cost / self.share

    def saved(self, blocking_seconds: float) -> None:
        self._last_end = self.clock()
        self._last_cost = blocking_seconds
