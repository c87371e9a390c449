"""Segmentation: properties on synthetic envelopes, the envelope readers, and real Piper speech.

Synthetic signals are built directly as RMS envelopes: *bursts* of loud frames (RMS 0.4-1.0) separated
by *gaps* (RMS 0, or a floor of at most 0.001). With every configuration drawn here the bursts are
loud and the gaps silent at the initial threshold, so the truth is known without the implementation:
- an *utterance* is a run of bursts joined by gaps shorter than `min_silence_seconds`;
- a cut must lie in a gap, unless it lies inside an utterance longer than `max_clip_seconds` (no pause
  there to use);
- every loud frame must lie in a returned segment, or in a reported dropped span; a dropped span is
  shorter than `min_clip_seconds` and cannot merge with its kept neighbours within the maximum.
"""

from __future__ import annotations

import dataclasses
import itertools
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ttsft_daemon.audio.segmentation import (
    SegmentationResult,
    find_segments,
    rms_envelope,
    rms_envelope_from_file,
    segment_envelope,
    speech_level,
)
from ttsft_daemon.config import SegmentationConfig
from ttsft_daemon.demo import audio as demo_audio

FRAME_S = 0.02
EPS = 1e-6


@dataclasses.dataclass
class Synthetic:
    env: np.ndarray
    loud: np.ndarray  # bool per frame


@st.composite
def configs(draw: st.DrawFn) -> SegmentationConfig:
    min_clip = draw(st.floats(0.3, 2.0))
    initial = draw(st.floats(0.05, 0.3))
    return SegmentationConfig(
        min_clip_seconds=min_clip,
        max_clip_seconds=draw(st.floats(2 * min_clip + 0.1, 20.0)),
        initial_silence_factor=initial,
        factor_step=draw(st.floats(0.3, 0.8)),
        min_factor=draw(st.floats(0.0, initial / 2)),
        min_silence_seconds=draw(st.floats(0.04, 0.5)),
        frame_seconds=FRAME_S,
    )


@st.composite
def signals(draw: st.DrawFn) -> Synthetic:
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    floor = draw(st.sampled_from([0.0, 0.0005, 0.001]))
    n_bursts = draw(st.integers(1, 12))
    lead = draw(st.integers(0, 100))
    parts = [np.full(lead, floor)]
    loud = [np.zeros(lead, dtype=bool)]
    for i in range(n_bursts):
        length = draw(st.integers(1, 1200))
        parts.append(rng.uniform(0.4, 1.0, length))
        loud.append(np.ones(length, dtype=bool))
        gap = draw(st.integers(1, 300)) if i < n_bursts - 1 else draw(st.integers(0, 100))
        parts.append(np.full(gap, floor))
        loud.append(np.zeros(gap, dtype=bool))
    return Synthetic(np.concatenate(parts), np.concatenate(loud))


def _frames(cfg: SegmentationConfig) -> tuple[int, int, int]:
    """(min clip, max clip, min silence) in frames, as the module rounds them."""
    return (
        int(np.ceil(cfg.min_clip_seconds / FRAME_S - 1e-9)),
        int(np.floor(cfg.max_clip_seconds / FRAME_S + 1e-9)),
        max(1, int(np.ceil(cfg.min_silence_seconds / FRAME_S - 1e-9))),
    )


def _to_frames(spans: list[tuple[float, float]]) -> list[tuple[int, int]]:
    return [(round(s / FRAME_S), round(e / FRAME_S)) for s, e in spans]


def _utterances(loud: np.ndarray, min_silence: int) -> list[tuple[int, int]]:
    """Runs of loud frames joined across gaps shorter than a pause."""
    idx = np.flatnonzero(loud)
    if len(idx) == 0:
        return []
    out: list[tuple[int, int]] = []
    start = prev = int(idx[0])
    for i in idx[1:]:
        if i - prev - 1 >= min_silence:
            out.append((start, prev + 1))
            start = int(i)
        prev = int(i)
    out.append((start, prev + 1))
    return out


def _check_properties(sig: Synthetic, cfg: SegmentationConfig, result: SegmentationResult) -> None:
    min_f, max_f, min_sil = _frames(cfg)
    n = len(sig.env)
    segs = _to_frames(result.segments)
    dropped = _to_frames(result.dropped)
    # Bounds, order, no overlap, no pure-silence segment.
    for (s, e), (s_sec, e_sec) in zip(segs, result.segments, strict=True):
        assert cfg.min_clip_seconds - EPS <= e_sec - s_sec <= cfg.max_clip_seconds + EPS
        assert 0 <= s < e <= n
        assert sig.loud[s:e].any()
    for (_, e1), (s2, _) in itertools.pairwise(segs):
        assert e1 <= s2
    # Coverage: every loud frame is in a segment or in a reported dropped span.
    covered = np.zeros(n, dtype=bool)
    for s, e in segs + dropped:
        covered[s:e] = True
    assert covered[sig.loud].all()
    # Dropped spans are short and could not merge with a kept neighbour.
    for s, e in dropped:
        assert e - s < min_f
        left = [seg for seg in segs if seg[1] <= s]
        right = [seg for seg in segs if seg[0] >= e]
        if left:
            assert e - left[-1][0] > max_f
        if right:
            assert right[0][1] - s > max_f
    # Cuts lie in silence, unless inside an utterance too long to fit in one clip.
    long_utterances = [u for u in _utterances(sig.loud, min_sil) if u[1] - u[0] > max_f]
    for x in [b for seg in segs for b in seg]:
        in_silence = x in (0, n) or not sig.loud[x - 1] or (x < n and not sig.loud[x])
        in_long = any(a < x < b for a, b in long_utterances)
        assert in_silence or in_long, (x, segs)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sig=signals(), cfg=configs())
