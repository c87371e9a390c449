"""Piper training runs for the daemon: start, watch, stop, resume, keep checkpoints bounded.

`train()` runs `python -m ttsft_daemon.training.launcher fit ...` as a child process in its own process group
(output to `train.log`, bounded), resumes from `checkpoints/last.ckpt` when there is one (the epoch count
continues), else warm-starts from `cfg.base_checkpoint` (its model sizes must match `cfg.quality`), else
trains from scratch. It follows the trainer through `progress.json` (which the launcher rewrites after every
epoch and checkpoint), keeps `state.json` up to date, calls `on_epoch` after each epoch, and applies the
retention policy. When `stop` is set it sends SIGTERM to the trainer's group and SIGKILL after a grace
period; checkpoints are written to a temporary name and renamed, so none is ever left half-written.

Epochs are counted as completed epochs throughout (`TrainingState.epoch`, `progress.json`); the "epoch" key
inside a checkpoint is Lightning's 0-based index of the epoch that produced it, so it is one less. While a run
is on, `epoch` is the trainer's latest epoch; once it is stopped or failed, the epoch of the checkpoint the
next run resumes from (with checkpoint_every_epochs > 1 the epochs after it are trained again).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from filelock import FileLock, Timeout

from ttsft_daemon.config import TrainingConfig
from ttsft_daemon.core.spool import TMP_PREFIX, atomic_write_bytes, atomic_write_json, read_json
from ttsft_daemon.errors import ConfigError, TransientError
from ttsft_daemon.logs import get_logger
from ttsft_daemon.training import sizes as quality_sizes
from ttsft_daemon.training.progress import (
    CACHE_MARKER,
    CHECKPOINTS_DIR,
    LAST_CHECKPOINT,
    PROGRESS_FILE,
    STATE_FILE,
    epoch_checkpoints,
    last_checkpoint,
    now_iso,
    parse_checkpoint_name,
    read_progress,
)

log = get_logger(__name__)

STATES = ("idle", "training", "stopped", "finished", "failed")
TRAIN_CSV = "train.csv"
CACHE_DIR = "cache"
TRAIN_LOG = "train.log"
LOCK_FILE = ".train.lock"
SEED = 1234  # a fixed seed keeps piper's train/validation split the same across resumed runs
LAUNCHER = "ttsft_daemon.training.launcher"


@dataclass(frozen=True)
class TrainingState:
    """What the daemon knows about a voice's training (state.json)."""

    state: str = "idle"
    voice: str = ""
    epoch: int = 0  # completed epochs
    target_epochs: int = 0
    step: int = 0  # Lightning's global step: two optimizer steps (generator, discriminator) per batch
    last_checkpoint: str | None = None
    best_checkpoint: str | None = None
    losses: dict[str, float] = field(default_factory=dict)
    clips: int = 0
    quality: str | None = None
    warm_start: str | None = None  # the base checkpoint this voice's training started from
    seconds_per_epoch: float | None = None  # mean of the recent epochs, checkpoint writing included
    checkpoint_seconds: float | None = None  # of the latest checkpoint
    peak_rss_mb: float | None = None  # of the trainer process in the latest run
    failures: int = 0  # consecutive failed runs
    onnx: str | None = None  # the latest exported voice
    error: str | None = None
    pid: int | None = None
    started: str | None = None
    updated: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingState:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("state") not in STATES:
            values.pop("state", None)
        try:
            return cls(**values)
        except TypeError:
            return cls()


# ----------------------------------------------------------------------------------------------- dataset


def write_trainer_csv(metadata_csv: Path, wavs_dir: Path, out_csv: Path) -> int:
    """Write Piper's `file|text` CSV (absolute WAV paths) from the dataset's metadata; returns the row count.

    Rows whose WAV is missing or whose transcript is empty are left out. Transcripts are written with csv
    quoting, which is how piper's reader (csv, `|` delimiter) reads them back intact.
    """
    import csv
    import io

    rows: list[tuple[str, str]] = []
    for name, text in _metadata_rows(metadata_csv):
        wav = _find_wav(name, wavs_dir, metadata_csv.parent)
        if wav is not None and text:
            rows.append((str(wav), text))
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="|", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerows(rows)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_csv, buffer.getvalue().encode("utf-8"))
    return len(rows)


