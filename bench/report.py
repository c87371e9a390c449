"""Markdown tables from bench/results/*.json, for bench/RESULTS.md (the numbers are never typed by hand).

    .venv/bin/python bench/report.py [--results bench/results]            # print every table
    .venv/bin/python bench/report.py --update bench/RESULTS.md           # regenerate its report blocks
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import support

RESULTS = Path(__file__).resolve().parent / "results"
STAGES = ("ingest", "separate", "segment", "speaker", "transcribe", "accept")


def table(header: list[str], rows: Iterable[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def load(results: Path, name: str) -> dict[str, Any] | None:
    path = results / name
    return json.loads(path.read_text()) if path.exists() else None


def tree_peak(memory: dict[str, Any]) -> str:
    """The tree's summed PSS; older results only have the summed RSS, which counts a forking daemon twice."""
    if "tree_peak_pss_mb" in memory:
        return str(memory["tree_peak_pss_mb"])
    return f"{memory['tree_peak_rss_mb']} (RSS sum, over-counts)"


def process_peaks(memory: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.0f}" for k, v in memory["largest_peak_by_command_mb"].items() if v >= 100)


def machine_line(m: dict[str, Any]) -> str:
    return (f"{m['cpus']} CPUs ({m['cpu_model']}), {m['mem_total_gib']} GiB RAM, load average (1/5/15 min) "
            f"{m['load_average_1_5_15']} at the end, commit {m['commit']}, {m['time']}")


def pipeline(p: dict[str, Any]) -> str:
    audio_min = p["summary"]["audio_min"]
    out = [f"Machine: {machine_line(p['machine'])}", "",
           f"Inputs: {len(p['inputs'])} mp3 files, {audio_min} min of audio in all "
           f"({', '.join(str(i['seconds']) + ' s' for i in p['inputs'])}).", ""]
    rows = []
    for i, rep in enumerate(p["repeats"]):
        for kind in rep["order"]:
            r = rep[kind]
            rows.append([i, kind, r["rc"], r["wall_s"], round(audio_min / (r["wall_s"] / 60), 2), r["cpu_s"],
                         round(r["cpu_s"] / audio_min, 1), process_peaks(r["memory"]),
                         f"{r['load_before'][0]} -> {r['load_after'][0]}"])
    out.append(table(["repeat", "contender", "rc", "wall s", "audio min / wall min", "CPU s", "CPU s / audio min",
                      "largest process peaks (VmHWM) MB", "load (1 min) before -> after"], rows))
    s = p["summary"]
    out += ["", f"Speedup (naive wall / daemon wall) per repeat: {s['speedup_per_repeat']}, median "
                f"**{s['speedup_median']}**; CPU ratio (naive CPU / daemon CPU) per repeat: "
                f"{s['cpu_ratio_naive_over_daemon_per_repeat']}."]
    if s.get("daemon_dataset_wer_per_repeat"):
        out.append(f"Daemon dataset: word error rate of the accepted clips against the known text per repeat "
                   f"{s['daemon_dataset_wer_per_repeat']}, accepted speech s {s['daemon_accepted_speech_s_per_repeat']}"
                   f"; the naive script's transcripts: WER {s.get('naive_wer_per_repeat')}.")
    counts = [r["daemon"]["dataset"] for r in p["repeats"] if "second_pass" in r["daemon"]["dataset"]]
    if counts:
        c = counts[0]
        out.append(f"How the transcribe stage handled the accepted clips (repeat 0): Whisper in a packed pass "
                   f"{c['packed']}, in the second pass of a pass's doubtful clips {c['second_pass']}, alone "
                   f"{c['alone']}; DNSMOS from the pass's screen {c['dnsmos_screened']}, scored alone "
                   f"{c['dnsmos_alone']}.")
    if s.get("speedup_daemon_cheap_per_repeat"):
        out.append(f"Speedup of the daemon with Whisper beam 1 and DNSMOS off: {s['speedup_daemon_cheap_per_repeat']}.")
    return "\n".join(out)


