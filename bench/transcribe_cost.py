"""Where the transcribe stage's time goes: Whisper and DNSMOS once per clip (the daemon before packing) against
the packed passes the daemon makes now (transcription.pack_seconds, quality.dnsmos_group_margin), with CTranslate2's
default of 4 threads and with the 1 thread per worker the daemon now picks on small hosts; and the same audio
transcribed long-form, as the naive script does with a whole vocal stem. Also checks that packing keeps the
decisions: accept/reject agreement and word error rate between the per-clip and the packed transcripts.

Runs one thread of work, one clip or pass after the other, on the clips of a dataset (default: the first pipeline
bench run). Reports wall and CPU seconds (this process, all its threads) per second of audio. Writes
bench/results/transcribe_cost.json (atomically).

    .venv/bin/python bench/transcribe_cost.py [--clips DIR] [--limit 60]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import support
from ttsft_daemon.config import QualityConfig, TranscriptionConfig
from ttsft_daemon.text.packing import GAP_SECONDS, plan_windows
from ttsft_daemon.text.quality import DNSMOS_RATE, QualityGate, QualityReport
from ttsft_daemon.text.textnorm import normalize_for_wer
from ttsft_daemon.text.transcription import Transcriber, Transcript, to_whisper_rate

DEFAULT_CLIPS = support.OUT / "pipeline" / "repeat0" / "daemon" / "state" / "dataset" / "default" / "wavs"
Clip = tuple[np.ndarray, int]


def timed(step: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall s, CPU s of this process, result)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = step()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def per_clip(clips: list[Clip], transcriber: Transcriber) -> tuple[float, float, list[Transcript]]:
    wall, cpu, out = timed(lambda: [transcriber.transcribe_array(s, sr) for s, sr in clips])
    return wall, cpu, out


def packed(clips: list[Clip], transcriber: Transcriber, min_p: float) -> tuple[float, float, list[Transcript], int]:
    """As the transcribe stage does: passes of up to 28 s, a clip with a doubtful share transcribed alone."""
    def run() -> tuple[list[Transcript], int]:
        audio = [to_whisper_rate(s, sr) for s, sr in clips]
        results: list[Transcript] = []
        alone = 0
        for window in plan_windows([len(a) / 16000 for a in audio], 28.0, GAP_SECONDS):
            for i, got in zip(window, transcriber.transcribe_packed([audio[i] for i in window], min_p), strict=True):
                if isinstance(got, Transcript):
                    results.append(got)
                else:
                    alone += 1
                    results.append(transcriber.transcribe_array(*clips[i]))
        return results, alone

    wall, cpu, (out, alone) = timed(run)
    return wall, cpu, out, alone


def long_form(clips: list[Clip], transcriber: Transcriber) -> tuple[float, float]:
    """All clips joined with the packing gap, one call, no word timestamps: the naive script's shape."""
    gap = np.zeros(int(GAP_SECONDS * 16000), dtype=np.float32)
    joined = np.concatenate([p for s, sr in clips for p in (to_whisper_rate(s, sr), gap)])

    def run() -> str:
        segments, _ = transcriber.model.transcribe(joined, language="en", beam_size=5, condition_on_previous_text=False)
        return " ".join(seg.text for seg in segments)

    wall, cpu, _ = timed(run)
    return wall, cpu


def gate_per_clip(clips: list[Clip], texts: list[Transcript], gate: QualityGate
                  ) -> tuple[float, float, list[QualityReport]]:
    wall, cpu, out = timed(lambda: [gate.assess(t, s, sr) for t, (s, sr) in zip(texts, clips, strict=True)])
    return wall, cpu, out


