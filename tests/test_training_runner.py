"""Training orchestration without a trainer: CSV derivation, retention, state, progress, leftovers, sizes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from filelock import FileLock

from ttsft_daemon.config import TrainingConfig
from ttsft_daemon.errors import TransientError
from ttsft_daemon.training import sizes as quality
from ttsft_daemon.training.progress import (
    CACHE_MARKER,
    ProgressFile,
    checkpoint_name,
    epoch_checkpoints,
    last_checkpoint,
    parse_checkpoint_name,
    point_last_checkpoint,
    selection_loss,
)
from ttsft_daemon.training.runner import (
    BoundedLog,
    TrainingState,
    _cleanup_partial_files,
    apply_retention,
    best_checkpoint,
    read_state,
    select_retained,
    train,
    write_trainer_csv,
)

# ------------------------------------------------------------------------------------------ trainer CSV


def _dataset(tmp_path: Path, rows: list[str], wavs: list[str]) -> tuple[Path, Path]:
    wav_dir = tmp_path / "dataset" / "wavs"
    wav_dir.mkdir(parents=True)
    for name in wavs:
        (wav_dir / name).write_bytes(b"RIFF")
    metadata = tmp_path / "dataset" / "metadata.csv"
    metadata.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    return metadata, wav_dir


def _read_as_piper_does(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8") as fh:
        return list(csv.reader(fh, delimiter="|"))


def test_trainer_csv_keeps_clips_with_audio_and_text(tmp_path: Path) -> None:
    metadata, wavs = _dataset(tmp_path, [
        "a.wav|Hello there.|1.200|joe|0.9000",
        'b.wav|"Quoted," he said, and left.|2.000|joe|0.8000',
        "missing.wav|No audio for this one.|1.000|joe|0.9000",
        "c.wav|   |1.000|joe|0.9000",
        "d.wav|Spaces   collapse\there.|1.000|joe|0.9000",
        "not a row",
    ], ["a.wav", "b.wav", "c.wav", "d.wav"])
    out = tmp_path / "training" / "train.csv"
    assert write_trainer_csv(metadata, wavs, out) == 3
    rows = _read_as_piper_does(out)
    assert [Path(r[0]).name for r in rows] == ["a.wav", "b.wav", "d.wav"]
    assert all(Path(r[0]).is_absolute() and Path(r[0]).is_file() for r in rows)
    assert [r[-1] for r in rows] == ["Hello there.", '"Quoted," he said, and left.', "Spaces collapse here."]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp.")]


def test_trainer_csv_accepts_two_column_rows_and_paths_under_the_dataset(tmp_path: Path) -> None:
    metadata, wavs = _dataset(tmp_path, ["wavs/a.wav|One.", "b.wav|Two|with a pipe|1.0|joe|0.9"], ["a.wav", "b.wav"])
    out = tmp_path / "train.csv"
    assert write_trainer_csv(metadata, wavs, out) == 2
    assert [r[-1] for r in _read_as_piper_does(out)] == ["One.", "Two|with a pipe"]


# ------------------------------------------------------------------------------------------ checkpoint names


def test_checkpoint_names_round_trip_as_completed_epochs() -> None:
    name = checkpoint_name(2, 24)
    assert name == "epoch=00002-step=000000024.ckpt"
    assert parse_checkpoint_name(name) == (3, 24)
    assert parse_checkpoint_name("last.ckpt") is None
    assert parse_checkpoint_name(".tmp.h.1.ab.epoch=00002-step=000000024.ckpt") is None


def _ckpts(folder: Path, epochs: list[int], size: int = 10) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for e in epochs:
        p = folder / checkpoint_name(e - 1, e * 8)
        p.write_bytes(b"x" * size)
        paths.append(p)
    return paths


def test_last_checkpoint_follows_the_link_and_falls_back_when_it_dangles(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    assert last_checkpoint(folder) is None
    one, two, three = _ckpts(folder, [1, 2, 3])
    point_last_checkpoint(two)
    assert os.readlink(folder / "last.ckpt") == two.name  # relative: the folder can move
    assert last_checkpoint(folder) == two
    two.unlink()
    assert last_checkpoint(folder) == three
    assert epoch_checkpoints(folder) == [one, three]


# ------------------------------------------------------------------------------------------ retention


def test_select_retained_keeps_newest_and_best() -> None:
    files = [Path(f"/c/{checkpoint_name(e, e)}") for e in range(6)]
    losses = {files[1].name: 0.5, files[3].name: 0.9, files[5].name: 0.7}
    sizes = {p.name: 100 for p in files}
    keep = select_retained(files, losses, sizes, keep_last=2, keep_best=1, budget_bytes=1e9)
    assert keep == {files[4], files[5], files[1]}


def test_select_retained_within_budget_gives_up_older_then_best_never_newest_or_protected() -> None:
    files = [Path(f"/c/{checkpoint_name(e, e)}") for e in range(6)]
    losses = {files[0].name: 0.1, files[2].name: 0.2}
    sizes = {p.name: 100 for p in files}
    keep = select_retained(files, losses, sizes, keep_last=3, keep_best=2, budget_bytes=300)
    assert keep == {files[5], files[0], files[2]}  # older recent ones went first
    keep = select_retained(files, losses, sizes, keep_last=3, keep_best=2, budget_bytes=150, protected=[files[1]])
    assert keep == {files[5], files[1]}  # over budget, but the newest and the protected stay


def test_apply_retention_deletes_the_rest_and_protects_link_target_and_resume(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    paths = _ckpts(folder, [1, 2, 3, 4, 5, 6])
    point_last_checkpoint(paths[2])  # a stale link (the trainer was killed before switching it)
    progress = {"checkpoints": {p.name: {"path": str(p), "loss": loss}
                                for p, loss in zip(paths, [0.3, 0.1, 0.5, 0.6, 0.7, 0.8], strict=True)}}
    deleted = apply_retention(folder, progress, keep_last=2, keep_best=1, disk_budget_gb=1.0,
                              protected=[paths[0]])
    assert sorted(p.name for p in deleted) == [paths[3].name]
    assert set(epoch_checkpoints(folder)) == {paths[0], paths[1], paths[2], paths[4], paths[5]}
    assert best_checkpoint(folder, progress) == paths[1]


# ------------------------------------------------------------------------------------------ state and progress


def test_training_state_round_trips_and_tolerates_foreign_json() -> None:
    state = TrainingState(state="training", voice="v", epoch=3, losses={"val_mel": 0.5}, pid=1)
    assert TrainingState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    odd = TrainingState.from_dict({"state": "exploded", "epoch": 4, "unknown": 1})
    assert odd.state == "idle" and odd.epoch == 4


def test_read_state_reports_a_dead_trainer_as_stopped(tmp_path: Path) -> None:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(child.stdout)
    (tmp_path / "state.json").write_text(json.dumps({"state": "training", "epoch": 2, "pid": dead_pid}))
    state = read_state(tmp_path)
    assert state.state == "stopped" and state.epoch == 2


def test_read_state_without_state_file_reads_the_checkpoints(tmp_path: Path) -> None:
    assert read_state(tmp_path) == TrainingState()
    paths = _ckpts(tmp_path / "checkpoints", [1, 2])
    point_last_checkpoint(paths[1])
    state = read_state(tmp_path)
    assert (state.state, state.epoch, state.step, state.last_checkpoint) == ("idle", 2, 16, str(paths[1]))


def test_progress_file_merges_runs_and_forgets_deleted_checkpoints(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    one, two = _ckpts(folder, [1, 2])
    progress = ProgressFile(tmp_path / "progress.json")
    progress.record_epoch({"epoch": 1, "step": 8, "losses": {"val_mel": 0.9}}, max_epochs=3)
    progress.record_checkpoint(one, {"epoch": 1, "step": 8, "loss": 0.9, "save_seconds": 1.5})
    resumed = ProgressFile(tmp_path / "progress.json")  # the next run continues the account
    resumed.record_epoch({"epoch": 2, "step": 16, "losses": {"val_mel": 0.8}}, max_epochs=3)
    one.unlink()
    resumed.record_checkpoint(two, {"epoch": 2, "step": 16, "loss": 0.8, "save_seconds": 1.0})
    data = json.loads((tmp_path / "progress.json").read_text())
    assert [e["epoch"] for e in data["epochs"]] == [1, 2]
    assert data["epochs"][0]["checkpoint_seconds"] == 1.5
    assert list(data["checkpoints"]) == [two.name]
    assert (data["epoch"], data["step"], data["last_checkpoint"]) == (2, 16, str(two))


def test_selection_loss_prefers_validation_mel() -> None:
    assert selection_loss({"loss_g": 90.0, "val_mel": 1.2}) == 1.2
    assert selection_loss({"loss_g": 90.0}) == 90.0
    assert selection_loss({}) is None


# ------------------------------------------------------------------------------------------ leftovers and log


def test_cleanup_removes_temporary_checkpoints_and_unprepared_cache_files(tmp_path: Path) -> None:
    ckpts, cache = tmp_path / "checkpoints", tmp_path / "cache"
    kept = _ckpts(ckpts, [1])[0]
    (ckpts / ".tmp.host.1.ab.epoch=00001-step=000000016.ckpt").write_bytes(b"partial")
    cache.mkdir()
    old = cache / "1-aa.spec.pt"
    old.write_bytes(b"ok")
    past = time.time() - 100
    os.utime(old, (past, past))
    (cache / CACHE_MARKER).write_text("prepared")
    os.utime(cache / CACHE_MARKER, (past + 10, past + 10))
    newer = cache / "2-bb.spec.pt"
    newer.write_bytes(b"maybe partial")
    _cleanup_partial_files(ckpts, cache)
    assert sorted(p.name for p in ckpts.iterdir()) == [kept.name]
    assert sorted(p.name for p in cache.iterdir()) == sorted([old.name, CACHE_MARKER])
    (cache / CACHE_MARKER).unlink()  # no completed preparation at all: nothing in the cache is trusted
    _cleanup_partial_files(ckpts, cache)
    assert list(cache.iterdir()) == []


def test_bounded_log_rotates_and_keeps_a_tail(tmp_path: Path) -> None:
    sink = BoundedLog(tmp_path / "train.log", max_bytes=1000, tail_lines=5)
    for i in range(200):
        sink.write_line(f"line {i:04d} {'x' * 40}\n".encode())
    sink.close()
    current, previous = tmp_path / "train.log", tmp_path / "train.log.1"
    assert current.stat().st_size <= 1100 and previous.stat().st_size <= 1100
    lines = (previous.read_text() + current.read_text()).splitlines()
    assert lines[-1].startswith("line 0199") and len(lines) < 60
    assert list(sink.tail)[-1].startswith("line 0199") and len(sink.tail) == 5


# ------------------------------------------------------------------------------------------ quality levels


def test_quality_levels_map_to_piper_model_sizes() -> None:
    args = quality.model_args("x_low")
    assert args[args.index("--model.hidden_channels") + 1] == "96"
    assert args[args.index("--model.filter_channels") + 1] == "384"
    high = quality.model_args("high")
    assert high[high.index("--model.upsample_rates") + 1] == "[8, 8, 2, 2]"
    with pytest.raises(ValueError):
        quality.model_args("ultra")


def test_size_mismatches_compare_checkpoint_hyper_parameters() -> None:
    medium_ckpt = {"hidden_channels": 192, "resblock": "2", "upsample_rates": "(8, 8, 4)"}
    assert quality.size_mismatches(medium_ckpt, "medium") == []
    assert quality.size_mismatches(medium_ckpt, "low") == []
    assert any("hidden_channels" in m for m in quality.size_mismatches(medium_ckpt, "x_low"))
    assert quality.quality_of({**quality.MODEL_SIZES["high"]}) == "high"
    assert quality.quality_of({"hidden_channels": 96, "inter_channels": 96, "filter_channels": 384}) == "x_low"
    assert quality.quality_of({"hidden_channels": 128}) is None


# ------------------------------------------------------------------------------------------ train() without a trainer


def _cfg() -> TrainingConfig:
    return TrainingConfig(quality="x_low", batch_size=4, accelerator="cpu")


def test_train_refuses_an_empty_dataset(tmp_path: Path) -> None:
    metadata, _ = _dataset(tmp_path, ["gone.wav|No audio.|1.0|joe|0.9"], [])
    with pytest.raises(TransientError, match="no clip"):
        train("joe", metadata.parent, tmp_path / "training", _cfg(), threading.Event(), max_epochs=1)


def test_train_with_stop_already_set_launches_nothing(tmp_path: Path) -> None:
    metadata, _ = _dataset(tmp_path, ["a.wav|One.|1.0|joe|0.9", "b.wav|Two.|1.0|joe|0.9"], ["a.wav", "b.wav"])
    stop = threading.Event()
    stop.set()
    state = train("joe", metadata.parent, tmp_path / "training", _cfg(), stop, max_epochs=5)
    assert (state.state, state.clips, state.target_epochs, state.quality) == ("stopped", 2, 5, "x_low")
    assert read_state(tmp_path / "training") == state
    assert not (tmp_path / "training" / "train.log").exists()


def test_train_that_already_reached_its_target_reports_finished(tmp_path: Path) -> None:
    metadata, _ = _dataset(tmp_path, ["a.wav|One.|1.0|joe|0.9"], ["a.wav"])
    training = tmp_path / "training"
    paths = _ckpts(training / "checkpoints", [1, 2, 3])
    point_last_checkpoint(paths[-1])
    reported: list[TrainingState] = []
    state = train("joe", metadata.parent, training, _cfg(), threading.Event(), reported.append, max_epochs=3)
    assert (state.state, state.epoch, state.last_checkpoint) == ("finished", 3, str(paths[-1]))
    assert reported == [state]
    assert not (training / "train.log").exists()


def test_a_second_run_of_the_same_voice_is_refused(tmp_path: Path) -> None:
    metadata, _ = _dataset(tmp_path, ["a.wav|One.|1.0|joe|0.9"], ["a.wav"])
    training = tmp_path / "training"
    training.mkdir()
    with FileLock(str(training / ".train.lock")), pytest.raises(TransientError, match="another training run"):
        train("joe", metadata.parent, training, _cfg(), threading.Event(), max_epochs=1)
