#!/usr/bin/env python3
"""Seconds per Piper training epoch on this machine: training loop vs checkpoint writing.

Uses (or builds with the bundled Piper voice, models/piper) a dataset of >= --minutes of speech, trains each
--case through the daemon's own runner (medium quality by default), and writes bench/results/train_gpu.json:
per case the per-epoch train / validation / checkpoint seconds and their medians, the wall-clock epoch cycle
(seen from outside the trainer, so it includes whatever checkpointing costs), clips/s, checkpoint size, peak
host RSS of the trainer and, when nvidia-smi exists, peak GPU memory and mean GPU utilisation. Also times the
ONNX export of the first case's last checkpoint.

A case is BATCH:EPOCHS:CHECKPOINT_EVERY[:PRECISION[:DATA_LOADER_WORKERS]]; the cases run one after another on
the same dataset, later ones reusing the first one's piper cache (its preparation time is reported once).

    .venv/bin/python bench/train_gpu.py                                    # one case: batch 32, 6 epochs
    .venv/bin/python bench/train_gpu.py --case 32:10:1 --case 32:10:10     # checkpoint every epoch vs at the end
    .venv/bin/python bench/train_gpu.py --dataset DIR ...                  # an existing dataset (metadata.csv + wavs/)
    .venv/bin/python bench/train_gpu.py --quick                            # tiny CPU check: x_low, batch 4

On a GPU host without the daemon's install, bench/pack_train_gpu.sh gathers what this needs (wheels, a slim
piper package, the dataset) into one folder to carry; its header gives the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ttsft_daemon.config import TrainingConfig  # noqa: E402
from ttsft_daemon.core.spool import atomic_write_json, read_json  # noqa: E402
from ttsft_daemon.errors import TransientError  # noqa: E402
from ttsft_daemon.training.export import export_voice  # noqa: E402
from ttsft_daemon.training.progress import CACHE_MARKER, PROGRESS_FILE  # noqa: E402
from ttsft_daemon.training.runner import CACHE_DIR, train  # noqa: E402

SECONDS_PER_CLIP_GUESS = 3.2
VALIDATION_SPLIT = 0.1  # piper's default
WATCH_SECONDS = 0.05


@dataclass(frozen=True)
class Case:
    batch_size: int
    epochs: int
    checkpoint_every: int
    precision: str
    num_workers: int

    @property
    def label(self) -> str:
        return f"b{self.batch_size}-e{self.epochs}-ckpt{self.checkpoint_every}-{self.precision}-w{self.num_workers}"


def parse_case(text: str, default_precision: str, default_workers: int) -> Case:
    parts = text.split(":")
    if not 3 <= len(parts) <= 5:
        raise argparse.ArgumentTypeError(f"{text!r}: expected BATCH:EPOCHS:CHECKPOINT_EVERY[:PRECISION[:WORKERS]]")
    try:
        batch, epochs, every = (int(p) for p in parts[:3])
        workers = int(parts[4]) if len(parts) == 5 else default_workers
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: batch, epochs, checkpoint interval, workers are integers") from exc
    if min(batch, epochs, every) < 1 or workers < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: batch, epochs and checkpoint interval must be >= 1")
    precision = parts[3] if len(parts) >= 4 and parts[3] else default_precision
    return Case(batch, epochs, every, precision, workers)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.5, help="speech in a built dataset (default 10.5)")
    p.add_argument("--dataset", type=Path, default=None,
                   help="use this dataset folder (metadata.csv + wavs/) as it is; default: build one in --workdir")
    p.add_argument("--build-only", action="store_true", help="build the dataset and stop")
    p.add_argument("--repeat", type=int, default=1,
                   help="list every clip N times (same WAVs) to time epochs of an N times larger dataset")
    p.add_argument("--case", action="append", default=[], metavar="B:E:C[:P[:W]]",
                   help="batch:epochs:checkpoint-every[:precision[:workers]]; repeatable (default: the options below)")
    p.add_argument("--epochs", type=int, default=6, help="epochs to train (the first one warms up)")
    p.add_argument("--quality", default="medium", choices=["x_low", "low", "medium", "high"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"])
    p.add_argument("--devices", default="auto")
    p.add_argument("--strategy", default="auto")
    p.add_argument("--precision", default="32-true")
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--checkpoint-every", type=int, default=1, help="checkpoint every N epochs")
    p.add_argument("--workdir", type=Path, default=REPO / "bench" / "out" / "train_gpu")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "train_gpu.json")
    p.add_argument("--no-export", action="store_true", help="skip timing the ONNX export")
    p.add_argument("--quick", action="store_true",
                   help="tiny CPU check: 20 clips, x_low, batch 4, 2 epochs of 2 batches")
    args = p.parse_args(argv)
    if args.quick:
        args.minutes, args.epochs, args.quality, args.batch_size = 1.0, 2, "x_low", 4
        args.num_workers, args.accelerator = 0, "cpu"
        args.out = args.out.with_name(args.out.stem + "_quick.json")
    try:
        cases = [parse_case(c, args.precision, args.num_workers) for c in args.case]
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))
    args.cases = cases or [Case(args.batch_size, args.epochs, args.checkpoint_every, args.precision, args.num_workers)]
    return args


# ----------------------------------------------------------------------------------------------- dataset


def dataset_size(folder: Path) -> tuple[int, float]:
    """(clips, seconds of speech) listed in a dataset's metadata.csv (zeros when there is none)."""
    metadata = folder / "metadata.csv"
    if not metadata.exists():
        return 0, 0.0
    rows = [line.split("|") for line in metadata.read_text(encoding="utf-8").splitlines() if line]
    return len(rows), sum(float(r[2]) for r in rows)


