"""Packing the clips of one recording into windows, so Whisper and DNSMOS run once per window, not once per clip.

Whisper pads every call to 30 s of audio, and DNSMOS repeats every input to 9.01 s: a 3 s clip costs about as
much as a full window (measured in `bench/results/transcribe_cost.json`: one Whisper call per clip costs 3x the
CPU of the same clips packed into 28 s windows). So the transcribe stage joins neighbouring clips of a recording
with short silent gaps, transcribes the window once, and gives each word back to the clip its time falls in.

A clip whose share of the window is doubtful is not given a packed transcript at first. When a pass leaves two
or more clips doubtful, those are packed again in a second pass with wider gaps (RETRY_GAP_SECONDS): most doubts
come from Whisper dating a first word early, into the gap before its clip, which a wider gap absorbs. A clip still
doubtful then is transcribed on its own, exactly as without packing (measured on the pipeline bench's 246 clips:
25 transcribed alone before the second pass, 4 after it with one window per pass). Doubtful means: Whisper gave
it no word (it may have skipped it, or heard no speech there, which the clip's own no-speech probability must then
decide), a word of it lies in a gap or across one, or its words are unsure (mean probability under the gate's
`min_word_probability`).

`PackedResults` keeps the per-clip results of the windows transcribed by this process, shared by its transcribe
workers. It is only a cache: after a restart a clip is packed again with those of its neighbours still waiting.
"""

from __future__ import annotations

import threading
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# Silence between packed clips: wide enough that a word's time tells its clip (Whisper's word times are good to
# about 0.1-0.2 s), narrow enough to waste little of the 30 s window.
GAP_SECONDS = 0.8
# Whisper dates a clip's first word early and its last word's end late by a few tenths of a second (measured on
# packed passes); a word still belongs to the nearest clip while its middle is this close to it (the next clip is
# then at least GAP_SECONDS - 0.25 = 0.55 s away), and may reach into the gap by up to three quarters of it.
WORD_SLACK_SECONDS = 0.25
OVERHANG_SECONDS = GAP_SECONDS * 0.75
# The second pass of a pass's doubtful clips: gaps wide enough for a word dated a second early to stay its clip's.
RETRY_GAP_SECONDS = 2.0


def word_slack(gap: float) -> float:
    """How far a word's middle may lie outside its clip with gaps of `gap` seconds (WORD_SLACK_SECONDS at the
    default gap, in proportion at others)."""
    return WORD_SLACK_SECONDS * gap / GAP_SECONDS


def overhang(gap: float) -> float:
    """How far a word may reach into the gap beside its clip."""
    return OVERHANG_SECONDS * gap / GAP_SECONDS


def plan_windows(durations: Sequence[float], max_seconds: float, gap: float) -> list[list[int]]:
    """Consecutive groups of indices whose durations plus the gaps between them fit in `max_seconds`.

    Order is kept; a clip longer than `max_seconds` forms a group of its own.
    """
    groups: list[list[int]] = []
    current: list[int] = []
    length = 0.0
    for i, d in enumerate(durations):
        needed = d if not current else length + gap + d
        if current and needed > max_seconds:
            groups.append(current)
            current, length = [i], d
        else:
            current.append(i)
            length = needed
    if current:
        groups.append(current)
    return groups


@dataclass(frozen=True)
class Span:
    start: float
    end: float


def layout(durations: Sequence[float], gap: float = GAP_SECONDS) -> list[Span]:
    """Where each clip lies in the packed audio (seconds)."""
    spans: list[Span] = []
    t = 0.0
    for d in durations:
        spans.append(Span(t, t + d))
        t += d + gap
    return spans


def compression_ratio(text: str) -> float:
    """Whisper's repetition measure: UTF-8 length over zlib-compressed length."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


@dataclass
class ClipWords:
    """What one clip received from a packed pass (times relative to the clip)."""

    words: list[dict[str, Any]] = field(default_factory=list)  # start, end, word (raw, with its space), probability
    segments: dict[int, list[int]] = field(default_factory=dict)  # window segment index -> indices into words
    doubtful: str = ""  # why the clip must be transcribed alone ("" = its packed words can be trusted)


def split_words(spans: Sequence[Span], segments: Sequence[Sequence[dict[str, Any]]],
                min_word_probability: float, gap: float = GAP_SECONDS) -> list[ClipWords]:
    """Give each word of a packed pass (segments of words with packed times, clips `gap` seconds apart) to the
    clip its middle falls in."""
    clips = [ClipWords() for _ in spans]
    slack, reach = word_slack(gap), overhang(gap)

    def doubt(i: int, why: str) -> None:
        if 0 <= i < len(clips) and not clips[i].doubtful:
            clips[i].doubtful = why

    for si, words in enumerate(segments):
        for w in words:
            start, end = float(w["start"]), float(w["end"])
            mid = (start + end) / 2
            i = min(range(len(spans)), key=lambda k: _distance(spans[k], mid))
            span, clip = spans[i], clips[i]
            # Whisper's times drift: around a gap where a word went astray, neither side's words can be trusted
            # (a word that reached over a gap was seen pushing the next word into the clip after it).
            name = repr(str(w["word"]).strip())
            if _distance(span, mid) > slack:
                other = i + 1 if mid > span.end else i - 1
                for k in (i, other):
                    doubt(k, f"word {name} at {mid:.2f} s lies in a gap")
            if start < span.start - reach:
                for k in (i, i - 1):
                    doubt(k, f"word {name} reaches over a gap")
            if end > span.end + reach:
                for k in (i, i + 1):
                    doubt(k, f"word {name} reaches over a gap")
            clip.segments.setdefault(si, []).append(len(clip.words))
            length = span.end - span.start
            clip.words.append({**w, "start": min(max(start - span.start, 0.0), length),
                               "end": min(max(end - span.start, 0.0), length)})
    for clip in clips:
        if not clip.words:
            clip.doubtful = clip.doubtful or "no word in the packed pass"
        elif not clip.doubtful:
            mean_p = sum(float(w["probability"]) for w in clip.words) / len(clip.words)
            if mean_p < min_word_probability:
                clip.doubtful = f"unsure words in the packed pass (mean probability {mean_p:.2f})"
    return clips


class PackedResults:
    """Per-clip results of packed passes, shared by one process's transcribe workers (bounded, thread-safe).

    `job_lock(job)` serialises the packing of one recording's clips, so two workers never transcribe the same
    window: the second waits and then finds its clip's result here.
    """

    def __init__(self, limit: int = 4096) -> None:
        self._entries: OrderedDict[str, Any] = OrderedDict()
        self._locks: OrderedDict[str, threading.Lock] = OrderedDict()
        self._limit = limit
        self._guard = threading.Lock()

    def job_lock(self, job_id: str) -> threading.Lock:
        with self._guard:
            lock = self._locks.pop(job_id, None) or threading.Lock()
            self._locks[job_id] = lock
            while len(self._locks) > 256:
                self._locks.popitem(last=False)  # an evicted lock may be held: its holder keeps its own reference
            return lock

    def get(self, key: str) -> Any:
        with self._guard:
            return self._entries.get(key)

    def put(self, key: str, value: Any) -> None:
        with self._guard:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self._limit:
                self._entries.popitem(last=False)


def _distance(span: Span, t: float) -> float:
    return 0.0 if span.start <= t <= span.end else min(abs(t - span.start), abs(t - span.end))
