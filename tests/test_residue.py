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
from ttsft_daemon.audio.residue import ResidueRemover, find_library, library_missing, pause_gap_db
from ttsft_daemon.config import config_from_dict
from ttsft_daemon.demo.audio import make_music
from ttsft_daemon.engine.local import LocalSeparator

REPO = Path(__file__).resolve().parents[1]
SR = sw.SAMPLE_RATE
SKIP_DB = float(config_from_dict({}).separation.residue_skip_gap_db or 0.0)


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


def real_music(seconds: float) -> np.ndarray | None:
    """Real game music (bench/music_set.py fetch) at SR, or None where it is not installed."""
    try:
        from bench import music_set
    except ImportError:
        return None
    if not music_set.available():
        return None
    bed: np.ndarray = soxr.resample(music_set.bed(seconds, music_set.SR, seed=0), music_set.SR, SR)
    return bed.astype(np.float32)


def separate_mix(tmp_path: Path, speech: np.ndarray, mask: np.ndarray, bed: np.ndarray, db_below: float = 6.0,
                 **separation: object) -> tuple[dict[str, object], np.ndarray, np.ndarray]:
    """Speech over `bed` `db_below` under it through the real Spleeter worker: (the separator's info, the vocal
    stem, the mix)."""
    if not (REPO / ".venv-spleeter" / "bin" / "python").exists():
        pytest.skip(missing("the Spleeter environment (scripts/install.sh)"))
    bed = bed[: len(speech)]
    mix = 0.25 * (speech + bed * np.float32(rms(speech[mask]) * 10 ** (-db_below / 20) / rms(bed)))
    src = tmp_path / f"talk-{db_below}.wav"
    if not src.exists():
        sf.write(src, np.stack([mix, mix], axis=1), SR, subtype="PCM_16")
    name = "-".join(f"{k}={v}" for k, v in separation.items()) or "defaults"
    config = config_from_dict({"paths": {"root": str(tmp_path / "root"), "models": str(REPO / "models")},
                               "separation": separation})
    separator = LocalSeparator(config)
    separator.open()
    try:
        info = separator.separate(src, tmp_path / f"vocals-{name}.wav", tmp_path / "work")
    finally:
        separator.close()
    return info, read_mono(tmp_path / f"vocals-{name}.wav"), mix


def test_the_music_spleeter_leaves_in_goes_down_and_the_speech_stays(tmp_path: Path, library: Path,
                                                                     talk: tuple[np.ndarray, np.ndarray]) -> None:
    """Speech over music 6 dB below it, through the real Spleeter worker, with and without the residue step (at the
    default residue_keep of 0.25 the cut is bounded at 12 dB). Real game music leaves residue, so the step runs by
    itself; where that set is not installed (bench/music_set.py fetch) the demo's synthetic bed is used and the step
    is forced (Spleeter takes most of that bed out, and residue_skip_gap_db would skip it)."""
    speech, mask = talk
    bed = real_music(len(speech) / SR + 1)
    force: dict[str, object] = {}
    if bed is None:
        bed, force = make_music(len(speech) / SR + 1, SR, seed=4), {"residue_skip_gap_db": None}
    info, plain, mix = separate_mix(tmp_path, speech, mask, bed, remove_residue=False)
    assert "residue_removed" not in info, info
    info, polished, _ = separate_mix(tmp_path, speech, mask, bed, **force)
    assert info.get("residue_removed") is True, info
    if not force:
        assert float(info["residue_pause_gap_db"]) < SKIP_DB, info  # type: ignore[arg-type]
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
    ResidueRemover(library, keep).run(tmp_path / "vocals-remove_residue=False.wav", tmp_path / "by-hand.wav")
    assert np.array_equal(read_mono(tmp_path / "by-hand.wav"), polished)


def test_a_stem_spleeter_cleaned_whole_skips_the_step(tmp_path: Path, library: Path,
                                                      talk: tuple[np.ndarray, np.ndarray]) -> None:
    """The demo's synthetic bed 12 dB under the speech leaves the stem's pauses near silence: RNNoise would have
    nothing to take out, so the stem is left as Spleeter made it (separation.residue_skip_gap_db)."""
    speech, mask = talk
    bed = make_music(len(speech) / SR + 1, SR, seed=4)
    info, kept, _ = separate_mix(tmp_path, speech, mask, bed, db_below=12.0)
    assert info.get("residue_removed") is False and float(info["residue_pause_gap_db"]) >= SKIP_DB, info  # type: ignore[arg-type]
    info, plain, _ = separate_mix(tmp_path, speech, mask, bed, db_below=12.0, remove_residue=False)
    assert "residue_removed" not in info and np.array_equal(kept, plain)
    info, forced, _ = separate_mix(tmp_path, speech, mask, bed, db_below=12.0, residue_skip_gap_db=None)
    assert info.get("residue_removed") is True and "residue_pause_gap_db" not in info, info
    assert not np.array_equal(forced, plain)


def test_the_pause_gap_reads_what_fills_the_pauses(tmp_path: Path, talk: tuple[np.ndarray, np.ndarray]) -> None:
    speech, _ = talk
    hiss = np.random.default_rng(1).standard_normal(len(speech)).astype(np.float32) * np.float32(rms(speech))
    gaps = {under: pause_gap_db(write_mono(tmp_path / f"{under}.wav",
                                           0.3 * (speech + hiss * np.float32(10 ** (-under / 20)))))
            for under in (25, 40, 60)}
    assert gaps[60] >= SKIP_DB > gaps[40] > gaps[25], gaps
    assert abs(gaps[25] - 25) < 8 and abs(gaps[40] - 40) < 8, gaps
    assert pause_gap_db(write_mono(tmp_path / "silence.wav", np.zeros(SR, np.float32))) < SKIP_DB  # nothing loud


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
