"""Inbox watcher: latency from a file's rename into the inbox until ingest claims it, and a burst of small files.

startup: one file already in the inbox when `run --exit-when-idle` starts; seconds from launch until ingest
    claims it, for each given rescan_seconds and start-up settle_seconds.
latency: the daemon runs (no --exit-when-idle, separation off); one short WAV at a time is written under a hidden
    name in the inbox and renamed to its real name; the latency runs from the rename until ingest claimed it (the
    "ingest done" line's time minus its duration_s) and until ingest finished. The next file is dropped once the
    previous one has left the pipeline. Run for each given inbox.rescan_seconds (30 is the default).
burst: N small WAVs (1-2 s of Piper speech, all different) renamed into the inbox at once while the daemon runs;
    separation off, Whisper beam 1 and DNSMOS off to make each file cheap. Reports the time to drain, the stage
    times, the most recordings held in spool/raw + spool/vocals at once (daemon.max_jobs_in_flight bounds that),
    and checks that every file was processed exactly once (tests/daemon_support.check_invariants).

Writes bench/results/watcher.json (atomically).

    .venv/bin/python bench/watcher.py [latency|burst|both|startup] [--drops 6] [--rescan 30,2] [--settle 0.2]
                                      [--files 1000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import support
from tests.daemon_support import check_invariants

WORK = support.OUT / "watcher"
CLIP_RATE = 22050
SPOOLS = ("raw", "vocals", "audio", "transcribed")
CHEAP: dict[str, dict[str, Any]] = {"transcription": {"beam_size": 1}, "quality": {"dnsmos": False}}


# ------------------------------------------------------------------------------------------------ inputs


def small_wavs(folder: Path, count: int, seed: int = 7) -> list[Path]:
    """`count` different WAVs of 1-2 s of speech (22.05 kHz mono 16-bit), made once and cached."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"drop{i:05d}.wav" for i in range(count)]
    if all(p.exists() for p in paths):
        return paths
    rng = np.random.default_rng(seed)
    bank = [s[::2] for s in support.sentence_bank()]  # 44.1 kHz -> 22.05 kHz (speech has nothing above 11 kHz)
    pad = np.zeros(int(0.15 * CLIP_RATE), dtype=np.float32)
    for path in paths:
        speech = bank[int(rng.integers(len(bank)))]
        length = min(len(speech), int(rng.uniform(1.0, 2.0) * CLIP_RATE))
        start = int(rng.integers(0, len(speech) - length + 1))
        noise = rng.standard_normal(length + 2 * len(pad)).astype(np.float32) * 1e-4  # makes every file unique
        clip = np.concatenate([pad, speech[start:start + length], pad]) + noise
        tmp = folder / f".{path.name}.part"
        sf.write(tmp, clip, CLIP_RATE, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    return paths


def drop(src: Path, inbox: Path, name: str) -> float:
    """Copy `src` under a hidden name in the inbox, then rename it to `name`; the time of the rename."""
    hidden = inbox / f".{name}.part"
    shutil.copyfile(src, hidden)
    with open(hidden, "rb") as fh:
        os.fsync(fh.fileno())
    renamed_at = time.time()
    os.rename(hidden, inbox / name)
    return renamed_at


# ------------------------------------------------------------------------------------------------ the daemon


def wait_until(predicate: Any, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def stages_ready(log: Path) -> bool:
    ready = {str(e.get("stage")) for e in support.log_events(log) if e.get("event") == "stage ready"}
    return {"ingest", "separate", "segment", "transcribe", "accept"} <= ready


def visible_files(folder: Path) -> int:
    try:
        return sum(1 for n in os.listdir(folder) if not n.startswith("."))
    except FileNotFoundError:
        return 0


def pipeline_empty(root: Path) -> bool:
    return visible_files(root / "inbox") == 0 and all(visible_files(root / "spool" / s) == 0 for s in SPOOLS)


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def fresh_root(work: Path) -> tuple[Path, Path]:
    shutil.rmtree(work, ignore_errors=True)
    (work / "state" / "inbox").mkdir(parents=True)
    return work / "state", work / "daemon.log"


# ------------------------------------------------------------------------------------------------ latency


def latency_run(rescan: float, settle: float, drops: int, inputs: list[Path]) -> dict[str, Any]:
    root, log = fresh_root(WORK / f"latency-rescan{rescan:g}")
    config = support.write_config(root.parent / "config.yaml", root, {
        "inbox": {"settle_seconds": settle, "rescan_seconds": rescan}, "separation": {"enabled": False}})
    proc = support.start_daemon(config, log, exit_when_idle=False)
    rows: list[dict[str, float]] = []
    try:
        if not wait_until(lambda: stages_ready(log), 300):
            raise RuntimeError(f"the daemon did not get ready; see {log}")
        for i, src in enumerate(inputs[:drops]):
            time.sleep(float(np.random.default_rng(i).uniform(0.0, 1.0)))  # not in step with the rescan timer
            name = f"lat{i:03d}.wav"
            renamed_at = drop(src, root / "inbox", name)
            done = wait_for_ingest(log, name, timeout=max(120.0, 4 * rescan))
            claimed = support.event_time(done) - float(done["duration_s"])
            rows.append({"claimed_s": round(claimed - renamed_at, 3),
                         "ingested_s": round(support.event_time(done) - renamed_at, 3)})
            wait_until(lambda: pipeline_empty(root), 300, 0.2)
    finally:
        rc = stop(proc)
    claimed_all = [r["claimed_s"] for r in rows]
    return {"rescan_seconds": rescan, "settle_seconds": settle, "drops": rows, "rc": rc,
            "claimed_median_s": round(statistics.median(claimed_all), 2), "claimed_min_s": min(claimed_all),
            "claimed_max_s": max(claimed_all), "load": support.load_average()}


def wait_for_ingest(log: Path, name: str, timeout: float) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        found[:] = [e for e in support.log_events(log) if e.get("event") == "ingest done" and e.get("source") == name]
        return bool(found)

    if not wait_until(seen, timeout, 0.05):
        raise RuntimeError(f"{name} not ingested within {timeout:.0f} s; see {log}")
    return found[0]


def startup_run(rescan: float, settle: float, src: Path) -> dict[str, Any]:
    """A file already in the inbox when `--exit-when-idle` starts: seconds from launch until ingest claims it."""
    root, log = fresh_root(WORK / f"startup-rescan{rescan:g}")
    shutil.copyfile(src, root / "inbox" / "waiting.wav")
    config = support.write_config(root.parent / "config.yaml", root, {
        "inbox": {"settle_seconds": settle, "rescan_seconds": rescan}, "separation": {"enabled": False}})
    launched = time.time()
    run = support.run_measured(support.daemon_command(config, exit_when_idle=True), log, timeout=600)
    events = support.log_events(log)
    done = [e for e in events if e.get("event") == "ingest done"]
    ready = [support.event_time(e) for e in events if e.get("event") == "stage ready" and e.get("stage") == "ingest"]
    claimed = support.event_time(done[0]) - float(done[0]["duration_s"]) if done else float("nan")
    return {"rescan_seconds": rescan, "settle_seconds": settle, "rc": run.rc, "wall_s": run.wall_s,
            "ingest_ready_s": round(ready[0] - launched, 2) if ready else None,
            "claimed_after_launch_s": round(claimed - launched, 2), "load": support.load_average()}


# ------------------------------------------------------------------------------------------------ burst


def burst_run(count: int, settle: float, rescan: float) -> dict[str, Any]:
    inputs = small_wavs(WORK / "inputs", count)
    root, log = fresh_root(WORK / "burst")
    staging = root.parent / "staging"
    staging.mkdir()
    for src in inputs:
        shutil.copyfile(src, staging / src.name)
    config = support.write_config(root.parent / "config.yaml", root, {
        "inbox": {"settle_seconds": settle, "rescan_seconds": rescan}, "separation": {"enabled": False}, **CHEAP})
    sampler = support.TreeSampler(interval=1.0)
    timeline: list[dict[str, float]] = []
    load_before = support.load_average()
    with support.measured() as cost:
        proc = support.start_daemon(config, log, exit_when_idle=False)
        sampler.watch(proc.pid)
        try:
            if not wait_until(lambda: stages_ready(log), 300):
                raise RuntimeError(f"the daemon did not get ready; see {log}")
            dropped_from = time.time()
            for src in inputs:
                os.rename(staging / src.name, root / "inbox" / src.name)
            dropped_at = time.time()
            drained = follow(root, dropped_at, timeline, timeout=3 * 3600.0)
        finally:
            sampler.stop()
            rc = stop(proc)
    events = support.log_events(log)
    stages = support.stage_times(events)
    last_event = max(support.event_time(e) for e in events
                     if e.get("event") in ("accept done", "rejected") and "timestamp" in e)
    invariants = check_invariants(root, n_inputs=count)
    ingested = [str(e.get("source")) for e in events if e.get("event") == "ingest done"]
    return {
        "files": count, "settle_seconds": settle, "rescan_seconds": rescan, "config_extra": CHEAP, "rc": rc,
        "drop_s": round(dropped_at - dropped_from, 3), "drained": drained,
        "drain_s": round(last_event - dropped_at, 1), "files_per_s": round(count / (last_event - dropped_at), 2),
        "ingested": len(ingested), "ingested_distinct": len(set(ingested)),
        "max_raw_plus_vocals": max((t["raw"] + t["vocals"] for t in timeline), default=0),
        "max_in_inbox_after_drop": max((t["inbox"] for t in timeline), default=0),
        "invariants": invariants, "stages": {n: st.to_dict(dropped_at) for n, st in stages.items()},
        "cpu_s": round(cost["cpu_s"], 1), "memory": sampler.summary(), "load_before": load_before,
        "load_after": support.load_average(), "timeline_every_5s": timeline[::5],
    }


def follow(root: Path, since: float, timeline: list[dict[str, float]], timeout: float) -> bool:
    """Sample the spool counts every second until the pipeline has been empty for 3 s in a row."""
    empty_streak, deadline = 0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts: dict[str, float] = {"t": round(time.time() - since, 1), "inbox": visible_files(root / "inbox")}
        counts.update({s: visible_files(root / "spool" / s) // 2 for s in SPOOLS})  # payload + sidecar
        counts["failed"] = sum(1 for n in os.listdir(root / "failed") if n.endswith(".error.json"))
        timeline.append(counts)
        empty_streak = empty_streak + 1 if pipeline_empty(root) else 0
        if empty_streak >= 3:
            return True
        time.sleep(1.0)
    return False


# ------------------------------------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("what", nargs="?", default="both", choices=["latency", "burst", "both", "startup"])
    parser.add_argument("--drops", type=int, default=6)
    parser.add_argument("--rescan", default="30,2", help="inbox.rescan_seconds values for the latency runs")
    parser.add_argument("--settle", type=float, default=0.2, help="inbox.settle_seconds for the latency runs")
    parser.add_argument("--startup-settle", default="0.2,10", help="inbox.settle_seconds values for the start-up "
                        "runs (10 is the default)")
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--burst-settle", type=float, default=0.5)
    parser.add_argument("--burst-rescan", type=float, default=2.0)
    parser.add_argument("--output", type=Path, default=support.RESULTS / "watcher.json")
    args = parser.parse_args()
    result: dict[str, Any] = {"what": "inbox watcher latency and a burst of small files", "machine": support.machine()}
    if args.what in ("latency", "both"):
        inputs = small_wavs(WORK / "inputs", max(args.drops, 1))
        result["latency"] = [latency_run(float(r), args.settle, args.drops, inputs) for r in args.rescan.split(",")]
        for run in result["latency"]:
            print(f"latency rescan {run['rescan_seconds']:g} s, settle {run['settle_seconds']:g} s: claimed after "
                  f"median {run['claimed_median_s']} s (min {run['claimed_min_s']}, max {run['claimed_max_s']}) "
                  f"over {len(run['drops'])} drops", flush=True)
    if args.what in ("startup", "both"):
        src = small_wavs(WORK / "inputs", 1)[0]
        result["startup"] = [startup_run(float(r), float(settle), src) for settle in args.startup_settle.split(",")
                             for r in args.rescan.split(",")]
        for run in result["startup"]:
            print(f"startup rescan {run['rescan_seconds']:g} s, settle {run['settle_seconds']:g} s: ingest ready after "
                  f"{run['ingest_ready_s']} s, file "
                  f"claimed after {run['claimed_after_launch_s']} s, run took {run['wall_s']} s", flush=True)
    if args.what in ("burst", "both"):
        burst = burst_run(args.files, args.burst_settle, args.burst_rescan)
        result["burst"] = burst
        inv = burst["invariants"]
        print(f"burst of {burst['files']}: drained in {burst['drain_s']} s ({burst['files_per_s']} files/s), "
              f"ingested {burst['ingested']} ({burst['ingested_distinct']} distinct), jobs {inv['jobs']}, "
              f"dataset rows {inv['rows']}, failed {inv['failed']}, problems {inv['problems'][:5]}, "
              f"max raw+vocals {burst['max_raw_plus_vocals']}, CPU {burst['cpu_s']} s", flush=True)
    if args.output.exists():  # keep the other part of an earlier run
        import json

        earlier = json.loads(args.output.read_text())
        result = {**{k: v for k, v in earlier.items() if k in ("latency", "burst", "startup")}, **result}
    support.write_json_atomically(args.output, result)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
