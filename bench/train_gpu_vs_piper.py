#!/usr/bin/env python3
"""Plain piper.train against the project's training, on one GPU, in one run: clips/s, GPU busy, checkpoint
share, and both loss curves.

Trains the same dataset three times with the same batch size, seed and number of steps:
  plain-a, plain-b   `python -m piper.train fit` as piper ships it plus only the three wheel fixes (DESIGN.md):
                     the alignment core adapter, its val_mel ModelCheckpoint without the val_mos one (MOS off),
                     nothing else of the project (the export fix is not involved). Run twice: the spread
                     between the two is the run-to-run spread the project's curve is held to.
  project            the daemon's own runner and launcher with `training.fast: true` and `training.precision:
                     auto` (the defaults: on CUDA the step's parts as CUDA graphs, the decoder and
                     discriminators in bf16; checkpoint every epoch as configured; the fast path writes in
                     the background and skips due saves past its 5 % wall-time share). The LR-scheduler
                     correctness fix is switched off here so the comparison is about speed only. Other
                     project variants (PROJECT_VARIANTS: project-fp32, project-nographs, project-eager) can
                     be added to --runs.
Order: project, plain-a, plain-b (a failing project run then costs the least device time). Each run
records its per-step losses and per-epoch timings with the launcher's StepLog callback (one device read
per epoch). Epoch 1 is warm-up and left out of the rates.

    .venv/bin/python bench/train_gpu_vs_piper.py --quick          # tiny CPU check (x_low, batch 4, 2 epochs)
    python3 bench/train_gpu_vs_piper.py --dataset .gpu-carry/dataset --epochs 40 --out $OUT/x.json   # GPU host

Writes --out (default bench/results/train_gpu_vs_piper.json) with `summary` {ratio_clips_per_s, gpu_busy,
checkpoint_share, loss_within_spread, gpu, ...} and per-run details, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
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
sys.path.insert(0, str(REPO / "bench"))

LOSSES = ("loss_g", "loss_d")
WINDOWS = 10
INNER_SKIP = 0.25  # seconds left out at the start of each loop window for `gpu_busy_inner`


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, default=None, help="metadata.csv + wavs/ (default: build one)")
    p.add_argument("--minutes", type=float, default=10.5)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--quality", default="medium", choices=["x_low", "low", "medium", "high"])
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--accelerator", default="gpu", choices=["cpu", "gpu"])
    p.add_argument("--runs", default="project,plain-a,plain-b")
    p.add_argument("--plain-b-seed", type=int, default=1234,
                   help="seed of the second plain run (1234 = the others' seed: the spread is then only the GPU's "
                        "non-determinism; another seed measures a run-to-run spread that includes the seed)")
    p.add_argument("--workdir", type=Path, default=REPO / "bench" / "out" / "train_gpu_vs_piper")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "train_gpu_vs_piper.json")
    p.add_argument("--quick", action="store_true", help="tiny CPU check: 1 min of speech, x_low, batch 4, 2 epochs")
    args = p.parse_args(argv)
    if args.quick:
        args.minutes, args.epochs, args.quality, args.batch_size = 1.0, 2, "x_low", 4
        args.num_workers, args.accelerator = 0, "cpu"
        args.out = args.out.with_name(args.out.stem + "_quick.json")
    return args


# ----------------------------------------------------------------------------------------------- children


def plain_child(argv: list[str]) -> int:
    """`python -m piper.train fit ARGS` with the wheel fixes, plus the StepLog (last argument: its file)."""
    import torch

    from ttsft_daemon.training.launcher import StepLog, install_fixes

    install_fixes()  # fix 1
    from piper.train.__main__ import _DEFAULT_CALLBACKS, VitsLightningCLI
    from piper.train.vits.dataset import VitsDataModule
    from piper.train.vits.lightning import VitsModel

    step_log, args = argv[-1], argv[:-1]
    torch.backends.cuda.matmul.allow_tf32 = True  # as piper.train's main
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.deterministic = False
    # fix 2: piper's val_mel checkpoint callback without the val_mos one; MOS off via --model.mos_metric none
    VitsLightningCLI(VitsModel, VitsDataModule, args=args,
                     trainer_defaults={"max_epochs": -1, "callbacks": [_DEFAULT_CALLBACKS[0], StepLog(step_log)]})
    return 0


# ----------------------------------------------------------------------------------------------- gpu sampling


class GpuSampler:
    """nvidia-smi utilisation and memory every 100 ms, stamped with time.time() (no-op without nvidia-smi)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float]] = []  # (unix time, util %, MiB)
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                           "--format=csv,noheader,nounits", "-lms", "100", "-i", "0"],
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                util, mem = (float(v) for v in line.split(","))
            except ValueError:
                continue
            self.samples.append((time.time(), util, mem))

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)

    def busy(self, windows: list[tuple[float, float]], skip: float = 0.0) -> float | None:
        """Mean utilisation of the samples taken inside the windows, `skip` seconds after each one's start
        (a sample averages the driver's last sample period: the first ones in a window cover time before it)."""
        inside = [u for t, u, _ in self.samples if any(a + skip <= t <= b for a, b in windows)]
        return round(statistics.fmean(inside) / 100.0, 3) if inside else None

    def peak_mib(self, start: float, end: float) -> float | None:
        mems = [m for t, _, m in self.samples if start <= t <= end]
        return max(mems) if mems else None


