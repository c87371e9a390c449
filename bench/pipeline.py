"""Data-pipeline throughput: the daemon against the naive script people write today, in one run, side by side.

Inputs: mp3 recordings of Piper speech with pauses over music (bench/support.py), six of 2-3.5 minutes by default.

- daemon: `ttsft-daemon run --config C --exit-when-idle` on a fresh state root with every input in the inbox
  (ingest -> Spleeter 2-stem -> segmentation + cleaning -> Whisper tiny.en per clip + quality gate -> dataset),
  separation on, training off, every other key at its default except inbox.settle_seconds / rescan_seconds.
- naive: one file after the other, the Spleeter command line
  (`MODEL_PATH=models/spleeter .venv-spleeter/bin/spleeter separate -p spleeter:2stems -o OUT file`), then
  faster-whisper tiny.en (int8, defaults) loaded and run on the whole vocal stem.

Each repeat runs both (alternating which goes first, to spread the machine's noise); the ratio is taken within a
repeat. Throughput = minutes of input audio per minute of wall time. CPU seconds (user + system of the whole process
tree) are reported too: they are less disturbed by other load than wall time. Per-stage times come from the daemon's
"<stage> done" log lines (duration_s). Writes bench/results/pipeline.json (atomically).

    .venv/bin/python bench/pipeline.py [--seconds 120,135,150,165,180,210] [--repeats 3] [--cheap-repeats 1]
    .venv/bin/python bench/pipeline.py naive OUT FILE...     (the naive script itself; run by the above)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import support

SPLEETER = support.REPO / ".venv-spleeter" / "bin" / "spleeter"
WHISPER = support.REPO / "models" / "whisper" / "tiny.en"
DEFAULT_SECONDS = "120,135,150,165,180,210"
INBOX = {"settle_seconds": 0.5, "rescan_seconds": 2.0}
# The optional third contender: the daemon with per-clip work made cheap (Whisper beam 1, no DNSMOS check).
CHEAP: dict[str, dict[str, Any]] = {"transcription": {"beam_size": 1}, "quality": {"dnsmos": False}}


# ------------------------------------------------------------------------------------------------ naive script


def naive(out: Path, files: list[Path]) -> int:
    """What people script today: Spleeter's CLI per file, then Whisper on the whole vocal stem."""
    from faster_whisper import WhisperModel

    env = {**os.environ, "MODEL_PATH": str(support.REPO / "models" / "spleeter")}
    for f in files:
        began = time.monotonic()
        subprocess.run([str(SPLEETER), "separate", "-p", "spleeter:2stems", "-o", str(out), str(f)], env=env,
                       check=True, stdin=subprocess.DEVNULL)
        separated = time.monotonic()
        model = WhisperModel(str(WHISPER), device="cpu", compute_type="int8")
        loaded = time.monotonic()
        segments, _info = model.transcribe(str(out / f.stem / "vocals.wav"), language="en")
        text = " ".join(s.text.strip() for s in segments)
        done = time.monotonic()
        (out / f.stem / "transcript.txt").write_text(text + "\n")
        print(json.dumps({"naive": f.name, "spleeter_s": round(separated - began, 2),
                          "whisper_load_s": round(loaded - separated, 2),
                          "transcribe_s": round(done - loaded, 2), "chars": len(text)}), flush=True)
    return 0


def run_naive(files: list[Path], work: Path, timeout: float) -> dict[str, Any]:
    out, log = work / "naive-out", work / "naive.log"
    shutil.rmtree(out, ignore_errors=True)
    log.unlink(missing_ok=True)
    out.mkdir(parents=True)
    sampler = support.TreeSampler(interval=0.5)
    load_before = support.load_average()
    cmd = [sys.executable, __file__, "naive", str(out), *map(str, files)]
    run = support.run_measured(cmd, log, timeout, sampler=sampler)
    per_file = [e for e in support.log_events(log) if "naive" in e]
    totals = {k: round(sum(float(e[k]) for e in per_file), 1) for k in ("spleeter_s", "whisper_load_s",
                                                                         "transcribe_s")}
    return {"rc": run.rc, "wall_s": run.wall_s, "cpu_s": run.cpu_s, "load_before": load_before,
            "load_after": support.load_average(), "steps_s": totals, "files": per_file,
            "memory": sampler.summary(), "wer": naive_wer(files, out)}


