"""Checkpoints written in the background, at a bounded share of the wall time (used by the launcher's
`AtomicCheckpointIO` and `TtsftSupervisor` on CUDA in fast mode).

A Piper checkpoint is ~850 MB; writing it took 1.1-1.4 s on the GPU hosts measured, more than an epoch of
a small dataset once the loop is fast. In the background mode the training thread only copies the state to
host memory (`host_snapshot`, one device sync) and a writer thread streams it to disk with the launcher's
atomic protocol (temporary name, fsync, rename, then last.ckpt is switched), so a kill at any moment still
leaves last.ckpt pointing at a complete checkpoint. The state is cloned on the device where it has room
(`snapshot`: milliseconds), else copied to pinned host memory. `CheckpointThrottle` skips a due save while
the time since the previous save is under (its cost / share), the cost being what the save blocked the
training thread plus its background write, and while a write is still running, so saving costs at most
`share` of the wall time wherever it runs; the final epoch is always saved and the writer is joined before
the trainer exits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import torch


def snapshot(value: Any) -> Callable[[], Any]:
    """A consistent copy of a checkpoint dict, taken now; returns the function (for the writer thread) that
    gives it with every tensor on the host.

    On CUDA, when the device has room for a second copy of the checkpoint's device tensors (twice their
    size free), they are cloned on the device (a device-to-device copy: milliseconds, no host sync, no
    pinned allocation) and the writer thread copies the clones to the host on its own stream after an
    event; else `host_snapshot` here (one sync; on the first save, the pinned host memory's allocation
    costs most of it: ~0.9 s for piper's 846 MB on the H200 host)."""
    cuda = _cuda_tensors(value)
    if not cuda:
        copied = host_snapshot(value)
        return lambda: copied
    device = cuda[0].device
    size = sum(t.numel() * t.element_size() for t in cuda)
    free, _ = torch.cuda.mem_get_info(device)
    if free < 2 * size:
        copied = host_snapshot(value)
        return lambda: copied
    cloned = _copy(value, on_device=True)
    ready = torch.cuda.Event()  # type: ignore[no-untyped-call]
    ready.record()

    def to_host() -> Any:
        with torch.cuda.device(device):
            stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
            stream.wait_event(ready)  # type: ignore[no-untyped-call]
            with torch.cuda.stream(stream):
                return _copy(cloned, on_device=False, blocking=True)

    return to_host


def _cuda_tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value] if value.is_cuda else []
    if isinstance(value, dict):
        return [t for v in value.values() for t in _cuda_tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _cuda_tensors(v)]
    return []


def host_snapshot(value: Any) -> Any:
    """A copy of a checkpoint dict whose tensors are on the host and owned by the copy (one device sync)."""
    copied = _copy(value)
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        torch.cuda.synchronize()
    return copied


def _copy(value: Any, on_device: bool = False, blocking: bool = False) -> Any:
    """`value` with its tensors copied: CUDA ones to the host (`on_device`: cloned on the device;
    `blocking`: each copy waits, into pageable memory; else into pinned memory, synced by the caller)."""
    if isinstance(value, torch.Tensor):
        if value.is_cuda:
            if on_device:
                return value.detach().clone()
            return value.detach().to("cpu", non_blocking=not blocking)
        return value.detach().clone()
    if isinstance(value, dict):
        return type(value)((k, _copy(v, on_device, blocking)) for k, v in value.items())
    if isinstance(value, list):
        return [_copy(v, on_device, blocking) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_copy(v, on_device, blocking) for v in value)
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

    def add_cost(self, seconds: float) -> None:
        """Count `seconds` more for the last save (its background write: the disk and the CPU it took)."""
        self._last_cost += seconds