def _metadata_rows(metadata_csv: Path) -> Iterable[tuple[str, str]]:
    """(clip file name, transcript) of `clip_filename|transcript|duration|speaker|quality` rows.

    Also takes two-column `file|text` rows; a transcript containing `|` keeps it (the last three fields are
    the numeric/speaker columns).
    """
    for line in metadata_csv.read_text(encoding="utf-8").splitlines():
        parts = line.split("|")
        if len(parts) >= 5:
            name, text = parts[0], "|".join(parts[1:-3])
        elif len(parts) == 2:
            name, text = parts
        else:
            continue
        yield name.strip(), " ".join(text.split())


def _find_wav(name: str, wavs_dir: Path, dataset_dir: Path) -> Path | None:
    for candidate in (wavs_dir / name, dataset_dir / name):
        if name and candidate.is_file():
            return candidate.resolve()
    return None


# ----------------------------------------------------------------------------------------------- state


def read_state(training_dir: Path) -> TrainingState:
    """The voice's TrainingState; a run recorded as `training` whose trainer is gone reads as `stopped`."""
    data = read_json(training_dir / STATE_FILE)
    if data is None:
        found = last_checkpoint(training_dir / CHECKPOINTS_DIR)
        parsed = parse_checkpoint_name(found.name) if found is not None else None
        epoch, step = parsed if parsed is not None else (0, 0)
        return TrainingState(epoch=epoch, step=step, last_checkpoint=str(found) if found else None)
    state = TrainingState.from_dict(data)
    if state.state == "training" and not _is_trainer_alive(state.pid):
        state = dataclasses.replace(state, state="stopped")
    return state


def _is_trainer_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return LAUNCHER.encode() in cmdline


def _write_state(training_dir: Path, state: TrainingState) -> TrainingState:
    state = dataclasses.replace(state, updated=now_iso())
    atomic_write_json(training_dir / STATE_FILE, state.to_dict())
    return state


# ----------------------------------------------------------------------------------------------- retention


def select_retained(
    checkpoints: Sequence[Path],
    losses: Mapping[str, float],
    sizes: Mapping[str, int],
    keep_last: int,
    keep_best: int,
    budget_bytes: float,
    protected: Iterable[Path] = (),
) -> set[Path]:
    """The checkpoints to keep: the newest `keep_last`, the `keep_best` of lowest loss, and `protected`.

    When they exceed `budget_bytes`, the older recent ones go first, then the worse best ones; the newest
    checkpoint and the protected ones are never given up. `checkpoints` are oldest first; `losses` and `sizes`
    are keyed by file name.
    """
    if not checkpoints:
        return set()
    newest = list(checkpoints[-keep_last:]) if keep_last > 0 else []
    scored = sorted((p for p in checkpoints if p.name in losses), key=lambda p: (losses[p.name], -checkpoints.index(p)))
    best = scored[:keep_best] if keep_best > 0 else []
    never = {checkpoints[-1], *(p for p in protected if p in checkpoints)}
    keep = set(newest) | set(best) | never

    def total() -> int:
        return sum(sizes.get(p.name, 0) for p in keep)

    sacrifice = [p for p in newest if p not in best] + list(reversed(best))
    for candidate in sacrifice:
        if total() <= budget_bytes:
            break
        if candidate not in never:
            keep.discard(candidate)
    return keep


def apply_retention(
    checkpoint_dir: Path,
    progress: Mapping[str, Any],
    keep_last: int,
    keep_best: int,
    disk_budget_gb: float,
    protected: Iterable[Path] = (),
) -> list[Path]:
    """Delete the checkpoints `select_retained` does not keep; returns the deleted paths.

    The target of last.ckpt is always protected (as is whatever the caller passes: the one being resumed).
    """
    files = epoch_checkpoints(checkpoint_dir)
    records = progress.get("checkpoints") or {}
    losses = {name: float(r["loss"]) for name, r in records.items()
              if isinstance(r, dict) and isinstance(r.get("loss"), (int, float))}
    sizes = {p.name: p.stat().st_size for p in files if p.exists()}
    guard = [p.resolve() for p in protected]
    link = checkpoint_dir / LAST_CHECKPOINT
    if link.exists():
        guard.append(link.resolve())
    guard_in_dir = [p for p in files if p.resolve() in guard]
    keep = select_retained(files, losses, sizes, keep_last, keep_best, disk_budget_gb * 1e9, guard_in_dir)
    deleted = []
    for path in files:
        if path not in keep:
            path.unlink(missing_ok=True)
            deleted.append(path)
    return deleted


