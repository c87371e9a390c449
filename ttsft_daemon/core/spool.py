"""Every file move of the daemon goes through here.

Rules that make a kill -9 at any instant lose nothing and duplicate nothing:

* A spool item is a payload (`<id>.<ext>`) plus a sidecar (`<id>.json`). The payload is renamed into place first,
  the sidecar last: the sidecar's presence is the commit. Readers list sidecars only.
* Every write goes to a temporary name in the destination folder (`.tmp.<host>.<pid>.<rand>.<name>`), is fsynced,
  renamed into place, and the folder is fsynced. Names start with a dot, so no scanner ever sees them.
* An input is removed only after its outputs are committed and the job JSON records the step.
* Names derive from content (job id = sha256 of the original; clip id = job id + offset), so redoing a step
  rewrites the same names.
* Items are claimed with a non-blocking `filelock` under `locks/`; after taking the lock the claimer re-checks that
  the item still exists (another worker may have finished it in between).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ttsft_daemon.core.atomic import (
    _HOST,
    TMP_PREFIX,
    _fault_point,
    _start_time,
    atomic_copy,
    atomic_write_bytes,
    atomic_write_json,
    commit,
    fsync_dir,
    read_json,
    remove,
    short_name,
    tmp_name,
)
from ttsft_daemon.core.jobs import JobRecord
from ttsft_daemon.pipeline import SPOOLS

__all__ = ["SPOOLS", "TMP_PREFIX", "Claim", "Item", "Layout", "Spool", "atomic_copy", "atomic_write_bytes",
           "atomic_write_json", "commit", "fsync_dir", "read_json", "remove", "tmp_name"]
# ------------------------------------------------------------------------------------------ layout


@dataclass(frozen=True)
class Layout:
    """The state layout of DESIGN.md under one root."""

    root: Path
    spools: tuple[str, ...] = SPOOLS

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    def spool(self, name: str) -> Path:
        return self.root / "spool" / name

    @property
    def datasets(self) -> Path:
        return self.root / "dataset"

    def dataset(self, voice: str) -> Path:
        return self.root / "dataset" / voice

    @property
    def trainings(self) -> Path:
        return self.root / "training"

    def training(self, voice: str) -> Path:
        return self.root / "training" / voice

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def failed(self) -> Path:
        return self.root / "failed"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @property
    def work(self) -> Path:
        """Scratch space for intermediate files of a stage (decoded audio ...), cleaned at start-up."""
        return self.root / "work"

    def ensure(self) -> None:
        for d in (self.inbox, *(self.spool(s) for s in self.spools), self.datasets, self.trainings,
                  self.checkpoints, self.failed, self.locks, self.work):
            d.mkdir(parents=True, exist_ok=True)


# ------------------------------------------------------------------------------------------ items


@dataclass(frozen=True)
class Item:
    """A committed spool item: payload + sidecar JSON."""

    spool: str
    id: str
    payload: Path
    sidecar: Path

    def meta(self) -> dict[str, Any]:
        return read_json(self.sidecar) or {}

    def exists(self) -> bool:
        return self.sidecar.exists()


class Claim:
    """A held claim on an item (or any named resource); release() frees it."""

    def __init__(self, lock: FileLock, path: Path) -> None:
        self._lock = lock
        self._path = path

    def release(self, done: bool = False) -> None:
        # Unlinking while still holding the lock is safe: whoever opens the old path afterwards re-checks that
        # the item exists before working on it.
        if done:
            self._path.unlink(missing_ok=True)
        self._lock.release()


class Spool:
    """The spools, the job records and the quarantine of one state root."""

    def __init__(self, root: Path, spools: tuple[str, ...] = SPOOLS) -> None:
        self.layout = Layout(root, spools)

    # ---------------------------------------------------------------- listing
    def items(self, spool: str) -> list[Item]:
        """Committed items of a spool, oldest first (sorted by name = content-derived id)."""
        folder = self.layout.spool(spool)
        out: list[Item] = []
        try:
            names = sorted(os.listdir(folder))
        except FileNotFoundError:
            return out
        present = set(names)
        for name in names:
            if name.startswith(".") or not name.endswith(".json"):
                continue
            item_id = name[:-5]
            payload_name = f"{item_id}.wav"
            if payload_name not in present:  # originals in raw/ keep their extension: the sidecar names it
                payload_name = str((read_json(folder / name) or {}).get("payload", ""))
            if payload_name not in present or payload_name.endswith(".json"):
                continue
            out.append(Item(spool, item_id, folder / payload_name, folder / name))
        return out

    def count(self, spool: str) -> int:
        return len(self.items(spool))

    # ---------------------------------------------------------------- claims
    def try_claim(self, key: str) -> Claim | None:
        """Non-blocking claim of a resource named `key` (unique across spools), or None if held elsewhere."""
        path = self.layout.locks / f"{key}.lock"
        lock = FileLock(path, timeout=0, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            return None
        return Claim(lock, path)

    @contextlib.contextmanager
    def locked(self, key: str, timeout: float = 120.0) -> Iterator[None]:
        """Blocking lock for short read-modify-write sections (job JSON, metadata.csv)."""
        lock = FileLock(self.layout.locks / f"{key}.lock", timeout=timeout, thread_local=False)
        with lock:
            yield

    # ---------------------------------------------------------------- committing items
    def tmp_payload(self, spool: str, item_id: str, ext: str) -> Path:
        """Where a stage writes an output payload before commit_item() renames it into place."""
        return tmp_name(self.layout.spool(spool) / f"{item_id}.{ext}")

    def commit_item(self, spool: str, item_id: str, payload_tmp: Path, ext: str, meta: dict[str, Any]) -> Item:
        folder = self.layout.spool(spool)
        payload = folder / f"{item_id}.{ext}"
        sidecar = folder / f"{item_id}.json"
        commit(payload_tmp, payload)
        atomic_write_json(sidecar, {**meta, "id": item_id, "payload": payload.name})
        return Item(spool, item_id, payload, sidecar)

    def remove_item(self, item: Item) -> None:
        """Remove an input after its outputs are committed. Payload first: a sidecar left alone by a crash here
        is no item any more, and `repair()` removes it at the next start."""
        remove(item.payload)
        remove(item.sidecar)
        fsync_dir(item.sidecar.parent)

    # ---------------------------------------------------------------- jobs
    def job_path(self, job_id: str) -> Path:
        return self.layout.checkpoints / f"{job_id}.json"

    def read_job(self, job_id: str) -> JobRecord | None:
        data = read_json(self.job_path(job_id))
        return JobRecord.from_json(data) if data is not None else None

    def update_job(self, job_id: str, change: Callable[[JobRecord], None]) -> JobRecord:
        """Read-modify-write of a job record under its lock."""
        with self.locked(f"job-{job_id}"):
            job = self.read_job(job_id) or JobRecord(job_id)
            change(job)
            job.updated = time.time()
            atomic_write_json(self.job_path(job_id), job.to_json())
            return job

    def jobs(self) -> Iterator[JobRecord]:
        for p in sorted(self.layout.checkpoints.glob("*.json")):
            data = read_json(p)
            if data is not None:
                yield JobRecord.from_json(data)

    # ---------------------------------------------------------------- quarantine
    def quarantine(self, files: list[Path], stage: str, reason: str, detail: str = "",
                   extra: dict[str, Any] | None = None) -> Path:
        """Move `files` into failed/ with `<name>.error.json`; returns the error file.

        The report is written first, naming where each file goes, and marked complete last: a quarantine
        interrupted in between is finished by its redo (same item) or by `repair()` at the next start.
        """
        failed = self.layout.failed
        failed.mkdir(parents=True, exist_ok=True)
        item = str((extra or {}).get("item") or "")
        pending = self._pending(item)
        if pending is not None:
            error_file, report = pending
        else:
            base = _unique_name(failed, short_name(files[0].name))
            plan = [{"from": f.name, "name": base if i == 0 else f"{base}.{f.name.rsplit('.', 1)[-1]}"}
                    for i, f in enumerate(files)]
            report = {"stage": stage, "reason": reason, "detail": detail, "time": time.time(),
                      **(extra or {}), "files": plan, "complete": False}
            error_file = failed / f"{base}.error.json"
            if item:  # the pointer first: a report is never written without a way for the redo to find it
                atomic_write_bytes(self._pending_marker(item), error_file.name.encode())
            atomic_write_json(error_file, report)
        self._move_planned(files, report)
        report["complete"] = True
        atomic_write_json(error_file, report)
        if item:
            remove(self._pending_marker(item))
        for f in files:
            with contextlib.suppress(OSError):
                fsync_dir(f.parent)
        return error_file

    def _move_planned(self, files: list[Path], report: dict[str, Any]) -> None:
        failed = self.layout.failed
        for entry in report["files"]:
            src = next((f for f in files if f.name == entry["from"]), None)
            if src is None or (not src.exists() and not src.is_symlink()):
                continue  # moved before an interruption, or never there
            _fault_point(f"quarantine {src.name}")
            if src.is_symlink():
                # A symlink is quarantined as what it is: never followed, never copied through.
                entry["symlink_to"] = os.readlink(src)
                src.unlink()
                continue
            dest = failed / entry["name"]
            try:
                os.rename(src, dest)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                atomic_copy(src, dest)
                src.unlink()
        fsync_dir(failed)

    def _pending_marker(self, item: str) -> Path:
        return self.layout.failed / f".pending-{hashlib.sha256(item.encode()).hexdigest()[:24]}"

    def _pending(self, item: str) -> tuple[Path, dict[str, Any]] | None:
        """The unfinished report of an interrupted quarantine of `item`, if any."""
        if not item:
            return None
        try:
            name = self._pending_marker(item).read_text().strip()
        except OSError:
            return None
        report = read_json(self.layout.failed / name)
        if report is None or report.get("complete") or str(report.get("item")) != item:
            return None
        return self.layout.failed / name, report

    def repair(self) -> int:
        """At start-up: finish interrupted quarantines and removals. Returns how many sidecars were settled."""
        settled = 0
        for marker in self.layout.failed.glob(".pending-*") if self.layout.failed.exists() else []:
            report = read_json(self.layout.failed / marker.read_text().strip()) or {}
            item = str(report.get("item") or "")
            if report.get("complete") or not item:
                marker.unlink(missing_ok=True)
                continue
            planned = [str(e["from"]) for e in report.get("files", [])]
            here = {n: Path(d) / n for d in self._spool_dirs() for n in planned if (Path(d) / n).exists()}
            if here and planned[0] not in here:  # the payload went, its sidecar stayed: finish the move
                self.quarantine(list(here.values()), str(report.get("stage")), str(report.get("reason")),
                                str(report.get("detail", "")), {"item": item})
                settled += 1
            elif not here and all((self.layout.failed / e["name"]).exists() for e in report.get("files", [])):
                # every file reached failed/ before the interruption: only the report's last word is missing
                report["complete"] = True
                atomic_write_json(self.layout.failed / marker.read_text().strip(), report)
                remove(marker)
                settled += 1
        for folder in self._spool_dirs():
            names = set(os.listdir(folder))
            for name in names:
                if name.startswith(".") or not name.endswith(".json"):
                    continue
                payload = str((read_json(folder / name) or {}).get("payload") or name[:-5] + ".wav")
                if payload not in names:  # an interrupted removal: the outputs were committed before it began
                    remove(folder / name)
                    settled += 1
        return settled

    def _spool_dirs(self) -> list[Path]:
        return [self.layout.spool(s) for s in self.layout.spools if self.layout.spool(s).exists()]

    # ---------------------------------------------------------------- recovery
    def cleanup_temporaries(self, max_age_seconds: float = 24 * 3600) -> int:
        """Start-up recovery: remove temporaries left by dead processes of this host (and very old ones of any
        host), then finish interrupted quarantines and removals (`repair`). Returns the files settled."""
        now = time.time()
        removed = 0
        for p in self._temporaries():
            if _tmp_owner_dead(p.name) or _age(p, now) > max_age_seconds:
                p.unlink(missing_ok=True)
                removed += 1
        return removed + self.repair()

    def _temporaries(self) -> Iterator[Path]:
        """Temporary files in the root itself and anywhere below the folders the daemon writes (never the inbox)."""
        lay = self.layout
        with os.scandir(lay.root) as entries:
            yield from (Path(e.path) for e in entries if e.name.startswith(TMP_PREFIX) and e.is_file())
        for top in (lay.root / "spool", lay.datasets, lay.checkpoints, lay.failed, lay.work, lay.trainings):
            for dirpath, _dirs, files in os.walk(top):
                yield from (Path(dirpath) / n for n in files if n.startswith(TMP_PREFIX))


def _unique_name(folder: Path, name: str) -> str:
    candidate = name
    n = 1
    while (folder / candidate).exists() or (folder / f"{candidate}.error.json").exists():
        stem, dot, ext = name.partition(".")
        candidate = f"{stem}.{n}{dot}{ext}"
        n += 1
    return candidate


def _tmp_owner_dead(name: str) -> bool:
    """True when the temporary's writer (on this host) has exited; a reused pid has another start time."""
    parts = name[len(TMP_PREFIX):].split(".", 3)
    if len(parts) < 3 or parts[0] != _HOST:
        return False
    pid_text, _, started = parts[1].partition("-")
    try:
        pid = int(pid_text)
    except ValueError:
        return True
    if pid == os.getpid():
        return False
    now_started = _start_time(pid)
    if now_started is None:
        return True
    return bool(started) and started != "0" and started != now_started


def _age(p: Path, now: float) -> float:
    try:
        return now - p.stat().st_mtime
    except OSError:
        return 0.0
