"""Hand review of a voice's clips: list them in a useful order, reject one, correct its transcript.

The Python API behind `ttsft-daemon review` (and the HTTP API): `list_clips`, `reject`, `relabel`, `load_edits`.

Every edit runs under the voice's dataset lock (`dataset.lock_key`, the one the daemon's accept stage takes), so a
running daemon never interleaves with it: no row is lost or duplicated. Each file is replaced atomically, in an
order a crash cannot hurt: the hand edit is recorded in `dataset/<voice>/review.json` first, then metadata.csv is
rewritten, then a rejected clip's files move to `failed/` (with a `<clip>.wav.error.json`, stage "review"). A redo
of the recording consults review.json (`dataset.add_clip`): a rejected clip never comes back, a relabelled one keeps
its corrected text. The next training run reads the corrected metadata.csv.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ttsft_daemon.core.spool import Spool, atomic_write_bytes, atomic_write_json, read_json
from ttsft_daemon.dataset import METADATA, REVIEW, Row, lock_key, read_lines, read_rows
from ttsft_daemon.errors import TtsftError

ACCEPTED = "accepted"
REJECTED = "rejected"
HAND_REASON = "rejected by hand"
ORDERS = ("worst", "disagreement", "quality", "name", "duration")
RECORDING_STAGES = ("ingest", "separate", "segment")  # their rejects are whole recordings, not clips


class ReviewError(TtsftError):
    """A review command cannot be done as asked (unknown voice or clip, empty text ...)."""


@dataclass(frozen=True)
class ClipInfo:
    """One clip of a voice, accepted (in metadata.csv) or rejected (in failed/), with what the pipeline measured."""

    clip: str  # the clip id (file name without .wav)
    status: str  # ACCEPTED or REJECTED
    transcript: str
    duration: float
    speaker: str
    quality: float | None
    wav: Path | None
    reasons: tuple[str, ...] = ()
    chars_per_second: float | None = None
    disagreement: float | None = None  # share of words Whisper was unsure of (see `disagreement_of`)
    source: str | None = None  # the recording it was cut from
    start: float | None = None  # seconds into that recording
    edited: str | None = None  # "relabeled" / "rejected" when changed by hand

    @property
    def filename(self) -> str:
        return f"{self.clip}.wav"

    def to_dict(self) -> dict[str, Any]:
        return {"clip": self.clip, "status": self.status, "transcript": self.transcript, "duration": self.duration,
                "speaker": self.speaker, "quality": self.quality, "wav": str(self.wav) if self.wav else None,
                "reasons": list(self.reasons), "chars_per_second": self.chars_per_second,
                "disagreement": self.disagreement, "source": self.source, "start": self.start, "edited": self.edited}


@dataclass
class ReviewEdits:
    """dataset/<voice>/review.json: clip id -> what was done by hand."""

    rejected: dict[str, dict[str, Any]] = field(default_factory=dict)  # reason, time, text, duration
    relabeled: dict[str, dict[str, Any]] = field(default_factory=dict)  # text, previous, time

    def to_json(self) -> dict[str, Any]:
        return {"rejected": self.rejected, "relabeled": self.relabeled}


@dataclass(frozen=True)
class ReviewResult:
    clip: str
    action: str  # "rejected" / "relabeled" / "unchanged"
    detail: str


def load_edits(dataset_dir: Path) -> ReviewEdits:
    data = read_json(dataset_dir / REVIEW) or {}
    rejected, relabeled = data.get("rejected"), data.get("relabeled")
    return ReviewEdits(
        {str(k): dict(v) for k, v in rejected.items() if isinstance(v, dict)} if isinstance(rejected, dict) else {},
        {str(k): dict(v) for k, v in relabeled.items() if isinstance(v, dict)} if isinstance(relabeled, dict) else {},
    )


def disagreement_of(info: dict[str, Any]) -> float | None:
    """How much Whisper disagreed with itself on a clip: the share of its words heard with a probability below
    0.3 (quality report's `unsure_word_share`), else 1 - the mean word probability."""
    details = (info.get("quality_report") or {}).get("details") or {}
    share = details.get("unsure_word_share")
    if isinstance(share, (int, float)):
        return float(share)
    mean = details.get("mean_word_probability")
    return round(1.0 - float(mean), 4) if isinstance(mean, (int, float)) else None


def clip_id(name: str) -> str:
    """'abc-000001230', 'abc-000001230.wav' or a path to the WAV -> 'abc-000001230'."""
    base = Path(name.strip()).name
    return base[:-4] if base.endswith(".wav") else base


# ------------------------------------------------------------------------------------------------- listing


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _from_info(info: dict[str, Any]) -> dict[str, Any]:
    details = (info.get("quality_report") or {}).get("details") or {}
    return {"chars_per_second": _number(details.get("chars_per_second")), "disagreement": disagreement_of(info),
            "source": info.get("source_name") or info.get("source"), "start": _number(info.get("start"))}


def accepted_clips(dataset_dir: Path, edits: ReviewEdits | None = None) -> list[ClipInfo]:
    edits = edits if edits is not None else load_edits(dataset_dir)
    out = []
    for row in read_rows(dataset_dir):
        cid = clip_id(row.clip_filename)
        info = read_json(dataset_dir / "clips" / f"{cid}.json") or {}
        wav = dataset_dir / "wavs" / row.clip_filename
        out.append(ClipInfo(cid, ACCEPTED, row.transcript, row.duration, row.speaker, row.quality,
                            wav if wav.is_file() else None, (), **_from_info(info),
                            edited="relabeled" if cid in edits.relabeled else None))
    return out


def rejected_clips(root: Path, voice: str) -> list[ClipInfo]:
    """The clips of `voice` in failed/ (one per clip id: the newest report), with their reasons."""
    failed = root / "failed"
    found: dict[str, tuple[float, ClipInfo]] = {}
    try:
        reports = sorted(failed.glob("*.error.json"))
    except OSError:
        return []
    for path in reports:
        report = read_json(path) or {}
        if report.get("voice") != voice or report.get("stage") in RECORDING_STAGES:
            continue
        files = [f for f in report.get("files") or [] if isinstance(f, dict)]
        wav_name = next((str(f.get("name")) for f in files if str(f.get("from", "")).endswith(".wav")), None)
        meta_name = next((str(f.get("name")) for f in files if str(f.get("from", "")).endswith(".json")), None)
        info = (read_json(failed / meta_name) if meta_name else None) or report.get("info") or {}
        cid = str(info.get("clip_id") or report.get("clip") or report.get("item") or "")
        if not cid:
            continue
        reasons = [str(r) for r in info.get("reasons") or [] if r] if report.get("reason") == "quality gate" else []
        if not reasons:
            reasons = [str(report.get("reason") or "unknown")]
        wav = failed / wav_name if wav_name else None
        clip = ClipInfo(cid, REJECTED, str(info.get("text") or ""), float(_number(info.get("duration")) or 0.0),
                        str(info.get("speaker") or voice), _number(info.get("quality")),
                        wav if wav is not None and wav.is_file() else None, tuple(reasons), **_from_info(info),
                        edited="rejected" if report.get("stage") == "review" else None)
        when = float(_number(report.get("time")) or 0.0)
        if cid not in found or found[cid][0] <= when:
            found[cid] = (when, clip)
    return [c for _, c in sorted(found.values(), key=lambda pair: pair[1].clip)]


def sort_clips(clips: Iterable[ClipInfo], order: str = "worst") -> list[ClipInfo]:
    """`worst`: lowest quality first (ties: most disagreement); `disagreement`: most disagreement first;
    `quality`: highest quality first; `name`; `duration`: longest first."""
    items = list(clips)
    if order == "worst":
        return sorted(items, key=lambda c: (c.quality if c.quality is not None else 2.0, -(c.disagreement or 0.0),
                                            c.clip))
    if order == "disagreement":
        return sorted(items, key=lambda c: (-(c.disagreement or 0.0), c.quality or 0.0, c.clip))
    if order == "quality":
        return sorted(items, key=lambda c: (-(c.quality or 0.0), c.clip))
    if order == "duration":
        return sorted(items, key=lambda c: (-c.duration, c.clip))
    if order == "name":
        return sorted(items, key=lambda c: c.clip)
    raise ReviewError(f"unknown order {order!r}; use one of {', '.join(ORDERS)}")


def list_clips(root: Path, voice: str, *, order: str = "worst", reason: str | None = None,
               speaker: str | None = None, include_rejected: bool | None = None,
               limit: int | None = None) -> list[ClipInfo]:
    """The clips of `voice` in `order`. `reason` picks the rejected clips with that reason (and so includes
    rejected clips; without it only accepted clips are listed unless `include_rejected`); `speaker` filters on the
    speaker column."""
    dataset_dir = root / "dataset" / voice
    if not dataset_dir.is_dir() and not (root / "failed").is_dir():
        raise ReviewError(f"voice {voice!r} has no dataset under {root / 'dataset'}")
    with_rejected = include_rejected if include_rejected is not None else reason is not None
    clips = accepted_clips(dataset_dir) if reason is None else []
    if with_rejected:
        clips += rejected_clips(root, voice)
    if reason is not None:
        want = reason.casefold()
        clips = [c for c in clips if any(want == r.casefold() or want in r.casefold() for r in c.reasons)]
    if speaker is not None:
        clips = [c for c in clips if c.speaker == speaker]
    ordered = sort_clips(clips, order)
    return ordered[:limit] if limit is not None else ordered


def review_command(config_path: Path | str | None, voice: str, action: str, clip: str, text: str | None = None) -> str:
    """A copy-able shell command for a clip (shown by the report)."""
    import shlex

    cfg = f" --config {shlex.quote(str(config_path))}" if config_path else ""
    base = f"ttsft-daemon review{cfg} --voice {shlex.quote(voice)} {action} {shlex.quote(clip)}"
    return base + (f" {shlex.quote(text)}" if text is not None else "")


# ------------------------------------------------------------------------------------------------- edits


def _rewrite_row(dataset_dir: Path, cid: str, new: Row | None) -> None:
    """metadata.csv with the row of `cid` replaced by `new` (None: dropped); every other line, a comment or a line
    this release cannot read included, stays as it was, where it was."""
    out = []
    for line, row in read_lines(dataset_dir):
        if row is not None and clip_id(row.clip_filename) == cid:
            if new is not None:
                out.append(new.line())
            continue
        out.append(line)
    atomic_write_bytes(dataset_dir / METADATA, "".join(line + "\n" for line in out).encode("utf-8", "surrogateescape"))


def _save_edits(dataset_dir: Path, edits: ReviewEdits) -> None:
    atomic_write_json(dataset_dir / REVIEW, edits.to_json())


def _find_row(rows: list[Row], cid: str) -> int | None:
    return next((i for i, r in enumerate(rows) if clip_id(r.clip_filename) == cid), None)


@contextmanager
def _locked_dataset(root: Path, voice: str, lock_timeout: float) -> Iterator[tuple[Spool, Path]]:
    """The voice's spool and dataset folder, under the dataset lock the accept stage takes."""
    spool = Spool(root)
    folder = spool.layout.dataset(voice)
    if not folder.is_dir():
        raise ReviewError(f"voice {voice!r} has no dataset under {spool.layout.datasets}")
    spool.layout.locks.mkdir(parents=True, exist_ok=True)
    with spool.locked(lock_key(voice), timeout=lock_timeout):
        yield spool, folder


def _not_in_dataset(cid: str, voice: str) -> ReviewError:
    return ReviewError(f"clip {cid!r} is not in the dataset of voice {voice!r} (see `ttsft-daemon review "
                       f"--voice {voice} list`)")


def reject(root: Path, voice: str, clip: str, reason: str = "", *, lock_timeout: float = 120.0) -> ReviewResult:
    """Take `clip` out of the voice's dataset for good: its row leaves metadata.csv, its WAV and info go to failed/
    (stage "review", reason "rejected by hand", detail = `reason`), and review.json remembers it so that a redo of
    its recording does not bring it back. Rejecting an already rejected clip changes nothing."""
    cid = clip_id(clip)
    with _locked_dataset(root, voice, lock_timeout) as (spool, folder):
        rows = read_rows(folder)
        edits = load_edits(folder)
        index = _find_row(rows, cid)
        if index is None:
            if cid in edits.rejected:
                return ReviewResult(cid, "unchanged", "already rejected by hand")
            raise _not_in_dataset(cid, voice)
        row = rows[index]
        edits.rejected[cid] = {"reason": reason or "", "time": time.time(), "text": row.transcript,
                               "duration": row.duration, "quality": row.quality}
        _save_edits(folder, edits)  # first: a crash after this still keeps the clip out for good
        _rewrite_row(folder, cid, None)
        wav = folder / "wavs" / row.clip_filename
        info_path = folder / "clips" / f"{cid}.json"
        files = [p for p in (wav, info_path) if p.exists()]
        info = read_json(info_path) or {}
        job_id = info.get("job_id")
        if isinstance(job_id, str) and job_id and spool.job_path(job_id).exists():
            spool.update_job(job_id, lambda job: job.set_clip(cid, "rejected"))
        if files:
            spool.layout.failed.mkdir(parents=True, exist_ok=True)
            spool.quarantine(files, "review", HAND_REASON, reason or "ttsft-daemon review reject",
                             {"item": cid, "clip": cid, "voice": voice, "job_id": info.get("job_id"),
                              "source": info.get("source_name")})
    return ReviewResult(cid, REJECTED, f"{row.duration:.2f} s, {len(rows) - 1} clips left")


def relabel(root: Path, voice: str, clip: str, text: str, *, language: str | None = "en",
            lock_timeout: float = 120.0) -> ReviewResult:
    """Replace the transcript of `clip` with `text` (normalised as the pipeline normalises transcripts: numbers
    and symbols spelled out), in metadata.csv, in the clip's info and in review.json."""
    from ttsft_daemon.text.textnorm import normalize_for_tts

    cid = clip_id(clip)
    new_text = normalize_for_tts(" ".join(text.replace("|", " ").split()), language or "en")
    if not any(ch.isalnum() for ch in new_text):
        raise ReviewError("the new transcript is empty; to drop the clip use `review reject`")
    with _locked_dataset(root, voice, lock_timeout) as (_, folder):
        rows = read_rows(folder)
        index = _find_row(rows, cid)
        if index is None:
            raise _not_in_dataset(cid, voice)
        old = rows[index]
        if old.transcript == new_text:
            return ReviewResult(cid, "unchanged", "same transcript")
        edits = load_edits(folder)
        first = edits.relabeled.get(cid, {}).get("previous", old.transcript)
        edits.relabeled[cid] = {"text": new_text, "previous": first, "time": time.time()}
        _save_edits(folder, edits)
        _rewrite_row(folder, cid, Row(old.clip_filename, new_text, old.duration, old.speaker, old.quality))
        info_path = folder / "clips" / f"{cid}.json"
        info = read_json(info_path)
        if info is not None:
            info.setdefault("text_before_review", info.get("text"))
            info["text"] = new_text
            atomic_write_json(info_path, info)
    return ReviewResult(cid, "relabeled", f"{first!r} -> {new_text!r}")
