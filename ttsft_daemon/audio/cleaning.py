"""Per-clip cleaning: resample, optional spectral-gate denoise, edge trim, loudness normalisation.

A clip comes from the segmenter: speech with up to half a pause of silence at each end. `clean_clip`
turns it into what Piper trains on: mono float32 at `audio.sample_rate`, at most `pad_seconds` of
silence at each end, the voiced part at `target_dbfs` RMS, peaks at or below `peak_dbfs`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from scipy import ndimage, signal

from ttsft_daemon.audio.segmentation import rms_envelope, speech_level
from ttsft_daemon.config import AudioConfig, SegmentationConfig
from ttsft_daemon.core.atomic import atomic_path

DEFAULT_SILENCE_DBFS = -70.0

_FRAME_SECONDS = 0.01
_FADE_SECONDS = 0.01
_LIMITER_WINDOW_SECONDS = 0.005
# Spectral gate: noise profile from the quietest frames; bins under profile x margin are attenuated.
_GATE_WINDOW_SECONDS = 0.046
_GATE_QUIET_FRACTION = 0.1
_GATE_MARGIN_DB = 6.0
_GATE_ATTENUATION_DB = -25.0
# No gating when the quietest frames are this close to the typical frame: there is no noise floor
# to learn from (continuous speech), and gating would eat the speech.
_GATE_MIN_CONTRAST_DB = 10.0


def _db_to_amplitude(db: float) -> float:
    return float(10.0 ** (db / 20.0))


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def _as_mono_float(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected mono or (samples, channels) audio, got shape {x.shape}")
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def resample(samples: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    if sr == target_sr or len(samples) == 0:
        return samples.astype(np.float32)
    return np.asarray(soxr.resample(samples, sr, target_sr, quality="HQ"), dtype=np.float32)


# ------------------------------------------------------------------------------------------- denoise


def spectral_gate(samples: np.ndarray, sr: int) -> np.ndarray:
    """Attenuate time-frequency bins below the noise profile of the quietest frames (+6 dB)."""
    nperseg = max(64, 2 ** round(np.log2(sr * _GATE_WINDOW_SECONDS)))
    if len(samples) < 2 * nperseg:
        return samples.astype(np.float32)
    _, _, spec = signal.stft(samples, fs=sr, nperseg=nperseg, noverlap=nperseg * 3 // 4)
    mag = np.abs(spec)
    frame_energy = np.mean(mag**2, axis=0)
    n_quiet = max(1, int(len(frame_energy) * _GATE_QUIET_FRACTION))
    quiet = np.argsort(frame_energy)[:n_quiet]
    contrast = np.median(frame_energy) / max(float(np.mean(frame_energy[quiet])), 1e-20)
    if 10 * np.log10(contrast) < _GATE_MIN_CONTRAST_DB:
        return samples.astype(np.float32)
    profile = np.mean(mag[:, quiet], axis=1, keepdims=True)
    keep = (mag > profile * _db_to_amplitude(_GATE_MARGIN_DB)).astype(np.float64)
    floor = _db_to_amplitude(_GATE_ATTENUATION_DB)
    # Smoothing the mask over neighbouring bins and frames avoids "musical noise" (isolated blips).
    mask = floor + (1.0 - floor) * ndimage.uniform_filter(keep, size=(3, 5), mode="nearest")
    _, out = signal.istft(spec * mask, fs=sr, nperseg=nperseg, noverlap=nperseg * 3 // 4)
    return np.asarray(out[: len(samples)], dtype=np.float32)


# ---------------------------------------------------------------------------------------------- trim


def _voiced_bounds(x: np.ndarray, sr: int, seg: SegmentationConfig) -> tuple[int, int] | None:
    """Sample range from the first to the last audible frame; None when nothing is audible.

    Audible = above min_factor x speech level (soft endings count) and clearly above the noise floor.
    """
    env, frame_s = rms_envelope(x, sr, _FRAME_SECONDS)
    level = speech_level(env)
    if level <= 0.0:
        return None
    noise_floor = float(np.percentile(env, 10))
    threshold = min(max(seg.min_factor * level, 2.0 * noise_floor), seg.initial_silence_factor * level)
    audible = np.flatnonzero(env > threshold)
    if len(audible) == 0:
        return None
    frame = round(frame_s * sr)
    return int(audible[0]) * frame, min(len(x), (int(audible[-1]) + 1) * frame)


def _fade(x: np.ndarray, n: int) -> np.ndarray:
    n = min(n, len(x) // 2)
    if n > 0:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def _quietest_point(x: np.ndarray, sr: int, lo: int, hi: int) -> int:
    """Sample index of the quietest 10 ms frame between lo and hi."""
    env, frame_s = rms_envelope(x[lo:hi], sr, _FRAME_SECONDS)
    return lo + int(np.argmin(env)) * round(frame_s * sr)


def _trim(x: np.ndarray, sr: int, audio: AudioConfig, seg: SegmentationConfig) -> np.ndarray | None:
    bounds = _voiced_bounds(x, sr, seg)
    if bounds is None:
        return None
    start, end = bounds
    max_voiced = int(seg.max_clip_seconds * sr)
    if end - start > max_voiced:  # the segmenter prevents this; never hand out an over-long clip
        end = _quietest_point(x, sr, start + int(0.8 * max_voiced), start + max_voiced)
    pad = int(audio.pad_seconds * sr)
    return _fade(x[max(0, start - pad) : min(len(x), end + pad)].copy(), int(_FADE_SECONDS * sr))


# ------------------------------------------------------------------------------------------ loudness


def voiced_rms(x: np.ndarray, sr: int, seg: SegmentationConfig) -> float:
    """RMS of the speech frames (pauses inside the clip do not dilute the loudness)."""
    env, _ = rms_envelope(x, sr, _FRAME_SECONDS)
    level = speech_level(env)
    voiced = env[env > seg.initial_silence_factor * level]
    return float(np.sqrt(np.mean(voiced**2))) if len(voiced) else 0.0


def _limit(x: np.ndarray, sr: int, ceiling: float) -> np.ndarray:
    """Smooth peak limiter: the gain never lets a sample exceed the ceiling, and changes over ~5 ms."""
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    if peak <= ceiling:
        return x
    width = max(1, int(_LIMITER_WINDOW_SECONDS * sr))
    needed = np.minimum(1.0, ceiling / np.maximum(np.abs(x), 1e-12))
    # A moving minimum then a moving average of the same width stays below `needed` at every sample.
    gain = ndimage.uniform_filter1d(ndimage.minimum_filter1d(needed, size=width), size=width)
    limited: np.ndarray = np.clip(x * gain, -ceiling, ceiling).astype(np.float32)
    return limited


def normalise(x: np.ndarray, sr: int, audio: AudioConfig, seg: SegmentationConfig) -> np.ndarray:
    """Voiced RMS to target_dbfs, then peaks limited to peak_dbfs."""
    voiced = voiced_rms(x, sr, seg)
    if voiced <= 0.0:
        return x
    gained = (x * (_db_to_amplitude(audio.target_dbfs) / voiced)).astype(np.float32)
    return _limit(gained, sr, _db_to_amplitude(audio.peak_dbfs))


# ---------------------------------------------------------------------------------------------- clip


def clean_clip(
    samples: np.ndarray,
    sr: int,
    audio: AudioConfig,
    seg: SegmentationConfig,
    *,
    silence_dbfs: float = DEFAULT_SILENCE_DBFS,
) -> np.ndarray | None:
    """Clean one clip; None when it is silent (loudest 10 ms under silence_dbfs) or too short after trim.

    The result is mono float32 at `audio.sample_rate`, never longer than max_clip + 2 x pad seconds.
    """
    x = resample(_as_mono_float(samples), sr, audio.sample_rate)
    sr = audio.sample_rate
    env, _ = rms_envelope(x, sr, _FRAME_SECONDS)
    if len(env) == 0 or float(np.max(env)) < _db_to_amplitude(silence_dbfs):
        return None
    if audio.denoise:
        x = spectral_gate(x, sr)
    trimmed = _trim(x, sr, audio, seg)
    if trimmed is None or len(trimmed) < seg.min_clip_seconds * sr:
        return None
    return normalise(trimmed, sr, audio, seg)


def write_wav_pcm16(path: Path, samples: np.ndarray, sr: int) -> None:
    """Write mono 16-bit PCM WAV atomically: temporary beside it, fsync, rename, fsync the folder."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"write_wav_pcm16 writes mono audio, got shape {x.shape}")
    with atomic_path(Path(path)) as tmp:
        # libsndfile wraps out-of-range floats around when converting to integers: clip first.
        sf.write(tmp, np.clip(x, -1.0, 1.0), sr, subtype="PCM_16", format="WAV")