def gate_screened(clips: list[Clip], texts: list[Transcript], gate: QualityGate
                  ) -> tuple[float, float, list[QualityReport]]:
    """DNSMOS screen per pass, then the gate; clips screened under min_dnsmos + margin are scored alone."""
    def run() -> list[QualityReport]:
        audio = [to_whisper_rate(s, sr) for s, sr in clips]
        reports: list[QualityReport] = []
        for window in plan_windows([len(a) / 16000 for a in audio], 28.0, GAP_SECONDS):
            screens = gate.score_groups([audio[i] for i in window])
            reports += [gate.assess(texts[i], *clips[i], group_dnsmos=g) for i, g in zip(window, screens, strict=True)]
        return reports

    wall, cpu, out = timed(run)
    return wall, cpu, out


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clips", type=Path, default=DEFAULT_CLIPS)
    parser.add_argument("--limit", type=int, default=60)
    parser.add_argument("--output", type=Path, default=support.RESULTS / "transcribe_cost.json")
    args = parser.parse_args()
    paths = sorted(args.clips.glob("*.wav"))[: args.limit]
    if not paths:
        print(f"no clips in {args.clips}: run bench/pipeline.py first or give --clips", file=sys.stderr)
        return 2
    clips = [(data.astype(np.float32), int(sr)) for data, sr in (sf.read(str(p), dtype="float32") for p in paths)]
    audio_s = sum(len(s) / sr for s, sr in clips)
    load_before = support.load_average()
    models = support.REPO / "models"
    four = Transcriber(TranscriptionConfig(device="cpu", cpu_threads=4), models)
    one = Transcriber(TranscriptionConfig(device="cpu", cpu_threads=1), models)
    gate = QualityGate(QualityConfig())
    min_p = gate.min_word_probability
    rows: dict[str, dict[str, Any]] = {}

    def row(name: str, wall: float, cpu: float, **extra: Any) -> None:
        rows[name] = {"wall_s_per_audio_s": round(wall / audio_s, 3), "cpu_s_per_audio_s": round(cpu / audio_s, 3),
                      **extra}

    w, c, old_texts = per_clip(clips, four)
    row("Whisper per clip, 4 threads (the daemon before packing)", w, c)
    w, c, _ = per_clip(clips, one)
    row("Whisper per clip, 1 thread", w, c)
    w, c, _, alone = packed(clips, four, min_p)
    row("Whisper packed, 4 threads", w, c, alone=alone)
    w, c, new_texts, alone = packed(clips, one, min_p)
    row("Whisper packed, 1 thread (the daemon now)", w, c, alone=alone)
    w, c = long_form(clips, four)
    row("Whisper long-form, 4 threads, no word timestamps (the naive script)", w, c)
    w, c, old_reports = gate_per_clip(clips, old_texts, gate)
    row("quality gate, DNSMOS per clip (the daemon before packing)", w, c)
    w, c, new_reports = gate_screened(clips, new_texts, gate)
    rescored = sum(1 for r in new_reports if "dnsmos_group" in r.details
                   and r.details.get("dnsmos_ovrl") != round(r.details["dnsmos_group"]["ovrl"], 3))
    row("quality gate, DNSMOS screen per pass (the daemon now)", w, c, scored_alone=rescored)
    agree = sum(a.accept == b.accept for a, b in zip(old_reports, new_reports, strict=True))
    wer = jiwer.wer([normalize_for_wer(t.text) or "-" for t in old_texts],
                    [normalize_for_wer(t.text) or "-" for t in new_texts])
    dnsmos_diff = [abs(a.details["dnsmos_ovrl"] - b.details["dnsmos_ovrl"]) for a, b in zip(old_reports, new_reports,
                   strict=True) if "dnsmos_ovrl" in a.details and "dnsmos_ovrl" in b.details]
    agreement = {"decisions_agree": agree, "clips": len(clips), "wer_packed_vs_per_clip": round(wer, 4),
                 "dnsmos_ovrl_mean_abs_diff": round(statistics.mean(dnsmos_diff), 3) if dnsmos_diff else None}
    median_clip = statistics.median(len(s) / r for s, r in clips)
    print(f"{len(clips)} clips, {audio_s:.0f} s of audio (median clip {median_clip:.1f} s), DNSMOS at "
          f"{DNSMOS_RATE} Hz; load {load_before} -> {support.load_average()}")
    print(f"{'step':<72} {'wall s / audio s':>17} {'CPU s / audio s':>16}")
    for name, r in rows.items():
        print(f"{name:<72} {r['wall_s_per_audio_s']:>17.3f} {r['cpu_s_per_audio_s']:>16.3f}")
    print(f"packed vs per clip: {agreement}")
    support.write_json_atomically(args.output, {
        "what": "cost of the transcribe stage's parts: per clip vs packed passes, CTranslate2 threads, long-form",
        "machine": support.machine(), "load_before": load_before, "clips": len(clips),
        "audio_s": round(audio_s, 1), "source": str(args.clips), "steps": rows, "packed_vs_per_clip": agreement,
    })
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
