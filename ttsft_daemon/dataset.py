"""The Piper dataset of a voice: dataset/<voice>/wavs/ + metadata.csv.

Rows: clip_filename|transcript|duration|speaker|quality, no header.
metadata.csv is rewritten whole through a temporary file under the voice's lock: a reader or a crash never sees
a partial row, a row is only written after its WAV is in place, and a clip already present is never added twice.
The file may be edited by hand: rows are read tolerantly (a decimal comma, a `|` inside the transcript, a Windows
line end), and lines that are not rows (comments, blank lines, anything unreadable) are kept verbatim whenever the
file is rewritten, never dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from ttsft_daemon.core.spool import Spool, atomic_copy, atomic_write_bytes, atomic_write_json, read_json
from ttsft_daemon.errors import RejectedInput

log = structlog.get_logger(__name__)

METADATA = "metadata.csv"
REVIEW = "review.json"  # hand edits of `ttsft-daemon review` (report/review.py): rejects and relabels


def lock_key(voice: str) -> str:
    """The lock of a voice's metadata.csv, wavs/ and review.json (the daemon and `ttsft-daemon review` share it)."""
    return f"dataset-{voice}"


@dataclass(frozen=True)
class Row:
    clip_filename: str
    transcript: str
    duration: float
    speaker: str
    quality: float

    def line(self) -> str:
        text = " ".join(self.transcript.replace("|", " ").split())
        speaker = " ".join(self.speaker.replace("|", "_").split())
        return f"{self.clip_filename}|{text}|{self.duration:.3f}|{speaker}|{self.quality:.4f}"


def parse_line(line: str) -> Row | None:
    """One metadata.csv line as a row, or None when it is not one (a comment, a blank line, missing fields, a number
    that is not one). Tolerates a decimal comma and a `|` inside the transcript (the last three fields are the
    duration, the speaker and the quality)."""
    line = line.rstrip("\r")
    if not line.strip() or line.lstrip().startswith("#"):
        return None
    parts = line.split("|")
    if len(parts) < 5 or not parts[0].strip():
        return None
    duration, quality = _number(parts[-3]), _number(parts[-1])
    if duration is None or quality is None:
        return None
    return Row(parts[0].strip(), "|".join(parts[1:-3]), duration, parts[-2], quality)


def _number(text: str) -> float | None:
    try:
        value = float(text.strip().replace(",", "."))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_lines(dataset_dir: Path) -> list[tuple[str, Row | None]]:
    """Every line of metadata.csv with its row (None: not a row, kept verbatim on rewrite)."""
    try:
        text = (dataset_dir / METADATA).read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return []
    return [(line, parse_line(line)) for line in text.splitlines()]


def read_rows(dataset_dir: Path) -> list[Row]:
    return [row for _line, row in read_lines(dataset_dir) if row is not None]


def write_metadata(dataset_dir: Path, rows: list[Row]) -> None:
    """Rewrite metadata.csv with `rows` (under the voice's lock), keeping the lines that are not rows where they
    were: a hand-written comment or a line this release cannot read is never lost."""
    kept = [line for line, row in read_lines(dataset_dir) if row is None]
    body = "".join(line + "\n" for line in kept) + "".join(r.line() + "\n" for r in rows)
    atomic_write_bytes(dataset_dir / METADATA, body.encode("utf-8", "surrogateescape"))


def add_clip(spool: Spool, voice: str, wav: Path, row: Row, info: dict[str, Any] | None = None) -> bool:
    """Add one clip to the voice's dataset; False when it was already there (idempotent).

    `info` (the clip's transcript, scores and position in its source recording) is kept beside it in
    `clips/<clip>.json` so every row can be traced back to where it came from.
    """
    folder = spool.layout.dataset(voice)
    wavs = folder / "wavs"
    wavs.mkdir(parents=True, exist_ok=True)
    with spool.locked(lock_key(voice)):
        names = {(parsed.clip_filename if parsed else line.split("|", 1)[0].strip()) for line, parsed in
                 read_lines(folder)}
        if row.clip_filename in names:
            return False
        row, info = apply_review(folder, row, info)
        if info is not None:
            (folder / "clips").mkdir(exist_ok=True)
            atomic_write_json(folder / "clips" / (Path(row.clip_filename).stem + ".json"), info)
        atomic_copy(wav, wavs / row.clip_filename)
        append_row(folder, row)
        return True


def append_row(folder: Path, row: Row) -> None:
    """metadata.csv plus one row: every line already there is kept as it is (a hand edit this release cannot parse
    included: it is reported, never dropped)."""
    lines = read_lines(folder)
    unreadable = [line for line, parsed in lines if parsed is None and line.strip() and not line.startswith("#")]
    if unreadable:
        log.warning("metadata.csv has lines that are not rows; kept as they are", path=str(folder / METADATA),
                    lines=len(unreadable), first=unreadable[0][:200])
    body = "".join(line + "\n" for line, _row in lines) + row.line() + "\n"
    atomic_write_bytes(folder / METADATA, body.encode("utf-8", "surrogateescape"))


def apply_review(folder: Path, row: Row, info: dict[str, Any] | None) -> tuple[Row, dict[str, Any] | None]:
    """The row as hand review left it: a clip rejected by hand never comes back (RejectedInput: the stage quarantines
    it again), a relabelled clip keeps its corrected transcript when its recording is processed again."""
    edits = read_json(folder / REVIEW) or {}
    stem = Path(row.clip_filename).stem
    rejected = edits.get("rejected")
    if isinstance(rejected, dict) and stem in rejected:
        why = rejected[stem].get("reason") if isinstance(rejected[stem], dict) else None
        raise RejectedInput("rejected by hand", str(why or "ttsft-daemon review reject"))
    relabeled = edits.get("relabeled")
    new = relabeled.get(stem) if isinstance(relabeled, dict) else None
    if isinstance(new, dict) and isinstance(new.get("text"), str):
        row = replace(row, transcript=new["text"])
        if info is not None:
            info = {**info, "text": new["text"], "text_before_review": info.get("text")}
    return row, info


def summary(dataset_dir: Path) -> tuple[int, float]:
    rows = read_rows(dataset_dir)
    return len(rows), sum(r.duration for r in rows)