def test_properties_on_bursts_and_gaps(sig: Synthetic, cfg: SegmentationConfig) -> None:
    _check_properties(sig, cfg, segment_envelope(sig.env, FRAME_S, cfg))


@settings(max_examples=100, deadline=None)
@given(seconds=st.floats(0.02, 120.0), cfg=configs(), seed=st.integers(0, 1000))
def test_no_silence_at_all_is_cut_into_bounded_contiguous_pieces(
    seconds: float, cfg: SegmentationConfig, seed: int
) -> None:
    n = max(1, round(seconds / FRAME_S))
    sig = Synthetic(np.random.default_rng(seed).uniform(0.4, 1.0, n), np.ones(n, dtype=bool))
    result = segment_envelope(sig.env, FRAME_S, cfg)
    _check_properties(sig, cfg, result)
    segs = _to_frames(result.segments)
    min_f = _frames(cfg)[0]
    if n < min_f:  # the documented exception: a whole input shorter than a clip is dropped
        assert segs == [] and _to_frames(result.dropped) == [(0, n)]
    else:
        assert segs[0][0] == 0 and segs[-1][1] == n
        assert all(e1 == s2 for (_, e1), (s2, _) in itertools.pairwise(segs))


def test_silence_and_empty_input_give_nothing() -> None:
    cfg = SegmentationConfig()
    assert find_segments(np.zeros(0), FRAME_S, cfg) == []
    assert find_segments(np.zeros(5000), FRAME_S, cfg) == []
    assert speech_level(np.zeros(10)) == 0.0


def test_sentences_split_at_pauses_and_long_silence_is_dropped() -> None:
    cfg = SegmentationConfig()
    env = np.concatenate([np.zeros(50), np.full(150, 0.5), np.zeros(40), np.full(200, 0.5),
                          np.zeros(1500), np.full(100, 0.5), np.zeros(3)])  # fmt: skip
    segs = _to_frames(find_segments(env, FRAME_S, cfg))
    assert len(segs) == 3
    assert segs[0][0] == 45 and segs[0][1] == 205  # keeps half a minimum pause (5 frames) of silence
    assert segs[1] == (235, 445)
    assert segs[2] == (1935, 2043)  # the long pause lost its middle; a short trailing silence is kept


def test_soft_endings_are_kept_with_the_segment() -> None:
    cfg = SegmentationConfig()
    tail = np.geomspace(0.04, 0.002, 10)  # below the silence threshold but above min_factor x level
    env = np.concatenate([np.zeros(100), np.full(200, 0.5), tail, np.zeros(100), np.full(200, 0.5)])
    segs = _to_frames(find_segments(env, FRAME_S, cfg))
    level = speech_level(env)
    audible_tail = int(np.sum(tail > cfg.min_factor * level))
    assert segs[0][1] >= 300 + audible_tail


def test_long_utterance_is_cut_at_a_shallow_dip_by_the_lenient_pass() -> None:
    cfg = SegmentationConfig()
    env = np.full(1000, 0.5)  # 20 s without a pause
    env[590:610] = 0.08  # 0.4 s dip: above 0.1 x level, below 0.2 x level
    result = segment_envelope(env, FRAME_S, cfg)
    assert result.pause_cuts == 1 and result.fallback_cuts == 0
    assert _to_frames(result.segments) == [(0, 600), (600, 1000)]


def test_without_any_dip_the_quietest_point_is_cut() -> None:
    cfg = SegmentationConfig()
    env = np.full(1000, 0.5)
    env[300:305] = 0.3  # too loud and too short for a pause, but the quietest place
    result = segment_envelope(env, FRAME_S, cfg)
    assert result.fallback_cuts == 1
    (_s1, e1), (s2, _e2) = _to_frames(result.segments)
    assert 300 <= e1 <= 305 and e1 == s2


def test_short_segment_merges_with_the_nearer_neighbour() -> None:
    cfg = SegmentationConfig()
    env = np.concatenate([np.full(200, 0.5), np.zeros(60), np.full(20, 0.5), np.zeros(20), np.full(200, 0.5)])
    segs = _to_frames(find_segments(env, FRAME_S, cfg))
    # The 0.4 s word merges rightwards: its right gap (0.4 s) is shorter than its left one (1.2 s).
    assert segs == [(0, 205), (255, 500)]


