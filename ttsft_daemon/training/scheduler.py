"""When to train, and the thread that does it: one training run at a time, resumed from its last checkpoint.

A voice is due when training is enabled and its dataset has reached `training.min_clips` (and `min_minutes`),
and either it was never trained, its last run was interrupted (resume), or `retrain_after_new_clips` clips
arrived since the last finished run (then it continues for `retrain_epochs` more epochs).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from ttsft_daemon.config import Config
from ttsft_daemon.core.spool import Layout, Spool, atomic_write_json, read_json
from ttsft_daemon.dataset import summary
from ttsft_daemon.errors import TransientError

log = structlog.get_logger(__name__)

TRAINER_THREAD = "ttsft-trainer"


REQUEST_FILE = "train.request.json"  # in training/<voice>/: "train now" (the API), removed once a run finishes


def request_training(layout: Layout, voice: str) -> None:
    """Ask the daemon's trainer to train or resume `voice` now, whatever the threshold (kept across restarts)."""
    folder = layout.training(voice)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / REQUEST_FILE, {"voice": voice, "requested": time.time()})


def requested(layout: Layout, voice: str) -> bool:
    return (layout.training(voice) / REQUEST_FILE).exists()


def voices(layout: Layout) -> list[str]:
    if not layout.datasets.exists():
        return []
    return sorted(p.name for p in layout.datasets.iterdir() if (p / "metadata.csv").exists())


def target_epochs(config: Config, state: dict[str, Any], clips: int) -> int | None:
    """The epoch count this voice should train to now, or None when it is not due."""
    t = config.training
    status = state.get("state")
    epoch = int(state.get("epoch", 0) or 0)
    if not state or status in (None, "idle"):
        return t.max_epochs
    if status in ("training", "stopped", "failed"):  # interrupted: resume towards the recorded target
        if int(state.get("failures", 0) or 0) >= config.daemon.max_attempts and status == "failed":
            return None if clips - int(state.get("clips", 0) or 0) < t.retrain_after_new_clips else epoch + t.max_epochs
        return int(state.get("target_epochs") or t.max_epochs)
    if status == "finished" and clips - int(state.get("clips", 0) or 0) >= t.retrain_after_new_clips:
        return epoch + t.retrain_epochs
    return None


def due(config: Config, layout: Layout, voice: str, force: bool = False) -> int | None:
    t = config.training
    clips, seconds = summary(layout.dataset(voice))
    if not force and (not t.enabled or clips < t.min_clips or seconds < t.min_minutes * 60):
        return None
    if clips == 0:
        return None
    state = read_json(layout.training(voice) / "state.json") or {}
    target = target_epochs(config, state, clips)
    if target is None and force:
        target = int(state.get("epoch", 0) or 0) + t.retrain_epochs
    return target


def train_voice(config: Config, spool: Spool, voice: str, target: int, stop: threading.Event,
                progress: Callable[[int, int], None] | None = None) -> bool:
    """Train `voice` up to `target` epochs, then export and evaluate. True when the run finished. `progress` is
    called with (completed epochs, target) after each epoch."""
    from ttsft_daemon.training.export import evaluate_voice, export_voice
    from ttsft_daemon.training.runner import train

    layout = spool.layout
    tdir = layout.training(voice)
    tdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    log.info("training starts", stage="train", voice=voice, target_epochs=target)

    def on_epoch(state: Any) -> None:
        epoch, ckpt = int(state.epoch), state.last_checkpoint
        if progress is not None:
            progress(epoch, target)
        log.info("epoch done", stage="train", voice=voice, epoch=epoch, checkpoint=str(ckpt),
                 losses=getattr(state, "losses", None))
        _record_in_jobs(spool, voice, epoch, ckpt)

    t = config.training
    state = train(voice, layout.dataset(voice), tdir, t, stop, on_epoch=on_epoch, max_epochs=target,
                  sample_rate=config.audio.sample_rate, stop_grace_seconds=t.stop_grace_seconds,
                  log_max_bytes=int(t.log_max_mb * 1024 * 1024))
    if stop.is_set() or state.state != "finished":
        log.info("training paused", stage="train", voice=voice, epoch=state.epoch, state=state.state)
        return False
    if state.last_checkpoint is None:
        raise TransientError("training finished without a checkpoint")
    onnx, _ = export_voice(Path(state.last_checkpoint), tdir, voice, quality=config.training.quality,
                           espeak_voice=config.training.espeak_voice)
    evaluation = evaluate_voice(onnx, config.training.test_sentences, config.transcription.model,
                                config.paths.models_dir, tdir)
    _record_in_jobs(spool, voice, state.epoch, state.last_checkpoint)
    log.info("voice exported", stage="train", voice=voice, onnx=str(onnx), epoch=state.epoch,
             wer=evaluation.get("wer"), duration_s=round(time.monotonic() - started, 1))
    _after_export(config, layout, voice, state.epoch, onnx, evaluation)
    return True


