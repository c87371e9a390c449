"""Speaker embeddings and the decisions built on them: who is speaking, where the voice changes, who the target is.

A pure library (no spool, no daemon). The encoder is Resemblyzer's GE2E network (`resemblyzer==0.1.4`, whose wheel
ships the weights `pretrained.pt`, Apache-2.0): a 3-layer LSTM over 40-band mel frames of 16 kHz audio, giving a
256-d unit vector per 1.6 s "partial"; an utterance's embedding is the normalised mean of its partials.

Only the weights are taken from the package; the network, the mel front end and the partial slicing are written
here, so that (1) importing does not go through `resemblyzer/__init__.py` (which imports webrtcvad and a
deprecated scipy namespace that warns), and (2) the audio is never passed through `resemblyzer.preprocess_wav`.
That function runs webrtcvad (mode 3, 30 ms frames) and *removes* every stretch it calls non-speech: the output
is shorter than the input, so times inside it no longer match the clip's (sliding windows would be misplaced), and
over music or noise its decisions are arbitrary. Instead: clips are brought to -30 dBFS (increase only, as
Resemblyzer does), `embed` drops only near-silent 10 ms frames in runs longer than 0.3 s (the daemon's clips are
already cut at pauses), and `embed_windows` keeps the time axis and skips windows that are mostly near-silent.

Decisions (thresholds in `SpeakerParams`, calibrated by bench/speaker_eer.py on real speech):
- `match`: cosine similarity to a reference >= `SpeakerParams.threshold_for(clip seconds)` -> same speaker.
- `find_change`: the time inside a clip where the windows before and after disagree.
- `choose_target`: clusters every clip of a voice and decides whether one speaker clearly dominates.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

EMBED_SR = 16000
EMBED_DIM = 256
_MEL_BANDS = 40
_HOP = 160  # 10 ms at 16 kHz
_N_FFT = 400  # 25 ms
_PARTIAL_FRAMES = 160  # 1.6 s
_TARGET_DBFS = -30.0
_SILENCE_DB = -40.0  # a 10 ms frame this far below the clip's loudest frame is near-silent
_LONG_SILENCE_S = 0.3

_LEADER_SAMPLE = 1500
_LEADER_SLACK = 0.05  # the first pass compares single clips to young centroids: a looser threshold

TargetState = Literal["decided", "ambiguous", "too_little_speech"]


@dataclass(frozen=True)
class SpeakerParams:
    """Calibrated defaults (bench/speaker_eer.py, bench/results/speaker_eer.json). Mirrored as config keys.

    same_speaker_short / same_speaker_long: cosine at or above which a clip and a reference (enrollment or cluster
        centroid) are the same person, for clips of `short_s` and of `long_s` seconds; in between it runs linearly
        in log(seconds), outside it stays at the end values (`threshold_for`). Both same-speaker and other-speaker
        similarities grow with the clip's length (GE2E averages more partials), so one fixed threshold either
        rejects short target clips or accepts long clips of others. Measured on clean real speech against a clean
        reference (bench/results/speaker_eer.json): equal-error thresholds 0.76 (1-2 s), 0.82 (2-4 s), 0.86 (4-8 s).
        The short end is set above the EER (0.80: 0.5% false accepts, 14% false rejects at 1-2 s) because another
        speaker's clip in the dataset costs more than a lost short clip. Spleeter vocal stems against a clean
        reference sit ~0.03-0.05 lower for the same speaker (EER thresholds 0.73 / 0.78 / 0.80).
    min_clip_s: clips shorter than this give unreliable embeddings: they do not vote in clustering and are judged
        against the reference only (never used to build one).
    dominant_share / dominant_ratio / min_decide_s: `choose_target` decides when the largest cluster holds at least
        `dominant_share` of the clustered seconds, at least `dominant_ratio` times the runner-up's seconds, and at
        least `min_decide_s` seconds of speech.
    merge: centroid-to-centroid cosine at or above which two clusters are one speaker.
    other_margin: a clip that passes the threshold is still another speaker's when it is this much more similar to
        the centroid of another speaker heard in the voice's recordings (`other_speakers`) than to the target:
        a voice close to the target's (June against Allison: 0.85) passes a threshold but sits nearer its own.
    window_s / hop_s / change_threshold / min_side_s: `find_change` embeds windows of `window_s` every `hop_s`;
        a change is reported where the mean embeddings of the windows before and after a point are less similar
        than `change_threshold`, each side holding at least `min_side_s` seconds.
    """

    same_speaker_short: float = 0.80
    short_s: float = 1.5
    same_speaker_long: float = 0.86
    long_s: float = 6.0
    min_clip_s: float = 2.0
    dominant_share: float = 0.6
    dominant_ratio: float = 2.0
    min_decide_s: float = 60.0
    merge: float = 0.85
    window_s: float = 1.6
    hop_s: float = 0.2
    change_threshold: float = 0.72
    min_side_s: float = 2.0
    other_margin: float = 0.02

    def threshold_for(self, seconds: float | np.ndarray) -> np.ndarray:
        """The same-speaker cosine threshold for clips of `seconds` (scalar or array)."""
        lo, hi = np.log(self.short_s), np.log(self.long_s)
        f = np.clip((np.log(np.maximum(np.asarray(seconds, dtype=np.float64), 1e-3)) - lo) / (hi - lo), 0.0, 1.0)
        out: np.ndarray = self.same_speaker_short + f * (self.same_speaker_long - self.same_speaker_short)
        return out


# ------------------------------------------------------------------------------------------------- encoder


def weights_path() -> Path:
    """Resemblyzer's bundled weights, found without importing the package."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("resemblyzer is not installed (pip install --no-deps resemblyzer==0.1.4)")
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"
    if not path.is_file():
        raise FileNotFoundError(f"resemblyzer weights missing: {path}")
    return path


