"""Vocal separation: the chunked Spleeter worker process and its driver.

Fast tests cover the worker's stitching and level arithmetic (in this environment: the worker
module needs only numpy until it loads the model) and the driver's start-up failures. Slow tests
run the real Spleeter 2stems model on real Piper speech mixed with music.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import missing
from ttsft_daemon.audio import spleeter_worker as sw
from ttsft_daemon.audio.separation import SeparatorProcess, decode_and_separate
from ttsft_daemon.demo import audio as demo_audio
from ttsft_daemon.errors import RejectedInput, ShuttingDown, WorkerDied

REPO = Path(__file__).resolve().parents[1]
SPLEETER_PYTHON = REPO / ".venv-spleeter" / "bin" / "python"
SPLEETER_MODELS = REPO / "models" / "spleeter"
SR = 44100

needs_spleeter = pytest.mark.skipif(not SPLEETER_PYTHON.exists(),
                                    reason=missing("no .venv-spleeter (scripts/install.sh)"))


# ------------------------------------------------------------------------------------------ helpers


def si_sdr(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Scale-invariant signal-to-distortion ratio in dB."""
    n = min(len(estimate), len(reference))
    est, ref = estimate[:n].astype(np.float64), reference[:n].astype(np.float64)
    target = (np.dot(est, ref) / np.dot(ref, ref)) * ref
    return float(10 * np.log10(np.sum(target**2) / np.sum((est - target) ** 2)))


def write_stereo(path: Path, mono: np.ndarray, sr: int = SR) -> Path:
    sf.write(path, np.stack([mono, mono], axis=1), sr, subtype="PCM_16", format="WAV")
    return path


def read_wav(path: Path) -> tuple[np.ndarray, int, int]:
    """(float samples, sample rate, channels), checking the file is 16-bit PCM."""
    with wave.open(str(path), "rb") as reader:
        assert reader.getsampwidth() == 2
        rate, channels = reader.getframerate(), reader.getnchannels()
    audio, _ = sf.read(path, dtype="float32")
    return audio, rate, channels


def make_separator(chunk_seconds: float = 20.0, overlap_seconds: float = 2.0, timeout: float = 300.0
                   ) -> SeparatorProcess:
    return SeparatorProcess(SPLEETER_PYTHON, SPLEETER_MODELS, chunk_seconds, overlap_seconds, timeout)


class _Identity:
    """Stands in for the model where only the stitching is under test: 'vocals' = the input."""

    def vocals(self, stereo: np.ndarray) -> np.ndarray:
        mono: np.ndarray = stereo.mean(axis=1, dtype=np.float32)
        return mono


# ------------------------------------------------------------------------- chunk plan and stitching


@given(
    total=st.integers(1, 400_000),
    chunk=st.integers(1_000, 100_000),
    overlap_fraction=st.floats(0.0, 0.49),
)
@settings(max_examples=300, deadline=None)
def test_chunk_plan_covers_the_input_once_with_bounded_chunks(total: int, chunk: int, overlap_fraction: float) -> None:
    overlap = int(chunk * overlap_fraction)
    plan = sw.plan_chunks(total, chunk, overlap)
    assert plan[0].start == 0 and plan[-1].stop == plan[-1].emit_until == total
    for before, after in itertools.pairwise(plan):
        # Each sample is emitted once: by one chunk alone, or in the cross-fade both chunks share.
        assert after.start == before.emit_until
        assert before.stop - after.start == min(2 * overlap, total - after.start)
    for c in plan:
        # At most one chunk plus its overlaps, plus a remainder of up to 2 * overlap folded into the last.
        assert 0 < c.stop - c.start <= chunk + 3 * overlap


def test_linear_cross_fade_of_equal_signals_is_exact_and_equal_power_is_not() -> None:
    signal_ = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    assert np.allclose(sw.cross_fade(signal_, signal_, "linear"), signal_, atol=1e-6)
    # Equal power keeps the power of *uncorrelated* signals; two estimates of one vocal are
    # correlated, so it bumps the level mid-fade (this is why linear is the default).
    boosted = sw.cross_fade(signal_, signal_, "equal_power")
    assert np.max(np.abs(boosted[400:600]) / np.abs(signal_[400:600])) > 1.35