def best_checkpoint(checkpoint_dir: Path, progress: Mapping[str, Any]) -> Path | None:
    """The existing checkpoint with the lowest recorded loss."""
    records = progress.get("checkpoints") or {}
    scored = [(float(r["loss"]), name) for name, r in records.items()
              if isinstance(r, dict) and isinstance(r.get("loss"), (int, float))
              and (checkpoint_dir / name).is_file()]
    return checkpoint_dir / min(scored)[1] if scored else None


# ----------------------------------------------------------------------------------------------- trainer log


class BoundedLog:
    """Appends the trainer's output to `path`, moving it to `path.1` whenever it passes `max_bytes`."""

    def __init__(self, path: Path, max_bytes: int, tail_lines: int = 40) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._fh: IO[bytes] = open(path, "ab")

    def write_line(self, line: bytes) -> None:
        self._fh.write(line)
        self._fh.flush()
        self.tail.append(line.decode("utf-8", "replace").rstrip())
        if self._fh.tell() > self.max_bytes:
            self._fh.close()
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self._fh = open(self.path, "ab")

    def close(self) -> None:
        self._fh.close()


def _pump(stream: IO[bytes], sink: BoundedLog, voice: str) -> None:
    for line in iter(stream.readline, b""):
        sink.write_line(line)
        if line.startswith(b"[ttsft]"):
            log.info("trainer", stage="train", voice=voice, message=line.decode("utf-8", "replace").strip())
    stream.close()


# ----------------------------------------------------------------------------------------------- the run