def _to_16k(samples: np.ndarray, sr: int) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1 if x.shape[1] <= 8 else 0).astype(np.float32)
    if sr != EMBED_SR:
        import soxr

        x = np.asarray(soxr.resample(x, sr, EMBED_SR), dtype=np.float32)
    return x


def _normalise(x: np.ndarray) -> np.ndarray:
    """Raise the level to -30 dBFS (never lower it), as Resemblyzer's own preprocessing does."""
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0
    if rms <= 0:
        return x
    gain = 10 ** (_TARGET_DBFS / 20) / rms
    return (x * gain).astype(np.float32) if gain > 1 else x


def _frame_loudness(x: np.ndarray) -> np.ndarray:
    """Per 10 ms frame: True where the frame is within _SILENCE_DB of the loudest frame."""
    n = len(x) // _HOP
    if n == 0:
        return np.zeros(0, dtype=bool)
    rms = np.sqrt(np.mean(x[: n * _HOP].reshape(n, _HOP).astype(np.float64) ** 2, axis=1))
    peak = float(rms.max())
    if peak <= 0:
        return np.zeros(n, dtype=bool)
    loud: np.ndarray = rms >= peak * 10 ** (_SILENCE_DB / 20)
    return loud


def drop_long_silences(x: np.ndarray) -> np.ndarray:
    """Remove near-silent runs longer than 0.3 s (kept: short pauses, and everything audible, music included)."""
    loud = _frame_loudness(x)
    if len(loud) == 0 or loud.all():
        return x
    keep = np.ones(len(loud), dtype=bool)
    max_run = int(_LONG_SILENCE_S * 100)
    start = None
    for i, is_loud in enumerate(np.append(loud, True)):
        if not is_loud and start is None:
            start = i
        elif is_loud and start is not None:
            if i - start > max_run:
                keep[start:i] = False
            start = None
    mask = np.repeat(keep, _HOP)
    tail = x[len(mask) :]
    return np.concatenate([x[: len(mask)][mask], tail]).astype(np.float32)


