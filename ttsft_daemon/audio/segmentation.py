"""Recursive silence segmentation of a (vocal) recording on its RMS envelope.

Frames are `frame_seconds` long. The *speech level* is the median RMS of the speech frames (see
`speech_level`; robust to long silences and to a few loud clicks). A frame is *silent* at factor f
when its RMS is at most f x speech level; *loud* frames are those above the initial threshold
(`initial_silence_factor`).

1. First pass, at the initial threshold: a silent run of at least `min_silence_seconds` separates two
   segments. Next to speech, each side keeps the soft ending (frames still above `min_factor` x speech
   level: decaying fricatives, breaths) plus half a minimum pause, never more than half the run; the
   rest of a long pause, and leading/trailing silence beyond that, is dropped. A segment over the
   maximum only because of these margins gets shorter margins instead of a cut.
2. A segment longer than `max_clip_seconds` is split again at a more *lenient* threshold: the factor is
   divided by `factor_step` at each level (0.1 -> 0.2 -> 0.4 with the defaults) while it stays at or
   below `max_silence_factor`, so that shorter, shallower pauses (breaths, phrase breaks) qualify.
   A lower factor finds no pause that a higher one misses, which is why the ladder climbs. Only cuts
   that leave both parts at least `min_clip_seconds` long are taken; the longest pause wins.
3. Where no level finds a pause, the segment is cut at its quietest point (smoothed envelope), searched
   at least `min_clip_seconds` away from both ends, until every part fits.
4. Segments shorter than `min_clip_seconds` are merged with the nearer neighbour when the merged span
   fits within the maximum (else with the other neighbour). A short segment that fits with neither is
   dropped; when it holds loud frames it is reported in `SegmentationResult.dropped`.

Guarantees (tested): every returned segment lasts between min and max clip seconds; every loud frame
lies in a returned segment or in a reported dropped span; segments never overlap; a segment made only
of silent frames is never returned. The one exception to the bounds: when frame rounding leaves
`max_frames < 2 x min_frames` (a maximum within one frame of twice the minimum), a fallback cut may
leave a part shorter than the minimum. Times are frame-aligned, so the last segment may end up to one
frame after the end of the audio.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ttsft_daemon.config import SegmentationConfig

# Frames quieter than this fraction of the loudest frame do not count towards the speech level.
_LEVEL_FLOOR_FRACTION = 0.01
_LOUD_PERCENTILE = 95.0
# Frames within this fraction of the loud level are speech frames; their median is the speech level.
_SPEECH_FRACTION = 0.1
# Smoothing of the envelope when searching for the quietest cut point (frames).
_FALLBACK_SMOOTH_FRAMES = 5
_STREAM_BLOCK_SECONDS = 10.0

DEFAULT_MAX_SILENCE_FACTOR = 0.5

Span = tuple[int, int]


@dataclass(frozen=True)
class SegmentationResult:
    segments: list[tuple[float, float]]
    dropped: list[tuple[float, float]]
    """Spans holding loud frames that were too short to keep and too isolated to merge."""
    speech_level: float
    threshold: float
    pause_cuts: int
    """Cuts placed in a pause found by the recursive (lenient) passes."""
    fallback_cuts: int
    """Cuts placed at the quietest point because no pause was found."""


# ------------------------------------------------------------------------------------------ envelope


def _frame_length(sr: int, frame_seconds: float) -> int:
    return max(1, round(sr * frame_seconds))


def _frames_rms(samples: np.ndarray, frame: int) -> np.ndarray:
    """RMS of consecutive frames of a mono float array; a partial last frame gets its own RMS."""
    x = np.asarray(samples, dtype=np.float64)
    n_full = len(x) // frame
    full = x[: n_full * frame].reshape(n_full, frame)
    rms = np.sqrt(np.mean(full**2, axis=1)) if n_full else np.zeros(0)
    if len(x) > n_full * frame:
        rest = x[n_full * frame :]
        rms = np.append(rms, np.sqrt(np.mean(rest**2)))
    return rms


def _to_mono(samples: np.ndarray) -> np.ndarray:
    return samples.mean(axis=1) if samples.ndim == 2 else samples


def rms_envelope(samples: np.ndarray, sr: int, frame_seconds: float) -> tuple[np.ndarray, float]:
    """Per-frame RMS of in-memory audio (mono, or (samples, channels) mixed down); (envelope, frame s)."""
    frame = _frame_length(sr, frame_seconds)
    return _frames_rms(_to_mono(np.asarray(samples)), frame), frame / sr


def _blocks(path: Path, frame: int, sr: int) -> Iterator[np.ndarray]:
    frames_per_block = max(1, round(_STREAM_BLOCK_SECONDS * sr / frame))
    for block in sf.blocks(str(path), blocksize=frame * frames_per_block, dtype="float32", always_2d=True):
        yield block.mean(axis=1)


def rms_envelope_from_file(path: Path, frame_seconds: float) -> tuple[np.ndarray, float]:
    """Per-frame RMS of a sound file, streamed in blocks (memory stays flat); (envelope, frame s)."""
    sr = int(sf.info(str(path)).samplerate)
    frame = _frame_length(sr, frame_seconds)
    # Blocks are a whole number of frames, so only the file's last frame can be partial.
    parts = [_frames_rms(block, frame) for block in _blocks(path, frame, sr)]
    env = np.concatenate(parts) if parts else np.zeros(0)
    return env, frame / sr


# -------------------------------------------------------------------------------------- segmentation


def speech_level(env: np.ndarray) -> float:
    """Median RMS of the speech frames: those within 20 dB of the loud level (a high percentile).

    The loud level ignores frames 40 dB below the peak, so a mostly silent recording still yields it.
    """
    if len(env) == 0:
        return 0.0
    peak = float(np.max(env))
    if peak <= 0.0:
        return 0.0
    loud = float(np.percentile(env[env >= peak * _LEVEL_FLOOR_FRACTION], _LOUD_PERCENTILE))
    return float(np.median(env[env >= loud * _SPEECH_FRACTION]))


def relaxed_factors(cfg: SegmentationConfig, max_silence_factor: float) -> list[float]:
    """The lenient factors tried, in order, on segments that are too long."""
    factors: list[float] = []
    factor = cfg.initial_silence_factor / cfg.factor_step
    while factor <= max_silence_factor + 1e-12 and len(factors) < 32:
        factors.append(factor)
        factor /= cfg.factor_step
    return factors


def _runs(mask: np.ndarray) -> list[Span]:
    """[start, end) of each run of True in a boolean array."""
    padded = np.concatenate(([False], mask, [False]))
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


@dataclass(frozen=True)
class _Frames:
    """The configuration translated to frame counts."""

    min_clip: int
    max_clip: int
    min_silence: int
    keep: int

    @classmethod
    def of(cls, cfg: SegmentationConfig, frame_s: float) -> _Frames:
        min_silence = max(1, math.ceil(cfg.min_silence_seconds / frame_s - 1e-9))
        return cls(
            min_clip=max(1, math.ceil(cfg.min_clip_seconds / frame_s - 1e-9)),
            max_clip=max(1, math.floor(cfg.max_clip_seconds / frame_s + 1e-9)),
            min_silence=min_silence,
            keep=max(1, min_silence // 2),
        )


def _reach(env: np.ndarray, edge: float, start: int, step: int, limit: int) -> int:
    """Frames from `start` (exclusive) in direction `step` while the envelope stays above `edge`."""
    n = 0
    i = start + step
    while n < limit and 0 <= i < len(env) and env[i] > edge:
        n += 1
        i += step
    return n


def _margin(env: np.ndarray, edge: float, loud_edge: int, step: int, room: int, fr: _Frames) -> int:
    """Silence kept beside speech: soft endings above `edge` plus `keep` frames, within `room`."""
    return min(room, _reach(env, edge, loud_edge, step, room) + fr.keep)


def _first_pass(env: np.ndarray, silent: np.ndarray, edge: float, fr: _Frames) -> list[Span]:
    loud = np.flatnonzero(~silent)
    if len(loud) == 0:
        return []
    first, last = int(loud[0]), int(loud[-1])
    segments: list[Span] = []
    start = first - _margin(env, edge, first, -1, first, fr)
    for a, b in _runs(silent[first : last + 1]):
        a, b = a + first, b + first
        if b - a < fr.min_silence:
            continue
        half = (b - a) // 2
        end = a + _margin(env, edge, a - 1, 1, half, fr)
        segments.append((start, end))
        start = b - _margin(env, edge, b, -1, b - a - half, fr)
    segments.append((start, last + 1 + _margin(env, edge, last, 1, len(env) - last - 1, fr)))
    return [_fit_margins(span, silent, fr) for span in segments]


def _fit_margins(span: Span, silent: np.ndarray, fr: _Frames) -> Span:
    """Shorten the silent margins of a span that exceeds the maximum only because of them."""
    s, e = span
    if e - s <= fr.max_clip:
        return span
    loud = np.flatnonzero(~silent[s:e])
    core_start, core_end = s + int(loud[0]), s + int(loud[-1]) + 1
    spare = fr.max_clip - (core_end - core_start)
    if spare < 0:
        return span
    right = min(e - core_end, spare - min(core_start - s, spare // 2))
    left = min(core_start - s, spare - right)
    return core_start - left, core_end + right


def _best_pause_cut(env: np.ndarray, span: Span, threshold: float, fr: _Frames) -> int | None:
    """Midpoint of the longest interior pause leaving both parts >= min clip; None when there is none."""
    s, e = span
    best: tuple[int, float, int] | None = None
    for a, b in _runs(env[s:e] <= threshold):
        a, b = a + s, b + s
        mid = (a + b) // 2
        if a == s or b == e or b - a < fr.min_silence or not (s + fr.min_clip <= mid <= e - fr.min_clip):
            continue
        key = (b - a, -abs(mid - (s + e) / 2), mid)
        if best is None or key[:2] > best[:2]:
            best = key
    return best[2] if best is not None else None


def _quietest_cut(env: np.ndarray, span: Span, fr: _Frames) -> int:
    s, e = span
    lo, hi = s + fr.min_clip, e - fr.min_clip
    if lo > hi:  # frame rounding made max < 2 x min: the documented exception
        return (s + e) // 2
    width = min(_FALLBACK_SMOOTH_FRAMES, e - s)
    smooth = np.convolve(env[s:e], np.ones(width) / width, mode="same")
    candidates = np.arange(lo, hi + 1)
    values = smooth[candidates - s]
    distance = np.abs(candidates - (s + e) / 2)
    return int(candidates[np.lexsort((distance, values))[0]])


@dataclass
class _Splitter:
    env: np.ndarray
    level: float
    factors: list[float]
    fr: _Frames
    pause_cuts: int = 0
    fallback_cuts: int = 0

    def split(self, span: Span) -> list[Span]:
        """Split `span` until every part fits the maximum (iterative: hours without a pause are fine)."""
        done: list[Span] = []
        todo: list[tuple[Span, int]] = [(span, 0)]
        while todo:
            part, depth = todo.pop()
            if part[1] - part[0] <= self.fr.max_clip:
                done.append(part)
                continue
            cut, depth = self._cut(part, depth)
            todo += [((part[0], cut), depth), ((cut, part[1]), depth)]
        return sorted(done)

    def _cut(self, span: Span, depth: int) -> tuple[int, int]:
        """A cut point of an over-long span, and the factor level the parts continue from."""
        for d in range(depth, len(self.factors)):
            cut = _best_pause_cut(self.env, span, self.factors[d] * self.level, self.fr)
            if cut is not None:
                self.pause_cuts += 1
                return cut, d
        self.fallback_cuts += 1
        return _quietest_cut(self.env, span, self.fr), len(self.factors)


def _merge_option(segments: list[Span], i: int, j: int, fr: _Frames) -> tuple[int, int] | None:
    """(gap, merged length) of merging segments i and j (j = i +/- 1), or None when it does not fit."""
    if not 0 <= j < len(segments):
        return None
    left, right = sorted((segments[i], segments[j]))
    length = right[1] - left[0]
    return (right[0] - left[1], length) if length <= fr.max_clip else None


def _merge_short(segments: list[Span], fr: _Frames) -> tuple[list[Span], list[Span]]:
    """Merge short segments into a neighbour where it fits; return (kept, short ones left over)."""
    segs = list(segments)
    i = 0
    while i < len(segs):
        s, e = segs[i]
        if e - s >= fr.min_clip:
            i += 1
            continue
        options = [(opt, j) for j in (i - 1, i + 1) if (opt := _merge_option(segs, i, j, fr)) is not None]
        if not options:
            i += 1
            continue
        _, j = min(options)
        lo, hi = min(i, j), max(i, j)
        segs[lo : hi + 1] = [(segs[lo][0], segs[hi][1])]
        i = max(0, lo - 1)  # the merged segment may now let a short left neighbour merge
    kept = [sp for sp in segs if sp[1] - sp[0] >= fr.min_clip]
    short = [sp for sp in segs if sp[1] - sp[0] < fr.min_clip]
    return kept, short


def segment_envelope(
    env: np.ndarray,
    frame_s: float,
    cfg: SegmentationConfig,
    *,
    max_silence_factor: float = DEFAULT_MAX_SILENCE_FACTOR,
) -> SegmentationResult:
    """Segment an RMS envelope; the full result (segments, dropped speech, levels, cut counts)."""
    env = np.asarray(env, dtype=np.float64)
    fr = _Frames.of(cfg, frame_s)
    level = speech_level(env)
    threshold = cfg.initial_silence_factor * level
    if level <= 0.0:
        return SegmentationResult([], [], level, threshold, 0, 0)
    silent = env <= threshold
    splitter = _Splitter(env, level, relaxed_factors(cfg, max_silence_factor), fr)
    edge = cfg.min_factor * level
    pieces = [part for span in _first_pass(env, silent, edge, fr) for part in splitter.split(span)]
    kept, short = _merge_short(pieces, fr)
    kept = [(s, e) for s, e in kept if not silent[s:e].all()]
    dropped = [(s, e) for s, e in short if not silent[s:e].all()]

    def seconds(spans: list[Span]) -> list[tuple[float, float]]:
        return [(s * frame_s, e * frame_s) for s, e in spans]

    return SegmentationResult(
        seconds(kept), seconds(dropped), level, threshold, splitter.pause_cuts, splitter.fallback_cuts
    )


def find_segments(env: np.ndarray, frame_s: float, cfg: SegmentationConfig) -> list[tuple[float, float]]:
    """(start, end) seconds of each clip-sized speech segment of an RMS envelope."""
    return segment_envelope(env, frame_s, cfg, max_silence_factor=cfg.max_silence_factor).segments