# ----------------------------------------------------------------------------------------------- runs


def piper_args(args: argparse.Namespace, data: dict[str, Path], root: Path, seed: int = 1234) -> list[str]:
    from ttsft_daemon.training import sizes

    return [
        "fit",
        "--data.voice_name", "bench", "--data.csv_path", str(data["csv"]), "--data.audio_dir", str(data["wavs"]),
        "--data.cache_dir", str(data["cache"]), "--data.config_path", str(root / "config.json"),
        "--data.espeak_voice", "en-us", "--data.batch_size", str(args.batch_size),
        "--data.num_workers", str(args.num_workers), "--data.num_test_examples", "0",
        "--model.sample_rate", "22050", *sizes.model_args(args.quality), "--model.mos_metric", "none",
        "--trainer.max_epochs", str(args.epochs), "--trainer.accelerator", args.accelerator,
        "--trainer.devices", "1", "--trainer.precision", "32-true", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(root), "--seed_everything", str(seed),
        *(["--trainer.limit_train_batches", "0.5"] if args.quick else []),
    ]


def run_plain(name: str, args: argparse.Namespace, data: dict[str, Path]) -> tuple[Path, float]:
    root = args.workdir / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    log = root / "steps.jsonl"
    seed = args.plain_b_seed if name == "plain-b" else 1234
    command = [sys.executable, str(Path(__file__).resolve()), "--plain-child", *piper_args(args, data, root, seed),
               str(log)]
    started = time.time()
    with open(root / "train.log", "wb") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=root,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False)
    if done.returncode != 0:
        tail = (root / "train.log").read_text(errors="replace").splitlines()[-30:]
        raise SystemExit(f"[bench] {name} failed ({done.returncode}):\n" + "\n".join(tail))
    return log, started


# Variants of the project's run besides `project` (the defaults): (training.precision, environment)
PROJECT_VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "project": ("auto", {}),
    "project-fp32": ("32-true", {}),  # graphs, no bf16
    "project-nographs": ("auto", {"TTSFT_FAST_GRAPHS": "0"}),  # bf16, no graphs
    "project-eager": ("32-true", {"TTSFT_FAST_GRAPHS": "0"}),  # the previous round's fast path
}


def run_project(args: argparse.Namespace, data: dict[str, Path], name: str = "project") -> tuple[Path, float]:
    import threading as th

    from ttsft_daemon.config import TrainingConfig
    from ttsft_daemon.training.progress import CACHE_MARKER
    from ttsft_daemon.training.runner import CACHE_DIR, train

    precision, env = PROJECT_VARIANTS[name]
    root = args.workdir / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    if (data["cache"] / CACHE_MARKER).exists():  # piper's prepared cache: same CSV rows, same cache ids
        shutil.copytree(data["cache"], root / CACHE_DIR, copy_function=shutil.copy2)
    cfg = TrainingConfig(quality=args.quality, batch_size=args.batch_size, accelerator=args.accelerator,
                         devices="1", precision=precision, num_workers=args.num_workers, fast=True,
                         checkpoint_every_epochs=1, keep_last=2, keep_best=0, disk_budget_gb=20.0)
    log = root / "steps.jsonl"
    extra = ["--ttsft.step_log", str(log), "--ttsft.step_lr_schedulers", "false"]
    if args.quick:
        extra += ["--trainer.limit_train_batches", "0.5"]
    started = time.time()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the trainer process inherits them
    try:
        state = train("bench", data["dataset"], root, cfg, th.Event(), max_epochs=args.epochs, extra_args=extra,
                      log_max_bytes=50_000_000)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if state.state != "finished":
        raise SystemExit(f"[bench] project run ended {state.state}: {state.error}")
    if not (data["cache"] / CACHE_MARKER).exists():  # the plain runs reuse the cache this run prepared
        shutil.rmtree(data["cache"], ignore_errors=True)
        shutil.copytree(root / CACHE_DIR, data["cache"], copy_function=shutil.copy2)
    return log, started


