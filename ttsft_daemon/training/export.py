"""Export a training checkpoint as a Piper voice, and score a voice's intelligibility with Whisper.

`export_voice` runs `launcher export` in a child process (torch stays out of the daemon) and yields
`<voice>.onnx` + `<voice>.onnx.json`, the config piper.train's data module writes plus `audio.quality`,
`dataset` and a `ttsft` record (epoch, step, checkpoint, time). `evaluate_voice` speaks sentences with the
voice, transcribes them with faster-whisper and appends the word error rates to `evaluations.json`.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

from ttsft_daemon.config import TranscriptionConfig
from ttsft_daemon.core.atomic import atomic_path, atomic_write_json, read_json
from ttsft_daemon.errors import TransientError
from ttsft_daemon.logs import get_logger
from ttsft_daemon.training.progress import STATE_FILE, now_iso

log = get_logger(__name__)

EVALUATIONS_FILE = "evaluations.json"
EVALUATION_WAVS_DIR = "evaluations"
LAUNCHER = "ttsft_daemon.training.launcher"


def export_voice(
    ckpt: Path,
    out_dir: Path,
    voice: str,
    *,
    quality: str | None = None,
    espeak_voice: str = "en-us",
    python: str = sys.executable,
    timeout_seconds: float = 3600.0,
) -> tuple[Path, Path]:
    """Write `out_dir/<voice>.onnx` and `out_dir/<voice>.onnx.json` from `ckpt` (each replaced atomically).

    `quality` and `espeak_voice` only matter for checkpoints not made by this project's launcher (ours carry
    both). When `out_dir` is the voice's training folder, its state.json records the exported voice.
    Raises TransientError when the export fails.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx = out_dir / f"{voice}.onnx"
    command = [python, "-m", LAUNCHER, "export", str(ckpt), str(onnx), "--voice", voice,
               "--espeak-voice", espeak_voice]
    if quality is not None:
        command += ["--quality", quality]
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout_seconds, check=False,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise TransientError(f"exporting {ckpt} took longer than {timeout_seconds:.0f} s") from exc
    if done.returncode != 0:
        tail = "\n".join(done.stderr.decode("utf-8", "replace").strip().splitlines()[-10:])
        raise TransientError(f"exporting {ckpt} failed with status {done.returncode}:\n{tail}")
    config = Path(f"{onnx}.json")
    _record_export(out_dir, onnx)
    log.info("voice exported", stage="train", voice=voice, onnx=str(onnx), checkpoint=str(ckpt))
    return onnx, config


def _record_export(training_dir: Path, onnx: Path) -> None:
    from ttsft_daemon.training.runner import read_state

    if not (training_dir / STATE_FILE).exists():
        return
    state = read_state(training_dir)
    if state.state != "training":  # while a run is on, the runner owns state.json
        atomic_write_json(training_dir / STATE_FILE, dataclasses.replace(state, onnx=str(onnx)).to_dict())


def evaluate_voice(
    onnx: Path,
    sentences: list[str],
    whisper_model: str,
    models_dir: Path,
    out_dir: Path,
    *,
    language: str = "en",
) -> dict[str, Any]:
    """Speak `sentences` with the voice, transcribe them, and score word error rates.

    WAVs go to `out_dir/evaluations/epoch-EEEEE/NN.wav`; the returned entry (epoch, step, checkpoint, onnx,
    whisper_model, wer, sentences: text, wav, seconds, transcript, wer) is appended to
    `out_dir/evaluations.json`, replacing an earlier entry of the same checkpoint and epoch.
    """
    import jiwer

    from ttsft_daemon.text.textnorm import normalize_for_wer
    from ttsft_daemon.text.transcription import Transcriber

    meta = _export_record(onnx)
    epoch = meta.get("epoch")
    wav_dir = out_dir / EVALUATION_WAVS_DIR / (f"epoch-{int(epoch):05d}" if epoch is not None else onnx.stem)
    wavs = speak_sentences(onnx, sentences, wav_dir)
    transcriber = Transcriber(TranscriptionConfig(model=whisper_model, language=language), models_dir)
    rows: list[dict[str, Any]] = []
    references: list[str] = []
    hypotheses: list[str] = []
    for text, wav in zip(sentences, wavs, strict=True):
        heard = transcriber.transcribe(wav).text
        reference, hypothesis = normalize_for_wer(text, language), normalize_for_wer(heard, language)
        references.append(reference)
        hypotheses.append(hypothesis)
        rows.append({"text": text, "wav": str(wav), "seconds": round(_wav_seconds(wav), 3), "transcript": heard,
                     "wer": round(_wer(jiwer, reference, hypothesis), 4)})
    entry = {
        "epoch": epoch,
        "step": meta.get("step"),
        "checkpoint": meta.get("checkpoint"),
        "onnx": str(onnx),
        "evaluated": now_iso(),
        "whisper_model": whisper_model,
        "wer": round(_corpus_wer(jiwer, references, hypotheses), 4),
        "sentences": rows,
    }
    _append_evaluation(out_dir / EVALUATIONS_FILE, entry)
    log.info("voice evaluated", stage="train", onnx=str(onnx), epoch=epoch, wer=entry["wer"])
    return entry


def speak_sentences(onnx: Path, sentences: list[str], wav_dir: Path) -> list[Path]:
    """Synthesize each sentence with the Piper voice to `wav_dir/NN.wav` (16-bit mono, written atomically)."""
    from piper import PiperVoice

    voice = PiperVoice.load(str(onnx))
    wav_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, text in enumerate(sentences):
        path = wav_dir / f"{index:02d}.wav"
        with atomic_path(path) as tmp, wave.open(str(tmp), "wb") as wav_file:
            voice.synthesize_wav(text, wav_file)
        paths.append(path)
    return paths


def _export_record(onnx: Path) -> dict[str, Any]:
    config = read_json(Path(f"{onnx}.json")) or {}
    record = config.get("ttsft")
    return dict(record) if isinstance(record, dict) else {}


def _wav_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as wav_file:
        return wav_file.getnframes() / float(wav_file.getframerate())


def _wer(jiwer: Any, reference: str, hypothesis: str) -> float:
    if not reference:
        return 0.0 if not hypothesis else 1.0
    return float(jiwer.wer(reference, hypothesis))


def _corpus_wer(jiwer: Any, references: list[str], hypotheses: list[str]) -> float:
    pairs = [(r, h) for r, h in zip(references, hypotheses, strict=True) if r]
    if not pairs:
        return 0.0
    return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))


def _append_evaluation(path: Path, entry: dict[str, Any]) -> None:
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        existing = []
    entries = [e for e in existing if isinstance(e, dict)] if isinstance(existing, list) else []
    same = (entry.get("checkpoint"), entry.get("epoch"))
    entries = [e for e in entries if (e.get("checkpoint"), e.get("epoch")) != same]
    atomic_write_json(path, [*entries, entry])
