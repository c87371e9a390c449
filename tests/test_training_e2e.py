"""Real Piper training on CPU (x_low, batch 4): kill -9 and resume, warm start, stop, export, evaluation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ttsft_daemon.config import TrainingConfig
from ttsft_daemon.demo.sample_data import build_spoken_dataset
from ttsft_daemon.errors import ConfigError, TransientError
from ttsft_daemon.training.export import evaluate_voice, export_voice
from ttsft_daemon.training.launcher import inspect_checkpoint as inspect_in_process
from ttsft_daemon.training.progress import epoch_checkpoints, last_checkpoint, parse_checkpoint_name
from ttsft_daemon.training.runner import TrainingState, read_state, train

MODELS = Path(__file__).resolve().parents[1] / "models"

pytestmark = pytest.mark.slow

CLIPS = 20
# One of the 4 training batches per epoch (a fraction: LightningCLI reads an integer 1 as 1.0, i.e. all).
FAST_EPOCHS = ["--trainer.limit_train_batches", "0.25"]


@pytest.fixture(scope="module", autouse=True)
def _drop_checkpoints_afterwards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Checkpoints are ~650 MB each; pytest keeps the temporary folders of its last three sessions."""
    yield
    for ckpt in tmp_path_factory.getbasetemp().rglob("*.ckpt"):
        ckpt.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dataset")
    seconds = build_spoken_dataset(folder, CLIPS)
    assert seconds > CLIPS * 1.5
    return folder


def _cfg(**changes: object) -> TrainingConfig:
    base: dict[str, object] = dict(quality="x_low", batch_size=4, num_workers=0, accelerator="cpu",
                                   checkpoint_every_epochs=1, keep_last=2, keep_best=1, disk_budget_gb=10.0)
    return TrainingConfig(**{**base, **changes})  # type: ignore[arg-type]


def _runs_in_log(training_dir: Path) -> list[str]:
    """train.log split into the output of each trainer run."""
    text = (training_dir / "train.log").read_text(encoding="utf-8", errors="replace")
    return text.split("[runner] ")[1:]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class KilledAndResumed:
    training: Path
    seen: list[TrainingState]
    killed: TrainingState
    final: TrainingState
    first_run_seconds: float
    resume_seconds: float


