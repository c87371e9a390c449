from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ttsft_daemon.audio.cleaning import (
    clean_clip,
    resample,
    spectral_gate,
    voiced_rms,
    write_wav_pcm16,
)
from ttsft_daemon.config import AudioConfig, SegmentationConfig
from ttsft_daemon.demo import audio as demo_audio

SEG = SegmentationConfig()
IN_SR = 44100


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _db(x: float) -> float:
    return float(20 * np.log10(max(x, 1e-12)))


@pytest.fixture(scope="module")
def sentence() -> np.ndarray:
    """One Piper sentence at 44.1 kHz, at a modest level, with 0.5 s of silence on each side."""
    (audio,), sr = demo_audio.speak([demo_audio.SENTENCES[5]])
    speech = resample(audio, sr, IN_SR) * 0.3
    silence = np.zeros(IN_SR // 2, dtype=np.float32)
    return np.concatenate([silence, speech, silence])


def _speech_span(clip: np.ndarray) -> tuple[int, int]:
    loud = np.flatnonzero(np.abs(clip) > 1e-4)
    return int(loud[0]), int(loud[-1]) + 1


@pytest.mark.parametrize("sample_rate", [22050, 16000])
def test_output_rate_dtype_and_loudness(sentence: np.ndarray, sample_rate: int) -> None:
    audio = AudioConfig(sample_rate=sample_rate)
    out = clean_clip(sentence, IN_SR, audio, SEG)
    assert out is not None
    assert out.dtype == np.float32 and out.ndim == 1
    start, end = _speech_span(sentence)
    expected = (end - start) / IN_SR + 2 * audio.pad_seconds
    assert len(out) / sample_rate == pytest.approx(expected, abs=0.05)
    assert _db(voiced_rms(out, sample_rate, SEG)) == pytest.approx(audio.target_dbfs, abs=1.0)
    assert _db(float(np.max(np.abs(out)))) <= audio.peak_dbfs + 1e-3


def test_trim_keeps_pad_seconds_of_silence(sentence: np.ndarray) -> None:
    audio = AudioConfig(pad_seconds=0.25)
    out = clean_clip(sentence, IN_SR, audio, SEG)
    assert out is not None
    start, end = _speech_span(out)
    sr = audio.sample_rate
    # The input had 0.5 s of silence each side; 0.25 s (within a 10 ms frame) are kept.
    assert start / sr == pytest.approx(0.25, abs=0.02)
    assert (len(out) - end) / sr == pytest.approx(0.25, abs=0.02)


def test_stereo_input_is_mixed_down(sentence: np.ndarray) -> None:
    stereo = np.stack([sentence, sentence], axis=1)
    mono = clean_clip(sentence, IN_SR, AudioConfig(), SEG)
    both = clean_clip(stereo, IN_SR, AudioConfig(), SEG)
    assert mono is not None and both is not None
    np.testing.assert_allclose(both, mono, atol=1e-5)


def test_loud_peaky_input_is_limited_at_the_ceiling() -> None:
    sr = 22050
    rng = np.random.default_rng(0)
    speechy = (rng.standard_normal(sr * 2) * 0.05).astype(np.float32)
    speechy[sr // 2 :: 2000] = 0.99  # sharp clicks: crest factor far above target-to-ceiling
    out = clean_clip(speechy, sr, AudioConfig(), SEG)
    assert out is not None
    assert _db(float(np.max(np.abs(out)))) <= -1.0 + 1e-3
    assert _db(voiced_rms(out, sr, SEG)) == pytest.approx(-20.0, abs=1.0)


def test_silent_and_too_short_inputs_give_none() -> None:
    audio = AudioConfig()
    assert clean_clip(np.zeros(IN_SR * 2, dtype=np.float32), IN_SR, audio, SEG) is None
    assert clean_clip(np.zeros(0, dtype=np.float32), IN_SR, audio, SEG) is None
    tiny = (np.random.default_rng(1).standard_normal(IN_SR * 2) * 1e-5).astype(np.float32)
    assert clean_clip(tiny, IN_SR, audio, SEG) is None  # -100 dBFS: nothing there
    t = np.arange(int(0.3 * IN_SR)) / IN_SR
    blip = np.concatenate([np.zeros(IN_SR), 0.3 * np.sin(2 * np.pi * 200 * t), np.zeros(IN_SR)])
    assert clean_clip(blip.astype(np.float32), IN_SR, audio, SEG) is None  # 0.3 s + pads < 1 s


def test_over_long_clip_is_cut_to_the_maximum() -> None:
    sr = 22050
    seg = SegmentationConfig(max_clip_seconds=3.0)
    audio = AudioConfig()
    rng = np.random.default_rng(2)
    long_voice = (rng.standard_normal(sr * 6) * 0.1).astype(np.float32)
    out = clean_clip(long_voice, sr, audio, seg)
    assert out is not None
    assert len(out) / sr <= seg.max_clip_seconds + 2 * audio.pad_seconds
    assert len(out) / sr >= 0.8 * seg.max_clip_seconds


def test_spectral_gate_reduces_a_noise_floor_and_keeps_speech(sentence: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    start, end = _speech_span(sentence)
    noisy = sentence + (rng.standard_normal(len(sentence)) * 0.003).astype(np.float32)
    gated = spectral_gate(noisy, IN_SR)
    assert len(gated) == len(noisy)
    noise_before = _rms(noisy[: start - 100])
    noise_after = _rms(gated[: start - 100])
    assert _db(noise_after) <= _db(noise_before) - 10.0
    speech_before = _rms(noisy[start:end])
    speech_after = _rms(gated[start:end])
    assert abs(_db(speech_after) - _db(speech_before)) < 1.0


def test_spectral_gate_leaves_continuous_sound_alone() -> None:
    rng = np.random.default_rng(4)
    noise = (rng.standard_normal(IN_SR) * 0.1).astype(np.float32)  # no quiet frames: nothing to learn
    np.testing.assert_array_equal(spectral_gate(noise, IN_SR), noise)


def test_denoise_option_lowers_the_floor_of_the_clip(sentence: np.ndarray) -> None:
    rng = np.random.default_rng(5)
    noisy = sentence + (rng.standard_normal(len(sentence)) * 0.003).astype(np.float32)
    plain = clean_clip(noisy, IN_SR, AudioConfig(denoise=False), SEG)
    denoised = clean_clip(noisy, IN_SR, AudioConfig(denoise=True), SEG)
    assert plain is not None and denoised is not None
    edge = int(0.06 * 22050)  # inside the kept pad: noise only
    assert _db(_rms(denoised[:edge])) <= _db(_rms(plain[:edge])) - 6.0
    assert _db(voiced_rms(denoised, 22050, SEG)) == pytest.approx(-20.0, abs=1.0)


def test_write_wav_pcm16(tmp_path: Path) -> None:
    sr = 22050
    x = np.sin(np.linspace(0, 100, sr)).astype(np.float32) * 0.5
    x[10] = 1.7  # out of range: must clip, not wrap around
    path = tmp_path / "clip.wav"
    write_wav_pcm16(path, x, sr)
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype, info.format) == (sr, 1, "PCM_16", "WAV")
    back, _ = sf.read(str(path), dtype="float32")
    assert back[10] > 0.99
    np.testing.assert_allclose(back[100:200], x[100:200], atol=1 / 32768 + 1e-6)
    assert os.listdir(tmp_path) == ["clip.wav"]


def test_write_wav_pcm16_rejects_stereo_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mono"):
        write_wav_pcm16(tmp_path / "x.wav", np.zeros((10, 2), dtype=np.float32), 22050)
    assert os.listdir(tmp_path) == []


def test_write_wav_pcm16_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "clip.wav"
    write_wav_pcm16(path, np.zeros(100, dtype=np.float32), 16000)
    write_wav_pcm16(path, np.full(200, 0.25, dtype=np.float32), 16000)
    back, sr = sf.read(str(path), dtype="float32")
    assert sr == 16000 and len(back) == 200
    assert os.listdir(tmp_path) == ["clip.wav"]
