"""Training with several processes (Lightning's DDP, gloo on the CPU): config checks, the torchrun/srun
arguments, and a real two-process Piper training launched by the daemon's runner and stopped by it, resumed
under torchrun and exported (x_low; one batch per rank and epoch)."""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from ttsft_daemon.config import TrainingConfig, config_from_dict
from ttsft_daemon.core.spool import TMP_PREFIX
from ttsft_daemon.errors import ConfigError
from ttsft_daemon.training.progress import checkpoint_name, epoch_checkpoints, last_checkpoint, read_progress
from ttsft_daemon.training.runner import TrainingState, external_launch_args, read_state, train
from ttsft_daemon.training.runner import main as runner_main

# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(("training", "message"), [
    ({"devices": "two"}, "training.devices: got 'two'"),
    ({"devices": "0"}, "training.devices: got '0'"),
    ({"devices": "0,1,1", "accelerator": "gpu"}, "a GPU index appears twice"),
    ({"devices": "0,1", "accelerator": "cpu"}, "on the CPU give a process count"),
    ({"strategy": "ddp_spawn"}, "training.strategy: got 'ddp_spawn', allowed: auto, ddp"),
    ({"num_nodes": 0}, "training.num_nodes: got 0, must be at least 1"),
    ({"ddp_backend": "mpi"}, "training.ddp_backend: got 'mpi'"),
    ({"ddp_backend": "nccl", "accelerator": "cpu"}, "nccl runs on GPUs only"),
])
def test_bad_ddp_settings_are_config_errors(training: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"training": training})
    assert any(message in problem for problem in caught.value.problems), caught.value.problems


def test_good_ddp_settings_load() -> None:
    for training in ({"devices": "2", "strategy": "ddp", "accelerator": "cpu", "ddp_backend": "gloo"},
                     {"devices": "0,1", "accelerator": "gpu", "num_nodes": 4, "ddp_backend": "nccl"},
                     {"devices": "-1", "strategy": "auto"}, {"devices": 4}):
        t = config_from_dict({"training": training}).training
        assert t.num_nodes == training.get("num_nodes", 1)


# ------------------------------------------------------------------------------------------ torchrun arguments


def _fake_dataset(root: Path, voice: str = "joe") -> Path:
    dataset = root / "dataset" / voice
    (dataset / "wavs").mkdir(parents=True)
    rows = []
    for i in range(3):
        (dataset / "wavs" / f"c{i}.wav").write_bytes(b"RIFF")
        rows.append(f"c{i}.wav|Sentence number {i}.|1.000|{voice}|0.9000\n")
    (dataset / "metadata.csv").write_text("".join(rows), encoding="utf-8")
    return dataset


def _pairs(args: list[str]) -> dict[str, str]:
    return {a: b for a, b in itertools.pairwise(args) if a.startswith("--")}


