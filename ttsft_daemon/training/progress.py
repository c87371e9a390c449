"""Names and records shared by the trainer process (launcher) and the daemon (runner); no torch here.

Layout of a voice's training folder:

    train.csv                Piper's `file|text` CSV derived from the dataset
    config.json              the voice config piper.train's data module writes
    cache/                   piper.train's per-clip cache (phoneme ids, audio, spectrograms); cache/.prepared
                             is rewritten after each complete preparation (newer files may be partial)
    checkpoints/             epoch=EEEEE-step=SSSSSSSSS.ckpt (EEEEE: 0-based epoch, as stored in the file)
                             last.ckpt -> the newest of them (a symlink switched atomically)
    progress.json            the trainer's account, rewritten after each epoch and checkpoint
    state.json               the runner's account for the daemon (TrainingState)
    train.log, train.log.1   the trainer's output, bounded
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ttsft_daemon.core.atomic import atomic_path, atomic_write_json, read_json

CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
PROGRESS_FILE = "progress.json"
STATE_FILE = "state.json"
CACHE_MARKER = ".prepared"  # in piper's cache folder: written once piper's data preparation is complete
EPOCH_HISTORY = 200  # per-epoch records kept in progress.json
_CHECKPOINT_RE = re.compile(r"^epoch=(\d+)-step=(\d+)\.ckpt$")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def checkpoint_name(epoch_index: int, step: int) -> str:
    """File name of the checkpoint saved at the end of 0-based epoch `epoch_index` (Lightning's convention)."""
    return f"epoch={epoch_index:05d}-step={step:09d}.ckpt"


def parse_checkpoint_name(name: str) -> tuple[int, int] | None:
    """(completed epochs, step) of a checkpoint file name, or None for other files."""
    match = _CHECKPOINT_RE.match(name)
    if match is None:
        return None
    return int(match.group(1)) + 1, int(match.group(2))


def epoch_checkpoints(folder: Path) -> list[Path]:
    """Regular checkpoint files of `folder`, oldest first (by completed epochs, then step)."""
    found: list[tuple[tuple[int, int], Path]] = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    for entry in entries:
        parsed = parse_checkpoint_name(entry.name)
        if parsed is not None and entry.is_file(follow_symlinks=False):
            found.append((parsed, Path(entry.path)))
    return [path for _, path in sorted(found)]


def last_checkpoint(folder: Path) -> Path | None:
    """The checkpoint to resume from: what last.ckpt refers to, else the newest epoch checkpoint.

    (last.ckpt may be missing or dangling after a kill between a save and the link switch.)
    """
    last = folder / LAST_CHECKPOINT
    if last.exists():
        return last.resolve() if last.is_symlink() else last
    existing = epoch_checkpoints(folder)
    return existing[-1] if existing else None


def point_last_checkpoint(checkpoint: Path) -> Path:
    """Atomically make `last.ckpt` beside `checkpoint` refer to it (a relative symlink, else a hard link)."""
    last = checkpoint.parent / LAST_CHECKPOINT
    with atomic_path(last) as tmp:
        try:
            os.symlink(checkpoint.name, tmp)
        except OSError:
            os.link(checkpoint, tmp)
    return last


def selection_loss(metrics: Mapping[str, float]) -> float | None:
    """The loss that ranks checkpoints: validation mel L1 (piper's choice), else the generator loss."""
    for key in ("val_mel", "val_loss", "loss_g"):
        if key in metrics:
            return metrics[key]
    return None


class ProgressFile:
    """progress.json, written by the trainer (rank 0 only), read by the runner.

    Keys: epoch (completed epochs), step, max_epochs, losses (latest epoch), epochs (recent per-epoch records:
    epoch, step, train_seconds, validation_seconds, cpu_seconds, checkpoint_seconds, losses, finished),
    checkpoints (file name -> path, epoch, step, loss, bytes, save_seconds, saved), last_checkpoint, pid,
    updated.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = read_json(path) or {}
        if not isinstance(self.data.get("epochs"), list):
            self.data["epochs"] = []
        if not isinstance(self.data.get("checkpoints"), dict):
            self.data["checkpoints"] = {}

    def record_epoch(self, record: dict[str, Any], max_epochs: int) -> None:
        epochs = [e for e in self.data["epochs"] if e.get("epoch") != record["epoch"]]
        self.data["epochs"] = [*epochs, record][-EPOCH_HISTORY:]
        self.data.update(epoch=record["epoch"], step=record["step"], losses=record["losses"],
                         max_epochs=max_epochs)
        self.write()

    def record_checkpoint(self, path: Path, info: dict[str, Any]) -> None:
        self.data["checkpoints"][path.name] = {"path": str(path), **info}
        self.data["last_checkpoint"] = str(path)
        epochs = self.data["epochs"]
        if epochs and epochs[-1].get("epoch") == info.get("epoch"):
            epochs[-1]["checkpoint_seconds"] = info.get("save_seconds", 0.0)
        self.write()

    def write(self) -> None:
        self.data["checkpoints"] = {
            name: info for name, info in self.data["checkpoints"].items()
            if isinstance(info, dict) and Path(str(info.get("path", ""))).exists()
        }
        self.data.update(pid=os.getpid(), updated=now_iso())
        atomic_write_json(self.path, self.data)


def read_progress(training_dir: Path) -> dict[str, Any]:
    return read_json(training_dir / PROGRESS_FILE) or {}


STEP_LINE_SECONDS = 30.0  # at most one "[ttsft] step ..." line this often while an epoch runs


class StepReporter:
    """The trainer's line while an epoch runs, at a bounded rate: step, batches/s, epoch ETA and losses.

    The runner passes every `[ttsft]` line of the trainer to the daemon's log (and so to the journal). `on_batch`
    returns the line when one is due (never on an epoch's first batch: no rate yet), else None; `metrics` is only
    called then (on a GPU, reading the losses syncs with the device).
    """

    def __init__(self, interval: float = STEP_LINE_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._epoch: int | None = None
        self._epoch_started = 0.0
        self._first_batch = 0
        self._last = 0.0

    def on_batch(self, epoch: int, batch_idx: int, batches: int | None, global_step: int,
                 metrics: Callable[[], Mapping[str, float]]) -> str | None:
        now = self.clock()
        if self._epoch != epoch or batch_idx < self._first_batch:
            self._epoch, self._epoch_started, self._first_batch, self._last = epoch, now, batch_idx, now
            return None
        if now - self._last < self.interval:
            return None
        self._last = now
        done = batch_idx + 1 - self._first_batch
        rate = done / max(now - self._epoch_started, 1e-9)
        of = f"/{batches}" if batches else ""
        eta = f" eta {(batches - batch_idx - 1) / rate:.0f}s" if batches and rate > 0 else ""
        wanted = ("loss_g", "loss_d", "train_mel", "val_mel")
        values = metrics()
        losses = " ".join(f"{k}={values[k]:.4g}" for k in wanted if k in values)
        return (f"[ttsft] step {global_step} epoch {epoch} batch {batch_idx + 1}{of} {rate:.3g} batches/s"
                f"{eta} {losses}").rstrip()