@pytest.fixture(scope="module")
def trained(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> KilledAndResumed:
    """Train towards 3 epochs, kill -9 the trainer's group after epoch 2, then train again (resumes)."""
    training = tmp_path_factory.mktemp("trained") / "training"
    seen: list[TrainingState] = []

    def kill_after_two_epochs(state: TrainingState) -> None:
        seen.append(state)
        if state.epoch == 2 and state.pid:
            os.killpg(state.pid, signal.SIGKILL)

    started = time.monotonic()
    with pytest.raises(TransientError, match="status -9"):
        train("joe", dataset, training, _cfg(), threading.Event(), kill_after_two_epochs, max_epochs=3,
              extra_args=FAST_EPOCHS)
    first_run_seconds = time.monotonic() - started
    killed = read_state(training)
    resumed_at = time.monotonic()
    final = train("joe", dataset, training, _cfg(), threading.Event(), seen.append, max_epochs=3,
                  extra_args=FAST_EPOCHS)
    return KilledAndResumed(training, seen, killed, final, first_run_seconds, time.monotonic() - resumed_at)


def test_kill_minus_9_then_resume_continues_the_epoch_count(trained: KilledAndResumed) -> None:
    seen, killed, state, training = trained.seen, trained.killed, trained.final, trained.training
    assert [s.epoch for s in seen] == [1, 2, 3]
    assert seen[1].last_checkpoint and Path(seen[1].last_checkpoint).name.startswith("epoch=00001-")
    assert (killed.state, killed.epoch, killed.failures, killed.clips) == ("failed", 2, 1, CLIPS)
    assert not _group_alive(seen[1].pid or 0)
    assert (state.state, state.epoch, state.failures) == ("finished", 3, 0)
    assert "--ckpt_path" in _runs_in_log(training)[1].splitlines()[0]
    last = Path(state.last_checkpoint or "")
    info = inspect_in_process(last)
    assert info["epoch"] == 2 and info["global_step"] == state.step  # Lightning's 0-based third epoch
    assert info["hyper_parameters"]["hidden_channels"] == 96 and info["hyper_parameters"]["mos_metric"] is None
    assert state.step == 3 * seen[0].step == 3 * 2  # continued across the kill; 2 optimizer steps a batch
    kept = epoch_checkpoints(training / "checkpoints")
    assert last in kept and len(kept) <= 3  # keep_last 2 + keep_best 1
    assert state.best_checkpoint and Path(state.best_checkpoint) in kept
    assert not list((training / "checkpoints").glob(".tmp.*"))
    assert read_state(training) == state
    print(f"\n[measure] first run (2 one-batch epochs + start) {trained.first_run_seconds:.1f}s, resumed run "
          f"(1 epoch + start) {trained.resume_seconds:.1f}s, seconds/epoch {state.seconds_per_epoch}, checkpoint "
          f"{state.checkpoint_seconds}s, peak RSS {state.peak_rss_mb} MB")


def test_export_speak_and_evaluate(trained: KilledAndResumed) -> None:
    training, last = trained.training, Path(trained.final.last_checkpoint or "")
    onnx, config_json = export_voice(last, training, "joe")
    config = json.loads(config_json.read_text())
    assert config["audio"] == {"sample_rate": 22050, "quality": "x_low"} and config["dataset"] == "joe"
    assert config["ttsft"]["epoch"] == 3 and config["espeak"]["voice"] == "en-us"
    assert read_state(training).onnx == str(onnx)

    sentence = "The new captain opened the garden gate before breakfast."
    evaluation = evaluate_voice(onnx, [sentence], "tiny.en", MODELS, training)
    wav = Path(evaluation["sentences"][0]["wav"])
    with wave.open(str(wav), "rb") as spoken:
        assert (spoken.getframerate(), spoken.getnchannels(), spoken.getsampwidth()) == (22050, 1, 2)
        seconds = spoken.getnframes() / spoken.getframerate()
    assert 0.5 < seconds < 20.0
    entries = json.loads((training / "evaluations.json").read_text())
    assert len(entries) == 1 and entries[0]["epoch"] == 3 and entries[0]["wer"] >= 0.0
    assert entries[0]["sentences"][0]["text"] == sentence
    print(f"\n[measure] exported voice speaks {seconds:.2f}s for the sentence, WER {evaluation['wer']}")


@pytest.fixture(scope="module")
def x_low_checkpoint(trained: KilledAndResumed) -> Path:
    return Path(trained.final.last_checkpoint or "")


def test_warm_start_then_stop_and_resume_without_reapplying_the_base(
    dataset: Path, x_low_checkpoint: Path, tmp_path: Path
) -> None:
    training = tmp_path / "training"
    cfg = _cfg(base_checkpoint=x_low_checkpoint)
    state = train("joe", dataset, training, cfg, threading.Event(), max_epochs=1, extra_args=FAST_EPOCHS)
    assert (state.state, state.epoch, state.warm_start) == ("finished", 1, str(x_low_checkpoint.resolve()))
    assert "[warmstart] Copied" in _runs_in_log(training)[0]
    assert inspect_in_process(Path(state.last_checkpoint or ""))["hyper_parameters"]["warmstart_ckpt"] is None

    stop = threading.Event()
    trainer_pids: list[int] = []

    def stop_after_two(state: TrainingState) -> None:
        trainer_pids.append(state.pid or 0)
        if state.epoch >= 2:
            stop.set()

    state = train("joe", dataset, training, cfg, stop, stop_after_two, max_epochs=1000, extra_args=FAST_EPOCHS,
                  stop_grace_seconds=60.0)
    assert state.state == "stopped" and state.epoch >= 2 and state.pid is None
    assert trainer_pids[0] and not _group_alive(trainer_pids[0])
    second_run = _runs_in_log(training)[1]
    assert "--ckpt_path" in second_run.splitlines()[0] and "--model.warmstart_ckpt" not in second_run.splitlines()[0]
    assert "[warmstart]" not in second_run  # the resumed weights were not overwritten by the base
    assert state.warm_start == str(x_low_checkpoint.resolve())
    last = last_checkpoint(training / "checkpoints")
    assert last is not None and parse_checkpoint_name(last.name) == (state.epoch, state.step)
    assert inspect_in_process(last)["epoch"] == state.epoch - 1
    assert read_state(training).state == "stopped"


def test_base_checkpoint_of_another_quality_is_refused(x_low_checkpoint: Path, dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hidden_channels"):
        train("joe", dataset, tmp_path, _cfg(quality="medium", base_checkpoint=x_low_checkpoint),
              threading.Event(), max_epochs=1)
    assert not (tmp_path / "train.log").exists()


SLOW_SAVE = """
import sys, time
from pathlib import Path
import torch
from ttsft_daemon.training.launcher import AtomicCheckpointIO

class Stall:
    def __reduce__(self):
        Path(sys.argv[2]).write_text("stalling")
        time.sleep(60)
        return (int, (0,))

AtomicCheckpointIO().save_checkpoint({"weights": torch.zeros(1000), "stall": Stall()}, sys.argv[1])
"""


def test_a_checkpoint_write_killed_midway_leaves_no_checkpoint_behind(tmp_path: Path) -> None:
    from ttsft_daemon.training.runner import _cleanup_partial_files

    folder = tmp_path / "checkpoints"
    dest, stalling = folder / "epoch=00000-step=000000002.ckpt", tmp_path / "stalling"
    child = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, str(dest), str(stalling)])
    deadline = time.monotonic() + 120
    while not stalling.exists() and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.1)
    child.kill()
    child.wait()
    assert stalling.exists()
    assert not dest.exists() and len(list(folder.glob(".tmp.*"))) == 1
    _cleanup_partial_files(folder, tmp_path / "cache")
    assert list(folder.iterdir()) == []


ORPHAN = """
import os, threading, time
from ttsft_daemon.training.launcher import _watch_parent
threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
print("watching", flush=True)
time.sleep(300)
"""

MIDDLE = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
assert child.stdout.readline().strip() == b"watching"
print(child.pid, flush=True)
"""  # exits at once: the trainer-like child is orphaned and its output pipes are broken


def test_a_trainer_whose_parent_dies_stops(tmp_path: Path) -> None:
    middle = subprocess.run([sys.executable, "-c", MIDDLE, ORPHAN], capture_output=True, text=True, timeout=300,
                            check=True)
    orphan = int(middle.stdout.strip())
    try:
        deadline = time.monotonic() + 120
        while _pid_alive(orphan) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _pid_alive(orphan)
    finally:
        if _pid_alive(orphan):
            os.kill(orphan, signal.SIGKILL)


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; its reaper (init here) may be slow