# ----------------------------------------------------------------------------------------------- analysis


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarise_run(name: str, epochs: list[dict[str, Any]], batch: int, gpu: GpuSampler,
                  started: float) -> dict[str, Any]:
    timed = epochs[1:] or epochs
    clips = sum(e["steps"] for e in timed) * batch
    train_s = sum(e["train_seconds"] for e in timed)
    wall_s = sum(e["wall_seconds"] for e in timed)
    windows = [(e["started"], e["started"] + e["train_seconds"]) for e in timed]
    end = epochs[-1]["started"] + epochs[-1]["wall_seconds"]
    return {
        "run": name,
        "epochs": len(epochs),
        "steps": sum(e["steps"] for e in epochs),
        "clips_per_s": round(clips / train_s, 2) if train_s else None,  # training loop (epochs 2..)
        "clips_per_s_wall": round(clips / wall_s, 2) if wall_s else None,  # with validation and checkpoints
        "train_seconds": round(sum(e["train_seconds"] for e in epochs), 2),
        "validation_seconds": round(sum(e["validation_seconds"] for e in epochs), 2),
        "checkpoint_seconds": round(sum(e["checkpoint_seconds"] for e in epochs), 2),
        "wall_seconds": round(sum(e["wall_seconds"] for e in epochs), 2),
        "checkpoint_share": round(sum(e["checkpoint_seconds"] for e in epochs)
                                  / max(1e-9, sum(e["wall_seconds"] for e in epochs)), 3),
        "startup_seconds": round(epochs[0]["started"] - started, 1),
        "gpu_busy": gpu.busy(windows),
        "gpu_busy_inner": gpu.busy(windows, skip=INNER_SKIP),
        "gpu_peak_mib": gpu.peak_mib(started, end),
        "losses": {k: [v for e in epochs for v in e["losses"].get(k, [])] for k in LOSSES},
    }


