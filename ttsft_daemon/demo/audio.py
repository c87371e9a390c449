"""Realistic demo and test input with ground truth: Piper speech, a synthetic music bed, media files.

The speech comes from a real Piper voice (offline model under `models/piper`), so transcription and
segmentation see real phonetics and real pauses. Each sentence is placed with a random pause before
the next one, and the exact sentence boundaries are kept as ground truth.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from ttsft_daemon import config
from ttsft_daemon.core.spool import commit

SENTENCES: list[str] = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore every summer.",
    "Our train leaves the station at half past seven in the morning.",
    "The old lighthouse has guided ships along this coast since 1999.",
    "Please remember to water the tomato plants before you leave.",
    "A warm cup of tea is the best way to start a rainy day.",
    "The library will be closed for repairs until the end of the month.",
    "My grandfather built this wooden table with his own hands.",
    "The children laughed as the puppy chased its tail in circles.",
    "We counted forty two stars before the clouds rolled in.",
    "The museum opened a new exhibit about ancient Egyptian art.",
    "He forgot his umbrella and walked home in the pouring rain.",
    "Fresh bread from the corner bakery smells wonderful in the evening.",
    "The committee will announce the winners next Thursday afternoon.",
    "A small boat drifted slowly across the calm blue lake.",
    "The recipe calls for two eggs and a cup of flour.",
    "Mountain climbers must carry enough water for the whole journey.",
    "The concert hall was filled with music and applause.",
    "Scientists discovered a new species of frog in the rain forest.",
    "The bus was late again so I decided to ride my bicycle.",
    "Winter nights are long and quiet in the northern villages.",
    "She painted the kitchen walls a bright shade of yellow.",
    "The market sells apples and pears and fresh honey from local farms.",
    "Every student received a certificate at the end of the course.",
    "The engineer explained how the bridge was built in 1887.",
    "Our neighbours are planning a garden party for the whole street.",
    "The pilot announced that we would land in about twenty minutes.",
    "A gentle breeze carried the scent of roses through the window.",
    "The detective followed the footprints to the edge of the forest.",
    "Thank you for listening and have a wonderful day.",
]

# Piper's own leading/trailing silence is trimmed with this threshold (relative to the loudest frame),
# so that sentence boundaries in the ground truth are the edges of audible speech.
_TRIM_THRESHOLD_DB = -45.0
_TRIM_FRAME_SECONDS = 0.01


def default_voice_path() -> Path:
    return config.PROJECT_DIR / "models" / "piper" / "en_US-joe-medium.onnx"


def _steady_config() -> Any:
    from piper import SynthesisConfig

    # Without VITS's sampling noise the same text always gives the same audio: reproducible tests and demos.
    return SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)


_STEADY = _steady_config()


@functools.lru_cache(maxsize=4)
def _load_voice(path: str) -> Any:
    from piper import PiperVoice

    return PiperVoice.load(path)


def speak(texts: list[str], voice_path: Path | None = None) -> tuple[list[np.ndarray], int]:
    """Synthesize each text with Piper: (one mono float32 array per text, trimmed of edge silence; rate)."""
    path = voice_path if voice_path is not None else default_voice_path()
    voice = _load_voice(str(Path(path).resolve()))
    sample_rate = int(voice.config.sample_rate)
    spoken: list[np.ndarray] = []
    for text in texts:
        chunks = [np.asarray(c.audio_float_array, dtype=np.float32) for c in voice.synthesize(text, _STEADY)]
        audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        spoken.append(trim_edges(audio, sample_rate))
    return spoken, sample_rate


def trim_edges(audio: np.ndarray, sr: int) -> np.ndarray:
    """Cut leading/trailing frames quieter than _TRIM_THRESHOLD_DB below the loudest frame."""
    frame = max(1, int(sr * _TRIM_FRAME_SECONDS))
    n_frames = len(audio) // frame
    if n_frames == 0:
        return audio.astype(np.float32)
    frames = audio[: n_frames * frame].reshape(n_frames, frame).astype(np.float64)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    if rms.max() <= 0:
        return np.zeros(0, dtype=np.float32)
    loud = np.flatnonzero(rms >= rms.max() * 10 ** (_TRIM_THRESHOLD_DB / 20))
    return audio[loud[0] * frame : (loud[-1] + 1) * frame].astype(np.float32)


# ------------------------------------------------------------------------------------------ music

_A4 = 440.0
# I - V - vi - IV in C major, as MIDI note numbers of the triads (root position, octave 4).
_PROGRESSION = [(60, 64, 67), (67, 71, 74), (69, 72, 76), (65, 69, 72)]


def _midi_hz(note: float) -> float:
    return float(_A4 * 2.0 ** ((note - 69) / 12))


def _harmonic_tone(freq: float, seconds: float, sr: int, harmonics: int, decay: float) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    tone = np.zeros_like(t)
    for k in range(1, harmonics + 1):
        if freq * k < sr / 2:
            tone += np.sin(2 * np.pi * freq * k * t) / k**1.3
    attack = np.minimum(1.0, t / 0.015)
    release = np.minimum(1.0, (seconds - t) / 0.05).clip(0.0, 1.0)
    shaped: np.ndarray = tone * attack * release * np.exp(-t * decay)
    return shaped


def _add(buffer: np.ndarray, sound: np.ndarray, start: int) -> None:
    end = min(len(buffer), start + len(sound))
    if end > start:
        buffer[start:end] += sound[: end - start]


def _kick(sr: int) -> np.ndarray:
    t = np.arange(int(0.18 * sr)) / sr
    freq = 50 + 90 * np.exp(-t * 30)
    phase = 2 * np.pi * np.cumsum(freq) / sr
    return np.sin(phase) * np.exp(-t * 18)


def _hat(sr: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.05 * sr)) / sr
    noise = rng.standard_normal(len(t))
    noise = np.diff(noise, prepend=0.0)  # crude high-pass: hats are bright
    return noise * np.exp(-t * 80) * 0.3


def make_music(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """A deterministic music bed: chords with harmonics, a bass line, kick and hi-hats (mono float32)."""
    rng = np.random.default_rng(seed)
    n = max(0, round(seconds * sr))
    out = np.zeros(n, dtype=np.float64)
    beat = 60.0 / float(rng.choice([92, 100, 108]))
    bar = 4 * beat
    hat_sounds = [_hat(sr, rng) for _ in range(4)]
    kick = _kick(sr)
    n_bars = int(np.ceil(seconds / bar)) if n else 0
    for b in range(n_bars):
        chord = _PROGRESSION[b % len(_PROGRESSION)]
        bar_start = b * bar
        for note in chord:
            octave = 12 * int(rng.integers(-1, 1))
            tone = _harmonic_tone(_midi_hz(note + octave), bar * 0.95, sr, harmonics=6, decay=0.8)
            _add(out, 0.12 * tone, int(bar_start * sr))
        for step in range(4):
            bass = _harmonic_tone(_midi_hz(chord[0] - 24), beat * 0.9, sr, harmonics=3, decay=2.0)
            _add(out, 0.25 * bass, int((bar_start + step * beat) * sr))
            _add(out, 0.35 * kick, int((bar_start + step * beat) * sr))
        for eighth in range(8):
            hat = hat_sounds[int(rng.integers(len(hat_sounds)))]
            _add(out, hat * float(rng.uniform(0.5, 1.0)), int((bar_start + eighth * beat / 2) * sr))
    peak = float(np.max(np.abs(out))) if n else 0.0
    if peak > 0:
        out *= 0.8 / peak
    return out.astype(np.float32)


# -------------------------------------------------------------------------------------- recording


@dataclass
class Recording:
    """A synthetic recording and its ground truth (times in seconds from the start of `mix`)."""

    speech: np.ndarray
    music: np.ndarray | None
    mix: np.ndarray
    sr: int
    sentences: list[tuple[float, float, str]]
    pauses: list[tuple[float, float]]

    @property
    def duration(self) -> float:
        return len(self.mix) / self.sr


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def make_recording(
    texts: list[str],
    pause_range: tuple[float, float] = (0.6, 1.2),
    music_db: float | None = -12.0,
    seed: int = 0,
    sr: int = 44100,
    lead_seconds: float = 0.5,
) -> Recording:
    """Speech of `texts` with random pauses between sentences, music `music_db` below the speech RMS.

    `lead_seconds` of silence precede the first sentence and follow the last one. The speech track
    and the music are scaled together so that the mix never clips.
    """
    rng = np.random.default_rng(seed)
    spoken, voice_sr = speak(texts)
    if voice_sr != sr:
        spoken = [soxr.resample(s, voice_sr, sr).astype(np.float32) for s in spoken]
    lead = np.zeros(int(lead_seconds * sr), dtype=np.float32)
    parts: list[np.ndarray] = [lead]
    sentences: list[tuple[float, float, str]] = []
    pauses: list[tuple[float, float]] = []
    cursor = len(lead)
    for i, (audio, text) in enumerate(zip(spoken, texts, strict=True)):
        sentences.append((cursor / sr, (cursor + len(audio)) / sr, text))
        parts.append(audio)
        cursor += len(audio)
        if i < len(spoken) - 1:
            gap = np.zeros(int(rng.uniform(*pause_range) * sr), dtype=np.float32)
            pauses.append((cursor / sr, (cursor + len(gap)) / sr))
            parts.append(gap)
            cursor += len(gap)
    parts.append(lead)
    speech = np.concatenate(parts).astype(np.float32)
    speech_rms = _rms(np.concatenate(spoken)) if spoken else 0.0
    music: np.ndarray | None = None
    mix = speech.copy()
    if music_db is not None:
        bed = make_music(len(speech) / sr, sr, seed=seed)
        music = (bed * (speech_rms * 10 ** (music_db / 20) / max(_rms(bed), 1e-12))).astype(np.float32)
        music = music[: len(speech)]
        mix = speech + music
    peak = float(np.max(np.abs(mix))) if len(mix) else 0.0
    if peak > 0.99:
        gain = 0.99 / peak
        speech, mix = speech * gain, mix * gain
        music = music * gain if music is not None else None
    return Recording(speech.astype(np.float32), music, mix.astype(np.float32), sr, sentences, pauses)


# ---------------------------------------------------------------------------------------- writing


@contextmanager
def _temporary_beside(path: Path, suffix: str) -> Iterator[Path]:
    """A temporary file name in `path`'s folder (hidden, not matching any media extension)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _ffmpeg(args: list[str]) -> None:
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
    proc = subprocess.run(cmd, capture_output=True, timeout=600, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {proc.stderr.decode('utf-8', 'replace').strip()}")


def _encode_args(kind: str, wav: Path, out: Path, duration: float) -> list[str]:
    if kind == "mp3":
        return ["-i", str(wav), "-c:a", "libmp3lame", "-b:a", "128k", "-f", "mp3", str(out)]
    video = f"testsrc=size=320x240:rate=10:duration={duration:.3f}"
    return [
        "-f", "lavfi", "-i", video, "-i", str(wav),
        "-map", "0:v:0", "-map", "1:a:0",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-b:a", "128k", "-shortest", "-movflags", "+faststart",
        "-f", "mp4", str(out),
    ]  # fmt: skip


def write_media(rec: Recording, path: Path, kind: str) -> None:
    """Write the mix as `kind` ("wav" 16-bit PCM, "mp3", or "mp4" with a test-pattern video), atomically."""
    if kind not in ("wav", "mp3", "mp4"):
        raise ValueError(f"kind must be wav, mp3 or mp4, not {kind!r}")
    path = Path(path)
    with _temporary_beside(path, ".part") as tmp:
        if kind == "wav":
            sf.write(tmp, rec.mix, rec.sr, subtype="PCM_16", format="WAV")
        else:
            with _temporary_beside(path, ".src.part") as wav:
                sf.write(wav, rec.mix, rec.sr, subtype="PCM_16", format="WAV")
                _ffmpeg(_encode_args(kind, wav, tmp, rec.duration))
        commit(tmp, path)


def ground_truth(rec: Recording) -> dict[str, Any]:
    return {
        "sample_rate": rec.sr,
        "duration": rec.duration,
        "sentences": [{"start": s, "end": e, "text": t} for s, e, t in rec.sentences],
        "pauses": [{"start": s, "end": e} for s, e in rec.pauses],
    }


def write_ground_truth(rec: Recording, path: Path) -> None:
    """JSON with the sentences (start, end, text) and pauses (start, end), written atomically."""
    path = Path(path)
    with _temporary_beside(path, ".part") as tmp:
        tmp.write_text(json.dumps(ground_truth(rec), indent=2) + "\n", encoding="utf-8")
        commit(tmp, path)
