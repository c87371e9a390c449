"""Peak memory of the whole daemon against input length, separation on.

For each length, one mp3 of Piper speech with pauses over music (bench/support.py) goes into a fresh state root and
`ttsft-daemon run --exit-when-idle` processes it. /proc is polled for the daemon and all its descendants (the
Spleeter worker, ffmpeg, ffprobe): the peak of their summed PSS (sampled every 0.25 s; PSS, not RSS, because a child
between fork and exec shares the daemon's pages and its RSS would count them twice), and each process's own peak
(VmHWM). The series uses one config for every length; `--full-minutes` adds runs with every key at its default
(Whisper beam 5, DNSMOS on) to show what those add. Writes bench/results/memory.json (atomically).

    .venv/bin/python bench/memory.py [--minutes 1,10,30,60] [--full-minutes 1,10] [--cheap|--no-cheap]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import support

WORK = support.OUT / "memory"
INBOX = {"settle_seconds": 0.5, "rescan_seconds": 2.0}
# Whisper beam 1 and no DNSMOS: per-clip work (its memory does not depend on the recording's length) gets cheap
# enough for an hour of audio to fit in the time a shared 2-core machine gives.
CHEAP: dict[str, dict[str, Any]] = {"transcription": {"beam_size": 1}, "quality": {"dnsmos": False}}


def run_one(minutes: float, cheap: bool, timeout: float) -> dict[str, Any]:
    src = support.talk_file(WORK / "inputs", minutes * 60, seed=200 + int(minutes))
    work = WORK / f"{minutes:g}min-{'cheap' if cheap else 'defaults'}"
    shutil.rmtree(work, ignore_errors=True)
    root, log = work / "state", work / "daemon.log"
    (root / "inbox").mkdir(parents=True)
    (root / "inbox" / src.name).hardlink_to(src)
    sections: dict[str, dict[str, Any]] = {"inbox": INBOX, "separation": {"enabled": True}, **(CHEAP if cheap else {})}
    config = support.write_config(work / "config.yaml", root, sections)
    sampler = support.TreeSampler(interval=0.25)
    load_before = support.load_average()
    started = time.time()
    run = support.run_measured(support.daemon_command(config, exit_when_idle=True), log, timeout, sampler=sampler)
    events = support.log_events(log)
    stages = support.stage_times(events)
    return {
        "minutes": minutes, "config": "cheap transcription" if cheap else "defaults", "config_extra": sections,
        "audio_s": round(support.media_seconds(src), 1), "rc": run.rc, "wall_s": run.wall_s, "cpu_s": run.cpu_s,
        "load_before": load_before, "load_after": support.load_average(),
        "clips": sum(1 for e in events if e.get("event") == "transcribe done"),
        "stages": {n: st.to_dict(started) for n, st in stages.items()}, **sampler.summary(),
    }


def print_row(r: dict[str, Any]) -> None:
    peaks = r["largest_peak_by_command_mb"]
    print(f"{r['minutes']:>5g} min {r['config']:<20} rc {r['rc']:>3} wall {r['wall_s']:>7.0f} s  "
          f"clips {r['clips']:>5}  "
          f"tree peak PSS {r['tree_peak_pss_mb']:>7.0f} MB  daemon {peaks.get('ttsft-daemon', 0):>6.0f}  "
          f"spleeter worker {peaks.get('spleeter_worker.py', 0):>6.0f}  load {r['load_before']}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", default="1,10,30,60")
    parser.add_argument("--full-minutes", default="1,10", help="lengths also run with every key at its default")
    parser.add_argument("--cheap", action=argparse.BooleanOptionalAction, default=True,
                        help="the series with Whisper beam 1 and DNSMOS off")
    parser.add_argument("--timeout", type=float, default=2400.0, help="per run (a run past it is killed)")
    parser.add_argument("--output", type=Path, default=support.RESULTS / "memory.json")
    args = parser.parse_args()
    plan = [(float(m), args.cheap) for m in args.minutes.split(",") if m.strip()]
    plan += [(float(m), False) for m in args.full_minutes.split(",") if m.strip()]
    for minutes, _ in plan:  # inputs first, so that making them never overlaps a measurement
        support.talk_file(WORK / "inputs", minutes * 60, seed=200 + int(minutes))
    runs = []
    for minutes, cheap in plan:
        runs.append(run_one(minutes, cheap, args.timeout))
        print_row(runs[-1])
    series = [r for r in runs if r["config"] == runs[0]["config"] and r["rc"] == 0]
    summary: dict[str, Any] = {}
    if len(series) >= 2:
        short, long = min(series, key=lambda r: r["minutes"]), max(series, key=lambda r: r["minutes"])
        summary = {"longest_minutes": long["minutes"], "shortest_minutes": short["minutes"],
                   "tree_peak_ratio_longest_over_shortest": round(long["tree_peak_pss_mb"] /
                                                                  short["tree_peak_pss_mb"], 3)}
        print(f"tree peak {long['minutes']:g} min / {short['minutes']:g} min = "
              f"{summary['tree_peak_ratio_longest_over_shortest']}")
    support.write_json_atomically(args.output, {
        "what": "peak memory (summed PSS) of the daemon's whole process tree against input length (separation on)",
        "machine": support.machine(), "runs": runs, "summary": summary,
    })
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