class SpeakerEncoder:
    """Resemblyzer's GE2E speaker encoder on the CPU. Load once; thread-safe (calls are serialised).

    `threads` caps torch's intra-op threads (process-wide: torch has one pool). None leaves torch's setting alone.
    Cost on one core: ~0.5-1 CPU-second per audio minute (bench/speaker_eer.py measures it).
    """

    def __init__(self, weights: Path | None = None, threads: int | None = 2) -> None:
        import librosa
        import torch
        from torch import nn

        if threads is not None:
            torch.set_num_threads(max(1, min(threads, os.cpu_count() or 1)))
        self._torch = torch
        self._lock = threading.Lock()
        self._lstm = nn.LSTM(_MEL_BANDS, 256, 3, batch_first=True)
        self._linear = nn.Linear(256, EMBED_DIM)
        checkpoint: dict[str, Any] = torch.load(weights or weights_path(), map_location="cpu", weights_only=True)
        state: dict[str, Any] = checkpoint["model_state"]
        self._lstm.load_state_dict({k[len("lstm."):]: v for k, v in state.items() if k.startswith("lstm.")})
        self._linear.load_state_dict({k[len("linear."):]: v for k, v in state.items() if k.startswith("linear.")})
        self._lstm.eval()
        self._linear.eval()
        self._mel_basis = librosa.filters.mel(sr=EMBED_SR, n_fft=_N_FFT, n_mels=_MEL_BANDS).astype(np.float32)
        self._window = np.hanning(_N_FFT + 1)[:-1].astype(np.float32)  # periodic Hann, as librosa's "hann"

    # -- front end

    def _mel(self, x: np.ndarray) -> np.ndarray:
        """Mel power spectrogram (frames, 40), librosa.feature.melspectrogram's defaults (centred, zero pad)."""
        pad = _N_FFT // 2
        if len(x) < pad + 1:
            x = np.pad(x, (0, pad + 1 - len(x)))
        padded = np.pad(x, (pad, pad), mode="constant")
        n_frames = 1 + (len(padded) - _N_FFT) // _HOP
        idx = np.arange(_N_FFT)[None, :] + _HOP * np.arange(n_frames)[:, None]
        frames = padded[idx] * self._window
        power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
        mel: np.ndarray = (power @ self._mel_basis.T).astype(np.float32)
        return mel

    def _partials(self, mels: np.ndarray) -> np.ndarray:
        """Embeddings of a batch of (n, 160, 40) mel partials: (n, 256) unit vectors."""
        torch = self._torch
        with self._lock, torch.inference_mode():
            _, (hidden, _) = self._lstm(torch.from_numpy(np.ascontiguousarray(mels)))
            raw = torch.relu(self._linear(hidden[-1]))
            out = raw / torch.clamp(torch.norm(raw, dim=1, keepdim=True), min=1e-9)
        result: np.ndarray = out.numpy().astype(np.float32)
        return result

    @staticmethod
    def _slices(n_samples: int, rate: float = 1.3, min_coverage: float = 0.75) -> list[int]:
        """Start frames of the 1.6 s partials covering `n_samples` (Resemblyzer's rule: 1.3 partials per second,
        the last one kept when at least 75% of it is audio, always at least one)."""
        n_frames = int(np.ceil((n_samples + 1) / _HOP))
        step = max(1, round(EMBED_SR / rate / _HOP))
        starts = list(range(0, max(1, n_frames - _PARTIAL_FRAMES + step + 1), step))
        if len(starts) > 1 and (n_samples - starts[-1] * _HOP) / (_PARTIAL_FRAMES * _HOP) < min_coverage:
            starts.pop()
        return starts

    def _embed_wave(self, x: np.ndarray) -> np.ndarray:
        """Resemblyzer's embed_utterance on 16 kHz audio: zero-pad to whole partials, mean of the partials."""
        starts = self._slices(len(x))
        need = (starts[-1] + _PARTIAL_FRAMES) * _HOP
        if need >= len(x):
            x = np.pad(x, (0, need - len(x)))
        mel = self._mel(x)
        parts = self._partials(np.stack([mel[s : s + _PARTIAL_FRAMES] for s in starts]))
        return _unit(parts.mean(axis=0))

    # -- public

    def embed(self, samples: np.ndarray, sr: int) -> np.ndarray:
        """The 256-d unit float32 embedding of one clip (mono or (n, channels) audio at any rate)."""
        x = drop_long_silences(_normalise(_to_16k(samples, sr)))
        return self._embed_wave(x)

    def embed_many(self, clips: Sequence[tuple[np.ndarray, int]]) -> np.ndarray:
        """(len(clips), 256) embeddings."""
        if not clips:
            return np.zeros((0, EMBED_DIM), dtype=np.float32)
        return np.stack([self.embed(s, sr) for s, sr in clips])

    def embed_windows(
        self, samples: np.ndarray, sr: int, window_s: float = 1.6, hop_s: float = 0.2, min_loud: float = 0.5
    ) -> list[tuple[float, float, np.ndarray]]:
        """(start_s, end_s, embedding) of windows of `window_s` every `hop_s`, times in the clip's own time axis.

        Nothing is removed from the audio; windows in which fewer than `min_loud` of the 10 ms frames are audible
        (see `drop_long_silences`) are left out. A clip shorter than one window gives one window over all of it.
        """
        x = _normalise(_to_16k(samples, sr))
        mel = self._mel(x)
        loud = _frame_loudness(x)
        total = len(x) / EMBED_SR
        win = max(1, round(window_s * 100))
        hop = max(1, round(hop_s * 100))
        n_frames = len(x) // _HOP
        starts = list(range(0, max(1, n_frames - win + 1), hop))
        kept: list[tuple[int, int]] = []
        for s in starts:
            e = min(s + win, n_frames) if n_frames else win
            if len(loud) and float(loud[s:e].mean() if e > s else 0.0) < min_loud:
                continue
            kept.append((s, e))
        if not kept:
            return []
        out: list[tuple[float, float, np.ndarray]] = []
        if win == _PARTIAL_FRAMES:  # one partial per window: one batched forward pass
            pad = kept[-1][0] + _PARTIAL_FRAMES - len(mel)
            m = np.pad(mel, ((0, max(0, pad)), (0, 0)))
            embs = self._partials(np.stack([m[s : s + _PARTIAL_FRAMES] for s, _ in kept]))
            for (s, e), emb in zip(kept, embs, strict=True):
                out.append((s / 100, min(e / 100, total), emb))
        else:
            for s, e in kept:
                out.append((s / 100, min(e / 100, total), self._embed_wave(x[s * _HOP : e * _HOP])))
        return out