@pytest.mark.parametrize(("seconds", "chunk", "overlap"), [(10.0, 3.0, 0.5), (10.0, 3.0, 0.0), (2.0, 5.0, 1.0),
                                                            (10.2, 3.0, 0.5)])
def test_stitched_identity_reproduces_the_input(tmp_path: Path, seconds: float, chunk: float, overlap: float) -> None:
    rng = np.random.default_rng(1)
    mono = (0.3 * rng.standard_normal(int(seconds * SR))).clip(-1, 1).astype(np.float32)
    src = write_stereo(tmp_path / "in.wav", mono)
    with wave.open(str(src), "rb") as reader:
        plan = sw.plan_chunks(reader.getnframes(), int(chunk * SR), int(overlap * SR))
        out = np.concatenate(list(sw.separated_pieces(_Identity(), reader, plan, "linear", gain=4.0)))
    expected, _ = sf.read(src, dtype="float32")
    assert len(out) == len(expected)
    assert np.max(np.abs(out - expected[:, 0])) < 1e-5


def test_active_level_ignores_silence_and_clamps_the_gain(tmp_path: Path) -> None:
    t = np.arange(3 * SR) / SR
    tone = 0.1 * np.sin(2 * np.pi * 440 * t)  # RMS = 0.1 / sqrt(2) = -23.01 dBFS
    mono = np.concatenate([tone, np.zeros(5 * SR)]).astype(np.float32)  # mostly silence
    src = write_stereo(tmp_path / "tone.wav", mono)
    with wave.open(str(src), "rb") as reader:
        level = sw.active_level_dbfs(sw.frame_energies(reader))
    assert level is not None and abs(level - (-23.01)) < 0.1
    assert sw.active_level_dbfs(np.zeros(20)) is None
    assert sw.level_gain_db(None, -14.0) == 0.0
    assert sw.level_gain_db(-23.0, None) == 0.0
    assert sw.level_gain_db(-23.0, -14.0) == pytest.approx(9.0)
    assert sw.level_gain_db(-90.0, -14.0) == sw.MAX_GAIN_DB


# ---------------------------------------------------------------------------- driver without model


@needs_spleeter
def test_start_without_the_model_raises_worker_died_with_its_stderr(tmp_path: Path) -> None:
    sep = SeparatorProcess(SPLEETER_PYTHON, tmp_path / "no-models", 20.0, 2.0, 60.0)
    with pytest.raises(WorkerDied) as info:
        sep.start()
    message = str(info.value)
    assert "not installed" in message and "2stems" in message
    assert "spleeter_worker[" in message  # the stderr tail is part of the message
    assert sep.pid is None
    sep.close()
    sep.close()  # idempotent


def test_start_with_a_missing_python_raises_worker_died(tmp_path: Path) -> None:
    sep = SeparatorProcess(tmp_path / "nope" / "python", SPLEETER_MODELS, 20.0, 2.0, 60.0)
    with pytest.raises(WorkerDied, match="cannot start"):
        sep.start()
    sep.close()


def test_separation_after_close_raises_shutting_down(tmp_path: Path) -> None:
    sep = SeparatorProcess(SPLEETER_PYTHON, SPLEETER_MODELS, 20.0, 2.0, 60.0)
    sep.close()
    with pytest.raises(ShuttingDown):
        sep.separate(tmp_path / "a.wav", tmp_path / "b.wav")


def test_decode_without_separation_gives_mono_44k_pcm16(tmp_path: Path) -> None:
    rec = demo_audio.make_recording(demo_audio.SENTENCES[:1], music_db=None, seed=0, sr=22050)
    src = tmp_path / "speech.mp3"
    demo_audio.write_media(rec, src, "mp3")
    dst = tmp_path / "out.wav"
    decode_and_separate(None, src, dst, tmp_path / "work", ffmpeg_timeout=60)
    audio, rate, channels = read_wav(dst)
    assert (rate, channels) == (SR, 1)
    assert abs(len(audio) / SR - rec.duration) < 0.1
    assert float(np.sqrt(np.mean(np.square(audio)))) > 0.01


# -------------------------------------------------------------------------------- real Spleeter


@pytest.fixture(scope="module")
def separator() -> Iterator[SeparatorProcess]:
    if not SPLEETER_PYTHON.exists():
        pytest.skip(missing("no .venv-spleeter (scripts/install.sh)"))
    sep = make_separator()
    sep.start()
    yield sep
    sep.close()