def naive_wer(files: list[Path], out: Path) -> float | None:
    """Word error rate of the naive transcripts against the known text (all files together)."""
    import jiwer

    from ttsft_daemon.text.textnorm import normalize_for_wer

    refs, hyps = [], []
    for f in files:
        truth, hyp = f.with_suffix(".truth.json"), out / f.stem / "transcript.txt"
        if not truth.exists() or not hyp.exists():
            return None
        refs.append(normalize_for_wer(" ".join(s["text"] for s in json.loads(truth.read_text())["sentences"])))
        hyps.append(normalize_for_wer(hyp.read_text()))
    return round(float(jiwer.wer(refs, hyps)), 4)


# ------------------------------------------------------------------------------------------------ the daemon


def run_daemon(files: list[Path], work: Path, timeout: float, extra: dict[str, dict[str, Any]] | None = None
               ) -> dict[str, Any]:
    root, log = work / "state", work / "daemon.log"
    shutil.rmtree(root, ignore_errors=True)
    log.unlink(missing_ok=True)
    (root / "inbox").mkdir(parents=True)
    for f in files:
        os.link(f, root / "inbox" / f.name)
    config = support.write_config(work / "config.yaml", root,
                                  {"inbox": INBOX, "separation": {"enabled": True}, **(extra or {})})
    sampler = support.TreeSampler(interval=0.5)
    load_before = support.load_average()
    started = time.time()
    run = support.run_measured(support.daemon_command(config, exit_when_idle=True), log, timeout, sampler=sampler)
    events = support.log_events(log)
    stages = support.stage_times(events)
    return {"rc": run.rc, "wall_s": run.wall_s, "cpu_s": run.cpu_s, "load_before": load_before,
            "load_after": support.load_average(),
            "stages": {name: st.to_dict(started) for name, st in stages.items()},
            "ready_s": _ready_times(events, started),
            "dataset": {**_dataset_summary(root, events), "wer": dataset_wer(root, files),
                        **transcribe_counts(root)},
            "memory": sampler.summary()}


def dataset_wer(root: Path, files: list[Path]) -> float | None:
    """Word error rate of the dataset's accepted clips against the known text: each clip's text against the
    sentences whose middle falls inside the clip's span of its recording (all clips together)."""
    import jiwer

    from ttsft_daemon.text.textnorm import normalize_for_wer

    truths = {f.name: json.loads(f.with_suffix(".truth.json").read_text())["sentences"] for f in files
              if f.with_suffix(".truth.json").exists()}
    refs, hyps = [], []
    for meta_path in sorted(root.glob("dataset/*/clips/*.json")):
        meta = json.loads(meta_path.read_text())
        sentences = truths.get(str(meta.get("source_name")))
        if sentences is None or meta.get("decision") != "accept":
            continue
        lo, hi = float(meta["start"]), float(meta["end"])
        ref = " ".join(x["text"] for x in sentences if lo <= (float(x["start"]) + float(x["end"])) / 2 <= hi)
        refs.append(normalize_for_wer(ref) or "-")
        hyps.append(normalize_for_wer(str(meta.get("raw_text", meta.get("text", "")))))
    return round(float(jiwer.wer(refs, hyps)), 4) if refs else None