# ---------------------------------------------------------------------------------------------- similarity


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    n = float(np.linalg.norm(v))
    return (v / n).astype(np.float32) if n > 0 else v


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def match(embedding: np.ndarray, reference: np.ndarray, threshold: float) -> tuple[float, bool]:
    """(cosine similarity to the reference, whether it is the same speaker). For a clip of s seconds use
    `threshold=float(params.threshold_for(s))`."""
    sim = cosine(embedding, reference)
    return sim, sim >= threshold


def centroid(embeddings: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted mean direction of unit embeddings (e.g. an enrollment's clips, weighted by seconds)."""
    e = np.asarray(embeddings, dtype=np.float64).reshape(-1, EMBED_DIM)
    w = np.ones(len(e)) if weights is None else np.asarray(weights, dtype=np.float64)
    return _unit((e * w[:, None]).sum(axis=0))


def find_change(
    windows: Sequence[tuple[float, float, np.ndarray]],
    threshold: float = SpeakerParams.change_threshold,
    min_side_s: float = SpeakerParams.min_side_s,
) -> float | None:
    """The time where the voice changes inside a clip, or None.

    For each candidate point t (every window edge), the windows lying wholly before t and wholly after t are
    averaged; the point where the two averages are least similar is the change, reported when that similarity is
    below `threshold` and each side's windows span at least `min_side_s`. Windows straddling t are ignored, so
    at the true change both sides are pure. One change per call: call again on each side for more.
    """
    if len(windows) < 2:
        return None
    starts = np.array([w[0] for w in windows])
    ends = np.array([w[1] for w in windows])
    embs = np.stack([w[2] for w in windows]).astype(np.float64)
    candidates = np.unique(np.concatenate([starts, ends]))
    best_t, best_sim = None, 2.0
    for t in candidates:
        left = ends <= t + 1e-6
        right = starts >= t - 1e-6
        if not left.any() or not right.any():
            continue
        if ends[left].max() - starts[left].min() < min_side_s or ends[right].max() - starts[right].min() < min_side_s:
            continue
        sim = cosine(embs[left].mean(axis=0), embs[right].mean(axis=0))
        if sim < best_sim:
            best_t, best_sim = float(t), sim
    if best_t is None or best_sim >= threshold:
        return None
    return best_t


# ------------------------------------------------------------------------------------------------ clustering


@dataclass(frozen=True)
class Cluster:
    seconds: float
    share: float  # of the clustered seconds
    centroid: np.ndarray
    clips: int
    members: tuple[int, ...] = field(repr=False)  # indices into the clips given to choose_target


@dataclass(frozen=True)
class TargetDecision:
    state: TargetState
    clusters: list[Cluster]  # largest first
    centroid: np.ndarray | None  # the target's centroid when decided
    detail: str
    total_seconds: float  # seconds of the clips that voted (>= min_clip_s)

    @property
    def target(self) -> Cluster | None:
        return self.clusters[0] if self.state == "decided" else None


def _leader(x: np.ndarray, w: np.ndarray, idx: np.ndarray, threshold: np.ndarray) -> list[np.ndarray]:
    """Leader clustering of the rows `idx`, heaviest first: join the most similar running centroid when the cosine
    is >= `threshold`, else start a new cluster."""
    sums = np.zeros((0, EMBED_DIM), dtype=np.float64)
    cents = np.zeros((0, EMBED_DIM), dtype=np.float32)
    members: list[list[int]] = []
    for i in idx[np.argsort(-w[idx], kind="stable")]:
        if len(cents):
            sims = cents @ x[i]
            k = int(np.argmax(sims))
            if sims[k] >= threshold[i]:
                members[k].append(int(i))
                sums[k] += w[i] * x[i]
                cents[k] = sums[k] / max(float(np.linalg.norm(sums[k])), 1e-12)
                continue
        members.append([int(i)])
        sums = np.vstack([sums, w[i] * x[i].astype(np.float64)[None, :]])
        cents = np.vstack([cents, x[i][None, :]])
    return [np.array(m, dtype=np.int64) for m in members]


def _centroids(x: np.ndarray, w: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    sums = np.stack([(x[g].astype(np.float64) * w[g, None]).sum(axis=0) for g in groups])
    cents: np.ndarray = (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    return cents


def _merge(x: np.ndarray, w: np.ndarray, groups: list[np.ndarray], merge: float) -> list[np.ndarray]:
    """Agglomerative: while the two most similar centroids have cosine >= `merge`, join them."""
    if len(groups) < 2:
        return list(groups)
    sums = np.stack([(x[g].astype(np.float64) * w[g, None]).sum(axis=0) for g in groups])
    cents = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    sim = cents @ cents.T
    np.fill_diagonal(sim, -np.inf)
    members: list[list[np.ndarray]] = [[g] for g in groups]
    alive = np.ones(len(groups), dtype=bool)
    while alive.sum() > 1:
        i, j = np.unravel_index(int(np.argmax(sim)), sim.shape)
        if sim[i, j] < merge:
            break
        a, b = int(min(i, j)), int(max(i, j))
        members[a] += members[b]
        alive[b] = False
        sums[a] += sums[b]
        cents[a] = sums[a] / max(float(np.linalg.norm(sums[a])), 1e-12)
        row = cents @ cents[a]
        row[~alive] = -np.inf
        row[a] = -np.inf
        sim[a, :] = row
        sim[:, a] = row
        sim[b, :] = -np.inf
        sim[:, b] = -np.inf
    return [np.concatenate(members[k]) for k in np.flatnonzero(alive)]


def cluster_embeddings(
    embeddings: np.ndarray, weights: np.ndarray, threshold: float | np.ndarray, merge: float, passes: int = 5,
    min_seed_share: float = 0.01,
) -> list[np.ndarray]:
    """Weighted centroid clustering of unit vectors; returns the member index arrays (largest weight first).
    `threshold` is one cosine or one per vector (e.g. `SpeakerParams.threshold_for(seconds)`).

    1. Leader pass over the 1,500 heaviest vectors (`_leader`): cosine to a running centroid >= `threshold` - 0.05
       joins it (a young centroid is still noisy).
    2. Up to `passes` rounds of: merge clusters whose centroids have cosine >= `merge`; keep as seeds the clusters
       holding at least `min_seed_share` of the weight (and 2 vectors); give every vector to its most similar seed
       centroid when the cosine is >= `threshold`; run the leader pass again on the vectors no seed takes.
       (Without dissolving the small clusters, a stray early vector stays its own nearest centroid forever.)
    O(n * k) for n vectors and k clusters: 10,000 clips of a few speakers take well under a second.
    """
    x = np.asarray(embeddings, dtype=np.float32).reshape(-1, EMBED_DIM)
    w = np.asarray(weights, dtype=np.float64)
    n = len(x)
    if n == 0:
        return []
    thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (n,))
    # the initial leader pass runs on the heaviest vectors only (a Python loop); the passes place the rest
    groups = _leader(x, w, np.argsort(-w, kind="stable")[:_LEADER_SAMPLE], thr - _LEADER_SLACK)
    total = float(w.sum())
    labels = np.full(n, -1, dtype=np.int64)
    for _ in range(passes):
        groups = _merge(x, w, groups, merge)
        seeds = [g for g in groups if len(g) >= 2 and float(w[g].sum()) >= min_seed_share * total]
        if not seeds:
            break
        cents = _centroids(x, w, seeds)
        sims = x @ cents.T
        new = np.argmax(sims, axis=1)
        new[sims[np.arange(n), new] < thr] = -1
        rest = np.flatnonzero(new < 0)
        groups = [np.flatnonzero(new == k) for k in range(len(seeds))]
        groups = [g for g in groups if len(g)] + (_leader(x, w, rest, thr) if len(rest) else [])
        if np.array_equal(new, labels):
            break
        labels = new
    groups = _merge(x, w, groups, merge)
    groups.sort(key=lambda g: -float(w[g].sum()))
    return groups


def other_speakers(
    clips: Sequence[tuple[np.ndarray, float]], reference: np.ndarray, params: SpeakerParams | None = None,
    same_margin: float = 0.0,
) -> list[np.ndarray]:
    """Centroids of the speakers in `clips` ((embedding, seconds)) who are not the target of `reference`.

    The clips are clustered as `choose_target` does; the cluster nearest the reference is the target's, and so is
    any cluster whose centroid is within `merge` (less `same_margin`, e.g. for a stem against a clean enrollment)
    of it. The rest, when they hold two clips or more, are other people.
    """
    p = params or SpeakerParams()
    clusters = choose_target(clips, p).clusters
    if len(clusters) < 2:
        return []
    sims = [cosine(c.centroid, reference) for c in clusters]
    nearest = int(np.argmax(sims))
    return [c.centroid for k, c in enumerate(clusters)
            if k != nearest and c.clips >= 2 and sims[k] < p.merge - same_margin]


def nearest_other(embedding: np.ndarray, others: Sequence[np.ndarray]) -> float:
    """The highest cosine of `embedding` to any of `others` (-1 when there are none)."""
    return max((cosine(embedding, o) for o in others), default=-1.0)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def choose_target(clips: Sequence[tuple[np.ndarray, float]], params: SpeakerParams | None = None) -> TargetDecision:
    """Who is the target among all clips of a voice: `clips` are (embedding, seconds).

    Clips shorter than `params.min_clip_s` do not vote. The voting clips are clustered (`cluster_embeddings`, the
    assignment threshold `threshold_for(seconds)` of each clip, merge `merge`); shares are of the voting seconds.
    The rule:
      too_little_speech  fewer than `min_decide_s` voting seconds, or the largest cluster holds less than that;
      decided            largest share >= `dominant_share` and largest seconds >= `dominant_ratio` x runner-up's;
      ambiguous          otherwise (say what the shares are, e.g. two speakers near 50/50).
    """
    p = params or SpeakerParams()
    votes = [(i, e, s) for i, (e, s) in enumerate(clips) if s >= p.min_clip_s]
    total = float(sum(s for _, _, s in votes))
    clusters: list[Cluster] = []
    if votes:
        idx = np.array([i for i, _, _ in votes])
        emb = np.stack([np.asarray(e, dtype=np.float32) for _, e, _ in votes])
        sec = np.array([s for _, _, s in votes], dtype=np.float64)
        for members in cluster_embeddings(emb, sec, p.threshold_for(sec), p.merge):
            secs = float(sec[members].sum())
            clusters.append(Cluster(secs, secs / total if total else 0.0, centroid(emb[members], sec[members]),
                                    len(members), tuple(int(i) for i in idx[members])))
        clusters.sort(key=lambda c: -c.seconds)
    n_all = len(clips)
    if not clusters or total < p.min_decide_s or clusters[0].seconds < p.min_decide_s:
        have = clusters[0].seconds if clusters else 0.0
        detail = (f"too little speech to decide: {_minutes(total)} in {n_all} clips, the largest speaker "
                  f"{_minutes(have)} (needs {_minutes(p.min_decide_s)})")
        return TargetDecision("too_little_speech", clusters, None, detail, total)
    top = clusters[0]
    runner = clusters[1].seconds if len(clusters) > 1 else 0.0
    big = [c for c in clusters if c.share >= 0.05]
    shares = " and ".join(f"{c.share:.0%}" for c in big[:3])
    if top.share >= p.dominant_share and top.seconds >= p.dominant_ratio * runner:
        detail = (f"{len(big)} speaker{'s' if len(big) != 1 else ''} hold {shares} of {_minutes(total)}; "
                  f"the target holds {top.share:.0%}")
        return TargetDecision("decided", clusters, top.centroid, detail, total)
    detail = f"{len(big)} speakers hold {shares} of {_minutes(total)}; no one clearly dominates"
    return TargetDecision("ambiguous", clusters, None, detail, total)