def pipeline_stages(p: dict[str, Any]) -> str:
    rows = []
    for i, rep in enumerate(p["repeats"]):
        for kind in rep["order"]:
            if kind == "naive":
                n = rep[kind]["steps_s"]
                rows.append([i, kind, "-", "-", f"{n['spleeter_s']} (CLI, TF load included)", "-",
                             f"{n['transcribe_s']} (+ {n['whisper_load_s']} load)", "-", rep[kind]["wall_s"]])
                continue
            d = rep[kind]
            st = d["stages"]
            cells = [f"{st[s]['busy_s']} ({st[s]['items']})" if s in st else "-" for s in STAGES]
            rows.append([i, kind, d["ready_s"].get("spleeter_worker", "-"), *cells, d["wall_s"]])
    return table(["repeat", "contender", "Spleeter worker ready at s", "ingest busy s (items)", "separate",
                  "segment", "speaker", "transcribe", "accept", "wall s"], rows)


def transcribe_cost(t: dict[str, Any]) -> str:
    def note(r: dict[str, Any]) -> str:
        if "alone" in r:
            return f"{r['alone']} clips transcribed alone"
        if "scored_alone" in r:
            return f"{r['scored_alone']} clips DNSMOS-scored alone"
        return ""

    rows = [[name, r["wall_s_per_audio_s"], r["cpu_s_per_audio_s"], note(r)] for name, r in t["steps"].items()]
    head = (f"{t['clips']} clips, {t['audio_s']} s of audio; load average before {t['load_before']}; "
            f"machine: {machine_line(t['machine'])}")
    out = head + "\n\n" + table(["step", "wall s / audio s", "CPU s / audio s", ""], rows)
    agree = t.get("packed_vs_per_clip")
    if agree:
        out += (f"\n\nPacked against per clip: accept/reject decisions agree on {agree['decisions_agree']} of "
                f"{agree['clips']} clips; word error rate between the two transcripts "
                f"{agree['wer_packed_vs_per_clip']}; "
                f"mean absolute DNSMOS OVRL difference {agree['dnsmos_ovrl_mean_abs_diff']}.")
    return out


def memory(m: dict[str, Any]) -> str:
    rows = []
    for r in m["runs"]:
        peaks = r["largest_peak_by_command_mb"]
        rows.append([r["minutes"], r["config"], r["rc"], r["wall_s"], r["clips"], tree_peak(r),
                     peaks.get("ttsft-daemon", "-"), peaks.get("spleeter_worker.py", "-"),
                     max((v for k, v in peaks.items() if k in ("ffmpeg", "ffprobe")), default="-"),
                     f"{r['load_before'][0]} -> {r['load_after'][0]}"])
    out = [f"Machine: {machine_line(m['machine'])}", "",
           table(["input min", "config", "rc", "wall s", "clips", "tree peak MB (summed PSS, sampled)",
                  "daemon VmHWM MB", "Spleeter worker VmHWM MB", "ffmpeg/ffprobe VmHWM MB", "load before -> after"],
                 rows)]
    if m.get("summary"):
        s = m["summary"]
        out += ["", f"Tree peak {s['longest_minutes']:g} min / {s['shortest_minutes']:g} min: "
                    f"**{s['tree_peak_ratio_longest_over_shortest']}**"]
    return "\n".join(out)


def watcher(w: dict[str, Any]) -> str:
    out = []
    for run in w.get("latency", []):
        out.append(f"- rescan_seconds {run['rescan_seconds']:g}, settle_seconds {run['settle_seconds']:g}: claimed "
                   f"after median **{run['claimed_median_s']} s** (min {run['claimed_min_s']}, max "
                   f"{run['claimed_max_s']}) over {len(run['drops'])} drops; ingest finished after "
                   f"{[d['ingested_s'] for d in run['drops']]} s; load {run['load']}")
    for run in w.get("startup", []):
        out.append(f"- start-up, rescan_seconds {run['rescan_seconds']:g}, settle_seconds {run['settle_seconds']:g}: "
                   f"ingest ready {run['ingest_ready_s']} s after launch, the waiting file claimed after "
                   f"**{run['claimed_after_launch_s']} s**; the `--exit-when-idle` run took {run['wall_s']} s; "
                   f"load {run['load']}")
    b = w.get("burst")
    if b:
        inv = b["invariants"]
        out += ["", f"Burst: {b['files']} files renamed into the inbox in {b['drop_s']} s (settle "
                    f"{b['settle_seconds']:g} s, rescan {b['rescan_seconds']:g} s, {b['config_extra']}): drained in "
                    f"**{b['drain_s']} s** ({b['files_per_s']} files/s); ingested {b['ingested']} "
                    f"({b['ingested_distinct']} distinct), jobs {inv['jobs']}, dataset rows {inv['rows']}, failed "
                    f"{inv['failed']}, invariant problems: {inv['problems'] or 'none'}; most recordings in "
                    f"spool/raw + spool/vocals at once: {b['max_raw_plus_vocals']}; daemon tree CPU {b['cpu_s']} s, "
                    f"peak {tree_peak(b['memory'])} MB, largest process peaks {process_peaks(b['memory'])} MB; "
                    f"load {b['load_before']} -> {b['load_after']}",
                "", table(["stage", "items", "busy s", "max item s", "first start s", "last done s"],
                          [[n, s["items"], s.get("busy_s"), s.get("max_item_s"), s.get("start_s"), s.get("end_s")]
                           for n, s in b["stages"].items()])]
    return "\n".join(out)