def transcribe_counts(root: Path) -> dict[str, int]:
    """How the transcribe stage handled the clips: Whisper in a packed pass, in the second pass of a pass's
    doubtful clips, or alone; DNSMOS from the pass's screen or scored alone."""
    counts = {"packed": 0, "second_pass": 0, "alone": 0, "dnsmos_screened": 0, "dnsmos_alone": 0}
    for meta_path in root.glob("dataset/*/clips/*.json"):
        details = json.loads(meta_path.read_text()).get("quality_report", {}).get("details", {})
        how = str(details.get("transcribed", "alone"))
        key = "second_pass" if how.startswith("packed, second pass") else how.split(":")[0]
        counts[key] = counts.get(key, 0) + 1
        if "dnsmos_seconds" in details:
            counts["dnsmos_alone"] += 1
        elif "dnsmos_group" in details:
            counts["dnsmos_screened"] += 1
    return counts


def _ready_times(events: list[dict[str, Any]], started: float) -> dict[str, float]:
    """Seconds from launch until each stage (and the Spleeter worker) was ready."""
    out: dict[str, float] = {}
    for e in events:
        if e.get("event") == "stage ready":
            out.setdefault(str(e.get("stage")), round(support.event_time(e) - started, 1))
        elif e.get("event") == "spleeter worker ready":
            out.setdefault("spleeter_worker", round(support.event_time(e) - started, 1))
    return out


