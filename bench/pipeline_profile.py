"""Where the daemon's CPU goes: one run of the pipeline bench's daemon on its inputs, with the CPU time of every
thread of the process tree read from /proc twice a second and summed by thread name.

The daemon names each stage worker thread after its stage (`transcribe-0` ...); a library thread takes the name of
the thread that starts it, so a stage's row holds the library threads its worker started (CTranslate2's), while
those started by the main thread count as `python:python`. The Spleeter worker is its own process. Also prints
when each stage ended, from the "<stage> done" log lines. Writes bench/results/pipeline_profile.json (atomically).

    .venv/bin/python bench/pipeline_profile.py [--set music|nomusic] [--config-set SECTION.KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import pipeline, support

TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu(root_pid: int) -> dict[tuple[int, int], tuple[str, float]]:
    """{(pid, tid): ("<process>:<thread name>", CPU seconds)} of every thread of the tree under root_pid."""
    found: dict[tuple[int, int], tuple[str, float]] = {}
    for pid in support.process_tree(root_pid):
        try:
            process = support._command_name(pid)
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            found[(pid, int(tid))] = (f"{process}:{name}", (int(fields[11]) + int(fields[12])) / TICKS)
    return found


def profile(files: list[Path], work: Path, extra: dict[str, dict[str, Any]], timeout: float) -> dict[str, Any]:
    shutil.rmtree(work, ignore_errors=True)
    root, log = work / "state", work / "daemon.log"
    (root / "inbox").mkdir(parents=True)
    for f in files:
        os.link(f, root / "inbox" / f.name)
    sections: dict[str, dict[str, Any]] = {"inbox": dict(pipeline.INBOX), "separation": {"enabled": True}}
    for section, values in extra.items():
        sections.setdefault(section, {}).update(values)
    config = support.write_config(work / "config.yaml", root, sections)
    started = time.time()
    seen: dict[tuple[int, int], tuple[str, float]] = {}
    with log.open("wb") as out:
        proc = subprocess.Popen(support.daemon_command(config, exit_when_idle=True), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        while proc.poll() is None:
            seen.update(thread_cpu(proc.pid))  # a thread's last reading stays when it ends
            if time.time() - started > timeout:
                proc.kill()
            time.sleep(0.5)
    wall = time.time() - started
    by_name: dict[str, float] = collections.defaultdict(float)
    for name, cpu in seen.values():
        by_name[name] += cpu
    events = support.log_events(log)
    return {"rc": proc.returncode, "wall_s": round(wall, 1), "threads_cpu_s": round(sum(by_name.values()), 1),
            "cpu_s_by_thread": {k: round(v, 1) for k, v in sorted(by_name.items(), key=lambda kv: -kv[1]) if v >= 0.1},
            "stages": {k: st.to_dict(started) for k, st in support.stage_times(events).items()},
            "dataset": {**pipeline._dataset_summary(root, events), "wer": pipeline.dataset_wer(root, files),
                        **pipeline.transcribe_counts(root)},
            "config": sections}


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--set", dest="which", choices=("music", "nomusic"), default="music")
    ap.add_argument("--config-set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--seconds", default=pipeline.DEFAULT_SECONDS)
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--workdir", default=str(support.OUT / "pipeline_profile"))
    ap.add_argument("--output", default=str(support.RESULTS / "pipeline_profile.json"))
    args = ap.parse_args()
    extra: dict[str, dict[str, Any]] = {}
    for item in args.config_set:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        extra.setdefault(section, {})[name] = yaml.safe_load(value)
    inputs = Path(support.OUT / "pipeline" / "inputs").resolve()
    files = [support.talk_file(inputs, float(s), seed=100 + i, music=args.which == "music")
             for i, s in enumerate(args.seconds.split(","))]
    result = profile(files, Path(args.workdir).resolve() / args.which, extra, args.timeout)
    audio_s = sum(support.media_seconds(f) for f in files)
    print(f"{args.which}: {audio_s / 60:.1f} min of audio, wall {result['wall_s']} s, rc {result['rc']}, "
          f"threads' CPU {result['threads_cpu_s']} s")
    for name, cpu in result["cpu_s_by_thread"].items():
        print(f"  {name:40s} {cpu:7.1f} s")
    for name, st in result["stages"].items():
        print(f"  {name:12s} busy {st['busy_s']:7.1f} s over {st['items']} items, ends at {st['end_s']} s")
    support.write_json_atomically(Path(args.output), {
        "what": "one daemon run of the pipeline bench, CPU seconds per thread name (stage workers and the library "
                "threads they start)", "set": args.which, "audio_s": round(audio_s, 1),
        "machine": support.machine(), **result})
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
