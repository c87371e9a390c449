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
import json
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from filelock import FileLock, Timeout

from ttsft_daemon.core.atomic import (
    _HOST,
    TMP_PREFIX,
    _fault_point,
    _owner_tag,
    _start_time,
    atomic_copy,
    atomic_open,
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
from ttsft_daemon.pipeline import INBOX, PIPELINE, SPOOLS

log = structlog.get_logger(__name__)

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
            base = _reserve_name(failed, short_name(display_name(files[0].name)))
            plan = [{"from": display_name(f.name),
                     "name": base if i == 0 else f"{base}.{display_name(f.name).rsplit('.', 1)[-1]}"}
                    for i, f in enumerate(files)]
            report = json_safe({"stage": stage, "reason": reason, "detail": detail, "time": time.time(),
                                **(extra or {}), "files": plan, "complete": False})
            error_file = failed / f"{base}.error.json"
            try:
                if item:  # the pointer first: a report is never written without a way for the redo to find it
                    atomic_write_bytes(self._pending_marker(item), error_file.name.encode())
                atomic_write_json(error_file, report)
            finally:
                (failed / _reservation(base)).unlink(missing_ok=True)  # the report holds the name, or nobody
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
        """An inbox file is reached through its folder's descriptor, opened from the inbox without following a link:
        a voice folder swapped for a link after the scan never lets a file outside be moved."""
        failed = self.layout.failed
        failed_fd = os.open(failed, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for entry in report["files"]:
                src = next((f for f in files if display_name(f.name) == entry["from"]), None)
                if src is None:
                    continue
                # Users write in the inbox: there no link is followed. The daemon's own folders are opened as they
                # are (an administrator may have put spool/ or dataset/ on another disk through a link).
                base = self.layout.inbox if src.is_relative_to(self.layout.inbox) else src.parent
                try:
                    fd = open_folder_below(base, src.parent)
                except OutsideRoot as exc:
                    entry["not_moved"] = f"left where it is: {exc}"
                    continue
                try:
                    self._move_one(fd, src.name, failed_fd, failed / entry["name"], entry)
                finally:
                    os.close(fd)
            os.fsync(failed_fd)
        finally:
            os.close(failed_fd)

    @staticmethod
    def _move_one(fd: int, name: str, failed_fd: int, dest: Path, entry: dict[str, Any]) -> None:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return  # moved before an interruption, or never there
        _fault_point(f"quarantine {display_name(name)}")
        if stat.S_ISLNK(st.st_mode):
            # A symlink is quarantined as what it is: never followed, never copied through.
            entry["symlink_to"] = display_name(os.readlink(name, dir_fd=fd))
            os.unlink(name, dir_fd=fd)
            return
        try:
            os.rename(name, entry["name"], src_dir_fd=fd, dst_dir_fd=failed_fd)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            src_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
            with os.fdopen(src_fd, "rb") as fin, atomic_open(dest) as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
            os.unlink(name, dir_fd=fd)

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
                    # (or the payload was deleted by hand: said, since the item is gone either way)
                    log.info("sidecar without its payload removed (an interrupted removal, or a payload deleted by "
                             "hand)", spool=folder.name, item=name[:-5], payload=payload)
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
        from ttsft_daemon.core.inbox import restore_interrupted_takes  # the inbox module imports this one

        return (removed + release_dead_reservations(self.layout.failed, max_age_seconds) + self.repair()
                + restore_interrupted_takes(self.layout.inbox) + self.sweep_locks())

    def sweep_locks(self) -> int:
        """Remove the lock files of claims whose item is gone (one is left per item a stage worked on). Each is
        removed while holding it, like a finished claim: whoever opened the old file re-checks the item."""
        removed = 0
        try:
            names = os.listdir(self.layout.locks)
        except FileNotFoundError:
            return 0
        sources = {spec.name: spec.source for spec in PIPELINE}
        for name in names:
            stage_name, _, item_id = name.removesuffix(".lock").partition("-")
            source = sources.get(stage_name)
            if not name.endswith(".lock") or source is None or source == INBOX or not item_id:
                continue
            if (self.layout.spool(source) / f"{item_id}.json").exists():
                continue
            claim = self.try_claim(name.removesuffix(".lock"))
            if claim is not None:
                claim.release(done=True)
                removed += 1
        return removed

    def _temporaries(self) -> Iterator[Path]:
        """Temporary files in the root itself and anywhere below the folders the daemon writes (never the inbox)."""
        lay = self.layout
        with os.scandir(lay.root) as entries:
            yield from (Path(e.path) for e in entries if _is_temporary(e.name) and e.is_file())
        for top in (lay.root / "spool", lay.datasets, lay.checkpoints, lay.failed, lay.work, lay.trainings,
                    lay.root / "speakers"):
            for dirpath, _dirs, files in os.walk(top):
                yield from (Path(dirpath) / n for n in files if _is_temporary(n))


def _reserve_name(folder: Path, name: str) -> str:
    """A name under `folder` no other quarantine uses: a hidden `.<name>.reserved` naming its owner is created
    exclusively (the caller removes it once the report is written), so two workers rejecting files of one name
    never pick the same one, and no reader ever sees a placeholder report. The reservation is written in full
    before it appears (a temporary linked into place), so one left by a crash always says whose it was and
    `release_dead_reservations` can clear it."""
    n = 0
    stem, dot, ext = name.partition(".")
    while True:
        candidate = name if n == 0 else f"{stem}.{n}{dot}{ext}"
        n += 1
        if os.path.lexists(folder / candidate):
            continue
        if not _create_reservation(folder / _reservation(candidate)):
            continue
        if os.path.lexists(folder / f"{candidate}.error.json"):  # reported between the check and the reservation
            (folder / _reservation(candidate)).unlink(missing_ok=True)
            continue
        return candidate


def _create_reservation(path: Path) -> bool:
    """Create `path` holding its owner's tag, atomically; False when it exists already."""
    body = json.dumps({"host": _HOST, "owner": _owner_tag()}).encode() + b"\n"
    tmp = tmp_name(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(body)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
        # A filesystem without hard links (some network shares): exclusive creation, then the tag.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, body)
        finally:
            os.close(fd)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def release_dead_reservations(folder: Path, max_age_seconds: float = 24 * 3600) -> int:
    """Remove quarantine reservations left by crashed processes: ones whose owner (on this host) has exited,
    empty ones older than a minute (a writer that died between creating and tagging one), and any older than
    `max_age_seconds`. Returns how many were removed."""
    removed = 0
    now = time.time()
    try:
        names = [n for n in os.listdir(folder) if n.startswith(".") and n.endswith(".reserved")]
    except FileNotFoundError:
        return 0
    for name in names:
        path = folder / name
        age = _age(path, now)
        data = read_json(path) or {}
        owner, host = str(data.get("owner") or ""), str(data.get("host") or "")
        if owner:
            dead = _owner_dead(host, owner)
        else:
            dead = age > 60
        if dead or age > max_age_seconds:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


STORAGE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO)


def storage_fault(exc: BaseException, root: Path) -> bool:
    """A write or read of the daemon's own files that the filesystem refuses (read-only, permissions, I/O error):
    the state root's fault, not the item's, so it is waited out like a full disk. Files of the inbox are the
    user's (an unreadable drop is rejected), so they never count."""
    if not isinstance(exc, OSError) or exc.errno not in STORAGE_ERRNOS:
        return False
    name = exc.filename if isinstance(exc.filename, str) else None
    if name is None:
        return False
    try:
        rel = Path(os.path.abspath(name)).relative_to(os.path.abspath(root))
    except ValueError:
        return False
    return bool(rel.parts) and rel.parts[0] != "inbox"


def _reservation(name: str) -> str:
    return f".{name}.reserved"


def display_name(name: str) -> str:
    """`name` as valid UTF-8 text (for JSON, reports and logs): bytes that are not UTF-8 become `\\xNN` escapes."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def json_safe(obj: Any) -> Any:
    """`obj` with every string made valid UTF-8 (a file name that is not UTF-8 must not stop a report)."""
    if isinstance(obj, str):
        return display_name(obj)
    if isinstance(obj, dict):
        return {json_safe(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


class OutsideRoot(OSError):
    """A folder is no longer a real folder below its base (swapped for a link, or gone)."""


def open_folder_below(base: Path, folder: Path) -> int:
    """A descriptor of `folder`, reached from `base` without following any link below it (`base` itself may be a
    link, set up by the administrator). OutsideRoot when a component is a link, not a folder, or missing."""
    rel = os.path.relpath(folder, base)
    parts = [] if rel == "." else list(Path(rel).parts)
    if ".." in parts:
        raise OutsideRoot(errno.EXDEV, f"{display_name(str(folder))} is not below {base}")
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            try:
                nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                    raise OutsideRoot(exc.errno, f"'{display_name(part)}' is no longer a folder of "
                                      f"{base.name}/ (replaced by a link, or removed)") from None
                raise
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_temporary(name: str) -> bool:
    """A temporary name, or one derived from it (`tempfile.mkstemp(prefix="." + <temporary's stem>)` gives
    `..tmp.<host>.<owner>...`: the separation's decoded stereo WAV in work/)."""
    return name.startswith(TMP_PREFIX) or name.startswith("." + TMP_PREFIX)


def _tmp_owner_dead(name: str) -> bool:
    """True when the temporary's writer (on this host) has exited; a reused pid has another start time."""
    name = name[1:] if name.startswith("." + TMP_PREFIX) else name
    parts = name[len(TMP_PREFIX):].split(".", 3)
    return len(parts) >= 3 and _owner_dead(parts[0], parts[1])


def _owner_dead(host: str, owner: str) -> bool:
    """True when the process `owner` ("<pid>-<start time>", `_owner_tag()`) on `host` has exited; False for
    another host's (its processes cannot be seen from here) and for this process."""
    if host != _HOST:
        return False
    pid_text, _, started = owner.partition("-")
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
