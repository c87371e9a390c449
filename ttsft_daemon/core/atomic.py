"""Durable writes: every file the daemon writes goes through here (or through the spool, which uses these).

The one pattern: write to a temporary name in the destination folder (`.tmp.<host>.<pid>-<start>.<rand>.<name>`),
flush, fsync, rename into place, fsync the folder. A reader never sees a partial file; a temporary left by a dead
process is recognised by its name and removed at the next start (`Spool.cleanup_temporaries`).

Fault injection for the crash-point tests lives here too: every primitive is a counted file operation.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TMP_PREFIX = ".tmp."
_HOST = socket.gethostname().replace(".", "_")

# ------------------------------------------------------------------------------------------ fault injection
# Tests make the N-th file operation fail (ENOSPC) or kill the process there, to sweep crash points.
_fault_lock = threading.Lock()
_fault_count = 0
_fault_at = int(os.environ.get("TTSFT_FAULT_AT", "0") or 0)
_fault_mode = os.environ.get("TTSFT_FAULT_MODE", "exit")  # "exit" (os._exit) or "enospc"


def _fault_point(op: str) -> None:
    global _fault_count
    if not _fault_at:
        return
    with _fault_lock:
        _fault_count += 1
        hit = _fault_count == _fault_at
    if hit:
        if _fault_mode == "enospc":
            raise OSError(errno.ENOSPC, f"injected: no space left on device ({op})")
        os._exit(77)


def set_fault(at: int, mode: str = "exit") -> None:
    """Arm fault injection in this process (tests): the `at`-th file operation from now fails."""
    global _fault_at, _fault_mode, _fault_count
    with _fault_lock:
        _fault_at, _fault_mode, _fault_count = at, mode, 0


# ------------------------------------------------------------------------------------------ primitives


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot): with the pid, it names a process uniquely."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _owner_tag() -> str:
    pid = os.getpid()
    return f"{pid}-{_start_time(pid) or 0}"


def tmp_name(dest: Path) -> Path:
    """A temporary sibling of `dest`, invisible to scanners, traceable to this host and process."""
    return dest.parent / f"{TMP_PREFIX}{_HOST}.{_owner_tag()}.{secrets.token_hex(4)}.{short_name(dest.name)}"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: Path, dest: Path) -> None:
    """fsync `tmp`, rename it over `dest`, fsync the folder."""
    _fault_point(f"commit {dest.name}")
    fsync_file(tmp)
    os.replace(tmp, dest)
    fsync_dir(dest.parent)


def atomic_write_bytes(dest: Path, data: bytes) -> None:
    _fault_point(f"write {dest.name}")
    tmp = tmp_name(dest)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)


def atomic_write_json(dest: Path, obj: Any) -> None:
    atomic_write_bytes(dest, (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())


def atomic_copy(src: Path, dest: Path) -> None:
    """Copy `src` to `dest` through a temporary name (never follows a symlink at `src`)."""
    _fault_point(f"copy {dest.name}")
    tmp = tmp_name(dest)
    try:
        with open(src, "rb", opener=_nofollow_opener) as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)


def _nofollow_opener(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object at `path`, or None if it is absent or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remove(path: Path) -> None:
    _fault_point(f"remove {path.name}")
    path.unlink(missing_ok=True)




@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """For writers that want a path (soundfile, torch.save, a subprocess): yields a temporary sibling of `dest`;
    when the block ends without an exception it is fsynced and renamed over `dest`, else removed."""
    tmp = tmp_name(dest)
    try:
        yield tmp
        commit(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(dest: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """`open(dest, mode)` made atomic: the file appears at `dest` complete, or not at all."""
    with atomic_path(dest) as tmp, open(tmp, mode) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def short_name(name: str, limit: int = 150) -> str:
    """`name`, shortened (keeping its extension, adding a hash) so that every name derived from it fits NAME_MAX."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= limit:
        return name
    _stem, dot, ext = name.rpartition(".")
    ext = ext if dot and len(ext.encode()) <= 10 else ""
    digest = hashlib.sha256(raw).hexdigest()[:12]
    keep = raw[: limit - 24].decode("utf-8", "ignore")
    return f"{keep}~{digest}" + (f".{ext}" if ext else "")


def link_or_copy(src: Path, dst: Path) -> None:
    """`dst` (a temporary name, committed later) gets `src`'s content: a hard link where the filesystem allows,
    else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
