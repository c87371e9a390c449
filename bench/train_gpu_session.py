#!/usr/bin/env python3
"""One call on the GPU host (issue 15): the CUDA tests of the fast path, the step profile and the comparison
with plain piper.train, each step's output under --out, a short table last.

On the GPU host, in the repository root, with .gpu-carry carried (bench/pack_train_gpu.sh makes it):

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu-carry/wheels/*.whl \\
      && cp -r .gpu-carry/site/piper /tmp/site/ && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 \\
      && python3 bench/train_gpu_session.py --steps tests,profile,bench --out $OUT

Steps: `tests` (tests/test_training_fast.py's CUDA tests), `profile` (bench/train_gpu_profile.py over
--variants), `bench` (bench/train_gpu_vs_piper.py over --runs, --epochs). Each step gets a time limit
(--limits, seconds) so a hung one leaves time, and output, for the next.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CUDA_TESTS = "cuda or graphed or bf16 or triton"


def run(name: str, command: list[str], log: Path, limit: float) -> int:
    started = time.monotonic()
    print(f"[session] {name}: {' '.join(command)} (limit {limit:.0f} s)", flush=True)
    with open(log, "wb") as out:
        try:
            code = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=limit,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False).returncode
        except subprocess.TimeoutExpired:
            code = 124
    tail = log.read_text(errors="replace").splitlines()[-12:]
    print(f"[session] {name}: exit {code} after {time.monotonic() - started:.0f} s; last lines:", flush=True)
    print("\n".join("    " + line[:300] for line in tail), flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", default="tests,profile,bench")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--variants", default="eager,graphs,graphs-bf16")
    p.add_argument("--profile-steps", type=int, default=15)
    p.add_argument("--runs", default="project,plain-a,plain-b")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--limits", default="tests=120,profile=240,bench=560")
    args = p.parse_args(argv)
    limits = {k: float(v) for k, v in (item.split("=") for item in args.limits.split(","))}
    args.out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm",
                    "--format=csv"], check=False)
    with open(args.out / "nvidia_smi.txt", "wb") as fh:  # the utilisation sampling the bench's GPU busy reads
        subprocess.run(["nvidia-smi", "-q", "-d", "UTILIZATION,CLOCK,PERFORMANCE"], stdout=fh, check=False)
    py = sys.executable
    codes: dict[str, int] = {}
    for step in [s for s in args.steps.split(",") if s]:
        if step == "tests":
            codes[step] = run(step, [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_training_fast.py",
                                     "-k", CUDA_TESTS], args.out / "tests.log", limits.get(step, 120))
        elif step == "profile":
            codes[step] = run(step, [py, "bench/train_gpu_profile.py", "--variants", args.variants,
                                     "--steps", str(args.profile_steps), "--max-seconds", "12",
                                     "--out", str(args.out / "train_gpu_profile.json")],
                              args.out / "profile.log", limits.get(step, 240))
        elif step == "bench":
            codes[step] = run(step, [py, "bench/train_gpu_vs_piper.py", "--dataset", ".gpu-carry/dataset",
                                     "--epochs", str(args.epochs), "--runs", args.runs, "--plain-b-seed", "4321",
                                     "--workdir", "/tmp/tgv", "--out", str(args.out / "train_gpu_vs_piper.json")],
                              args.out / "bench.log", limits.get(step, 560))
            train_log = Path("/tmp/tgv/project/train.log")
            if train_log.exists():  # the project's trainer output (graph captures, fallbacks)
                lines = train_log.read_text(errors="replace").splitlines()
                (args.out / "project_train.log").write_text("\n".join([*lines[:80], "...", *lines[-40:]]) + "\n")
        else:
            raise SystemExit(f"unknown step {step!r}")
    profile = args.out / "train_gpu_profile.json"
    if profile.exists():
        data = json.loads(profile.read_text())
        print("variant | ms/step | clips/s | host launches | kernels | kernel ms | busy | conversions | syncs")
        for name, v in data.get("variants", {}).items():
            if "error" in v:
                print(f"{name} | error: {v['error'][:200]}")
                continue
            print(f"{name} | {v.get('ms_per_step')} | {v.get('clips_per_s')} | {v.get('host_launches_per_step')} | "
                  f"{v.get('cuda_events_per_step')} | {v.get('kernel_ms_per_step')} | {v.get('gpu_busy')} | "
                  f"{v.get('layout_conversions_per_step')} | {v.get('host_syncs_per_step')} | "
                  f"losses {v.get('last_losses')} | failures {v.get('graph_failures')}")
    bench = args.out / "train_gpu_vs_piper.json"
    if bench.exists():
        print(json.dumps(json.loads(bench.read_text()).get("summary"), indent=1))
    print(f"[session] exit codes {codes}", flush=True)
    return 0 if all(c == 0 for c in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
