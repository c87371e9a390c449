#!/usr/bin/env python3
"""Speaker selection through the daemon on an interview of real human speech over music.

The interview (tests/realspeech.py): Allison Smith's recorded prompts answer at length (the target), three other
people ask short questions (June in French, Carlo in Italian, the bundled Piper voice in English), over the demo's
music bed at --music-db. It runs through `ttsft-daemon run --exit-when-idle` twice, with speaker selection on and
off (Spleeter, Whisper, the quality gate: all real), and reports:

- purity: the share of accepted seconds that belong to other speakers (from each accepted clip's position in the
  recording against the known turns);
- target recall: accepted target seconds with selection on / with selection off (the gate's own losses are the
  same in both, so this counts only what selection lost);
- cost: the speaker stage's busy seconds per audio minute, against the transcribe stage's in the same run (from the
  daemon's "<stage> done" lines).

    .venv/bin/python bench/speaker_selection.py [--turns 16] [--music-db -8]
Writes bench/results/speaker_selection.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import support

from tests import realspeech as rs
from ttsft_daemon.demo.audio import write_media
from ttsft_daemon.demo.sample_data import sample_sentences


def accepted_seconds(root: Path, voice: str, conv: rs.Conversation) -> dict[str, float]:
    clips = [json.loads(p.read_text()) for p in sorted((root / "dataset" / voice / "clips").glob("*.json"))]
    return conv.seconds_by_speaker([(float(c["start"]), float(c["end"])) for c in clips])


def run_once(work: Path, name: str, media: Path, speaker_on: bool) -> dict[str, Any]:
    root = work / name
    shutil.rmtree(root, ignore_errors=True)
    (root / "inbox" / "ann").mkdir(parents=True)
    shutil.copy(media, root / "inbox" / "ann" / media.name)
    cfg = support.write_config(work / f"{name}.yaml", root, {
        "inbox": {"settle_seconds": 0.2, "rescan_seconds": 0.5}, "training": {"enabled": False},
        "speaker": {"enabled": speaker_on}, "logging": {"format": "json", "journal": "off"}})
    log = work / f"{name}.log"
    log.unlink(missing_ok=True)
    run = support.run_measured(support.daemon_command(cfg, True), log, timeout=3600)
    if run.rc != 0:
        raise SystemExit(f"daemon failed ({run.rc}); see {log}")
    stages = support.stage_times(support.log_events(log))
    return {"root": root, "wall_s": run.wall_s, "cpu_s": run.cpu_s,
            "stages": {k: v.to_dict(0.0) for k, v in stages.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=16)
    ap.add_argument("--music-db", type=float, default=-8.0)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    if not rs.available():
        raise SystemExit("models/speech is missing: run scripts/install.sh")
    work = support.OUT / "speaker_selection"
    work.mkdir(parents=True, exist_ok=True)
    joe = rs.piper_utterances(sample_sentences(200)[100:130])
    conv = rs.make_interview(list(rs.utterances("allison")), [list(rs.utterances("june")),
                             list(rs.utterances("carlo")), joe], args.music_db, n_turns=args.turns,
                             answer_utterances=(3, 5), question_utterances=(1, 1), seed=args.seed, sr=22050)
    media = work / "interview.mp3"
    write_media(conv.recording, media, "mp3")  # type: ignore[arg-type]
    audio_min = support.media_seconds(media) / 60
    started = time.time()
    on = run_once(work, "on", media, True)
    off = run_once(work, "off", media, False)
    kept_on = accepted_seconds(on["root"], "ann", conv)
    kept_off = accepted_seconds(off["root"], "ann", conv)
    total_on = sum(kept_on.values())
    other_share = (total_on - kept_on.get("allison", 0.0)) / total_on if total_on else 0.0
    other_share_off = (sum(kept_off.values()) - kept_off.get("allison", 0.0)) / max(1e-9, sum(kept_off.values()))
    recall = kept_on.get("allison", 0.0) / max(1e-9, kept_off.get("allison", 0.0))
    speaker_s = on["stages"].get("speaker", {}).get("busy_s", 0.0)
    transcribe_s = on["stages"].get("transcribe", {}).get("busy_s", 0.0)
    reasons: dict[str, int] = {}
    for p in (on["root"] / "failed").glob("*.error.json"):
        r = json.loads(p.read_text()).get("reason", "?")
        reasons[r] = reasons.get(r, 0) + 1
    summary = {
        "audio_minutes": round(audio_min, 2),
        "spoken_seconds": {s: round(conv.seconds_of(s), 1) for s in sorted({t.speaker for t in conv.turns})},
        "accepted_seconds_on": {k: round(v, 1) for k, v in kept_on.items()},
        "accepted_seconds_off": {k: round(v, 1) for k, v in kept_off.items()},
        "other_speakers_share": round(other_share, 4), "other_speakers_share_without_selection":
            round(other_share_off, 4), "target_recall": round(recall, 4),
        "speaker_stage_busy_s": speaker_s, "transcribe_stage_busy_s": transcribe_s,
        "speaker_cpu_s_per_audio_min": round(speaker_s / audio_min, 2) if audio_min else None,
        "speaker_over_transcribe": round(speaker_s / transcribe_s, 3) if transcribe_s else None,
        "rejects_on": reasons,
    }
    result = {"machine": support.machine(), "args": vars(args), "summary": summary,
              "runs": {"on": {k: v for k, v in on.items() if k != "root"},
                       "off": {k: v for k, v in off.items() if k != "root"}},
              "load_average": support.load_average(), "wall_s": round(time.time() - started, 1)}
    support.write_json_atomically(support.RESULTS / "speaker_selection.json", result)
    print(f"{'':32}{'selection on':>14}{'selection off':>15}")
    for s in summary["spoken_seconds"]:
        print(f"{s + ' accepted s':32}{kept_on.get(s, 0.0):14.1f}{kept_off.get(s, 0.0):15.1f}")
    print(f"other speakers' share            {other_share:14.3f}{other_share_off:15.3f}")
    print(f"target recall (on / off)         {recall:14.3f}")
    print(f"speaker stage busy s / audio min {summary['speaker_cpu_s_per_audio_min']}  "
          f"(transcribe stage: {round(transcribe_s / audio_min, 2) if audio_min else '-'};"
          f" ratio {summary['speaker_over_transcribe']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
