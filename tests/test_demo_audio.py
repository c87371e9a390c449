from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ttsft_daemon.audio import media
from ttsft_daemon.demo import audio as demo_audio


@pytest.fixture(scope="module")
def recording() -> demo_audio.Recording:
    return demo_audio.make_recording(demo_audio.SENTENCES[:4], music_db=-12.0, seed=3, sr=44100)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def test_speak_returns_one_non_silent_array_per_text() -> None:
    texts = demo_audio.SENTENCES[:3]
    spoken, sr = demo_audio.speak(texts)
    assert sr == 22050
    assert len(spoken) == 3
    for audio, text in zip(spoken, texts, strict=True):
        assert audio.dtype == np.float32 and audio.ndim == 1
        # A sentence of ~10 words takes more than a second and less than ten.
        assert 1.0 < len(audio) / sr < 10.0, text
        assert _rms(audio) > 0.02


def test_speak_trims_edge_silence() -> None:
    (audio,), sr = demo_audio.speak(["Hello there."])
    edge = int(0.02 * sr)
    assert _rms(audio[:edge]) > 1e-4 or _rms(audio[-edge:]) > 1e-4
    assert len(audio) / sr < 2.0


def test_ground_truth_is_consistent(recording: demo_audio.Recording) -> None:
    rec = recording
    assert len(rec.sentences) == 4 and len(rec.pauses) == 3
    assert len(rec.speech) == len(rec.mix) == len(rec.music)  # type: ignore[arg-type]
    for (_, end, _), (p_start, p_end), (next_start, _, _) in zip(
        rec.sentences[:-1], rec.pauses, rec.sentences[1:], strict=True
    ):
        assert p_start == pytest.approx(end, abs=1e-6)
        assert p_end == pytest.approx(next_start, abs=1e-6)
        assert 0.6 - 1e-3 <= p_end - p_start <= 1.2 + 1e-3
    sr = rec.sr
    for p_start, p_end in rec.pauses:
        gap = rec.speech[int(p_start * sr) + 1 : int(p_end * sr) - 1]
        assert np.max(np.abs(gap)) == 0.0
    for start, end, _ in rec.sentences:
        assert _rms(rec.speech[int(start * sr) : int(end * sr)]) > 0.02
    assert rec.sentences[-1][1] < rec.duration


def test_music_level_is_relative_to_speech(recording: demo_audio.Recording) -> None:
    rec = recording
    assert rec.music is not None
    voiced = np.concatenate([rec.speech[int(s * rec.sr) : int(e * rec.sr)] for s, e, _ in rec.sentences])
    ratio_db = 20 * np.log10(_rms(rec.music) / _rms(voiced))
    assert ratio_db == pytest.approx(-12.0, abs=0.5)
    assert np.max(np.abs(rec.mix)) <= 0.99 + 1e-6
    np.testing.assert_allclose(rec.mix, rec.speech + rec.music, atol=1e-6)


def test_no_music_means_mix_is_speech() -> None:
    rec = demo_audio.make_recording(demo_audio.SENTENCES[:2], music_db=None, seed=1, sr=22050)
    assert rec.music is None
    np.testing.assert_array_equal(rec.mix, rec.speech)


def test_music_is_deterministic_and_musical() -> None:
    a = demo_audio.make_music(4.0, 22050, seed=5)
    b = demo_audio.make_music(4.0, 22050, seed=5)
    c = demo_audio.make_music(4.0, 22050, seed=6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(a) == 4 * 22050 and a.dtype == np.float32
    # Tonal: most energy sits in a few spectral peaks below 2 kHz (chords and bass), not spread like noise.
    spectrum = np.abs(np.fft.rfft(a)) ** 2
    freqs = np.fft.rfftfreq(len(a), 1 / 22050)
    assert spectrum[freqs < 2000].sum() / spectrum.sum() > 0.8


@pytest.mark.parametrize("kind", ["wav", "mp3", "mp4"])
def test_write_media_probes_with_right_duration(
    recording: demo_audio.Recording, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / f"demo.{kind}"
    demo_audio.write_media(recording, path, kind)
    info = media.probe(path)
    assert info.duration == pytest.approx(recording.duration, abs=0.2)
    assert info.has_video is (kind == "mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left behind


def test_write_media_rejects_unknown_kind(recording: demo_audio.Recording, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind"):
        demo_audio.write_media(recording, tmp_path / "x.ogg", "ogg")


def test_write_ground_truth(recording: demo_audio.Recording, tmp_path: Path) -> None:
    path = tmp_path / "truth.json"
    demo_audio.write_ground_truth(recording, path)
    data = json.loads(path.read_text())
    assert [s["text"] for s in data["sentences"]] == demo_audio.SENTENCES[:4]
    assert len(data["pauses"]) == 3
    assert data["pauses"][0]["start"] == pytest.approx(recording.sentences[0][1])
    assert data["duration"] == pytest.approx(recording.duration)
