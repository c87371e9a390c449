"""What the report of a voice shows, gathered from the state files alone (no rendering here).

Sources: dataset/<voice>/ (metadata.csv, clips/*.json, review.json), failed/ (rejected clips and their reasons),
training/<voice>/ (state.json, progress.json, train.log[.1], evaluations.json and its spoken sentences) and the
voice's speaker selection (speakers/<voice>/state.json through core.speakers.public_state; else a `speakers.json`
in training/<voice>/ or dataset/<voice>/).

The recommended checkpoint is the evaluated export with the lowest word error rate; ties (equal WER to 3 decimal
places) go to the lower validation mel loss of its epoch (training mel loss when there is no validation), then to
the later epoch. The trend line reads the same mel loss (see `trend`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ttsft_daemon.core.spool import read_json
from ttsft_daemon.report.review import ClipInfo, ReviewEdits, accepted_clips, load_edits, rejected_clips, sort_clips

SPEAKER_FILES = ("speakers.json", "speaker.json")
LOSS_KEYS = {  # curve -> metric names, first present wins
    "generator": ("loss_g",),
    "discriminator": ("loss_d",),
    "mel": ("val_mel", "train_mel"),
}
TREND_KEYS = ("val_mel", "train_mel", "loss_g")
TREND_TOLERANCE = 0.01  # within 1% of the best loss counts as "as good as the best"
TREND_MIN_FLAT = 3  # epochs without a better loss before the curve counts as levelled off
MIN_TREND_EPOCHS = 4
WER_PLACES = 3
_EPOCH_LINE = re.compile(r"^\[ttsft\] epoch (\d+) step (\d+) .*?validation [\d.]+s(?P<losses>.*)$")


@dataclass
class Evaluation:
    """One evaluated export: epoch, WER, and each test sentence as spoken by it."""

    epoch: int | None
    step: int | None
    wer: float | None
    checkpoint: str | None
    evaluated: str | None
    sentences: list[dict[str, Any]]  # text, wav (Path | None), seconds, transcript, wer

    @property
    def checkpoint_exists(self) -> bool:
        return bool(self.checkpoint) and Path(str(self.checkpoint)).is_file()


@dataclass
class Recommendation:
    evaluation: Evaluation
    why: str


@dataclass
class ReasonCount:
    reason: str
    clips: int
    seconds: float


@dataclass
class ReportData:
    voice: str
    root: Path
    config_path: Path | None
    accepted: list[ClipInfo]
    rejected: list[ClipInfo]
    edits: ReviewEdits
    training: dict[str, Any]
    epochs: dict[int, dict[str, float]]  # completed epoch -> losses
    evaluations: list[Evaluation]
    recommendation: Recommendation | None
    trend: str
    speakers: dict[str, Any] | None
    rejected_by_reason: list[ReasonCount] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(c.duration for c in self.accepted)

    @property
    def training_dir(self) -> Path:
        return self.root / "training" / self.voice

    def to_check(self, n: int = 8) -> list[ClipInfo]:
        """The accepted clips to listen to first: the lowest quality ones, then those Whisper disagreed with itself
        on most (each clip once)."""
        worst = sort_clips(self.accepted, "worst")[: (n + 1) // 2]
        seen = {c.clip for c in worst}
        doubtful = [c for c in sort_clips(self.accepted, "disagreement") if c.clip not in seen and c.disagreement]
        return worst + doubtful[: n - len(worst)]

    def rejected_samples(self, per_reason: int = 2) -> dict[str, list[ClipInfo]]:
        """A few playable rejected clips per reason (the first reason of each clip)."""
        samples: dict[str, list[ClipInfo]] = defaultdict(list)
        for clip in sort_clips(self.rejected, "name"):
            if clip.wav is None or not clip.reasons:
                continue
            bucket = samples[clip.reasons[0]]
            if len(bucket) < per_reason:
                bucket.append(clip)
        return dict(sorted(samples.items()))

    def curves(self) -> dict[str, list[tuple[int, float]]]:
        out: dict[str, list[tuple[int, float]]] = {}
        for name, keys in LOSS_KEYS.items():
            key = next((k for k in keys if any(k in losses for losses in self.epochs.values())), None)
            if key is not None:
                out[f"{name} ({key})"] = [(e, losses[key]) for e, losses in sorted(self.epochs.items())
                                          if key in losses]
        return out


# ------------------------------------------------------------------------------------------------- gathering


def gather(root: Path, voice: str, config_path: Path | None = None) -> ReportData:
    dataset_dir = root / "dataset" / voice
    training_dir = root / "training" / voice
    edits = load_edits(dataset_dir)
    accepted = accepted_clips(dataset_dir, edits)
    rejected = rejected_clips(root, voice)
    epochs = read_epoch_losses(training_dir)
    evaluations = read_evaluations(training_dir)
    data = ReportData(
        voice=voice, root=root, config_path=config_path, accepted=accepted, rejected=rejected, edits=edits,
        training=read_json(training_dir / "state.json") or {}, epochs=epochs, evaluations=evaluations,
        recommendation=recommend(evaluations, epochs), trend=trend(epochs), speakers=read_speakers(root, voice),
    )
    data.rejected_by_reason = count_reasons(rejected)
    return data


def count_reasons(rejected: list[ClipInfo]) -> list[ReasonCount]:
    """Clips and seconds per rejection reason; a clip with several reasons counts under each of them."""
    clips: dict[str, int] = defaultdict(int)
    seconds: dict[str, float] = defaultdict(float)
    for clip in rejected:
        for reason in dict.fromkeys(clip.reasons):
            clips[reason] += 1
            seconds[reason] += clip.duration
    return sorted((ReasonCount(r, clips[r], round(seconds[r], 2)) for r in clips), key=lambda c: (-c.clips, c.reason))


def _parse_losses(text: str) -> dict[str, float]:
    out = {}
    for part in text.split():
        key, _, value = part.partition("=")
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


def read_epoch_losses(training_dir: Path) -> dict[int, dict[str, float]]:
    """Completed epoch -> losses, from the trainer's log lines (train.log.1, train.log: every run kept there) and
    progress.json (the current run's account, which wins where both have an epoch)."""
    epochs: dict[int, dict[str, float]] = {}
    for name in ("train.log.1", "train.log"):
        try:
            text = (training_dir / name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            match = _EPOCH_LINE.match(line.strip())
            if match:
                epochs[int(match.group(1))] = _parse_losses(match.group("losses"))
    progress = read_json(training_dir / "progress.json") or {}
    for record in progress.get("epochs") or []:
        if isinstance(record, dict) and isinstance(record.get("epoch"), int) and isinstance(record.get("losses"), dict):
            epochs[record["epoch"]] = {k: float(v) for k, v in record["losses"].items()
                                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return dict(sorted(epochs.items()))


def read_evaluations(training_dir: Path) -> list[Evaluation]:
    import json

    try:
        entries = json.loads((training_dir / "evaluations.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    out = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        sentences = []
        for s in entry.get("sentences") or []:
            if not isinstance(s, dict):
                continue
            wav = _find_file(s.get("wav"), training_dir)
            sentences.append({**s, "wav": wav})
        epoch = entry.get("epoch")
        out.append(Evaluation(epoch if isinstance(epoch, int) else None, entry.get("step"),
                              float(entry["wer"]) if isinstance(entry.get("wer"), (int, float)) else None,
                              entry.get("checkpoint"), entry.get("evaluated"), sentences))
    return sorted(out, key=lambda e: (e.epoch or 0, e.evaluated or ""))


def _find_file(path: Any, training_dir: Path) -> Path | None:
    """`path` as recorded, else the same file under this training folder (the state root may have moved)."""
    if not isinstance(path, str) or not path:
        return None
    p = Path(path)
    if p.is_file():
        return p
    parts = p.parts
    if "evaluations" in parts:
        moved = training_dir.joinpath(*parts[parts.index("evaluations"):])
        if moved.is_file():
            return moved
    return None


def _mel(losses: dict[str, float]) -> float | None:
    return next((losses[k] for k in TREND_KEYS if k in losses), None)


def recommend(evaluations: list[Evaluation], epochs: dict[int, dict[str, float]]) -> Recommendation | None:
    """The evaluated export with the lowest WER; ties go to the lower mel loss of its epoch, then the later epoch."""
    scored = [e for e in evaluations if e.wer is not None]
    if not scored:
        return None

    def key(e: Evaluation) -> tuple[float, float, int]:
        mel = _mel(epochs.get(e.epoch or -1, {}))
        return (round(e.wer or 0.0, WER_PLACES), mel if mel is not None else float("inf"), -(e.epoch or 0))

    best = min(scored, key=key)
    tied = [e for e in scored if round(e.wer or 0.0, WER_PLACES) == round(best.wer or 0.0, WER_PLACES)]
    why = f"lowest word error rate ({best.wer:.1%})"
    if len(tied) > 1:
        mel = _mel(epochs.get(best.epoch or -1, {}))
        why += (f", shared by {len(tied)} exports: the lowest mel loss among them"
                + (f" ({mel:.4g})" if mel is not None else "") + ", then the latest epoch")
    return Recommendation(best, why)


def trend(epochs: dict[int, dict[str, float]]) -> str:
    """"still improving" or "levelled off since epoch N", from the mel loss per epoch.

    The curve has levelled off since epoch N when N is the first epoch whose loss came within 1% of the best loss
    seen, and at least 3 more epochs (and a fifth of all epochs) followed without beating it by more than 1%.
    """
    series = [(e, v) for e, v in ((e, _mel(losses)) for e, losses in sorted(epochs.items())) if v is not None]
    if len(series) < MIN_TREND_EPOCHS:
        return f"too early to tell ({len(series)} epoch{'s' if len(series) != 1 else ''} with a loss so far)"
    key = next(k for k in TREND_KEYS if any(k in losses for losses in epochs.values()))
    best = min(v for _, v in series)
    limit = best + abs(best) * TREND_TOLERANCE
    since = next(e for e, v in series if v <= limit)
    after = sum(1 for e, _ in series if e > since)
    if after >= max(TREND_MIN_FLAT, len(series) // 5):
        return f"levelled off since epoch {since} ({key} within 1% of its best, {best:.4g}, for {after} epochs)"
    return f"still improving ({key} reached {best:.4g} at epoch {series[-1][0] if series[-1][1] <= limit else since})"


def read_speakers(root: Path, voice: str) -> dict[str, Any] | None:
    """The voice's speaker selection (speakers found, the one kept), or None when it never ran for this voice."""
    try:
        from ttsft_daemon.core import speakers
    except ImportError:  # a release without speaker selection
        speakers = None  # type: ignore[assignment]
    state = speakers.public_state(root, voice) if speakers is not None else None
    if state is not None:
        return dict(state)
    for folder in (root / "training" / voice, root / "dataset" / voice):
        for name in SPEAKER_FILES:
            data = read_json(folder / name)
            if data is not None:
                return data
    return None
