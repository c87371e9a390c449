"""Music residue removal (separation.remove_residue): RNNoise over Spleeter's vocal stem, on a real person's speech
under music, through the real Spleeter worker: the music left in the pauses goes down, the speech stays, the stem
keeps its length and timing; a recording without music is never touched."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from tests import realspeech
from tests.conftest import missing
from ttsft_daemon.audio import spleeter_worker as sw
from ttsft_daemon.audio.residue import ResidueRemover, find_library, library_missing
from ttsft_daemon.config import config_from_dict
from ttsft_daemon.demo.audio import make_music
from ttsft_daemon.engine.local import LocalSeparator

REPO = Path(__file__).resolve().parents[1]
SR = sw.SAMPLE_RATE


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def db(x: float) -> float:
    return 20.0 * float(np.log10(max(x, 1e-12)))


@pytest.fixture(scope="module")
def library() -> Path:
    found = find_library()
    if found is None:
        pytest.skip(missing(str(library_missing())))
    return found


@pytest.fixture(scope="module")
def talk() -> tuple[np.ndarray, np.ndarray]:
    """25 s of Asterisk's Allison with 0.4-0.9 s pauses at 44.1 kHz, and the mask of where she speaks."""
    try:
        pool = realspeech.utterances("allison")
    except FileNotFoundError as exc:
        pytest.skip(missing(f"real speech: {exc}"))
    rng = np.random.default_rng(3)
    parts: list[np.ndarray] = []
    spoken: list[np.ndarray] = []
    for u in pool:
        pause = np.zeros(int(rng.uniform(0.4, 0.9) * realspeech.SR), np.float32)
        parts += [u.audio, pause]
        spoken += [np.ones(len(u.audio), bool), np.zeros(len(pause), bool)]
        if sum(len(p) for p in parts) > 25 * realspeech.SR:
            break
    speech = soxr.resample(np.concatenate(parts), realspeech.SR, SR).astype(np.float32)
    mask = np.concatenate(spoken)[np.minimum((np.arange(len(speech)) * realspeech.SR) // SR,
                                             sum(len(s) for s in spoken) - 1)]
    return speech, mask


def write_mono(path: Path, x: np.ndarray) -> Path:
    sf.write(path, np.clip(x, -1, 1), SR, subtype="PCM_16")
    return path


