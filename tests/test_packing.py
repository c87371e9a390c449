"""Packing clips into shared Whisper/DNSMOS passes: the window plan and giving each word back to its clip."""

from __future__ import annotations

import itertools
import threading
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ttsft_daemon.config import TranscriptionConfig
from ttsft_daemon.text.packing import (
    GAP_SECONDS,
    RETRY_GAP_SECONDS,
    ClipWords,
    PackedResults,
    Span,
    layout,
    plan_windows,
    split_words,
)
from ttsft_daemon.text.transcription import Transcriber, Transcript


@given(st.lists(st.floats(min_value=0.3, max_value=40.0), max_size=60), st.floats(min_value=1.0, max_value=30.0))
def test_windows_keep_order_cover_every_clip_and_fit(durations: list[float], limit: float) -> None:
    groups = plan_windows(durations, limit, GAP_SECONDS)
    assert [i for g in groups for i in g] == list(range(len(durations)))
    for g in groups:
        length = sum(durations[i] for i in g) + GAP_SECONDS * (len(g) - 1)
        assert len(g) == 1 or length <= limit + 1e-9
    for a, b in itertools.pairwise(groups):  # greedy: the next clip would not have fitted
        length = sum(durations[i] for i in a) + GAP_SECONDS * len(a) + durations[b[0]]
        assert length > limit


def test_layout_puts_a_gap_between_clips() -> None:
    spans = layout([2.0, 3.0, 1.5])
    assert spans == [Span(0.0, 2.0), Span(2.0 + GAP_SECONDS, 5.0 + GAP_SECONDS),
                     Span(5.0 + 2 * GAP_SECONDS, 6.5 + 2 * GAP_SECONDS)]


def _w(word: str, start: float, end: float, p: float = 0.9) -> dict[str, Any]:
    return {"word": word, "start": start, "end": end, "probability": p}


def test_words_go_to_the_clip_their_middle_falls_in_with_clip_relative_times() -> None:
    spans = layout([2.0, 2.0])
    second = spans[1].start
    segments = [[_w(" Hello", 0.1, 0.5), _w(" world.", 0.6, 1.9)],
                [_w(" Good", second + 0.05, second + 0.4), _w(" day.", second + 0.5, second + 1.2)]]
    a, b = split_words(spans, segments, 0.5)
    assert not a.doubtful and not b.doubtful
    assert [w["word"] for w in a.words] == [" Hello", " world."]
    assert [w["word"] for w in b.words] == [" Good", " day."]
    assert b.words[0]["start"] == pytest.approx(0.05) and b.words[1]["end"] == pytest.approx(1.2)
    assert a.segments == {0: [0, 1]} and b.segments == {1: [0, 1]}


def test_a_segment_running_over_two_clips_is_shared_between_them() -> None:
    spans = layout([2.0, 2.0])
    second = spans[1].start
    a, b = split_words(spans, [[_w(" one", 0.2, 0.8), _w(" two", second + 0.2, second + 0.8)]], 0.5)
    assert a.segments == {0: [0]} and b.segments == {0: [0]}
    assert not a.doubtful and not b.doubtful


def test_late_word_ends_and_early_starts_within_the_slack_are_trusted() -> None:
    spans = layout([2.0, 2.0])
    second = spans[1].start
    a, b = split_words(spans, [[_w(" end.", 1.5, 2.35)], [_w(" The", second - 0.3, second + 0.1)]], 0.5)
    assert not a.doubtful and not b.doubtful
    assert a.words[0]["end"] == 2.0 and b.words[0]["start"] == 0.0  # clamped into the clip


def test_doubtful_shares_are_named() -> None:
    spans = layout([2.0, 2.0, 2.0])
    mid_gap = (spans[0].end + spans[1].start) / 2
    third = spans[2].start
    shares = split_words(spans, [[_w(" lost", mid_gap - 0.1, mid_gap + 0.1)],
                                 [_w(" across", third - GAP_SECONDS - 0.2, third + 0.9)]], 0.5)
    assert "lies in a gap" in shares[0].doubtful and "lies in a gap" in shares[1].doubtful  # both sides of it
    assert "reaches over a gap" in shares[2].doubtful
    unsure, silent = split_words(layout([2.0, 2.0]), [[_w(" mumble", 0.5, 1.0, p=0.2)]], 0.5)
    assert "unsure words" in unsure.doubtful
    assert silent.doubtful == "no word in the packed pass"


