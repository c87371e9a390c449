"""The job record: one recording's progress, `checkpoints/<job_id>.json` (the contract's fields).

One class, one load (`JobRecord.from_json`, which also reads the records of the release before the schema version
existed: a user upgrading keeps their state) and one save (`to_json`). Read-modify-write goes through
`Spool.update_job`, under the job's lock. Keys this release does not know are kept verbatim (`extra`), so an older
daemon's record read by a newer one, or the reverse, loses nothing.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 2  # 1: the records written before the version field existed (same fields, no "schema")

# A clip's state in `clips`: where it is now, or how it ended.
CLIP_WAITING = ("clips", "audio")
CLIP_TRANSCRIBED = "transcribed"
CLIP_ACCEPTED = "accepted"
CLIP_REJECTED = "rejected"
CLIP_SPLIT = "split"  # cut in two at a change of speaker: its parts are clips of their own
CLIP_ENDED = (CLIP_ACCEPTED, CLIP_REJECTED, CLIP_SPLIT)


def _default_training() -> dict[str, Any]:
    return {"epoch": 0, "last_checkpoint": None}


@dataclass
class JobRecord:
    job_id: str
    schema: int = SCHEMA_VERSION
    voice: str | None = None
    source: dict[str, Any] = field(default_factory=dict)  # the inbox file: name, rel, size, mtime_ns, inode, sha256
    duration: float | None = None
    ingested: bool = False
    separated: bool = False
    spleeter: bool | None = None
    segmented: bool = False
    segments_saved: int = 0
    transcribed_count: int = 0
    accepted_count: int = 0
    rejected_count: int = 0
    manifest_created: bool = False
    clips: dict[str, str] = field(default_factory=dict)  # clip id -> state (CLIP_*)
    attempts: dict[str, dict[str, Any]] = field(default_factory=dict)  # claim key -> {count, last_error, time}
    done: dict[str, bool] = field(default_factory=dict)  # claim keys of the steps recorded as done
    failed: dict[str, Any] | None = None  # {stage, reason} when the recording itself was quarantined
    training: dict[str, Any] = field(default_factory=_default_training)
    created: float = field(default_factory=time.time)
    updated: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys unknown to this release, kept as they were

    # ------------------------------------------------------------------------------------------- load / save
    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobRecord:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known}
        values.setdefault("job_id", str(data.get("job_id", "")))
        values["schema"] = int(data.get("schema", 1) or 1)
        record = cls(**values)
        record.extra = extra
        return record

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out["schema"] = SCHEMA_VERSION
        if self.failed is None:
            del out["failed"]
        if self.spleeter is None:
            del out["spleeter"]
        return {**self.extra, **out}

    # ------------------------------------------------------------------------------------------- clips
    def set_clip(self, clip_id: str, state: str) -> None:
        self.clips[clip_id] = state
        self.recount()

    def recount(self) -> None:
        states = list(self.clips.values())
        self.transcribed_count = sum(1 for s in states if s not in (*CLIP_WAITING, CLIP_SPLIT))
        self.accepted_count = sum(1 for s in states if s == CLIP_ACCEPTED)
        self.rejected_count = sum(1 for s in states if s == CLIP_REJECTED)
        self.finish_if_complete()

    def finish_if_complete(self) -> None:
        """Mark the job finished once it is segmented and every clip is accepted or rejected. Called by every update
        that can be the last: a segment step redone after a failed job write (a full disk) may be recorded after its
        clips were already accepted."""
        if self.segmented and all(s in CLIP_ENDED for s in self.clips.values()):
            self.manifest_created = True

    # ------------------------------------------------------------------------------------------- attempts
    def count_attempt(self, key: str) -> int:
        """One more attempt at step `key`; 0 when the step is already recorded as done."""
        if key in self.done:
            return 0
        entry = self.attempts.setdefault(key, {"count": 0})
        entry["count"] = int(entry.get("count", 0)) + 1
        return int(entry["count"])

    def uncount_attempt(self, key: str) -> None:
        entry = self.attempts.get(key)
        if entry:
            entry["count"] = max(0, int(entry.get("count", 1)) - 1)

    def note_failure(self, key: str, attempt: int, summary: str) -> None:
        self.attempts.setdefault(key, {"count": attempt}).update(last_error=summary, time=time.time())

    def last_error(self, key: str) -> str:
        entry = self.attempts.get(key) or {}
        return str(entry.get("last_error", "the process was killed while working on it"))