def read_mono(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getnchannels() == 1 and w.getframerate() == SR
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0


def test_clean_speech_keeps_its_length_timing_and_level(tmp_path: Path, library: Path,
                                                        talk: tuple[np.ndarray, np.ndarray]) -> None:
    speech, mask = talk
    src = write_mono(tmp_path / "in.wav", speech * 0.3)
    ResidueRemover(library).run(src, tmp_path / "out.wav")
    x, y = read_mono(src), read_mono(tmp_path / "out.wav")
    assert len(y) == len(x)
    window = slice(SR, 20 * SR)
    lags = range(-300, 301, 5)
    best = max(lags, key=lambda lag: float(np.dot(x[window], np.roll(y, -lag)[window])))
    assert abs(best) <= 5, f"the output is shifted by {best} samples"
    assert abs(db(rms(y[mask])) - db(rms(x[mask]))) < 2.0


def test_the_music_spleeter_leaves_in_goes_down_and_the_speech_stays(tmp_path: Path, library: Path,
                                                                     talk: tuple[np.ndarray, np.ndarray]) -> None:
    """Speech over music 6 dB below it, through the real Spleeter worker, with and without the residue step (at the
    default residue_keep of 0.25 the cut is bounded at 12 dB; measured 8.9 dB here, 13.1 dB with keep 0)."""
    if not (REPO / ".venv-spleeter" / "bin" / "python").exists():
        pytest.skip(missing("the Spleeter environment (scripts/install.sh)"))
    speech, mask = talk
    bed = make_music(len(speech) / SR + 1, SR, seed=4)[: len(speech)]
    mix = 0.25 * (speech + bed * np.float32(rms(speech[mask]) * 10 ** (-6 / 20) / rms(bed)))
    src = tmp_path / "talk.wav"
    sf.write(src, np.stack([mix, mix], axis=1), SR, subtype="PCM_16")
    stems = {}
    for on in (False, True):
        config = config_from_dict({"paths": {"root": str(tmp_path / "root"), "models": str(REPO / "models")},
                                   "separation": {"remove_residue": on}})
        separator = LocalSeparator(config)
        separator.open()
        try:
            info = separator.separate(src, tmp_path / f"vocals-{on}.wav", tmp_path / "work")
        finally:
            separator.close()
        assert bool(info.get("residue_removed")) is on, info
        stems[on] = read_mono(tmp_path / f"vocals-{on}.wav")
    plain, polished = stems[False], stems[True]
    assert len(plain) == len(polished) == len(mix)
    pauses = ~mask
    pauses[: SR // 2] = False  # the first half second: RNNoise is still learning the noise
    before = db(rms(plain[pauses])) - db(rms(plain[mask]))
    after = db(rms(polished[pauses])) - db(rms(polished[mask]))
    print(f"music in the pauses: {before:.1f} dB -> {after:.1f} dB under the speech")
    assert after < before - 6.0, f"music in the pauses: {before:.1f} dB -> {after:.1f} dB under the speech"
    assert abs(db(rms(polished[mask])) - db(rms(plain[mask]))) < 3.0, "the speech lost level"
    # The same step by hand on the plain stem gives the engine's output exactly.
    keep = config_from_dict({}).separation.residue_keep
    ResidueRemover(library, keep).run(tmp_path / "vocals-False.wav", tmp_path / "by-hand.wav")
    assert np.array_equal(read_mono(tmp_path / "by-hand.wav"), polished)


def test_a_recording_without_music_is_not_touched(tmp_path: Path, library: Path,
                                                  talk: tuple[np.ndarray, np.ndarray]) -> None:
    if not (REPO / ".venv-spleeter" / "bin" / "python").exists():
        pytest.skip(missing("the Spleeter environment (scripts/install.sh)"))
    speech, _ = talk
    src = tmp_path / "talk.wav"
    sf.write(src, np.stack([speech, speech], axis=1) * 0.3, SR, subtype="PCM_16")
    config = config_from_dict({"paths": {"root": str(tmp_path / "root"), "models": str(REPO / "models")}})
    separator = LocalSeparator(config)
    separator.open()
    try:
        info = separator.separate(src, tmp_path / "vocals.wav", tmp_path / "work")
    finally:
        separator.close()
    assert info["music_free_chunks"] == info["chunks"] and "residue_removed" not in info


def test_a_missing_library_is_said_clearly(tmp_path: Path) -> None:
    why = library_missing(tmp_path / "nowhere" / "librnnoise.so")
    assert why is not None and "librnnoise not found" in why and "nowhere" in why
    assert find_library(tmp_path / "nowhere" / "librnnoise.so") is None


def test_keep_mixes_the_input_back_in_time(tmp_path: Path, library: Path,
                                           talk: tuple[np.ndarray, np.ndarray]) -> None:
    speech, _ = talk
    src = write_mono(tmp_path / "in.wav", speech[: 8 * SR] * 0.3)
    ResidueRemover(library).run(src, tmp_path / "alone.wav")
    ResidueRemover(library, keep=0.25).run(src, tmp_path / "kept.wav")
    x, alone, kept = read_mono(src), read_mono(tmp_path / "alone.wav"), read_mono(tmp_path / "kept.wav")
    assert len(kept) == len(x)
    assert np.max(np.abs(kept - (0.75 * alone + 0.25 * x))) < 3 / 32768
    with pytest.raises(ValueError):
        ResidueRemover(library, keep=1.0)
