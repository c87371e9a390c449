"""The Ray engine against the local one on the same input: two Ray nodes on this host vs the daemon alone.

Inputs: mp3 recordings of Piper speech with pauses over music (bench/support.py), two of 60 s by default.
Both runs use the same config (separation on, speaker selection on, packing on, training off); the Ray run adds
`engine.kind: ray` with a cluster of two nodes (`ray.cluster_utils.Cluster`: a head and a second raylet, 2 logical
CPUs each, on this host) started before the run, so the run pays for its actors' start-up (each loads its model)
but not for the cluster's.

On a 2-core machine both nodes share the same two cores: this measures the engine's overhead, not a speed-up.
Reported: audio minutes per wall minute, CPU seconds of the daemon's process tree (the actors run outside it, in
the cluster's processes), the actors' start-up, per heavy stage the mean time an item spends in the stage
("<stage> done" duration_s), and the overhead per call: the daemon's wait for an actor's answer less the actor's
own work time (shipping input and output through the object store, scheduling, the round trip), from the engine's
"ray pool stats" log line.
Writes bench/results/ray_engine.json (atomically).

    .venv/bin/python bench/ray_engine.py [--seconds 60,60] [--repeats 1]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import support

HEAVY = ("separate", "speaker", "transcribe")
INBOX = {"settle_seconds": 0.5, "rescan_seconds": 0.5}


def run_once(work: Path, inputs: list[Path], engine: dict[str, Any]) -> dict[str, Any]:
    root = work / "state"
    shutil.rmtree(work, ignore_errors=True)
    (root / "inbox").mkdir(parents=True)
    cfg = support.write_config(work / "c.yaml", root, {"inbox": INBOX, "separation": {"enabled": True},
                                                       "engine": engine})
    for f in inputs:
        shutil.copy(f, root / "inbox" / f.name)
    log = work / "daemon.log"
    run = support.run_measured(support.daemon_command(cfg, exit_when_idle=True), log, timeout=3600)
    events = support.log_events(log)
    if run.rc != 0:
        raise SystemExit(f"the daemon failed (rc {run.rc}): {log.read_text()[-3000:]}")
    audio_s = sum(support.media_seconds(f) for f in inputs)
    per_stage: dict[str, Any] = {}
    for stage in HEAVY:
        durations = [float(e["duration_s"]) for e in events if e.get("event") == f"{stage} done"]
        per_stage[stage] = {"items": len(durations), "mean_item_s": round(statistics.fmean(durations), 3)
                            if durations else None}
    started = [support.event_time(e) for e in events if e.get("event") == "engine started"]
    ready = [support.event_time(e) for e in events if e.get("event") == "ray actor ready"]
    rows = sum(1 for p in root.glob("dataset/*/metadata.csv") for _ in p.read_text().splitlines())
    calls = {str(e["stage"]): {k: e[k] for k in ("calls", "call_s", "work_s", "overhead_s")}
             for e in events if e.get("event") == "ray pool stats"}
    return {
        "wall_s": run.wall_s, "daemon_cpu_s": run.cpu_s,
        "audio_min_per_wall_min": round(audio_s / run.wall_s, 3), "dataset_rows": rows, "stages": per_stage,
        "actors_ready_s": [round(t - started[0], 1) for t in sorted(ready)] if started and ready else [],
        "ray_calls": calls,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", default="60,60", help="lengths of the input recordings")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    from ray.cluster_utils import Cluster

    lengths = [float(s) for s in args.seconds.split(",")]
    inputs = [support.talk_file(support.OUT / "inputs", s, seed=900 + i) for i, s in enumerate(lengths)]
    audio_s = sum(support.media_seconds(f) for f in inputs)
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 2, "include_dashboard": False})
    runs: list[dict[str, Any]] = []
    try:
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        pool = {"cpus": 0.5}
        ray_engine = {"kind": "ray", "ray": {"address": cluster.address, "separate": pool, "speaker": pool,
                                             "transcribe": pool}}
        with tempfile.TemporaryDirectory(prefix="ray-engine-bench-") as tmp:
            for r in range(args.repeats):
                order = [("local", {"kind": "local"}), ("ray", ray_engine)]
                for name, engine in order if r % 2 == 0 else order[::-1]:
                    time.sleep(2.0)
                    result = run_once(Path(tmp) / name, inputs, engine)
                    runs.append({"engine": name, "repeat": r, **result})
                    print(name, result, flush=True)
    finally:
        cluster.shutdown()

    def mean(engine: str, key: str) -> float:
        return round(statistics.fmean(float(x[key]) for x in runs if x["engine"] == engine), 3)

    overhead = {}  # per call: the daemon's wait for the answer less the actor's own work
    for stage in HEAVY:
        seen = [x["ray_calls"][stage]["overhead_s"] for x in runs if x["engine"] == "ray" and stage in x["ray_calls"]]
        if seen:
            overhead[stage] = round(statistics.fmean(seen), 4)
    summary = {
        "audio_s": round(audio_s, 1),
        "local_audio_min_per_wall_min": mean("local", "audio_min_per_wall_min"),
        "ray_audio_min_per_wall_min": mean("ray", "audio_min_per_wall_min"),
        "local_wall_s": mean("local", "wall_s"), "ray_wall_s": mean("ray", "wall_s"),
        "ray_overhead_per_call_s": overhead,
        "ray_calls": next((x["ray_calls"] for x in runs if x["engine"] == "ray"), {}),
    }
    print(summary)
    support.write_json_atomically(support.RESULTS / "ray_engine.json", {
        "machine": support.machine(), "inputs_s": lengths, "nodes": 2, "node_cpus": 2, "actor_cpus": 0.5,
        "summary": summary, "runs": runs,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
