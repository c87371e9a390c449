"""Whisper's settings on real speech with known text: word error rate and CPU per setting.

Allison Smith's prompts (real human speech from Debian's Asterisk packages, with their published transcripts:
tests/realspeech.py, tests/REALSPEECH_SOURCES.md), each padded as the segmenter pads a clip, transcribed the way
the transcribe stage does it: packed passes of up to transcription.pack_seconds, the doubtful clips of a pass in
a second pass, a clip still doubtful alone. Per setting: WER of all clips against the known text (normalised by
`normalize_for_wer`), CPU and wall seconds of this process (one thread of work; CTranslate2 threads as the
daemon picks them), clips settled in the first pass, in the second, alone. The settings alternate in rounds, so
that the machine's noise spreads over all of them.

    .venv/bin/python bench/whisper_real.py [--clips 150] [--rounds 2] [--settings 'beam_size=5;beam_size=1']
Writes bench/results/whisper_real.json (atomically).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import support
from tests import realspeech as rs
from ttsft_daemon.config import TranscriptionConfig
from ttsft_daemon.text.packing import GAP_SECONDS, plan_windows
from ttsft_daemon.text.textnorm import normalize_for_wer
from ttsft_daemon.text.transcription import Transcriber, Transcript

PAD_SECONDS = 0.15  # the segmenter's padding at each end of a clip


def clips(n: int) -> tuple[list[np.ndarray], list[str]]:
    utterances = [u for u in rs.utterances("allison") if u.text][:n]
    pad = np.zeros(int(PAD_SECONDS * rs.SR), dtype=np.float32)
    return [np.concatenate([pad, u.audio, pad]) for u in utterances], [str(u.text) for u in utterances]


def run(transcriber: Transcriber, audio: list[np.ndarray], texts: list[str]) -> dict[str, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    hyps: list[str] = []
    how = {"packed": 0, "second_pass": 0, "alone": 0}
    for window in plan_windows([len(a) / rs.SR for a in audio], transcriber.cfg.pack_seconds, GAP_SECONDS):
        for i, result in zip(window, transcriber.transcribe_packed([audio[i] for i in window], 0.5), strict=True):
            if isinstance(result, Transcript):
                how["second_pass" if result.second_pass else "packed"] += 1
            else:
                how["alone"] += 1
                result = transcriber.transcribe_array(audio[i], rs.SR)
            hyps.append(normalize_for_wer(result.text))
    refs = [normalize_for_wer(t) for t in texts]
    return {"wer": round(float(jiwer.wer(refs, hyps)), 4), "cpu_s": round(time.process_time() - cpu, 2),
            "wall_s": round(time.perf_counter() - wall, 2), **how}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--settings", default="beam_size=5;beam_size=5,window_passes=false;beam_size=1",
                    help="transcription settings to compare, `;` between settings, `,` between keys")
    ap.add_argument("--output", default=str(support.RESULTS / "whisper_real.json"))
    args = ap.parse_args()
    if not (rs.SPEECH_DIR / "allison" / "texts.tsv").is_file():
        raise SystemExit("models/speech/allison/texts.tsv missing: run .venv/bin/python tests/realspeech.py fetch")
    audio, texts = clips(args.clips)
    seconds = sum(len(a) for a in audio) / rs.SR
    print(f"{len(audio)} prompts, {seconds:.0f} s of audio; machine {support.machine()}", flush=True)
    models = support.REPO / "models"
    settings = {text: TranscriptionConfig(**{k: yaml.safe_load(v) for k, v in
                                             (pair.split("=", 1) for pair in text.split(","))})
                for text in args.settings.split(";")}
    transcribers = {name: Transcriber(cfg, models) for name, cfg in settings.items()}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in settings}
    for r in range(args.rounds):
        for name in (list(settings) if r % 2 == 0 else list(reversed(settings))):
            runs[name].append(run(transcribers[name], audio, texts))
            print(f"round {r} {name}: {json.dumps(runs[name][-1])}", flush=True)
    summary = {name: {"wer": rows[0]["wer"], "cpu_s_median": statistics.median(x["cpu_s"] for x in rows),
                      "cpu_s_per_audio_s": round(statistics.median(x["cpu_s"] for x in rows) / seconds, 4),
                      **{k: rows[0][k] for k in ("packed", "second_pass", "alone")}}
               for name, rows in runs.items()}
    print("| setting | WER | CPU s (median) | CPU s / audio s | first pass | second pass | alone |")
    print("|---|---|---|---|---|---|---|")
    for name, s in summary.items():
        print(f"| {name} | {100 * s['wer']:.2f} % | {s['cpu_s_median']:.1f} | {s['cpu_s_per_audio_s']:.3f} | "
              f"{s['packed']} | {s['second_pass']} | {s['alone']} |")
    support.write_json_atomically(Path(args.output), {
        "what": "Whisper settings (transcription keys) on real speech with known text, packed as the stage packs",
        "machine": support.machine(), "prompts": len(audio), "audio_s": round(seconds, 1),
        "summary": summary, "runs": runs})
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