def inspect_checkpoint(path: Path, python: str = sys.executable, timeout: float = 600.0) -> dict[str, Any]:
    """`launcher inspect`: epoch, global_step, hyper_parameters and ttsft metadata of a checkpoint."""
    try:
        done = subprocess.run([python, "-m", LAUNCHER, "inspect", str(path)], capture_output=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise TransientError(f"inspecting {path} timed out") from exc
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise ValueError(f"{path} is not a readable Piper checkpoint: {' '.join(tail)}")
    info: dict[str, Any] = json.loads(done.stdout.decode("utf-8").strip().splitlines()[-1])
    return info


def check_base_checkpoint(path: Path, quality: str, python: str = sys.executable) -> None:
    """Raise ConfigError unless `path` is a Piper checkpoint with the model sizes of `quality`."""
    key = "training.base_checkpoint"
    if not path.is_file():
        raise ConfigError(key, [f"{path}: no such file (give a Piper .ckpt, or null to train from scratch)"])
    try:
        info = inspect_checkpoint(path, python)
    except ValueError as exc:
        raise ConfigError(key, [str(exc)]) from exc
    mismatches = quality_sizes.size_mismatches(info.get("hyper_parameters") or {}, quality)
    if mismatches:
        raise ConfigError(key, [f"{path} does not have the model sizes of training.quality={quality!r}: "
                                + "; ".join(mismatches)
                                + ". Set training.quality to the base voice's quality or pick another base."])


def _cleanup_partial_files(checkpoint_dir: Path, cache_dir: Path) -> None:
    """Remove what a killed trainer may have left half-written: temporary checkpoints, unprepared cache files.

    piper writes its per-clip cache in place; files newer than the launcher's "prepared" marker (all of them
    when there is no marker) may be partial, and are rebuilt by the next run's preparation.
    """
    if checkpoint_dir.is_dir():
        for leftover in checkpoint_dir.glob(f"{TMP_PREFIX}*"):
            leftover.unlink(missing_ok=True)
    if not cache_dir.is_dir():
        return
    marker = cache_dir / CACHE_MARKER
    prepared_at = marker.stat().st_mtime if marker.exists() else None
    for entry in os.scandir(cache_dir):
        if entry.name == CACHE_MARKER or not entry.is_file(follow_symlinks=False):
            continue
        if prepared_at is None or entry.stat().st_mtime >= prepared_at or entry.name.startswith(TMP_PREFIX):
            os.unlink(entry.path)


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


class TrainingRun:
    """One trainer process of one voice, from start to exit (use `train()`)."""

    def __init__(
        self,
        voice: str,
        dataset_dir: Path,
        training_dir: Path,
        cfg: TrainingConfig,
        stop: threading.Event,
        on_epoch: Callable[[TrainingState], None] | None = None,
        max_epochs: int | None = None,
        *,
        sample_rate: int = 22050,
        stop_grace_seconds: float = 60.0,
        log_max_bytes: int = 10_000_000,
        poll_seconds: float = 1.0,
        python: str = sys.executable,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.voice = voice
        self.dataset_dir = dataset_dir
        self.dir = training_dir
        self.cfg = cfg
        self.stop = stop
        self.on_epoch = on_epoch
        self.target = max_epochs if max_epochs is not None else cfg.max_epochs
        self.sample_rate = sample_rate
        self.stop_grace_seconds = stop_grace_seconds
        self.log_max_bytes = log_max_bytes
        self.poll_seconds = poll_seconds
        self.python = python
        self.extra_args = list(extra_args)
        self.checkpoint_dir = training_dir / CHECKPOINTS_DIR
        self.resume_from: Path | None = None
        self.state = TrainingState(voice=voice)
        self._reported_epoch = 0
        self._stopping = False

    # ------------------------------------------------------------------------------------------ main
    def run(self) -> TrainingState:
        warm_start = self._prepare()
        if self.resume_from is not None:
            done = parse_checkpoint_name(self.resume_from.name)
            if done is not None and done[0] >= self.target:
                self._refresh(read_progress(self.dir))
                return self._finish("finished")
        else:
            (self.dir / PROGRESS_FILE).unlink(missing_ok=True)  # a fresh run: no stale account
            self.state = dataclasses.replace(self.state, epoch=0, step=0, losses={}, last_checkpoint=None,
                                             best_checkpoint=None, seconds_per_epoch=None)
        self._reported_epoch = self.state.epoch
        if self.stop.is_set():
            return self._finish("stopped")
        return self._supervise(self._command(warm_start))

    def external_args(self) -> list[str]:
        """The launcher's `fit` arguments for a launch by torchrun or srun instead of this runner.

        Prepares the folder as `run` does (train.csv, leftovers removed, resume from the last checkpoint, else
        the warm start); the trainer then does not watch its parent (torchrun's agent or slurmstepd). The
        caller holds the voice's lock while this runs.
        """
        warm_start = self._prepare()
        if self.resume_from is None:
            (self.dir / PROGRESS_FILE).unlink(missing_ok=True)
        args = self._command(warm_start)[3:]  # without `python -m launcher`
        args[args.index("--ttsft.exit_with_parent") + 1] = "false"
        return args

    def _prepare(self) -> str | None:
        """Write train.csv, remove a killed run's leftovers, choose the resume point (`resume_from`) or the
        warm start (returned), and set up `state`."""
        self.dir.mkdir(parents=True, exist_ok=True)
        clips = write_trainer_csv(self.dataset_dir / "metadata.csv", self.dataset_dir / "wavs", self.dir / TRAIN_CSV)
        if clips == 0:
            raise TransientError(f"voice {self.voice}: the dataset has no clip with a WAV and a transcript yet")
        _cleanup_partial_files(self.checkpoint_dir, self.dir / CACHE_DIR)
        previous = read_state(self.dir)
        self.resume_from = last_checkpoint(self.checkpoint_dir)
        warm_start = self._choose_start(previous)
        self.state = dataclasses.replace(
            previous, voice=self.voice, clips=clips, target_epochs=self.target, error=None, pid=None,
            quality=previous.quality if self.resume_from else self.cfg.quality,
            warm_start=previous.warm_start if self.resume_from else warm_start,
        )
        return warm_start

    def _choose_start(self, previous: TrainingState) -> str | None:
        """The warm-start checkpoint for a fresh run (None when resuming or training from scratch)."""
        if self.resume_from is not None:
            if previous.quality and previous.quality != self.cfg.quality:
                log.warning("training.quality changed; resuming keeps the checkpoint's model sizes",
                            voice=self.voice, checkpoint_quality=previous.quality, configured=self.cfg.quality)
            return None
        if self.cfg.base_checkpoint is None:
            return None
        check_base_checkpoint(self.cfg.base_checkpoint, self.cfg.quality, self.python)
        return str(self.cfg.base_checkpoint.resolve())

    def _command(self, warm_start: str | None) -> list[str]:
        cfg, d = self.cfg, self.dir
        args = [
            self.python, "-m", LAUNCHER, "fit",
            "--data.voice_name", self.voice,
            "--data.csv_path", str(d / TRAIN_CSV),
            "--data.audio_dir", str(self.dataset_dir / "wavs"),
            "--data.cache_dir", str(d / CACHE_DIR),
            "--data.config_path", str(d / "config.json"),
            "--data.espeak_voice", cfg.espeak_voice,
            "--data.batch_size", str(cfg.batch_size),
            "--data.num_workers", str(cfg.num_workers),
            "--data.num_test_examples", "0",  # only used for audio logging and MOS, both off
            "--model.sample_rate", str(self.sample_rate),
            *quality_sizes.model_args(cfg.quality),
            "--trainer.max_epochs", str(self.target),
            "--trainer.accelerator", cfg.accelerator,
            "--trainer.devices", cfg.devices,
            "--trainer.num_nodes", str(cfg.num_nodes),
            "--trainer.strategy", cfg.strategy,
            "--trainer.precision", cfg.precision,
            "--trainer.default_root_dir", str(d),
            "--seed_everything", str(SEED),
            "--ttsft.progress_file", str(d / PROGRESS_FILE),
            "--ttsft.checkpoint_dir", str(self.checkpoint_dir),
            "--ttsft.every_n_epochs", str(cfg.checkpoint_every_epochs),
            "--ttsft.quality", self.state.quality or cfg.quality,
            "--ttsft.exit_with_parent", "true",
            "--ttsft.fast", "true" if cfg.fast else "false",  # the launcher reads it before building the model
            "--ttsft.ddp_backend", cfg.ddp_backend,
            "--ttsft.ddp_timeout_minutes", str(cfg.ddp_timeout_minutes),
            *self.extra_args,
        ]
        if self.resume_from is not None:
            args += ["--ckpt_path", str(self.resume_from)]
        elif warm_start is not None:
            args += ["--model.warmstart_ckpt", warm_start]
        return args

    # ------------------------------------------------------------------------------------------ supervision
    def _supervise(self, command: list[str]) -> TrainingState:
        sink = BoundedLog(self.dir / TRAIN_LOG, self.log_max_bytes)
        sink.write_line(f"[runner] {now_iso()} start: {' '.join(command)}\n".encode())
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=self.dir, env=env, start_new_session=True)
        except OSError as exc:
            sink.close()
            raise TransientError(f"voice {self.voice}: cannot start the trainer: {exc}") from exc
        assert proc.stdout is not None
        pump = threading.Thread(target=_pump, args=(proc.stdout, sink, self.voice), daemon=True,
                                name=f"train-log-{self.voice}")
        pump.start()
        self.state = _write_state(self.dir, dataclasses.replace(
            self.state, state="training", pid=proc.pid, started=now_iso(), peak_rss_mb=None))
        log.info("trainer started", stage="train", voice=self.voice, pid=proc.pid, epoch=self.state.epoch,
                 target_epochs=self.target, resume_from=str(self.resume_from) if self.resume_from else None,
                 warm_start=self.state.warm_start if self.resume_from is None else None)
        try:
            while proc.poll() is None:
                if self.stop.wait(self.poll_seconds):
                    self._terminate(proc)
                    break
                self._poll(proc.pid)
        finally:
            if proc.poll() is None:
                self._terminate(proc)
            _kill_group(proc.pid, signal.SIGKILL)  # leftovers such as data loader workers
            pump.join(timeout=10.0)
            sink.write_line(f"[ttsft-runner] {now_iso()} trainer exited with status {proc.returncode}\n".encode())
            sink.close()
        self._poll(proc.pid)
        return self._conclude(proc.returncode, list(sink.tail))

    def _poll(self, pid: int) -> None:
        peak = _peak_rss_mb(pid)
        if peak is not None:
            self.state = dataclasses.replace(self.state, peak_rss_mb=round(max(peak, self.state.peak_rss_mb or 0.0), 1))
        progress = read_progress(self.dir)
        if not progress:
            return
        before = (self.state.epoch, self.state.last_checkpoint)
        self._refresh(progress)
        apply_retention(self.checkpoint_dir, progress, self.cfg.keep_last, self.cfg.keep_best,
                        self.cfg.disk_budget_gb, [self.resume_from] if self.resume_from else [])
        if (self.state.epoch, self.state.last_checkpoint) != before:
            self.state = _write_state(self.dir, self.state)
        ready = self._ready_epoch(progress)
        if ready > self._reported_epoch:
            self._reported_epoch = ready
            self._notify()

    def _ready_epoch(self, progress: Mapping[str, Any]) -> int:
        """The newest completed epoch whose checkpoint, when one is due after it, is on disk."""
        epoch = int(progress.get("epoch") or 0)
        due = epoch % self.cfg.checkpoint_every_epochs == 0 or epoch >= self.target
        if not due:
            return epoch
        saved = {int(r.get("epoch") or 0) for r in (progress.get("checkpoints") or {}).values() if isinstance(r, dict)}
        return epoch if epoch in saved else epoch - 1

    def _refresh(self, progress: Mapping[str, Any]) -> None:
        last = last_checkpoint(self.checkpoint_dir)
        best = best_checkpoint(self.checkpoint_dir, progress)
        epochs = [e for e in progress.get("epochs") or [] if isinstance(e, dict)][-5:]
        durations = [float(e.get("train_seconds", 0)) + float(e.get("validation_seconds", 0))
                     + float(e.get("checkpoint_seconds", 0)) for e in epochs]
        parsed = parse_checkpoint_name(last.name) if last is not None else None
        epoch = max(int(progress.get("epoch") or 0), parsed[0] if parsed else 0)
        losses = progress.get("losses")
        self.state = dataclasses.replace(
            self.state,
            epoch=epoch,
            step=max(int(progress.get("step") or 0), parsed[1] if parsed else 0),
            losses=dict(losses) if isinstance(losses, dict) else self.state.losses,
            last_checkpoint=str(last) if last else None,
            best_checkpoint=str(best) if best else None,
            seconds_per_epoch=round(sum(durations) / len(durations), 2) if durations else self.state.seconds_per_epoch,
            checkpoint_seconds=epochs[-1].get("checkpoint_seconds") if epochs else self.state.checkpoint_seconds,
        )

    def _notify(self) -> None:
        if self.on_epoch is None:
            return
        try:
            self.on_epoch(self.state)
        except Exception as exc:  # the caller's bookkeeping must not take the training down
            log.error("on_epoch callback failed", stage="train", voice=self.voice, error=f"{type(exc).__name__}: {exc}")

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        self._stopping = True
        # Rank 0 only: under DDP, Lightning's handler passes SIGTERM on to the ranks it started and syncs it with
        # a broadcast per signal; a SIGTERM to the whole group gives those ranks two and hangs them (measured).
        # What is left of the group (loader workers) gets SIGKILL once the trainer is gone.
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=self.stop_grace_seconds)
        except subprocess.TimeoutExpired:
            log.warning("trainer ignored SIGTERM; killing it", stage="train", voice=self.voice, pid=proc.pid)
            _kill_group(proc.pid, signal.SIGKILL)
            proc.wait()

    def _conclude(self, returncode: int, tail: list[str]) -> TrainingState:
        if not self._stopping and returncode == 0 and self.state.epoch >= self.target:
            return self._finish("finished")
        self._back_to_last_checkpoint()
        if self._stopping:
            return self._finish("stopped")
        detail = "\n".join(tail[-15:])
        why = f"trainer exited with status {returncode}" if returncode else "trainer stopped before its last epoch"
        self.state = _write_state(self.dir, dataclasses.replace(
            self.state, state="failed", pid=None, failures=self.state.failures + 1, error=f"{why}:\n{detail}"))
        if self.state.epoch > self._reported_epoch:
            self._reported_epoch = self.state.epoch
            self._notify()
        raise TransientError(f"voice {self.voice}: {why} at epoch {self.state.epoch}/{self.target} "
                             f"(see {self.dir / TRAIN_LOG}); last lines:\n{detail}")

    def _back_to_last_checkpoint(self) -> None:
        """After an interrupted run, epoch and step are those of the checkpoint the next run resumes from."""
        last = last_checkpoint(self.checkpoint_dir)
        parsed = parse_checkpoint_name(last.name) if last is not None else None
        epoch, step = parsed if parsed is not None else (0, 0)
        self.state = dataclasses.replace(self.state, epoch=epoch, step=step)

    def _finish(self, status: str) -> TrainingState:
        failures = 0 if status == "finished" else self.state.failures
        self.state = _write_state(self.dir, dataclasses.replace(self.state, state=status, pid=None, failures=failures))
        if self.state.epoch > self._reported_epoch:
            self._reported_epoch = self.state.epoch
            self._notify()
        log.info("trainer ended", stage="train", voice=self.voice, state=status, epoch=self.state.epoch,
                 last_checkpoint=self.state.last_checkpoint)
        return self.state


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def train(
    voice: str,
    dataset_dir: Path,
    training_dir: Path,
    cfg: TrainingConfig,
    stop: threading.Event,
    on_epoch: Callable[[TrainingState], None] | None = None,
    max_epochs: int | None = None,
    **options: Any,
) -> TrainingState:
    """Train (or resume) `voice` up to `max_epochs` (default cfg.max_epochs) completed epochs.

    Returns the final state (`finished`, or `stopped` when `stop` was set). Raises TransientError when the
    trainer crashes or another run of this voice holds its lock, ConfigError when cfg.base_checkpoint does not
    fit. `options`: sample_rate, stop_grace_seconds, log_max_bytes, poll_seconds, python, extra_args (more
    piper.train arguments, e.g. `--trainer.limit_train_batches 2`).
    """
    with _voice_lock(voice, training_dir):
        return TrainingRun(voice, dataset_dir, training_dir, cfg, stop, on_epoch, max_epochs, **options).run()