def test_isolated_short_word_is_dropped_and_reported() -> None:
    cfg = SegmentationConfig(max_clip_seconds=4.0)
    env = np.concatenate([np.full(150, 0.5), np.zeros(100), np.full(20, 0.5), np.zeros(100), np.full(150, 0.5)])
    result = segment_envelope(env, FRAME_S, cfg)
    assert len(result.segments) == 2
    (ds, de), = _to_frames(result.dropped)
    assert ds <= 250 and de >= 270


# ------------------------------------------------------------------------------------------- envelopes


def test_rms_envelope_values_and_partial_last_frame() -> None:
    sr = 16000
    t = np.arange(int(sr * 1.01)) / sr
    sine = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    env, frame_s = rms_envelope(sine, sr, 0.02)
    assert frame_s == pytest.approx(0.02)
    assert len(env) == 51  # 50 full frames and a partial one
    np.testing.assert_allclose(env[:50], 0.5 / np.sqrt(2), rtol=0.01)


def test_file_envelope_matches_memory_envelope(tmp_path: Path) -> None:
    sr = 22050
    rng = np.random.default_rng(0)
    stereo = (rng.standard_normal((sr * 23 + 123, 2)) * 0.1).astype(np.float32)
    path = tmp_path / "x.wav"
    sf.write(path, stereo, sr, subtype="FLOAT")
    from_file, fs1 = rms_envelope_from_file(path, 0.02)
    in_memory, fs2 = rms_envelope(stereo, sr, 0.02)
    assert fs1 == fs2
    np.testing.assert_allclose(from_file, in_memory, rtol=1e-5, atol=1e-7)


def test_file_envelope_memory_stays_flat(tmp_path: Path) -> None:
    sr = 16000
    path = tmp_path / "long.wav"
    rng = np.random.default_rng(1)
    with sf.SoundFile(path, "w", sr, 1, subtype="PCM_16") as f:
        for _ in range(30):  # 5 minutes, written 10 s at a time
            f.write((rng.standard_normal(sr * 10) * 0.1).astype(np.float32))
    tracemalloc.start()
    try:
        env, _ = rms_envelope_from_file(path, 0.02)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(env) == 15000
    whole_file_float64 = 300 * sr * 8
    assert peak < whole_file_float64 / 4


# -------------------------------------------------------------------------------------- real speech


@pytest.fixture(scope="module")
def speech() -> demo_audio.Recording:
    return demo_audio.make_recording(demo_audio.SENTENCES[:12], music_db=None, seed=4, sr=22050)


def _cut_in_pause_ratio(segments: list[tuple[float, float]], rec: demo_audio.Recording) -> float:
    """Share of the cuts between consecutive segments that lie within a true pause."""
    cuts = [(e1, s2) for (_, e1), (s2, _) in itertools.pairwise(segments)]
    inside = [any(p0 <= a and b <= p1 for p0, p1 in rec.pauses) for a, b in cuts]
    return sum(inside) / len(inside)


@pytest.mark.parametrize("noise_db", [None, -40.0, -30.0])
def test_real_speech_is_cut_in_the_true_pauses(speech: demo_audio.Recording, noise_db: float | None) -> None:
    cfg = SegmentationConfig()
    audio = speech.speech.astype(np.float64)
    if noise_db is not None:  # separated-like: a low noise floor under the voice
        voiced = np.concatenate([audio[int(s * speech.sr) : int(e * speech.sr)] for s, e, _ in speech.sentences])
        noise = np.random.default_rng(7).standard_normal(len(audio))
        audio = audio + noise * np.sqrt(np.mean(voiced**2)) * 10 ** (noise_db / 20)
    env, frame_s = rms_envelope(audio, speech.sr, cfg.frame_seconds)
    result = segment_envelope(env, frame_s, cfg)
    segments = result.segments
    assert len(segments) >= 5
    for s, e in segments:
        assert cfg.min_clip_seconds - EPS <= e - s <= cfg.max_clip_seconds + EPS
    assert _cut_in_pause_ratio(segments, speech) >= 0.9
    assert result.dropped == []
    # Every sentence's audible body is inside one segment.
    for start, end, text in speech.sentences:
        assert any(s <= start + 0.05 and end - 0.1 <= e for s, e in segments), text


def test_real_speech_with_a_loud_floor_uses_the_lenient_pass(speech: demo_audio.Recording) -> None:
    cfg = SegmentationConfig()
    audio = speech.speech.astype(np.float64)
    noise = np.random.default_rng(8).standard_normal(len(audio))
    audio = audio + noise * 0.1 * np.sqrt(np.mean(audio**2))  # a floor no first-pass pause gets under
    env, frame_s = rms_envelope(audio, speech.sr, cfg.frame_seconds)
    result = segment_envelope(env, frame_s, cfg)
    assert result.pause_cuts >= 1
    for s, e in result.segments:
        assert cfg.min_clip_seconds - EPS <= e - s <= cfg.max_clip_seconds + EPS
    assert _cut_in_pause_ratio(result.segments, speech) >= 0.9
