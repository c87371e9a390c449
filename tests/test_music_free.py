"""Chunks without music skip Spleeter (separation.skip_music_free): the decision on real speech, real and
synthetic music and a noise floor, and the worker passing such a recording through end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from tests import realspeech
from tests.conftest import missing
from ttsft_daemon.audio import spleeter_worker as sw
from ttsft_daemon.audio.separation import SeparatorProcess
from ttsft_daemon.demo.audio import make_music

REPO = Path(__file__).resolve().parents[1]
SPLEETER_PYTHON = REPO / ".venv-spleeter" / "bin" / "python"
SPLEETER_MODELS = REPO / "models" / "spleeter"
SR = sw.SAMPLE_RATE
GAP_DB = 30.0


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


@pytest.fixture(scope="module")
def talk() -> np.ndarray:
    """40 s of a real person's speech (Asterisk's Allison) with the short pauses of a talk, at 44.1 kHz."""
    try:
        pool = realspeech.utterances("allison")
    except FileNotFoundError as exc:
        pytest.skip(missing(f"real speech: {exc}"))
    rng = np.random.default_rng(7)
    parts: list[np.ndarray] = []
    for u in pool:
        parts += [u.audio, np.zeros(int(rng.uniform(0.3, 0.8) * realspeech.SR), np.float32)]
        if sum(len(p) for p in parts) > 40 * realspeech.SR:
            break
    speech = soxr.resample(np.concatenate(parts), realspeech.SR, SR).astype(np.float32)
    return speech


def stereo(mono: np.ndarray) -> np.ndarray:
    return np.stack([mono, mono], axis=1).astype(np.float32)


def under(speech: np.ndarray, bed: np.ndarray, db_below: float) -> np.ndarray:
    bed = bed[: len(speech)]
    return speech + bed * np.float32(rms(speech) * 10 ** (-db_below / 20) / rms(bed))


def test_speech_alone_is_music_free(talk: np.ndarray) -> None:
    assert sw.music_free(stereo(talk), GAP_DB)


@pytest.mark.parametrize("db_below", [20.0, 12.0, 6.0])
def test_a_music_bed_under_the_speech_is_music(talk: np.ndarray, db_below: float) -> None:
    bed = make_music(len(talk) / SR + 1, SR, seed=3)
    assert not sw.music_free(stereo(under(talk, bed, db_below)), GAP_DB)


def test_real_music_under_the_speech_is_music(talk: np.ndarray) -> None:
    music_set = pytest.importorskip("bench.music_set")
    if not music_set.available():
        pytest.skip("no real-music set (bench/music_set.py fetch)")
    bed = soxr.resample(music_set.bed(len(talk) / SR + 1, music_set.SR, seed=0), music_set.SR, SR)
    for db_below in (20.0, 12.0, 6.0):
        assert not sw.music_free(stereo(under(talk, bed.astype(np.float32), db_below)), GAP_DB), db_below


def test_a_noise_floor_too_close_to_the_speech_is_separated(talk: np.ndarray) -> None:
    hiss = np.random.default_rng(0).standard_normal(len(talk)).astype(np.float32)
    assert not sw.music_free(stereo(under(talk, hiss, 20.0)), GAP_DB)
    assert sw.music_free(stereo(under(talk, hiss, 45.0)), GAP_DB)  # a quiet room


def test_silence_and_tiny_chunks_are_music_free() -> None:
    assert sw.music_free(np.zeros((SR * 5, 2), np.float32), GAP_DB)
    assert sw.music_free(np.zeros((100, 2), np.float32), GAP_DB)


@pytest.mark.skipif(not SPLEETER_PYTHON.exists(), reason=missing(".venv-spleeter (scripts/install.sh)"))
def test_the_worker_passes_music_free_chunks_through(talk: np.ndarray, tmp_path: Path) -> None:
    """A recording whose first half is speech alone and second half speech over music: the first chunks pass
    through unchanged (up to 16-bit rounding), the music chunks are separated."""
    half = len(talk) // 2
    bed = make_music(len(talk) / SR + 1, SR, seed=5)[: len(talk) - half]
    mixed = np.concatenate([talk[:half], under(talk[half:], bed, 6.0)])
    src = tmp_path / "in.wav"
    sf.write(src, stereo(mixed), SR, subtype="PCM_16")
    sep = SeparatorProcess(SPLEETER_PYTHON, SPLEETER_MODELS, 10.0, 1.0, 300.0, music_gap_db=GAP_DB, threads=1)
    try:
        sep.separate(src, tmp_path / "out.wav")
        answer = sep.last_result
    finally:
        sep.close()
    assert answer is not None and answer["chunks"] == 5  # 42.7 s in chunks of 10 s
    assert 1 <= answer["music_free_chunks"] <= 2  # the speech-only half, never a chunk with music in it
    out, rate = sf.read(tmp_path / "out.wav", dtype="float32")
    assert rate == SR and len(out) == len(mixed)
    source, _ = sf.read(src, dtype="float32")
    first = slice(0, 9 * SR)  # inside the first chunk: passed through
    assert np.max(np.abs(out[first] - source[first].mean(axis=1))) <= 2.0 / 32768
    late = slice(half + 2 * SR, len(mixed) - SR)  # music under speech: Spleeter took most of it out
    assert rms(out[late]) < 0.9 * rms(source[late].mean(axis=1))