def ensure_dataset(folder: Path, minutes: float) -> tuple[int, float]:
    """(clips, seconds) of a spoken dataset of at least `minutes`, built (or reused) in `folder`."""
    from ttsft_daemon.demo.sample_data import build_spoken_dataset

    clips, seconds = dataset_size(folder)
    if seconds >= minutes * 60:
        return clips, seconds
    shutil.rmtree(folder, ignore_errors=True)
    count = max(20, math.ceil(minutes * 60 / SECONDS_PER_CLIP_GUESS))
    while True:
        seconds = build_spoken_dataset(folder, count)
        if seconds >= minutes * 60:
            return count, seconds
        count = math.ceil(count * minutes * 60 / seconds) + 5


def repeated_dataset(source: Path, folder: Path, times: int) -> Path:
    """A dataset listing each of `source`'s clips `times` times (its wavs/ is a link to source's).

    piper caches per CSV row, so each repetition is a separate utterance to it: epochs take as long as on a
    dataset `times` as large, which is all the timing needs.
    """
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "wavs").symlink_to((source / "wavs").resolve(), target_is_directory=True)
    rows = [line for line in (source / "metadata.csv").read_text(encoding="utf-8").splitlines() if line]
    (folder / "metadata.csv").write_text("\n".join(rows * times) + "\n", encoding="utf-8")
    return folder


# ----------------------------------------------------------------------------------------------- watchers


class GpuSampler:
    """Streams nvidia-smi's memory used and utilisation every 200 ms (no-op without nvidia-smi)."""

    QUERY: ClassVar[list[str]] = ["nvidia-smi", "--query-gpu=index,memory.used,utilization.gpu",
                                  "--format=csv,noheader,nounits", "-lms", "200"]

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float]] = []  # (monotonic time, MiB used on all GPUs, mean util %)
        self.available = shutil.which("nvidia-smi") is not None
        self._proc: subprocess.Popen[str] | None = None
        self._thread = threading.Thread(target=self._read, daemon=True, name="gpu-sampler")

    def __enter__(self) -> GpuSampler:
        if self.available:
            self._proc = subprocess.Popen(self.QUERY, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._thread.join(timeout=10)

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        pending: dict[int, tuple[float, float]] = {}
        for line in self._proc.stdout:
            try:
                index, used, util = (float(v) for v in line.split(","))
            except ValueError:
                continue
            if int(index) in pending:  # a new round of readings begins
                self._flush(pending)
            pending[int(index)] = (used, util)
        self._flush(pending)

    def _flush(self, pending: dict[int, tuple[float, float]]) -> None:
        if pending:
            values = list(pending.values())
            self.samples.append((time.monotonic(), sum(v[0] for v in values), statistics.fmean(v[1] for v in values)))
            pending.clear()

    def summary(self, since: float | None = None) -> dict[str, Any]:
        """Peak memory over the whole run; mean utilisation over the samples after `since` (the loop)."""
        if not self.samples:
            return {"available": self.available}
        loop = [s for s in self.samples if since is None or s[0] >= since] or self.samples
        return {"available": True, "samples": len(self.samples),
                "baseline_memory_mib": self.samples[0][1],
                "peak_memory_mib": max(s[1] for s in self.samples),
                "mean_utilisation_percent_in_loop": round(statistics.fmean(s[2] for s in loop), 1)}


class ProgressWatcher:
    """Notes when each epoch's record first appears in progress.json (the trainer writes it at the epoch's end).

    The interval between two epochs' records is the whole epoch cycle, checkpoint dump and write included.
    """

    def __init__(self, training_dir: Path) -> None:
        self.path = training_dir / PROGRESS_FILE
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="progress-watch")

    def __enter__(self) -> ProgressWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        last_mtime = 0.0
        while not self._stop.wait(WATCH_SECONDS):
            try:
                mtime = self.path.stat().st_mtime
            except OSError:
                continue
            if mtime == last_mtime:
                continue
            last_mtime = mtime
            now = time.monotonic()
            data = read_json(self.path) or {}
            epoch = int(data.get("epoch") or 0)
            if epoch and epoch not in self.seen:
                self.seen[epoch] = now