@pytest.fixture(scope="module")
def speech_over_music_60s(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, demo_audio.Recording]:
    rec = demo_audio.make_recording(demo_audio.SENTENCES[:16], music_db=-6.0, seed=7, sr=SR)
    assert rec.duration >= 60.0
    path = write_stereo(tmp_path_factory.mktemp("sep") / "mix60.wav", rec.mix[: 60 * SR])
    return path, rec


@pytest.mark.slow
def test_chunked_separation_matches_unchunked(
    separator: SeparatorProcess, speech_over_music_60s: tuple[Path, demo_audio.Recording], tmp_path: Path
) -> None:
    src, rec = speech_over_music_60s
    separator.separate(src, tmp_path / "chunked.wav")
    assert separator.last_result is not None and separator.last_result["chunks"] == 3
    chunk_seconds = separator.chunk_seconds
    separator.chunk_seconds = 120.0  # larger than the input: one piece
    try:
        separator.separate(src, tmp_path / "whole.wav")
        assert separator.last_result is not None and separator.last_result["chunks"] == 1
    finally:
        separator.chunk_seconds = chunk_seconds
    chunked, rate, channels = read_wav(tmp_path / "chunked.wav")
    whole, _, _ = read_wav(tmp_path / "whole.wav")
    assert (rate, channels) == (SR, 1) and len(chunked) == len(whole) == 60 * SR
    agreement = si_sdr(chunked, whole)
    print(f"chunked vs unchunked SI-SDR: {agreement:.2f} dB")
    assert agreement > 20.0
    # Both are vocal stems, not copies of the mix.
    speech = rec.speech[: 60 * SR]
    assert si_sdr(chunked, speech) > si_sdr(rec.mix[: 60 * SR], speech) + 6


@pytest.mark.slow
@pytest.mark.parametrize("music_db", [0.0, -12.0])
def test_vocal_stem_is_much_closer_to_the_speech_than_the_mix(
    separator: SeparatorProcess, tmp_path: Path, music_db: float
) -> None:
    rec = demo_audio.make_recording(demo_audio.SENTENCES[:8], music_db=music_db, seed=0, sr=SR)
    src = write_stereo(tmp_path / "mix.wav", rec.mix)
    separator.separate(src, tmp_path / "vocals.wav")
    vocals, rate, channels = read_wav(tmp_path / "vocals.wav")
    assert (rate, channels) == (SR, 1) and len(vocals) == len(rec.mix)
    mix_score, vocal_score = si_sdr(rec.mix, rec.speech), si_sdr(vocals, rec.speech)
    print(f"music {music_db} dB: mix SI-SDR {mix_score:.2f} dB, vocals {vocal_score:.2f} dB")
    assert vocal_score >= mix_score + 6.0


@pytest.mark.slow
def test_one_worker_serves_many_files_with_one_model_load(separator: SeparatorProcess, tmp_path: Path) -> None:
    pid = separator.pid
    served_before = separator.ping()["served"]
    rec = demo_audio.make_recording(demo_audio.SENTENCES[20:22], music_db=-6.0, seed=2, sr=SR)
    sources = [write_stereo(tmp_path / "a.wav", rec.mix)]
    for kind in ("mp3", "mp4"):
        demo_audio.write_media(rec, tmp_path / f"b.{kind}", kind)
        sources.append(tmp_path / f"b.{kind}")
    for i, src in enumerate(sources):
        dst = tmp_path / f"out{i}.wav"
        decode_and_separate(separator, src, dst, tmp_path / "work", ffmpeg_timeout=60)
        audio, rate, channels = read_wav(dst)
        assert (rate, channels) == (SR, 1) and abs(len(audio) - len(rec.mix)) < 0.1 * SR
        assert separator.last_result is not None and separator.last_result["pid"] == pid
    assert list((tmp_path / "work").iterdir()) == []  # the stereo temporaries are gone
    answer = separator.ping()
    assert answer["pid"] == pid == separator.pid
    assert answer["model_loads"] == 1
    assert answer["served"] == served_before + len(sources)


@pytest.mark.slow
def test_input_shorter_than_one_stft_frame_is_separated(separator: SeparatorProcess, tmp_path: Path) -> None:
    tiny = np.random.default_rng(3).uniform(-0.1, 0.1, 1000).astype(np.float32)
    separator.separate(write_stereo(tmp_path / "tiny.wav", tiny), tmp_path / "out.wav")
    audio, rate, channels = read_wav(tmp_path / "out.wav")
    assert (rate, channels, len(audio)) == (SR, 1, 1000)