def _dataset_summary(root: Path, events: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [line.split("|") for csv in root.glob("dataset/*/metadata.csv") for line in csv.read_text().splitlines()]
    decisions = [e.get("decision") for e in events if e.get("event") == "transcribe done"]
    return {"clips": len(decisions), "accepted": len(rows), "rejected": decisions.count("reject"),
            "accepted_speech_s": round(sum(float(r[2]) for r in rows), 1),
            "failed_inputs": len([e for e in events if e.get("event") == "rejected" and e.get("stage") in
                                  ("ingest", "separate", "segment")])}


# ------------------------------------------------------------------------------------------------ report


def throughput(audio_s: float, wall_s: float) -> float:
    return round(audio_s / wall_s, 2)


def summarise(audio_s: float, repeats: list[dict[str, Any]]) -> dict[str, Any]:
    def med(kind: str, key: str) -> float:
        return round(statistics.median(float(r[kind][key]) for r in repeats), 1)

    ratios = [r["naive"]["wall_s"] / r["daemon"]["wall_s"] for r in repeats]
    cheap = [r["naive"]["wall_s"] / r["daemon_cheap"]["wall_s"] for r in repeats if "daemon_cheap" in r]
    cpu_ratios = [r["naive"]["cpu_s"] / r["daemon"]["cpu_s"] for r in repeats]
    return {
        "audio_min": round(audio_s / 60, 2),
        "daemon_wall_s_median": med("daemon", "wall_s"), "naive_wall_s_median": med("naive", "wall_s"),
        "daemon_audio_min_per_wall_min": throughput(audio_s, med("daemon", "wall_s")),
        "naive_audio_min_per_wall_min": throughput(audio_s, med("naive", "wall_s")),
        "speedup_per_repeat": [round(x, 2) for x in ratios],
        "speedup_median": round(statistics.median(ratios), 2),
        "cpu_ratio_naive_over_daemon_per_repeat": [round(x, 2) for x in cpu_ratios],
        "daemon_cpu_s_per_audio_min_median": round(med("daemon", "cpu_s") / (audio_s / 60), 1),
        "naive_cpu_s_per_audio_min_median": round(med("naive", "cpu_s") / (audio_s / 60), 1),
        "speedup_daemon_cheap_per_repeat": [round(x, 2) for x in cheap],
        "daemon_dataset_wer_per_repeat": [r["daemon"]["dataset"].get("wer") for r in repeats],
        "daemon_accepted_speech_s_per_repeat": [r["daemon"]["dataset"]["accepted_speech_s"] for r in repeats],
        "naive_wer_per_repeat": [r["naive"].get("wer") for r in repeats],
    }


def print_repeat(i: int, audio_s: float, rep: dict[str, Any]) -> None:
    for kind in rep["order"]:
        r = rep[kind]
        print(f"  repeat {i} {kind:>12}: rc {r['rc']}, wall {r['wall_s']:.0f} s "
              f"({throughput(audio_s, r['wall_s'])} audio min/min), CPU {r['cpu_s']:.0f} s, "
              f"largest process peaks {r['memory']['largest_peak_by_command_mb']} MB, load {r['load_before']}",
              flush=True)
    print(f"  repeat {i} speedup (naive wall / daemon wall): {rep['naive']['wall_s'] / rep['daemon']['wall_s']:.2f}",
          flush=True)


def bench(args: argparse.Namespace) -> int:
    for name in args.sets.split(","):
        music = name == "music"
        repeats = args.repeats if music else args.nomusic_repeats
        output = Path(args.output) if music else Path(args.output).with_name("pipeline_nomusic.json")
        bench_set(args, name, music, repeats, args.cheap_repeats if music else 0, output)
    return 0


def bench_set(args: argparse.Namespace, name: str, music: bool, n_repeats: int, cheap_repeats: int,
              output: Path) -> None:
    seconds = [float(s) for s in args.seconds.split(",") if s.strip()]
    work = Path(args.workdir).resolve() / ("" if music else "nomusic")
    files = [support.talk_file(Path(args.workdir).resolve() / "inputs", s, seed=100 + i, music=music)
             for i, s in enumerate(seconds)]
    audio_s = sum(support.media_seconds(f) for f in files)
    print(f"set {name}: {len(files)} inputs, {audio_s / 60:.1f} min of audio; machine {support.machine()}",
          flush=True)
    repeats: list[dict[str, Any]] = []
    for i in range(n_repeats):
        order = ["naive", "daemon"] + (["daemon_cheap"] if i < cheap_repeats else [])
        if i % 2:
            order.reverse()
        rep: dict[str, Any] = {"order": order}
        for kind in order:
            where = work / f"repeat{i}" / kind
            if kind == "naive":
                rep[kind] = run_naive(files, where, args.timeout)
            else:
                rep[kind] = run_daemon(files, where, args.timeout, CHEAP if kind == "daemon_cheap" else None)
        repeats.append(rep)
        print_repeat(i, audio_s, rep)
    summary = summarise(audio_s, repeats)
    print(json.dumps(summary, indent=2))
    support.write_json_atomically(output, {
        "what": "data pipeline throughput: ttsft-daemon --exit-when-idle vs the naive Spleeter CLI + Whisper script",
        "set": name, "music": "the support.make_talk music bed at -12 dB" if music else "none",
        "machine": support.machine(), "inputs": [{"name": f.name, "seconds": round(support.media_seconds(f), 1)}
                                                 for f in files],
        "daemon_config": {"inbox": INBOX, "separation": {"enabled": True}, "training": {"enabled": False},
                          "other keys": "defaults", "daemon_cheap adds": CHEAP},
        "summary": summary, "repeats": repeats,
    })
    print(f"wrote {output}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "naive":
        return naive(Path(sys.argv[2]), [Path(f) for f in sys.argv[3:]])
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", default=DEFAULT_SECONDS, help="input lengths in seconds, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="paired repeats on the music-bed inputs")
    parser.add_argument("--sets", default="music,nomusic",
                        help="input sets, comma-separated: music (the talks over a music bed; pipeline.json) and "
                             "nomusic (the same talks without it; pipeline_nomusic.json)")
    parser.add_argument("--nomusic-repeats", type=int, default=1, help="paired repeats on the music-free inputs")
    parser.add_argument("--cheap-repeats", type=int, default=1,
                        help="in this many repeats, also run the daemon with Whisper beam 1 and DNSMOS off")
    parser.add_argument("--timeout", type=float, default=3600.0, help="per run")
    parser.add_argument("--workdir", default=str(support.OUT / "pipeline"))
    parser.add_argument("--output", default=str(support.RESULTS / "pipeline.json"))
    return bench(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
