"""Inbox scanning: which dropped files are complete and may be taken.

watchdog events only wake the ingest workers early; this scan is the truth. A file is ready once its size,
mtime and inode have not changed for `settle_seconds` (as observed by this process) and its mtime is at least
that old. Symlinks and special files are never followed: they are handed to ingest, which quarantines them.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import structlog

from ttsft_daemon.config import InboxConfig
from ttsft_daemon.core.spool import Item

log = structlog.get_logger("ttsft.inbox")


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
        if ext not in {e.lower().lstrip(".") for e in self.cfg.extensions}:
            self._ignore_once(path, f"unsupported extension '.{ext}'" if ext else "no file extension")
            return
        out.append((path, voice))

    def _ignore_once(self, path: Path, why: str) -> None:
        if str(path) not in self._ignored:
            self._ignored.add(str(path))
            log.info("ignored inbox entry", path=str(path), reason=why, stage="ingest")
