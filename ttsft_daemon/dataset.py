"""The Piper dataset of a voice: dataset/<voice>/wavs/ + metadata.csv.

Rows: clip_filename|transcript|duration|speaker|quality, no header.
metadata.csv is rewritten whole through a temporary file under the voice's lock: a reader or a crash never sees
a partial row, a row is only written after its WAV is in place, and a clip already present is never added twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ttsft_daemon.core.spool import Spool, atomic_copy, atomic_write_bytes, atomic_write_json

METADATA = "metadata.csv"


@dataclass(frozen=True)
class Row:
    clip_filename: str
    transcript: str
    duration: float
    speaker: str
    quality: float

    def line(self) -> str:
        text = " ".join(self.transcript.replace("|", " ").split())
        return f"{self.clip_filename}|{text}|{self.duration:.3f}|{self.speaker}|{self.quality:.4f}"


def read_rows(dataset_dir: Path) -> list[Row]:
    path = dataset_dir / METADATA
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    rows = []
    for line in lines:
        parts = line.split("|")
        if len(parts) != 5:
            continue
        rows.append(Row(parts[0], parts[1], float(parts[2]), parts[3], float(parts[4])))
    return rows


def add_clip(spool: Spool, voice: str, wav: Path, row: Row, info: dict[str, Any] | None = None) -> bool:
    """Add one clip to the voice's dataset; False when it was already there (idempotent).

    `info` (the clip's transcript, scores and position in its source recording) is kept beside it in
    `clips/<clip>.json` so every row can be traced back to where it came from.
    """
    folder = spool.layout.dataset(voice)
    wavs = folder / "wavs"
    wavs.mkdir(parents=True, exist_ok=True)
    with spool.locked(f"dataset-{voice}"):
        rows = read_rows(folder)
        if any(r.clip_filename == row.clip_filename for r in rows):
            return False
        if info is not None:
            (folder / "clips").mkdir(exist_ok=True)
            atomic_write_json(folder / "clips" / (Path(row.clip_filename).stem + ".json"), info)
        atomic_copy(wav, wavs / row.clip_filename)
        body = "".join(r.line() + "\n" for r in [*rows, row])
        atomic_write_bytes(folder / METADATA, body.encode("utf-8"))
        return True


def summary(dataset_dir: Path) -> tuple[int, float]:
    rows = read_rows(dataset_dir)
    return len(rows), sum(r.duration for r in rows)