def window_means(values: list[float], windows: int) -> list[float]:
    size = max(1, len(values) // windows)
    return [statistics.fmean(values[i:i + size]) for i in range(0, size * (len(values) // size), size)]


def compare_losses(runs: dict[str, dict[str, Any]], project: str = "project") -> dict[str, Any]:
    """Per loss: windowed means of the project vs the mean of the two plain runs, against their spread."""
    result: dict[str, Any] = {}
    within = True
    for key in LOSSES:
        a, b, p = (runs[n]["losses"][key] for n in ("plain-a", "plain-b", project))
        n = min(len(a), len(b), len(p))
        wa, wb, wp = (window_means(v[:n], WINDOWS) for v in (a, b, p))
        spread = [abs(x - y) for x, y in zip(wa, wb, strict=True)]
        deviation = [abs(z - (x + y) / 2) for x, y, z in zip(wa, wb, wp, strict=True)]
        ok = max(deviation, default=0.0) <= max(spread, default=0.0)
        within = within and ok
        result[key] = {"window_steps": max(1, n // WINDOWS), "plain_a": wa, "plain_b": wb, "project": wp,
                       "spread": spread, "max_spread": max(spread, default=0.0),
                       "project_deviation": deviation, "max_deviation": max(deviation, default=0.0),
                       "windows_inside_plain_range": sum(min(x, y) <= z <= max(x, y)
                                                         for x, y, z in zip(wa, wb, wp, strict=True)),
                       "within_spread": ok}
    result["within_spread"] = within
    return result


def side_by_side(runs: dict[str, dict[str, Any]], every: int) -> str:
    names = [n for n in ("plain-a", "plain-b", *PROJECT_VARIANTS) if n in runs]
    head = "step | " + " | ".join(f"{n} g / d" for n in names)
    lines = [head]
    steps = min(len(runs[n]["losses"]["loss_g"]) for n in names)
    for i in range(0, steps, every):
        cells = [f"{runs[n]['losses']['loss_g'][i]:.3f} / {runs[n]['losses']['loss_d'][i]:.3f}" for n in names]
        lines.append(f"{i + 1:4d} | " + " | ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    if raw[:1] == ["--plain-child"]:
        return plain_child(raw[1:])
    args = parse_args(raw)
    import torch
    from train_gpu import dataset_size, device_info, ensure_dataset

    from ttsft_daemon.core.spool import atomic_write_bytes, atomic_write_json
    from ttsft_daemon.training.progress import CACHE_MARKER, now_iso
    from ttsft_daemon.training.runner import write_trainer_csv

    args.workdir.mkdir(parents=True, exist_ok=True)
    dataset = args.dataset or args.workdir / "dataset"
    clips, seconds = dataset_size(dataset) if args.dataset else ensure_dataset(dataset, args.minutes)
    data = {"dataset": dataset, "wavs": dataset / "wavs", "csv": args.workdir / "train.csv",
            "cache": args.workdir / "cache"}
    write_trainer_csv(dataset / "metadata.csv", dataset / "wavs", data["csv"])
    print(f"[bench] dataset {clips} clips, {seconds / 60:.1f} min; batch {args.batch_size}, {args.epochs} epochs, "
          f"{args.quality}", flush=True)
    runs: dict[str, dict[str, Any]] = {}
    with GpuSampler() as gpu:
        for name in args.runs.split(","):
            print(f"[bench] {name} ...", flush=True)
            if name in PROJECT_VARIANTS:
                log, started = run_project(args, data, name)
            else:
                log, started = run_plain(name, args, data)
                atomic_write_bytes(data["cache"] / CACHE_MARKER, now_iso().encode())  # prepared by now
            runs[name] = summarise_run(name, read_log(log), args.batch_size, gpu, started)
            r = runs[name]
            print(f"[bench] {name}: {r['clips_per_s']} clips/s (loop), {r['clips_per_s_wall']} with val+ckpt, "
                  f"GPU busy {r['gpu_busy']}, peak {r['gpu_peak_mib']} MiB, ckpt share {r['checkpoint_share']}",
                  flush=True)
    plain = [runs[n] for n in ("plain-a", "plain-b") if n in runs]
    project = runs.get("project")
    summary: dict[str, Any] = {"gpu": (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")}
    if not plain:  # a project-only call: its own figures
        summary["project_runs"] = {n: {k: r[k] for k in ("clips_per_s", "clips_per_s_wall", "gpu_busy",
                                                         "gpu_busy_inner", "checkpoint_share", "gpu_peak_mib")}
                                   for n, r in runs.items()}
    if plain and project:
        plain_rate = statistics.fmean(r["clips_per_s"] for r in plain)
        plain_wall = statistics.fmean(r["clips_per_s_wall"] for r in plain)
        summary.update({
            "ratio_clips_per_s": round(project["clips_per_s"] / plain_rate, 3),
            "ratio_clips_per_s_wall": round(project["clips_per_s_wall"] / plain_wall, 3),
            "plain_clips_per_s": [r["clips_per_s"] for r in plain],
            "project_clips_per_s": project["clips_per_s"],
            "gpu_busy": project["gpu_busy"],
            "gpu_busy_inner": project["gpu_busy_inner"],
            "plain_gpu_busy": [r["gpu_busy"] for r in plain],
            "checkpoint_share": project["checkpoint_share"],
            "plain_checkpoint_share": [r["checkpoint_share"] for r in plain],
            "gpu_peak_mib": project["gpu_peak_mib"],
            "plain_gpu_peak_mib": [r["gpu_peak_mib"] for r in plain],
        })
    comparison = compare_losses(runs) if len(plain) == 2 and project else None
    if comparison is not None:
        summary["loss_within_spread"] = comparison["within_spread"]
    variants = [n for n in PROJECT_VARIANTS if n != "project" and n in runs]
    if plain and variants:  # the other project variants, for the record (the summary is `project`'s)
        plain_rate = statistics.fmean(r["clips_per_s"] for r in plain)
        summary["variants"] = {n: {
            "ratio_clips_per_s": round(runs[n]["clips_per_s"] / plain_rate, 3), "gpu_busy": runs[n]["gpu_busy"],
            "gpu_busy_inner": runs[n]["gpu_busy_inner"], "clips_per_s": runs[n]["clips_per_s"],
            "checkpoint_share": runs[n]["checkpoint_share"],
            "loss_within_spread": compare_losses(runs, n)["within_spread"] if len(plain) == 2 else None,
        } for n in variants}
    result = {"summary": summary, "device": device_info(), "measured": now_iso(),
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "dataset": {"clips": clips, "minutes": round(seconds / 60, 2)},
              "loss_comparison": comparison, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    steps = min(r["steps"] for r in runs.values())
    print(side_by_side(runs, max(1, steps // 25)), flush=True)
    print(json.dumps(summary, indent=1), flush=True)
    print(f"[bench] wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