def whisper_real(w: dict[str, Any]) -> str:
    rows = [[name, f"{100 * x['wer']:.2f} %", x["cpu_s_median"], x["cpu_s_per_audio_s"], x["packed"],
             x["second_pass"], x["alone"]] for name, x in w["summary"].items()]
    rounds = len(next(iter(w["runs"].values())))
    return "\n".join([f"Machine: {machine_line(w['machine'])}", "",
                      f"{w['prompts']} prompts, {w['audio_s']} s of audio; CPU: median of {rounds} rounds.", "",
                      table(["setting", "WER vs known text", "CPU s", "CPU s / audio s", "first pass",
                             "second pass", "alone"], rows)])


def pipeline_profile(p: dict[str, Any]) -> str:
    total = float(p["threads_cpu_s"])
    rows = [[name, cpu, f"{100 * float(cpu) / total:.0f} %"] for name, cpu in p["cpu_s_by_thread"].items()
            if float(cpu) >= 1.0]
    ends = ", ".join(f"{name} {st['end_s']} s" for name, st in p["stages"].items())
    return "\n".join([f"Machine: {machine_line(p['machine'])}", "",
                      f"{p['set']} set, {round(float(p['audio_s']) / 60, 1)} min of audio: wall {p['wall_s']} s, "
                      f"the threads' CPU {total} s. Stages ended at: {ends}.", "",
                      table(["process:thread", "CPU s", "share"], rows)])


# Blocks of RESULTS.md that `--update` regenerates: <!-- report:NAME --> ... <!-- /report -->
BLOCKS: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "pipeline": ("pipeline.json", pipeline), "pipeline_stages": ("pipeline.json", pipeline_stages),
    "pipeline_nomusic": ("pipeline_nomusic.json", pipeline),
    "pipeline_nomusic_stages": ("pipeline_nomusic.json", pipeline_stages),
    "transcribe_cost": ("transcribe_cost.json", transcribe_cost), "memory": ("memory.json", memory),
    "memory_defaults": ("memory_defaults.json", memory),
    "watcher": ("watcher.json", watcher), "whisper_real": ("whisper_real.json", whisper_real),
    "whisper_beams": ("whisper_beams.json", whisper_real),
    "pipeline_profile": ("pipeline_profile.json", pipeline_profile),
}


def update(markdown: Path, results: Path) -> None:
    text = markdown.read_text()
    for name, (source, render) in BLOCKS.items():
        data = load(results, source)
        start, end = f"<!-- report:{name} -->", "<!-- /report -->"
        if data is None or start not in text:
            continue
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{render(data)}\n{end}{tail}"
    support.write_text_atomically(markdown, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--update", type=Path, help="regenerate the report blocks of this markdown file in place")
    args = parser.parse_args()
    if args.update:
        update(args.update, args.results)
        return 0
    sections: list[tuple[str, str, list[Callable[[dict[str, Any]], str]]]] = [
        ("pipeline.json", "Pipeline throughput", [pipeline, pipeline_stages]),
                ("transcribe_cost.json", "Transcribe stage cost", [transcribe_cost]),
                ("memory.json", "Memory", [memory]), ("watcher.json", "Watcher", [watcher])]
    for name, title, renderers in sections:
        data = load(args.results, name)
        if data is None:
            continue
        print(f"## {title}\n")
        for render in renderers:
            print(render(data) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