# ----------------------------------------------------------------------------------------------- one case


def device_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"host": platform.node(), "python": platform.python_version(),
                            "torch": torch.__version__, "cuda": torch.cuda.is_available(),
                            "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    try:
        import lightning

        info["lightning"] = lightning.__version__
    except ImportError:
        pass
    return info


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def summarise(case: Case, progress: dict[str, Any], seen: dict[int, float], train_clips: int) -> dict[str, Any]:
    epochs = [e for e in progress.get("epochs") or [] if isinstance(e, dict)]
    timed = epochs[1:] or epochs  # the first epoch includes warm-up (cuDNN autotune, worker start)
    train_s = _median([float(e["train_seconds"]) for e in timed])
    val_s = _median([float(e.get("validation_seconds", 0.0)) for e in timed])
    saves = [float(e.get("checkpoint_seconds", 0.0)) for e in epochs if float(e.get("checkpoint_seconds", 0.0)) > 0]
    # cycle of epoch n = record of n seen - record of n-1 seen: epoch n's loop + epoch n-1's checkpoint
    cycles = [seen[n] - seen[n - 1] for n in sorted(seen) if n - 1 in seen and n >= 3]
    cycles_after_save = [seen[n] - seen[n - 1] for n in sorted(seen)
                         if n - 1 in seen and n >= 3 and (n - 1) % case.checkpoint_every == 0]
    batches = train_clips // case.batch_size if train_clips > case.batch_size else 1
    sizes = [int(r["bytes"]) for r in (progress.get("checkpoints") or {}).values() if isinstance(r, dict)]
    cycle = _median(cycles)
    save = _median(saves)
    return {
        "median_train_seconds": train_s,
        "median_validation_seconds": val_s,
        "median_checkpoint_seconds": save,
        "checkpoints_written": len(saves),
        "checkpoint_seconds_each": [round(s, 3) for s in saves],
        "median_epoch_cycle_seconds": cycle,
        "median_epoch_cycle_after_a_save_seconds": _median(cycles_after_save),
        "epoch_cycles_seconds": [round(c, 3) for c in cycles],
        "checkpoint_share_when_saving_every_epoch": (
            round(save / (train_s + val_s + save), 3) if save and train_s is not None and val_s is not None else None),
        "train_batches_per_epoch": batches,
        "train_clips_per_second": round(batches * case.batch_size / train_s, 2) if train_s else None,
        "batches_per_second": round(batches / train_s, 3) if train_s else None,
        "checkpoint_bytes": max(sizes) if sizes else None,
    }


def seed_cache(training_dir: Path, cache_from: Path | None) -> None:
    """Copy a prepared piper cache (mtimes kept, so the runner's cleanup sees it as complete) into a fresh run."""
    if cache_from is not None and (cache_from / CACHE_MARKER).exists():
        shutil.copytree(cache_from, training_dir / CACHE_DIR, copy_function=shutil.copy2)


def run_case(case: Case, args: argparse.Namespace, data_dir: Path, train_clips: int,
             cache_from: Path | None) -> tuple[dict[str, Any], Path | None]:
    """Train one case from scratch; returns its result and its last checkpoint."""
    training_dir = args.workdir / "training" / case.label
    shutil.rmtree(training_dir, ignore_errors=True)
    training_dir.mkdir(parents=True)
    seed_cache(training_dir, cache_from)
    cfg = TrainingConfig(quality=args.quality, batch_size=case.batch_size, accelerator=args.accelerator,
                         devices=args.devices, strategy=args.strategy, precision=case.precision,
                         num_workers=case.num_workers, checkpoint_every_epochs=case.checkpoint_every,
                         keep_last=2, keep_best=0, disk_budget_gb=20.0)
    # 2 of the 4 training batches (a fraction: LightningCLI reads an integer 1 as 1.0, i.e. all batches)
    extra = ["--trainer.limit_train_batches", "0.5"] if args.quick else []
    print(f"[bench] case {case.label}", flush=True)
    started = time.monotonic()
    with GpuSampler() as gpu, ProgressWatcher(training_dir) as watcher:
        state = train("bench", data_dir, training_dir, cfg, threading.Event(), max_epochs=case.epochs,
                      extra_args=extra, log_max_bytes=50_000_000)
    wall = time.monotonic() - started
    progress = read_json(training_dir / PROGRESS_FILE) or {}
    seen = watcher.seen
    first = min(seen.values()) if seen else None
    epochs = progress.get("epochs") or []
    first_loop = sum(float(epochs[0].get(k, 0.0)) for k in ("train_seconds", "validation_seconds")) if epochs else 0.0
    result: dict[str, Any] = {
        "case": dataclasses.asdict(case) | {"label": case.label},
        "summary": summarise(case, progress, seen, train_clips if not args.quick else 2 * case.batch_size),
        "startup_seconds": round(first - started - first_loop, 1) if first is not None else None,
        "piper_cache_reused": cache_from is not None,
        "wall_seconds": round(wall, 1),
        "epochs": epochs,
        "trainer": {"state": state.state, "epoch": state.epoch, "step": state.step, "peak_rss_mb": state.peak_rss_mb},
        "gpu": gpu.summary(since=first),
    }
    last = Path(state.last_checkpoint) if state.last_checkpoint else None
    return result, last


