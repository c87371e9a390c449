"""Where the transcribe stage's time goes, per clip: Whisper (as the daemon calls it, and variants), DNSMOS, the
phoneme count, the whole quality gate; and the same audio transcribed long-form (all clips joined, as the naive
script does with a whole vocal stem), to show what one 30-second Whisper window per short clip costs.

Runs one thread, one clip after the other, on the clips of a dataset (default: the first pipeline bench run).
Reports wall and CPU seconds (this process, all its threads) per second of audio. Writes
bench/results/transcribe_cost.json (atomically).

    .venv/bin/python bench/transcribe_cost.py [--clips DIR] [--limit 40]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import support
from ttsft_daemon.config import QualityConfig, TranscriptionConfig
from ttsft_daemon.quality import DNSMOS_RATE, QualityGate
from ttsft_daemon.transcription import Transcriber, to_whisper_rate

DEFAULT_CLIPS = support.OUT / "pipeline" / "repeat0" / "daemon" / "state" / "dataset" / "default" / "wavs"
GAP_SECONDS = 0.5


def timed(step: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall s, CPU s of this process, result)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = step()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def whisper_run(model: Any, audio: np.ndarray, beam: int, words: bool) -> Callable[[], str]:
    def run() -> str:
        segments, _ = model.transcribe(audio, language="en", beam_size=beam, word_timestamps=words,
                                       no_speech_threshold=None, condition_on_previous_text=False)
        return " ".join(s.text for s in segments)

    return run


def call(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    return lambda: fn(*args)


def add(steps: dict[str, list[tuple[float, float]]], name: str, step: Callable[[], Any]) -> Any:
    wall, cpu, result = timed(step)
    steps.setdefault(name, []).append((wall, cpu))
    return result


def per_clip_costs(clips: list[tuple[np.ndarray, int]], transcriber: Transcriber, gate: QualityGate
                   ) -> dict[str, list[tuple[float, float]]]:
    """Each part of the transcribe stage on each clip, as the daemon runs it (and two Whisper variants)."""
    model = transcriber.model
    steps: dict[str, list[tuple[float, float]]] = {}
    for samples, sr in clips:
        audio16 = to_whisper_rate(samples, sr)
        transcript = add(steps, "whisper as the daemon (beam 5, word timestamps)",
                         call(transcriber.transcribe_array, audio16, 16000))
        add(steps, "whisper beam 5, no word timestamps", whisper_run(model, audio16, 5, False))
        add(steps, "whisper beam 1, word timestamps", whisper_run(model, audio16, 1, True))
        if gate.dnsmos is not None and gate.dnsmos.usable:
            add(steps, "DNSMOS", call(gate.dnsmos.score, audio16))
        add(steps, "phoneme count", call(gate.phonemes.count, transcript.text))
        add(steps, "quality gate, whole (DNSMOS included)", call(gate.assess, transcript, samples, sr))
    return steps


def packed_windows(clips: list[np.ndarray], seconds: float) -> list[np.ndarray]:
    """Clips (16 kHz) joined with short gaps into windows of at most `seconds` (a clip longer than that alone)."""
    gap = np.zeros(int(GAP_SECONDS * 16000), dtype=np.float32)
    windows: list[list[np.ndarray]] = [[]]
    for clip in clips:
        used = sum(len(p) for p in windows[-1])
        if windows[-1] and used + len(clip) > seconds * 16000:
            windows.append([])
        windows[-1] += [clip, gap]
    return [np.concatenate(w) for w in windows if w]


def joined_costs(clips: list[tuple[np.ndarray, int]], transcriber: Transcriber, gate: QualityGate
                 ) -> dict[str, list[tuple[float, float]]]:
    """The same audio, not one call per clip: long-form (naive), and the proposed fixes' shapes."""
    audio = [to_whisper_rate(s, sr) for s, sr in clips]
    joined = packed_windows(audio, float("inf"))[0]
    steps: dict[str, list[tuple[float, float]]] = {}
    add(steps, "long-form beam 5, no word timestamps (naive)", whisper_run(transcriber.model, joined, 5, False))
    add(steps, "long-form beam 5, word timestamps", whisper_run(transcriber.model, joined, 5, True))
    for window in packed_windows(audio, 28.0):
        add(steps, "clips packed into 28 s windows, beam 5, word timestamps (proposed)",
            whisper_run(transcriber.model, window, 5, True))
    if gate.dnsmos is not None and gate.dnsmos.usable:
        add(steps, "DNSMOS on 9.01 s windows of the joined audio (proposed)", call(gate.dnsmos.score, joined))
    return steps


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clips", type=Path, default=DEFAULT_CLIPS)
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--output", type=Path, default=support.RESULTS / "transcribe_cost.json")
    args = parser.parse_args()
    paths = sorted(args.clips.glob("*.wav"))[: args.limit]
    if not paths:
        print(f"no clips in {args.clips}: run bench/pipeline.py first or give --clips", file=sys.stderr)
        return 2
    clips = [(data.astype(np.float32), int(sr)) for data, sr in (sf.read(str(p), dtype="float32") for p in paths)]
    audio_s = sum(len(s) / sr for s, sr in clips)
    load_before = support.load_average()
    transcriber = Transcriber(TranscriptionConfig(device="cpu"), support.REPO / "models")
    gate = QualityGate(QualityConfig())
    steps = {**per_clip_costs(clips, transcriber, gate), **joined_costs(clips, transcriber, gate)}
    rows: dict[str, dict[str, float]] = {}
    for name, values in steps.items():
        wall, cpu = sum(v[0] for v in values), sum(v[1] for v in values)
        rows[name] = {"calls": len(values), "wall_s_per_audio_s": round(wall / audio_s, 3),
                      "cpu_s_per_audio_s": round(cpu / audio_s, 3)}
    median_clip = statistics.median(len(s) / r for s, r in clips)
    print(f"{len(clips)} clips, {audio_s:.0f} s of audio (median clip {median_clip:.1f} s), DNSMOS at "
          f"{DNSMOS_RATE} Hz; load {load_before} -> {support.load_average()}")
    print(f"{'step':<70} {'calls':>5} {'wall s / audio s':>17} {'CPU s / audio s':>16}")
    for name, row in rows.items():
        print(f"{name:<70} {row['calls']:>5.0f} {row['wall_s_per_audio_s']:>17.3f} {row['cpu_s_per_audio_s']:>16.3f}")
    support.write_json_atomically(args.output, {
        "what": "cost of the transcribe stage's parts per clip (one thread, sequential) vs long-form Whisper",
        "machine": support.machine(), "load_before": load_before, "clips": len(clips),
        "audio_s": round(audio_s, 1), "source": str(args.clips), "steps": rows,
    })
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