def test_packed_results_are_bounded_and_locks_are_per_job() -> None:
    results = PackedResults(limit=3)
    for i in range(5):
        results.put(f"c{i}", i)
    assert results.get("c0") is None and results.get("c4") == 4
    assert results.job_lock("a") is results.job_lock("a")
    assert results.job_lock("a") is not results.job_lock("b")
    held = results.job_lock("a")
    with held:
        got: list[bool] = []
        t = threading.Thread(target=lambda: got.append(results.job_lock("a").acquire(timeout=0.05)))
        t.start()
        t.join()
        assert got == [False]


def test_a_word_reaching_over_a_gap_puts_the_next_clip_in_doubt_too() -> None:
    # seen with tiny.en: "... before you leave." where "you" ran over the gap and "leave." landed in the next clip
    spans = layout([3.0, 3.0])
    second = spans[1].start
    a, b = split_words(spans, [[_w(" before", 2.0, 2.6), _w(" you", 2.7, 3.7), _w(" leave.", second + 0.1,
                                                                                  second + 0.5)]], 0.5)
    assert "reaches over a gap" in a.doubtful and "reaches over a gap" in b.doubtful


def test_a_first_word_dated_a_second_early_is_doubted_at_the_normal_gap_and_trusted_at_the_retry_gap() -> None:
    def shares(gap: float) -> list[ClipWords]:
        spans = layout([2.0, 2.0], gap)
        second = spans[1].start
        words = [[_w(" end.", 1.2, 1.9)], [_w(" The", second - 0.9, second + 0.15), _w(" rest.", second + 0.3,
                                                                                       second + 1.0)]]
        return split_words(spans, words, 0.5, gap)

    a, b = shares(GAP_SECONDS)
    assert "'The'" in a.doubtful and "'The'" in b.doubtful
    a, b = shares(RETRY_GAP_SECONDS)
    assert not a.doubtful and not b.doubtful
    assert [w["word"] for w in b.words] == [" The", " rest."] and b.words[0]["start"] == 0.0


class ScriptedTranscriber(Transcriber):
    """The packing logic of Transcriber over a scripted decoder: Whisper dates the first word of every clip but
    the first 0.9 s early, as it was seen to do; each call's gap is recorded."""

    def __init__(self) -> None:  # no model: _decode is scripted
        self.cfg = TranscriptionConfig()
        self.gaps: list[float] = []

    def _decode(self, audio: np.ndarray, one_window: bool = False) -> tuple[list[dict[str, Any]], str, float]:
        loud = np.flatnonzero(np.abs(audio) > 0)
        edges = np.flatnonzero(np.diff(loud) > 1)
        starts = [loud[0], *loud[edges + 1]]
        ends = [*loud[edges], loud[-1]]
        self.gaps.append((starts[1] - ends[0]) / 16000 if len(starts) > 1 else 0.0)
        segments = []
        for k, (a, b) in enumerate(zip(starts, ends, strict=True)):
            t0, t1 = a / 16000, b / 16000
            early = 0.9 if k else 0.0
            words = [_w(f" w{k}a", t0 - early, t0 + 0.3), _w(f" w{k}b.", t0 + 0.4, t1 - 0.05)]
            segments.append({"start": t0, "end": t1, "text": "".join(w["word"] for w in words),
                             "avg_logprob": -0.2, "no_speech_prob": 0.01, "compression_ratio": 1.0,
                             "words": words})
        return segments, "en", 1.0


def test_doubtful_clips_of_a_pass_are_packed_again_with_wider_gaps_instead_of_one_pass_each() -> None:
    transcriber = ScriptedTranscriber()
    clips = [np.full(2 * 16000, 0.1, dtype=np.float32) for _ in range(4)]
    results = transcriber.transcribe_packed(clips, 0.5)
    assert transcriber.gaps == pytest.approx([GAP_SECONDS, RETRY_GAP_SECONDS], abs=1e-3)  # two passes, not 1 + 4
    assert all(isinstance(r, Transcript) for r in results)
    texts = [r.text for r in results if isinstance(r, Transcript)]
    assert texts == ["w0a w0b.", "w1a w1b.", "w2a w2b.", "w3a w3b."]
    seconds = [r.second_pass for r in results if isinstance(r, Transcript)]
    assert all("gap" in s for s in seconds)  # all four were doubted by the first pass, for a word near a gap


class FirstClipHeard(ScriptedTranscriber):
    def _decode(self, audio: np.ndarray, one_window: bool = False) -> tuple[list[dict[str, Any]], str, float]:
        return super()._decode(audio[: 2 * 16000], one_window)


def test_a_single_doubtful_clip_goes_alone() -> None:
    transcriber = FirstClipHeard()
    clips = [np.full(2 * 16000, 0.1, dtype=np.float32) for _ in range(2)]
    results = transcriber.transcribe_packed(clips, 0.5)
    assert isinstance(results[0], Transcript) and results[1] == "no word in the packed pass"
    assert len(transcriber.gaps) == 1
