#!/usr/bin/env python3
"""How much of a speaker's speech reaches the dataset as the music under it gets louder (issue 14's curve).

One "podcast" of real human speech (Allison Smith's prompts, tests/realspeech.py) is
mixed with the demo's music bed at each --levels dB below the speech (and once without music), and each mix runs
through `ttsft-daemon run --exit-when-idle` (Spleeter, Whisper and the quality gate: all real, default settings).
Per level it reports:

- coverage: the spoken seconds that accepted clips cover / all spoken seconds;
- accepted-clip WER against the clean source: the prompts ship without transcripts, so the reference text of
  each utterance is what the daemon's Whisper model hears in it alone, without music; a clip is compared with
  the references of the utterances it holds most of (numbers compared as words, `normalize_for_wer`). 0 means
  music and separation cost nothing, whatever Whisper's own error on the clean speech is;
- the mean DNSMOS of accepted clips and the reject reasons.

    .venv/bin/python bench/music_coverage.py [--utterances 60] [--levels 20 12 6 0]
Writes bench/results/music_coverage.json and bench/results/music_coverage.svg.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import support

from tests import realspeech as rs
from ttsft_daemon.demo.audio import Recording, write_media
from ttsft_daemon.report.review import rejected_clips
from ttsft_daemon.text.textnorm import normalize_for_wer

PAUSE_S = (0.5, 1.0)


def podcast(n: int, seed: int) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """`n` utterances with known text joined by pauses: (speech, [(start, end, text)])."""
    rng = np.random.default_rng(seed)
    utts = list(rs.utterances("allison"))[:: max(1, len(rs.utterances("allison")) // n)][:n]
    parts: list[np.ndarray] = [np.zeros(int(0.5 * rs.SR), dtype=np.float32)]
    spans: list[tuple[float, float, str]] = []
    t = 0.5
    for u in utts:
        spans.append((t, t + u.seconds, ""))
        parts.append(u.audio)
        t += u.seconds
        gap = float(rng.uniform(*PAUSE_S))
        parts.append(np.zeros(int(gap * rs.SR), dtype=np.float32))
        t += len(parts[-1]) / rs.SR
    return np.concatenate(parts), spans


def run_level(work: Path, name: str, mix: np.ndarray, spans: list[tuple[float, float, str]]) -> dict[str, Any]:
    root = work / name
    shutil.rmtree(root, ignore_errors=True)
    (root / "inbox").mkdir(parents=True)
    media = work / f"{name}.mp3"
    write_media(Recording(mix, None, mix, rs.SR, spans, []), media, "mp3")
    shutil.copy(media, root / "inbox" / media.name)
    cfg = support.write_config(work / f"{name}.yaml", root, {
        "inbox": {"settle_seconds": 0.2, "rescan_seconds": 0.5}, "training": {"enabled": False},
        "logging": {"format": "json", "journal": "off"}})
    log = work / f"{name}.log"
    log.unlink(missing_ok=True)
    run = support.run_measured(support.daemon_command(cfg, True), log, timeout=3600)
    if run.rc != 0:
        raise SystemExit(f"daemon failed ({run.rc}); see {log}")
    clips = [json.loads(p.read_text()) for p in sorted((root / "dataset" / "default" / "clips").glob("*.json"))]
    spoken = sum(e - s for s, e, _ in spans)
    covered, refs, hyps, dnsmos = 0.0, [], [], []
    for c in clips:
        start, end = float(c["start"]), float(c["end"])
        covered += sum(max(0.0, min(end, e) - max(start, s)) for s, e, _ in spans)
        held = [txt for s, e, txt in spans if min(end, e) - max(start, s) > 0.5 * (e - s)]
        if held:
            refs.append(normalize_for_wer(" ".join(held)))
            hyps.append(normalize_for_wer(str(c.get("text", ""))))
        score = ((c.get("quality_report") or {}).get("details") or {}).get("dnsmos_ovrl")
        if isinstance(score, (int, float)):
            dnsmos.append(float(score))
    reasons: dict[str, int] = {}
    for clip in rejected_clips(root, "default"):  # which signal rejected each clip (several may)
        for r in clip.reasons:
            key = r.split(" ")[0].split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
    return {"coverage": round(covered / spoken, 4), "accepted_clips": len(clips), "accepted_seconds":
            round(covered, 1), "spoken_seconds": round(spoken, 1), "wer": _wer(refs, hyps),
            "dnsmos_accepted_mean": round(float(np.mean(dnsmos)), 3) if dnsmos else None,
            "rejects": dict(sorted(reasons.items())), "wall_s": run.wall_s}


def _wer(refs: list[str], hyps: list[str]) -> float | None:
    import jiwer

    pairs = [(r, h) for r, h in zip(refs, hyps, strict=True) if r.strip()]
    return round(float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs])), 4) if pairs else None


def clean_references(spans: list[tuple[float, float, str]], speech: np.ndarray) -> list[tuple[float, float, str]]:
    """Each utterance's reference text: Whisper (the daemon's model and settings) on it alone, without music."""
    from ttsft_daemon.config import config_from_dict
    from ttsft_daemon.text.transcription import Transcriber

    cfg = config_from_dict({"paths": {"root": str(support.OUT / "music_coverage" / "clean")}})
    whisper = Transcriber(cfg.transcription, cfg.paths.models_dir)
    return [(s, e, whisper.transcribe_array(speech[int(s * rs.SR): int(e * rs.SR)], rs.SR).text)
            for s, e, _ in spans]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utterances", type=int, default=60)
    ap.add_argument("--levels", type=float, nargs="+", default=[20.0, 12.0, 6.0, 0.0])
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    if not rs.available():
        raise SystemExit("models/speech is missing: run scripts/install.sh")
    work = support.OUT / "music_coverage"
    work.mkdir(parents=True, exist_ok=True)
    speech, spans = podcast(args.utterances, args.seed)
    started = time.time()
    spans = clean_references(spans, speech)
    levels: dict[str, dict[str, Any]] = {"no music": run_level(work, "clean", speech, spans)}
    for db in args.levels:
        levels[f"{db:g} dB"] = run_level(work, f"music{db:g}", rs.over_music(speech, db, seed=args.seed), spans)
    result = {"machine": support.machine(), "args": vars(args), "reference": "Whisper on each clean utterance alone",
              "levels": levels,
              "load_average": support.load_average(), "wall_s": round(time.time() - started, 1)}
    support.write_json_atomically(support.RESULTS / "music_coverage.json", result)
    from ttsft_daemon.report.plots import lines

    music = [(round(float(k.split()[0])), v) for k, v in levels.items() if k != "no music"]
    svg = lines("music-coverage", "Speech kept as the music gets louder", "speech over music (dB)", "share",
                {"coverage": [(db, v["coverage"]) for db, v in music],
                 "accepted-clip WER": [(db, v["wer"] or 0.0) for db, v in music]})
    if svg:
        (support.RESULTS / "music_coverage.svg").write_text(svg)
    print(f"{'level':10}{'coverage':>10}{'WER':>8}{'DNSMOS':>8}{'clips':>7}  rejects")
    for k, v in levels.items():
        print(f"{k:10}{v['coverage']:10.3f}{(v['wer'] if v['wer'] is not None else float('nan')):8.3f}"
              f"{(v['dnsmos_accepted_mean'] or float('nan')):8.2f}{v['accepted_clips']:7d}  {v['rejects']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