@contextlib.contextmanager
def _voice_lock(voice: str, training_dir: Path) -> Iterator[None]:
    """The voice's training lock, taken at once (TransientError while another run of this voice holds it)."""
    training_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(training_dir / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise TransientError(f"voice {voice}: another training run holds {training_dir / LOCK_FILE}") from None
    try:
        yield
    finally:
        lock.release()


def external_launch_args(voice: str, dataset_dir: Path, training_dir: Path, cfg: TrainingConfig,
                         max_epochs: int | None = None, sample_rate: int = 22050) -> list[str]:
    """`TrainingRun.external_args` under the voice's lock (TransientError while a run of this voice is on)."""
    with _voice_lock(voice, training_dir):
        run = TrainingRun(voice, dataset_dir, training_dir, cfg, threading.Event(), max_epochs=max_epochs,
                          sample_rate=sample_rate)
        return run.external_args()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ttsft_daemon.training.runner command --config FILE --voice NAME`: the trainer's arguments.

    Prints the arguments after `-m ttsft_daemon.training.launcher` for torchrun or srun (docs/scaling-out.md):
    one shell-quoted line (for `eval`), or with `--lines` one argument per line (for bash's `mapfile -t`).
    """
    import argparse
    import shlex

    from ttsft_daemon.config import load_config
    from ttsft_daemon.core.spool import Layout
    from ttsft_daemon.training.scheduler import due

    parser = argparse.ArgumentParser(prog="python -m ttsft_daemon.training.runner", allow_abbrev=False)
    sub = parser.add_subparsers(dest="action", required=True)
    command = sub.add_parser("command", help="print the launcher's fit arguments for torchrun or srun")
    command.add_argument("--config", required=True, help="the daemon's config file")
    command.add_argument("--voice", required=True, help="the voice to train (its dataset must exist)")
    command.add_argument("--max-epochs", type=int, default=None,
                         help="completed epochs to train to (default: what `ttsft-daemon train` would)")
    command.add_argument("--lines", action="store_true", help="one argument per line instead of a quoted line")
    ns = parser.parse_args(None if argv is None else list(argv))
    try:
        config = load_config(ns.config)
        layout = Layout(config.paths.root)
        if not (layout.dataset(ns.voice) / "metadata.csv").is_file():
            print(f"voice {ns.voice!r} has no dataset under {layout.datasets}", file=sys.stderr)
            return 1
        target = ns.max_epochs or due(config, layout, ns.voice, force=True) or config.training.max_epochs
        args = external_launch_args(ns.voice, layout.dataset(ns.voice), layout.training(ns.voice), config.training,
                                    max_epochs=target, sample_rate=config.audio.sample_rate)
    except (ConfigError, TransientError) as exc:
        print(str(exc), file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    print("\n".join(args) if ns.lines else shlex.join(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
