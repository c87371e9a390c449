"""Inbox scanning: which dropped files are complete and may be taken.

watchdog events only wake the ingest workers early; this scan is the truth. A file is ready once its size,
mtime and inode have not changed for `settle_seconds` (as observed by this process) and its mtime is at least
that old. Symlinks and special files are never followed: they are handed to ingest, which quarantines them.
Names of files still being written by a copier are skipped: dot-files (rsync, Samba, browsers) and `*.part`-style
suffixes (`IN_PROGRESS_SUFFIXES`); a copier renames the finished file to its real name.

Files are opened relative to their folder's descriptor, reached from the inbox without following any link
(`open_folder`), and removed only while they are still the file that was copied (`take_file`): a voice folder swapped
for a link, or a file replaced after it was read, is never removed.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import stat
import threading
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import structlog

from ttsft_daemon.config import InboxConfig
from ttsft_daemon.core.atomic import _fault_point, short_name
from ttsft_daemon.core.spool import TMP_PREFIX, Item, OutsideRoot, display_name, fsync_dir, open_folder_below

log = structlog.get_logger(__name__)

# A copier writes to one of these names and renames the file when it is complete: such files are never taken.
IN_PROGRESS_SUFFIXES = ("part", "partial", "crdownload", "filepart", "download", "tmp", "temp")
TAKING_PREFIX = f"{TMP_PREFIX}taking."  # an inbox file being removed after its content was committed


NotInInbox = OutsideRoot  # the file's folder is no longer a real folder of the inbox (swapped for a link, or gone)


def open_folder(inbox: Path, folder: Path) -> int:
    """A descriptor of `folder` (the inbox or one of its voice folders), reached from the inbox without following
    any link below it; NotInInbox when a component is a link, not a folder, or missing."""
    return open_folder_below(inbox, folder)


@dataclass(frozen=True)
class FileIdentity:
    """What an inbox file was when its content was read: its folder and the file itself."""

    folder_dev: int
    folder_ino: int
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, folder: os.stat_result, st: os.stat_result) -> FileIdentity:
        return cls(folder.st_dev, folder.st_ino, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def same_file(self, st: os.stat_result, ctime: bool = True) -> bool:
        now = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) + ((st.st_ctime_ns,) if ctime else ())
        was = (self.dev, self.ino, self.size, self.mtime_ns) + ((self.ctime_ns,) if ctime else ())
        return stat.S_ISREG(st.st_mode) and now == was


def take_file(inbox: Path, path: Path, ident: FileIdentity) -> bool:
    """Remove the inbox file `path` whose content is committed, only if it is still the file that was read.

    The file is first renamed to a private name in its folder, then checked: whatever a user or a copier did
    in between (renamed another file over it, rewrote it, swapped its folder for a link), only the very file
    that was read is removed. Anything else stays (or is put back) under its name, to be taken on its own.
    Returns whether the file was removed.
    """
    try:
        fd = open_folder(inbox, path.parent)
    except OSError as exc:
        log.warning("inbox file kept: its folder changed after it was read", path=display_name(str(path)),
                    error=str(exc), stage="ingest")
        return False
    name = path.name
    try:
        folder = os.fstat(fd)
        if (folder.st_dev, folder.st_ino) != (ident.folder_dev, ident.folder_ino):
            log.warning("inbox file kept: its folder was replaced after it was read",
                        path=display_name(str(path)), stage="ingest")
            return False
        try:
            before = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return False  # removed by the user: nothing to do
        if not ident.same_file(before):
            log.warning("inbox file kept: it changed after it was read; it will be taken again once it settles",
                        path=display_name(str(path)), stage="ingest")
            return False
        private = f"{TAKING_PREFIX}{os.getpid()}.{secrets.token_hex(4)}.{short_name(name)}"
        _fault_point(f"remove {display_name(name)}")
        os.rename(name, private, src_dir_fd=fd, dst_dir_fd=fd)
        after = os.stat(private, dir_fd=fd, follow_symlinks=False)
        if ident.same_file(after, ctime=False):  # the rename itself changes ctime
            os.unlink(private, dir_fd=fd)
            os.fsync(fd)
            return True
        restored = _put_back(fd, private, name)  # replaced between the check and the rename
        log.warning("inbox file kept: it was replaced while it was being taken", path=display_name(str(path)),
                    kept_as=display_name(restored), stage="ingest")
        return False
    finally:
        os.close(fd)


def _put_back(fd: int, private: str, name: str) -> str:
    """Rename `private` back to `name` without replacing a file that appeared there since; returns the name used."""
    stem, dot, ext = name.rpartition(".")
    for n in range(100):
        candidate = name if n == 0 else (f"{stem}.{n}.{ext}" if dot else f"{name}.{n}")
        try:
            os.link(private, candidate, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
        except FileExistsError:
            continue
        os.unlink(private, dir_fd=fd)
        return candidate
    return private


def restore_interrupted_takes(inbox: Path) -> int:
    """At start-up: a file left under its private name by a crash in `take_file` goes back to a visible name
    (taken again; its content, if already committed, is then recognised as the same job)."""
    restored = 0
    for dirpath, _dirs, files in os.walk(inbox):
        for n in files:
            if not n.startswith(TAKING_PREFIX):
                continue
            pid = n[len(TAKING_PREFIX):].split(".", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and Path(f"/proc/{pid}").exists():
                continue  # its process still runs (another daemon on this root)
            fd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY)
            try:
                _put_back(fd, n, n[len(TAKING_PREFIX):].split(".", 2)[-1])
                fsync_dir(Path(dirpath))
            finally:
                os.close(fd)
            restored += 1
    return restored


def voice_name(folder: str) -> str:
    """A folder name made safe as a voice name (letters, digits, - and _)."""
    norm = unicodedata.normalize("NFKD", folder).encode("ascii", "ignore").decode()
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", norm).strip("_-")
    return safe[:64] or "voice_" + hashlib.sha256(folder.encode("utf-8", "surrogateescape")).hexdigest()[:8]


@dataclass(frozen=True)
class Seen:
    size: int
    mtime_ns: int
    inode: int
    first_seen: float  # monotonic


@dataclass
class ScanResult:
    ready: list[Item]
    pending: int  # files that will become ready (still settling)


class InboxScanner:
    def __init__(self, inbox: Path, cfg: InboxConfig) -> None:
        self.inbox = inbox
        self.cfg = cfg
        self._seen: dict[str, Seen] = {}
        self._ignored: set[str] = set()
        self._voice_folders: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self.pending = 0  # files seen still settling at the last scan

    def scan(self) -> ScanResult:
        with self._lock:
            result = self._scan()
            self.pending = result.pending
            return result

    def _scan(self) -> ScanResult:
        ready: list[Item] = []
        pending = 0
        now_mono, now_wall = time.monotonic(), time.time()
        present: set[str] = set()
        for path, voice in self._walk():
            key = str(path)
            present.add(key)
            try:
                st = path.lstat()
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
                ready.append(self._item(path, voice))  # ingest quarantines it with the reason
                continue
            state = (st.st_size, st.st_mtime_ns, st.st_ino)
            prev = self._seen.get(key)
            if prev is None or (prev.size, prev.mtime_ns, prev.inode) != state:
                self._seen[key] = Seen(*state, first_seen=now_mono)
                prev = self._seen[key]
            settle = self.cfg.settle_seconds
            if now_mono - prev.first_seen >= settle and now_wall - st.st_mtime >= settle:
                ready.append(self._item(path, voice))
            else:
                pending += 1
        for gone in set(self._seen) - present:
            del self._seen[gone]
        return ScanResult(ready, pending)

    def _item(self, path: Path, voice: str) -> Item:
        rel = os.path.relpath(path, self.inbox)
        item_id = hashlib.sha256(rel.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        # For inbox items the payload is the dropped file and there is no sidecar: `sidecar` points at the file.
        return Item("inbox", f"{voice}--{item_id}", path, path)

    def _walk(self) -> list[tuple[Path, str]]:
        out: list[tuple[Path, str]] = []
        try:
            top = sorted(os.scandir(self.inbox), key=lambda e: e.name)
        except OSError:
            return out
        for entry in top:
            if entry.name.startswith("."):
                continue  # hidden: partial uploads of rsync, Samba, browsers
            if entry.is_dir(follow_symlinks=False):
                voice = voice_name(entry.name)
                self._note_voice(voice, entry.name)
                try:
                    inner = sorted(os.scandir(entry.path), key=lambda e: e.name)
                except OSError:
                    continue
                for sub in inner:
                    if sub.name.startswith("."):
                        continue
                    if sub.is_dir(follow_symlinks=False):
                        self._ignore_once(Path(sub.path), "folders deeper than one level are not read")
                        continue
                    self._consider(Path(sub.path), voice, out)
            else:
                self._consider(Path(entry.path), self.cfg.default_voice, out)
        return out

    def _consider(self, path: Path, voice: str, out: list[tuple[Path, str]]) -> None:
        ext = path.suffix.lower().lstrip(".")
        if ext in IN_PROGRESS_SUFFIXES:
            self._ignore_once(path, f"'.{ext}': still being copied (taken once the copier renames it)")
            return
        if ext not in {e.lower().lstrip(".") for e in self.cfg.extensions}:
            self._ignore_once(path, f"unsupported extension '.{ext}'" if ext else "no file extension")
            return
        out.append((path, voice))

    def _note_voice(self, voice: str, folder: str) -> None:
        """Folders whose names differ only in what a voice name cannot hold (`a b` and `a_b`, `cafe` and `café`)
        feed one voice: said once, loudly, so that a user who meant two speakers renames one."""
        folders = self._voice_folders.setdefault(voice, set())
        if folder not in folders:
            folders.add(folder)
            if len(folders) > 1:
                log.warning("inbox folders share one voice", voice=voice,
                            folders=sorted(display_name(f) for f in folders), stage="ingest",
                            hint="rename a folder if they are different speakers")

    def _ignore_once(self, path: Path, why: str) -> None:
        if str(path) not in self._ignored:
            self._ignored.add(str(path))
            log.info("ignored inbox entry", path=str(path), reason=why, stage="ingest")
