"""A small real Piper dataset spoken by the bundled voice, for tests and benchmarks of training.

`build_spoken_dataset(dataset_dir, count)` writes `wavs/clip_NNNNN.wav` (16-bit mono) and `metadata.csv`
(`clip_filename|transcript|duration|speaker|quality`, the project's dataset format).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import soundfile as sf

from ttsft_daemon.core.atomic import atomic_path, atomic_write_bytes

_SUBJECTS = ["The old farmer", "A young teacher", "My brother", "The tired pilot", "Our neighbour",
             "The quiet student", "A clever engineer", "The busy doctor", "Her grandmother", "The new captain"]
_VERBS = ["painted", "carried", "repaired", "described", "opened", "borrowed", "found", "cleaned"]
_OBJECTS = ["a wooden boat", "the heavy boxes", "an orange kite", "the kitchen window", "a broken radio",
            "the garden gate", "two silver spoons", "a map of the city"]
_TIMES = ["before breakfast", "on a rainy Sunday", "after the long meeting", "late in the evening",
          "during the summer holidays", "early this morning"]


def sample_sentences(count: int) -> list[str]:
    """`count` distinct, varied English sentences (deterministic)."""
    combos = itertools.product(_SUBJECTS, _VERBS, _OBJECTS, _TIMES)
    rng = np.random.default_rng(7)
    pool = list(combos)
    order = rng.permutation(len(pool))
    if count > len(pool):
        raise ValueError(f"at most {len(pool)} sentences")
    return [f"{s} {v} {o} {t}." for s, v, o, t in (pool[i] for i in order[:count])]


def build_spoken_dataset(
    dataset_dir: Path, count: int, speaker: str = "joe", voice_path: Path | None = None, batch: int = 16
) -> float:
    """Speak `count` sentences with the bundled Piper voice into `dataset_dir`; returns seconds of speech."""
    from ttsft_daemon.demo.audio import speak

    wavs = dataset_dir / "wavs"
    wavs.mkdir(parents=True, exist_ok=True)
    sentences = sample_sentences(count)
    rows: list[str] = []
    total = 0.0
    for start in range(0, count, batch):
        texts = sentences[start : start + batch]
        audios, sample_rate = speak(texts, voice_path)
        for offset, (text, audio) in enumerate(zip(texts, audios, strict=True)):
            name = f"clip_{start + offset:05d}.wav"
            padded = np.concatenate([np.zeros(sample_rate // 10, np.float32), audio,
                                     np.zeros(sample_rate // 10, np.float32)])
            _write_wav(wavs / name, padded, sample_rate)
            duration = len(padded) / sample_rate
            total += duration
            rows.append(f"{name}|{text}|{duration:.3f}|{speaker}|0.9000")
    atomic_write_bytes(dataset_dir / "metadata.csv", ("\n".join(rows) + "\n").encode("utf-8"))
    return total


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    with atomic_path(path) as tmp:
        sf.write(tmp, np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