@pytest.mark.slow
def test_bad_input_is_rejected_and_the_worker_carries_on(separator: SeparatorProcess, tmp_path: Path) -> None:
    pid = separator.pid
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(np.random.default_rng(0).bytes(50_000))
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 100)
    wrong_rate = write_stereo(tmp_path / "22k.wav", np.zeros(22050, np.float32), sr=22050)
    empty = write_stereo(tmp_path / "empty.wav", np.zeros(0, np.float32))
    for src, why in [(garbage, "not a PCM WAV"), (text, "not a PCM WAV"), (wrong_rate, "44100 Hz"),
                     (empty, "no audio samples"), (tmp_path / "missing.wav", "not found")]:
        dst = tmp_path / "out.wav"
        with pytest.raises(RejectedInput, match=why):
            separator.separate(src, dst)
        assert not dst.exists()
    assert separator.pid == pid
    assert separator.ping()["ok"] is True


@pytest.mark.slow
def test_worker_killed_mid_request_raises_worker_died_and_is_restarted(
    speech_over_music_60s: tuple[Path, demo_audio.Recording], tmp_path: Path
) -> None:
    src, _ = speech_over_music_60s
    dst = tmp_path / "vocals.wav"
    with make_separator(chunk_seconds=10.0, overlap_seconds=1.0) as sep:
        first_pid = sep.pid
        assert first_pid is not None

        def kill_once_writing_started() -> None:
            deadline = time.monotonic() + 120
            while not dst.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(first_pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_once_writing_started)
        killer.start()
        with pytest.raises(WorkerDied, match="killed by signal 9"):
            sep.separate(src, dst)
        killer.join()
        assert not dst.exists()
        sep.separate(src, dst)  # restarts the worker
        assert sep.pid not in (None, first_pid)
        assert read_wav(dst)[1:] == (SR, 1)


@pytest.mark.slow
def test_request_past_the_time_limit_kills_the_worker(
    speech_over_music_60s: tuple[Path, demo_audio.Recording], tmp_path: Path
) -> None:
    src, _ = speech_over_music_60s
    sep = make_separator(chunk_seconds=10.0, overlap_seconds=1.0, timeout=0.5)
    try:
        sep.start()
        pid = sep.pid
        assert pid is not None
        with pytest.raises(WorkerDied, match="time limit"):
            sep.separate(src, tmp_path / "vocals.wav")
        assert not (tmp_path / "vocals.wav").exists()
        assert sep.pid is None
        assert not Path(f"/proc/{pid}").exists()  # killed and reaped
    finally:
        sep.close()


@pytest.mark.slow
def test_concurrent_callers_are_served_one_at_a_time(separator: SeparatorProcess, tmp_path: Path) -> None:
    rec = demo_audio.make_recording(demo_audio.SENTENCES[5:6], music_db=-6.0, seed=4, sr=SR)
    src = write_stereo(tmp_path / "mix.wav", rec.mix)
    served_before = separator.ping()["served"]
    errors: list[BaseException] = []

    def separate(i: int) -> None:
        try:
            separator.separate(src, tmp_path / f"out{i}.wav")
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=separate, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    outputs = [read_wav(tmp_path / f"out{i}.wav")[0] for i in range(3)]
    assert all(np.array_equal(outputs[0], o) for o in outputs[1:])  # same input, same stem
    assert separator.ping()["served"] == served_before + 3


@pytest.mark.slow
def test_close_during_a_request_raises_shutting_down(
    speech_over_music_60s: tuple[Path, demo_audio.Recording], tmp_path: Path
) -> None:
    src, _ = speech_over_music_60s
    dst = tmp_path / "vocals.wav"
    sep = make_separator(chunk_seconds=10.0, overlap_seconds=1.0)
    sep.start()
    pid = sep.pid

    def close_once_writing_started() -> None:
        deadline = time.monotonic() + 120
        while not dst.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        sep.close()

    closer = threading.Thread(target=close_once_writing_started)
    closer.start()
    with pytest.raises(ShuttingDown):
        sep.separate(src, dst)
    closer.join()
    assert not dst.exists()
    assert sep.pid is None and not Path(f"/proc/{pid}").exists()