def _after_export(config: Config, layout: Layout, voice: str, epoch: int, onnx: Path,
                  evaluation: dict[str, Any]) -> None:
    """The voice's report.html, then the `voice_exported` notification (neither ever fails the training)."""
    from ttsft_daemon.events import VOICE_EXPORTED, notify
    from ttsft_daemon.report import write_report_quietly

    report = write_report_quietly(layout.root, voice, config.source)
    notify(config.notify, VOICE_EXPORTED, voice=voice, epoch=epoch, wer=evaluation.get("wer"), onnx=str(onnx),
           report=str(report) if report else None)


def _record_in_jobs(spool: Spool, voice: str, epoch: int, ckpt: Any) -> None:
    training = {"epoch": epoch, "last_checkpoint": str(ckpt) if ckpt else None}
    for job in list(spool.jobs()):
        if job.voice == voice and job.accepted_count:
            spool.update_job(job.job_id, lambda j: setattr(j, "training", dict(training)))


class TrainerWorker:
    """The daemon's training thread."""

    def __init__(self, config: Config, spool: Spool, health: Any, exit_when_idle: bool = False,
                 data_busy: Callable[[], bool] | None = None) -> None:
        self.config = config
        self.data_busy = data_busy or (lambda: False)
        self._busy_since: float | None = None
        self.spool = spool
        self.health = health
        self.exit_when_idle = exit_when_idle
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.busy = False
        self._failures: dict[str, int] = {}
        self._next_try: dict[str, float] = {}
        self._thread = threading.Thread(target=self._loop, name=TRAINER_THREAD, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        self.stop.set()
        self.wake.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def request(self, voice: str) -> None:
        """Train or resume `voice` now (the API's "train"): a fresh request forgets earlier failures."""
        request_training(self.spool.layout, voice)
        self._failures.pop(voice, None)
        self._next_try.pop(voice, None)
        self.wake.set()

    def due_voices(self, requested_only: bool = False) -> list[str]:
        now, layout = time.monotonic(), self.spool.layout
        return [v for v in voices(layout) if self._next_try.get(v, 0.0) <= now
                and self._failures.get(v, 0) < self.config.daemon.max_attempts
                and (requested(layout, v) or not requested_only)
                and due(self.config, layout, v, force=requested(layout, v)) is not None]

    def _should_wait_for_data(self) -> bool:
        """Let the data stages finish first (training then sees every clip present), but not forever."""
        if not self.data_busy():
            self._busy_since = None
            return False
        if self.exit_when_idle:
            return True
        now = time.monotonic()
        self._busy_since = self._busy_since or now
        return now - self._busy_since < self.config.training.max_wait_for_data_minutes * 60

    def _loop(self) -> None:
        while not self.stop.is_set():
            self.health.beat(TRAINER_THREAD)
            for voice in self.due_voices(requested_only=self._should_wait_for_data()):
                if self.stop.is_set():
                    break
                forced = requested(self.spool.layout, voice)
                target = due(self.config, self.spool.layout, voice, force=forced)
                if target is None:
                    continue
                self.busy = True
                self.health.beat(TRAINER_THREAD, busy_limit=7 * 24 * 3600.0)
                try:
                    if train_voice(self.config, self.spool, voice, target, self.stop) and forced:
                        (self.spool.layout.training(voice) / REQUEST_FILE).unlink(missing_ok=True)
                    self._failures.pop(voice, None)
                except Exception as exc:
                    n = self._failures.get(voice, 0) + 1
                    self._failures[voice] = n
                    delay = self.config.daemon.retry_backoff_seconds * 2 ** (n - 1)
                    self._next_try[voice] = time.monotonic() + delay
                    log.error("training failed; will retry", stage="train", voice=voice, attempt=n,
                              retry_in_s=delay, error=f"{type(exc).__name__}: {exc}")
                finally:
                    self.busy = False
                    self.health.beat(TRAINER_THREAD)
            self.wake.wait(self.config.inbox.rescan_seconds)
            self.wake.clear()
        self.health.forget(TRAINER_THREAD)


def train_now(config: Config, voice: str | None) -> int:
    """`ttsft-daemon train`: train or resume now, whatever the threshold."""
    import signal

    spool = Spool(config.paths.root)
    names = [voice] if voice else voices(spool.layout)
    if not names:
        print(f"no dataset yet under {spool.layout.datasets}: run the daemon or `preprocess` first")
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    code = 0
    for name in names:
        if not (spool.layout.dataset(name) / "metadata.csv").exists():
            print(f"voice '{name}' has no dataset (known: {', '.join(voices(spool.layout)) or 'none'})")
            code = 1
            continue
        target = due(config, spool.layout, name, force=True)
        assert target is not None
        from functools import partial

        from ttsft_daemon.console import Progress

        bar = Progress(f"train {name}")
        try:
            finished = train_voice(config, spool, name, target, stop, progress=partial(bar.update, detail="epochs"))
        except TransientError as exc:
            bar.close()
            print(f"training '{name}' failed: {exc} (see {spool.layout.training(name) / 'train.log'})")
            code = 1
            continue
        bar.close()
        onnx = spool.layout.training(name) / f"{name}.onnx"
        print(f"{name}: {'exported ' + str(onnx) if finished else 'stopped; run again to resume'}")
    return code