def test_the_command_for_torchrun_carries_the_ddp_settings_and_resumes(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "paths": {"root": str(tmp_path)},
        "training": {"devices": "4", "num_nodes": 2, "strategy": "ddp", "ddp_backend": "gloo",
                     "ddp_timeout_minutes": 90, "accelerator": "cpu", "max_epochs": 7},
    }))
    _fake_dataset(tmp_path)
    assert runner_main(["command", "--config", str(config), "--voice", "joe", "--lines"]) == 0
    args = capsys.readouterr().out.splitlines()
    assert args[0] == "fit"
    got = _pairs(args)
    assert (got["--trainer.devices"], got["--trainer.num_nodes"], got["--trainer.strategy"]) == ("4", "2", "ddp")
    assert (got["--ttsft.ddp_backend"], got["--ttsft.ddp_timeout_minutes"]) == ("gloo", "90.0")
    assert got["--trainer.max_epochs"] == "7" and got["--ttsft.exit_with_parent"] == "false"
    assert "--ckpt_path" not in got
    training = tmp_path / "training" / "joe"
    assert (training / "train.csv").read_text().count("\n") == 3

    checkpoints = training / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "epoch=00002-step=000000012.ckpt").write_bytes(b"x")
    (checkpoints / f"{TMP_PREFIX}partial.ckpt").write_bytes(b"x")  # a killed save's leftover
    assert runner_main(["command", "--config", str(config), "--voice", "joe", "--max-epochs", "9"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("fit ") and "--ckpt_path " + str(checkpoints / "epoch=00002-step=000000012.ckpt") in line
    assert shlex.split(line)[:2] == ["fit", "--data.voice_name"]  # quoted for `eval`
    assert "--trainer.max_epochs 9" in line and not list(checkpoints.glob(f"{TMP_PREFIX}*"))

    assert runner_main(["command", "--config", str(config), "--voice", "nobody"]) == 1
    assert "no dataset" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ a real DDP training

CLIPS = 10  # piper's split: 1 validation clip, 9 training clips, so 5 per rank (Lightning's sampler pads)
BATCH = 6  # more than a rank's share: piper's own drop_last (9 > 6) would leave each rank no batch at all


def _cfg(**changes: object) -> TrainingConfig:
    base: dict[str, object] = dict(quality="x_low", batch_size=BATCH, num_workers=0, accelerator="cpu",
                                   devices="2", strategy="ddp", ddp_backend="gloo", checkpoint_every_epochs=1,
                                   keep_last=2, keep_best=1, disk_budget_gb=10.0)
    return TrainingConfig(**{**base, **changes})  # type: ignore[arg-type]


@dataclass
class Legs:
    training: Path
    first_log: str  # the runner's launch (Lightning starts rank 1), stopped by the daemon after epoch 1
    first: TrainingState
    epochs_seen: list[int]
    second_log: str  # the resumed run under torchrun, without the fast path, one more epoch
    second_args: list[str]
    after_second: TrainingState  # the runner once more: nothing left to train
    seconds: dict[str, float]

    @property
    def stopped_at(self) -> int:
        return self.first.epoch

    @property
    def final(self) -> int:
        return self.first.epoch + 1


def _name(epoch: int) -> str:
    return checkpoint_name(epoch - 1, 2 * epoch)  # one batch per epoch: a generator and a discriminator step


def _ranks(log: str) -> dict[int, int]:
    """{global rank: pid} of the `[ttsft] rank R/2 ...` lines."""
    return {int(m.group(1)): int(m.group(2))
            for m in re.finditer(r"^\[ttsft\] rank (\d+)/2 \(node 0, local rank \d\) on \S+ pid (\d+)", log, re.M)}


def _checkpoint_writers(log: str) -> list[tuple[str, int]]:
    return [(m.group(1), int(m.group(2)))
            for m in re.finditer(r"^\[ttsft\] checkpoint (\S+) .*written by pid (\d+)$", log, re.M)]


def _torchrun() -> list[str]:
    script = Path(sys.executable).with_name("torchrun")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(scope="module")
def legs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Legs]:
    from ttsft_daemon.demo.sample_data import build_spoken_dataset

    root = tmp_path_factory.mktemp("ddp")
    dataset, training = root / "dataset", root / "training"
    build_spoken_dataset(dataset, CLIPS)
    epochs_seen: list[int] = []
    stop = threading.Event()

    def stop_after_the_first_epoch(state: TrainingState) -> None:
        epochs_seen.append(state.epoch)
        stop.set()  # as the daemon does on shutdown; the trainer stops after its current step

    started = time.monotonic()
    first = train("joe", dataset, training, _cfg(), stop, stop_after_the_first_epoch, max_epochs=5)
    first_log = (training / "train.log").read_text(encoding="utf-8", errors="replace")
    seconds = {"first": time.monotonic() - started}

    started = time.monotonic()
    args = external_launch_args("joe", dataset, training, _cfg(fast=False), max_epochs=first.epoch + 1)
    args += ["--ttsft.step_log", str(training / "steps.jsonl")]
    done = subprocess.run([*_torchrun(), "--standalone", "--nproc_per_node", "2", "-m",
                           "ttsft_daemon.training.launcher", *args], cwd=training, capture_output=True, timeout=900,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdin=subprocess.DEVNULL, check=False)
    second_log = (done.stdout + done.stderr).decode("utf-8", "replace")
    assert done.returncode == 0, second_log[-5000:]
    seconds["second"] = time.monotonic() - started
    after = train("joe", dataset, training, _cfg(), threading.Event(), max_epochs=first.epoch + 1)
    yield Legs(training, first_log, first, epochs_seen, second_log, args, after, seconds)
    for ckpt in root.rglob("*.ckpt"):  # ~650 MB each; pytest keeps its last three sessions' folders
        ckpt.unlink(missing_ok=True)


@pytest.mark.slow
def test_two_ranks_train_only_rank_0_writes_and_a_stop_ends_them(legs: Legs) -> None:
    log, state = legs.first_log, legs.first
    ranks = _ranks(log)
    assert sorted(ranks) == [0, 1] and ranks[0] != ranks[1]
    assert "world size 2 (1 node(s) x 2 device(s))" in log and "backend gloo" in log
    assert "find_unused_parameters" in log and "[ttsft] fast " in log  # the fast path runs under DDP
    # The stop came during epoch 2's only step (or just before it started): the trainer ends after that step.
    assert state.state == "stopped" and state.epoch in (1, 2) and state.clips == CLIPS
    assert state.step == 2 * state.epoch  # one batch per rank and epoch (its 5 clips, not dropped)
    assert legs.epochs_seen == list(range(1, state.epoch + 1))
    names = [_name(epoch) for epoch in range(1, state.epoch + 1)]
    assert _checkpoint_writers(log) == [(name, ranks[0]) for name in names]  # one write per epoch, by rank 0
    assert state.last_checkpoint is not None and Path(state.last_checkpoint).name == names[-1]
    assert log.count("[ttsft] epoch 1 step 2 ") == 1  # rank 0 reports; the other rank does not
    assert "[rank: 0] Received SIGTERM" in log and "[rank: 1] Received SIGTERM" in log
    exit_status = re.findall(r"^\[ttsft-runner\] \S+ trainer exited with status (-?\d+)$", log, re.M)
    assert len(exit_status) == 1 and exit_status[0] != "-9"  # ended by its SIGTERM, not killed after the grace
    print(f"\n[measure] DDP 2 x gloo, x_low: daemon launch (start, cache, {state.epoch} epoch(s), checkpoints, "
          f"stop) {legs.seconds['first']:.0f}s; torchrun resume (1 epoch, checkpoint) {legs.seconds['second']:.0f}s; "
          f"checkpoint {state.checkpoint_seconds}s; peak RSS of rank 0 {state.peak_rss_mb} MB")


@pytest.mark.slow
def test_resumed_under_torchrun_the_epoch_count_continues(legs: Legs) -> None:
    log, training, final = legs.second_log, legs.training, legs.final
    ranks = _ranks(log)
    assert sorted(ranks) == [0, 1]
    assert "world size 2 (1 node(s) x 2 device(s))" in log
    resumed_from = legs.second_args[legs.second_args.index("--ckpt_path") + 1]
    assert Path(resumed_from).name == _name(legs.stopped_at)
    assert _checkpoint_writers(log) == [(_name(final), ranks[0])]
    assert f"[ttsft] epoch {final} step {2 * final} " in log and f"[ttsft] epoch {legs.stopped_at} " not in log
    assert "[ttsft] fast " not in log  # plain piper resumes the fast path's checkpoint

    checkpoints = training / "checkpoints"
    kept = [p.name for p in epoch_checkpoints(checkpoints)]
    assert kept[-1] == _name(final) and set(kept) <= {_name(e) for e in range(1, final + 1)}
    assert last_checkpoint(checkpoints) == checkpoints / _name(final)
    progress = read_progress(training)
    assert progress["epoch"] == final and progress["step"] == 2 * final and progress["pid"] == ranks[0]
    assert _name(final) in progress["checkpoints"]
    steps = [json.loads(line) for line in (training / "steps.jsonl").read_text().splitlines()]
    assert [s["epoch"] for s in steps] == [final] and steps[0]["steps"] == 1  # one writer, one line per epoch
    assert (training / "cache" / ".prepared").is_file()
    strays = [p for p in training.rglob("*") if p.name.startswith(TMP_PREFIX)]
    assert strays == []

    after = legs.after_second  # the daemon's runner finds the epochs done
    assert (after.state, after.epoch, after.step) == ("finished", final, 2 * final)
    assert read_state(training).last_checkpoint == str(checkpoints / _name(final))


@pytest.mark.slow
def test_the_ddp_checkpoint_exports_a_voice_that_speaks(legs: Legs) -> None:
    from piper import PiperVoice

    from ttsft_daemon.training.export import export_voice
    from ttsft_daemon.training.launcher import inspect_checkpoint

    last = Path(legs.after_second.last_checkpoint or "")
    info = inspect_checkpoint(last)
    assert (info["epoch"], info["global_step"]) == (legs.final - 1, 2 * legs.final)
    assert info["ttsft"]["voice"] == "joe"
    onnx, config_json = export_voice(last, legs.training, "joe")
    config = json.loads(config_json.read_text())
    assert config["audio"]["quality"] == "x_low" and config["ttsft"]["epoch"] == legs.final
    voice = PiperVoice.load(str(onnx))
    samples = sum(len(chunk.audio_float_array) for chunk in voice.synthesize("The garden gate was open."))
    assert voice.config.sample_rate == 22050 and samples > 22050 * 0.3
