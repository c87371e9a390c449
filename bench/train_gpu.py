#!/usr/bin/env python3
"""Seconds per Piper training epoch on this machine: training loop vs checkpoint writing.

Builds a dataset of >= --minutes of speech with the bundled Piper voice (models/piper, see
scripts/install.sh), trains --epochs epochs through the daemon's own runner (medium quality, batch 32 by
default), and writes bench/results/train_gpu.json: per-epoch train / validation / checkpoint seconds, their
medians, clips/s, the checkpoint share of the epoch, checkpoint size, peak host RSS of the trainer and,
when nvidia-smi exists, peak GPU memory and mean GPU utilisation. Also times the ONNX export.

    .venv/bin/python bench/train_gpu.py                 # on a GPU host (after scripts/install.sh)
    .venv/bin/python bench/train_gpu.py --quick         # tiny CPU check: x_low, batch 4, 2 short epochs
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ttsft_daemon.config import TrainingConfig  # noqa: E402
from ttsft_daemon.spool import atomic_write_json, read_json  # noqa: E402
from ttsft_daemon.training.export import export_voice  # noqa: E402
from ttsft_daemon.training.runner import train  # noqa: E402
from ttsft_daemon.training.sample_data import build_spoken_dataset  # noqa: E402

SECONDS_PER_CLIP_GUESS = 3.2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.5, help="speech in the dataset (default 10.5)")
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
    return args


def ensure_dataset(folder: Path, minutes: float) -> tuple[int, float]:
    """(clips, seconds) of a spoken dataset of at least `minutes`, built (or reused) in `folder`."""
    metadata = folder / "metadata.csv"
    if metadata.exists():
        rows = [line.split("|") for line in metadata.read_text(encoding="utf-8").splitlines() if line]
        seconds = sum(float(r[2]) for r in rows)
        if seconds >= minutes * 60:
            return len(rows), seconds
        shutil.rmtree(folder)
    count = max(20, math.ceil(minutes * 60 / SECONDS_PER_CLIP_GUESS))
    while True:
        seconds = build_spoken_dataset(folder, count)
        if seconds >= minutes * 60:
            return count, seconds
        count = math.ceil(count * minutes * 60 / seconds) + 5


class GpuSampler:
    """Polls nvidia-smi once a second for memory used and utilisation (no-op without nvidia-smi)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="gpu-sampler")
        self.available = shutil.which("nvidia-smi") is not None

    def __enter__(self) -> GpuSampler:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.available:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        query = ["nvidia-smi", "--query-gpu=memory.used,utilization.gpu", "--format=csv,noheader,nounits"]
        while not self._stop.wait(1.0):
            try:
                out = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True).stdout
            except (OSError, subprocess.SubprocessError):
                continue
            rows = [[float(v) for v in line.split(",")] for line in out.strip().splitlines() if line]
            if rows:
                self.samples.append((sum(r[0] for r in rows), statistics.fmean(r[1] for r in rows)))

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"available": self.available}
        return {"available": True, "peak_memory_mib": max(s[0] for s in self.samples),
                "mean_utilisation_percent": round(statistics.fmean(s[1] for s in self.samples), 1)}


def device_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"host": platform.node(), "python": platform.python_version(),
                            "torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def summarise(progress: dict[str, Any], train_clips: int, batch_size: int) -> dict[str, Any]:
    epochs = [e for e in progress.get("epochs") or [] if isinstance(e, dict)]
    timed = epochs[1:] or epochs  # the first epoch includes warm-up (cuDNN autotune, worker start)
    train_s = statistics.median(float(e["train_seconds"]) for e in timed)
    val_s = statistics.median(float(e.get("validation_seconds", 0.0)) for e in timed)
    ckpt_s = statistics.median(float(e.get("checkpoint_seconds", 0.0)) for e in timed)
    batches = train_clips // batch_size if train_clips > batch_size else 1
    sizes = [int(r["bytes"]) for r in (progress.get("checkpoints") or {}).values() if isinstance(r, dict)]
    return {
        "median_train_seconds": round(train_s, 3),
        "median_validation_seconds": round(val_s, 3),
        "median_checkpoint_seconds": round(ckpt_s, 3),
        "median_epoch_seconds": round(train_s + val_s + ckpt_s, 3),
        "checkpoint_share": round(ckpt_s / (train_s + val_s + ckpt_s), 3) if train_s + ckpt_s else None,
        "train_clips_per_second": round(batches * batch_size / train_s, 2) if train_s else None,
        "batches_per_second": round(batches / train_s, 3) if train_s else None,
        "checkpoint_bytes": max(sizes) if sizes else None,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    data_dir, training_dir = args.workdir / "dataset", args.workdir / "training"
    clips, seconds = ensure_dataset(data_dir, args.minutes)
    dataset_seconds = time.monotonic() - started
    print(f"[bench] dataset: {clips} clips, {seconds / 60:.1f} min ({dataset_seconds:.0f} s to build)", flush=True)
    shutil.rmtree(training_dir, ignore_errors=True)
    cfg = TrainingConfig(quality=args.quality, batch_size=args.batch_size, accelerator=args.accelerator,
                         devices=args.devices, strategy=args.strategy, precision=args.precision,
                         num_workers=args.num_workers, checkpoint_every_epochs=args.checkpoint_every,
                         keep_last=2, keep_best=0, disk_budget_gb=20.0)
    # 2 of the 4 training batches (a fraction: LightningCLI reads an integer 1 as 1.0, i.e. all batches)
    extra = ["--trainer.limit_train_batches", "0.5"] if args.quick else []
    train_started = time.monotonic()
    with GpuSampler() as gpu:
        state = train("bench", data_dir, training_dir, cfg, threading.Event(), max_epochs=args.epochs,
                      extra_args=extra, log_max_bytes=50_000_000)
    train_wall = time.monotonic() - train_started
    progress = read_json(training_dir / "progress.json") or {}
    train_clips = clips - int(clips * 0.1)  # piper's validation split is 10 %
    result: dict[str, Any] = {
        "device": device_info(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "dataset": {"clips": clips, "minutes": round(seconds / 60, 2), "train_clips": train_clips},
        "summary": summarise(progress, train_clips if not args.quick else 2 * args.batch_size, args.batch_size),
        "epochs": progress.get("epochs"),
        "trainer": {"state": state.state, "epoch": state.epoch, "step": state.step,
                    "peak_rss_mb": state.peak_rss_mb, "wall_seconds_with_start": round(train_wall, 1)},
        "gpu": gpu.summary(),
    }
    if not args.no_export and state.last_checkpoint:
        export_started = time.monotonic()
        export_voice(Path(state.last_checkpoint), args.workdir / "export", "bench")
        result["export_seconds"] = round(time.monotonic() - export_started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print(json.dumps(result["summary"], indent=2))
    print(f"[bench] wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