def time_export(checkpoint: Path, out_dir: Path) -> dict[str, Any]:
    """Seconds to export the ONNX voice, and whether piper then speaks a sentence with it."""
    started = time.monotonic()
    try:
        onnx, _ = export_voice(checkpoint, out_dir, "bench")
    except TransientError as exc:
        return {"error": str(exc)}
    seconds = round(time.monotonic() - started, 1)
    try:
        import wave

        from piper import PiperVoice

        with wave.open(str(out_dir / "check.wav"), "wb") as wav:
            PiperVoice.load(str(onnx)).synthesize_wav("The exported voice speaks.", wav)
        with wave.open(str(out_dir / "check.wav"), "rb") as wav:
            spoken = wav.getnframes() / wav.getframerate()
    except Exception as exc:  # the numbers stay useful without this check
        return {"seconds": seconds, "onnx_bytes": onnx.stat().st_size, "speak_error": f"{type(exc).__name__}: {exc}"}
    return {"seconds": seconds, "onnx_bytes": onnx.stat().st_size, "spoken_seconds": round(spoken, 2)}


# ----------------------------------------------------------------------------------------------- report


def markdown_table(runs: list[dict[str, Any]]) -> str:
    head = ("| case | train s/epoch | val s | ckpt s (each) | epoch cycle s | clips/s | ckpt share (every epoch) "
            "| GPU peak MiB | GPU util % |\n|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for r in runs:
        s, g = r["summary"], r["gpu"]
        rows.append(f"| {r['case']['label']} | {s['median_train_seconds']} | {s['median_validation_seconds']} "
                    f"| {s['median_checkpoint_seconds']} ({s['checkpoints_written']}x) "
                    f"| {s['median_epoch_cycle_seconds']} | {s['train_clips_per_second']} "
                    f"| {s['checkpoint_share_when_saving_every_epoch']} "
                    f"| {g.get('peak_memory_mib')} | {g.get('mean_utilisation_percent_in_loop')} |")
    return head + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    data_dir = args.dataset if args.dataset is not None else args.workdir / "dataset"
    if args.dataset is not None:
        clips, seconds = dataset_size(data_dir)
        if clips == 0:
            print(f"[bench] {data_dir}: no metadata.csv", file=sys.stderr)
            return 2
    else:
        clips, seconds = ensure_dataset(data_dir, args.minutes)
    if args.build_only:
        print(f"[bench] dataset: {clips} clips, {seconds / 60:.1f} min ({time.monotonic() - started:.0f} s)")
        return 0
    if args.repeat > 1:
        data_dir = repeated_dataset(data_dir, args.workdir / f"dataset_x{args.repeat}", args.repeat)
        clips, seconds = clips * args.repeat, seconds * args.repeat
    print(f"[bench] dataset: {clips} clips, {seconds / 60:.1f} min", flush=True)
    train_clips = clips - int(clips * VALIDATION_SPLIT)
    result: dict[str, Any] = {
        "device": device_info(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "cases"},
        "dataset": {"clips": clips, "minutes": round(seconds / 60, 2), "train_clips": train_clips,
                    "repeat": args.repeat},
        "runs": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cache_from: Path | None = None
    for index, case in enumerate(args.cases):
        run, last = run_case(case, args, data_dir, train_clips, cache_from)
        result["runs"].append(run)
        cache_from = args.workdir / "training" / case.label / CACHE_DIR
        if index == 0 and not args.no_export and last is not None:
            result["export"] = time_export(last, args.workdir / "export")
        atomic_write_json(args.out, result)  # after every case: a later failure keeps the earlier numbers
        print(json.dumps(run["summary"]), flush=True)
    table = markdown_table(result["runs"])
    result["markdown_table"] = table
    atomic_write_json(args.out, result)
    print(table, flush=True)
    print(f"[bench] wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
