"""An upload streamed into the inbox: a hidden temporary name in the voice's inbox folder (the scanner never looks at
dot-files), written as the bytes arrive, fsynced, then linked to its visible name (never over an existing file) and
the temporary removed. A reader of the inbox sees the whole file or nothing; an upload that is refused, cut off or
interrupted leaves nothing visible, and a temporary left by a killed daemon is removed at the API's next start.

The checks are the inbox's: a file name the scanner would take (a listed extension, not hidden, no path), a size
limit (`api.max_upload_mb`; 413 as soon as it is passed, the rest is not read), a client that stalls mid-body gets
408 (`api.client_timeout_seconds`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import secrets
import socket
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from ttsft_daemon.config import InboxConfig
from ttsft_daemon.core.atomic import short_name

UPLOAD_PREFIX = ".tmp.upload."
_HOST = socket.gethostname().replace(".", "_")
MULTIPART_OVERHEAD = 1 << 20  # bytes of a multipart body beyond its file (boundaries, headers, small fields)
MAX_FIELD_BYTES = 64 * 1024  # other form fields are read and ignored, up to this much in all


class UploadError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_filename(name: str | None, cfg: InboxConfig) -> str:
    """`name` if the inbox would take a file of that name; UploadError (400, or 415 for the extension) if not."""
    if not name:
        raise UploadError(400, "no file name: send the file as the multipart field 'file' with a filename, or as the "
                               "raw body with ?filename=NAME.mp3")
    if "/" in name or "\\" in name or name in (".", ".."):
        raise UploadError(400, f"file name {name!r} must be a plain name, without a folder")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise UploadError(400, "file name contains control characters")
    if name.startswith("."):
        raise UploadError(400, f"file name {name!r} is hidden (starts with a dot): the inbox ignores such files")
    if len(name.encode("utf-8", "surrogateescape")) > 255:
        raise UploadError(400, "file name longer than 255 bytes")
    ext = name.rpartition(".")[2].lower() if "." in name else ""
    allowed = sorted({e.lower().lstrip(".") for e in cfg.extensions})
    if ext not in allowed:
        raise UploadError(415, f"'.{ext}' files are not taken from the inbox; allowed: {', '.join(allowed)}"
                          if ext else f"file name {name!r} has no extension; allowed: {', '.join(allowed)}")
    return name


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[19]
    except (OSError, IndexError):
        return None


class InboxWriter:
    """One upload: a hidden temporary in inbox/<voice>/, committed under `name` (or `stem.N.ext` when taken)."""

    def __init__(self, inbox: Path, voice: str, name: str, limit: int) -> None:
        self.inbox, self.voice, self.name, self.limit = inbox, voice, name, limit
        self.size = 0
        self.sha256 = hashlib.sha256()
        self.final: str | None = None
        self._dir_fd = -1
        self._fd = -1
        owner = f"{os.getpid()}-{_start_time(os.getpid()) or 0}"  # pid + start time name a process uniquely
        self.tmp = f"{UPLOAD_PREFIX}{_HOST}.{owner}.{secrets.token_hex(6)}.{short_name(name)}"

    def open(self) -> None:
        inbox_fd = os.open(self.inbox, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.voice, 0o755, dir_fd=inbox_fd)
            try:
                self._dir_fd = os.open(self.voice, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                       dir_fd=inbox_fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UploadError(409, f"inbox/{self.voice} is not a folder (a link or a file is in the way)"
                                      ) from None
                raise
        finally:
            os.close(inbox_fd)
        self._fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640,
                           dir_fd=self._dir_fd)

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self.size + len(data) > self.limit:
            raise UploadError(413, f"upload larger than api.max_upload_mb ({self.limit / 1048576:g} MB)")
        self.size += len(data)
        self.sha256.update(data)
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def commit(self) -> str:
        """fsync, link under the visible name (never replacing a file), remove the temporary; the name used."""
        if self.size == 0:
            raise UploadError(400, "empty upload")
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        stem, dot, ext = self.name.rpartition(".")
        for n in range(1000):
            candidate = self.name if n == 0 else f"{stem}.{n}{dot}{ext}"
            try:
                os.link(self.tmp, candidate, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd, follow_symlinks=False)
            except FileExistsError:
                continue
            self.final = candidate
            break
        else:
            raise UploadError(409, f"too many files named like {self.name!r} in inbox/{self.voice}")
        os.unlink(self.tmp, dir_fd=self._dir_fd)
        os.fsync(self._dir_fd)
        return candidate

    def abort(self) -> None:
        """Remove the temporary (idempotent); after a commit, only closes."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        if self._dir_fd >= 0:
            if self.final is None:
                with contextlib.suppress(OSError):
                    os.unlink(self.tmp, dir_fd=self._dir_fd)
            with contextlib.suppress(OSError):
                os.close(self._dir_fd)
            self._dir_fd = -1


def cleanup_temporaries(inbox: Path, max_age_seconds: float = 24 * 3600) -> int:
    """Remove upload temporaries of dead processes of this host (and any older than a day) from the inbox."""
    removed = 0
    now = time.time()
    folders = [inbox]
    with contextlib.suppress(OSError), os.scandir(inbox) as entries:
        folders += [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
    for folder in folders:
        try:
            names = [e.name for e in os.scandir(folder) if e.name.startswith(UPLOAD_PREFIX)]
        except OSError:
            continue
        for name in names:
            path = folder / name
            with contextlib.suppress(OSError):
                st = path.lstat()
                if not stat.S_ISREG(st.st_mode):
                    continue
                if _owner_dead(name) or now - st.st_mtime > max_age_seconds:
                    path.unlink()
                    removed += 1
    return removed


def _owner_dead(name: str) -> bool:
    parts = name[len(UPLOAD_PREFIX):].split(".", 2)
    if len(parts) < 2 or parts[0] != _HOST:
        return False
    pid_text, _, started = parts[1].partition("-")
    if not pid_text.isdigit():
        return True
    if int(pid_text) == os.getpid():
        return False  # this process: its uploads clean up after themselves
    now_started = _start_time(int(pid_text))
    return now_started is None or started != now_started


async def chunks(stream: AsyncIterator[bytes], timeout: float) -> AsyncIterator[bytes]:
    """The request body's chunks; UploadError(408) when the client sends nothing for `timeout` seconds."""
    it = stream.__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(it.__anext__(), timeout)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise UploadError(408, f"the client sent nothing for {timeout:g} s (api.client_timeout_seconds)"
                              ) from None
        yield chunk


class MultipartSink:
    """Feeds a multipart/form-data body to python-multipart's streaming parser; the part named `file` goes to an
    InboxWriter made by `open_writer(filename)` once its headers are read, other fields are read and dropped."""

    def __init__(self, boundary: bytes, open_writer: Callable[[str | None], InboxWriter]) -> None:
        from python_multipart.multipart import MultipartParser

        self.open_writer = open_writer
        self.writer: InboxWriter | None = None
        self.done = False
        self.file_complete = False
        self._in_file = False
        self._field_bytes = 0
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        callbacks: Any = {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end, "on_end": self._end,
        }
        self.parser = MultipartParser(boundary, callbacks)

    def feed(self, data: bytes) -> None:
        from python_multipart.exceptions import MultipartParseError

        try:
            self.parser.write(data)
        except MultipartParseError as exc:
            raise UploadError(400, f"malformed multipart body: {exc}") from None

    def _part_begin(self) -> None:
        self._headers = {}
        self._in_file = False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        disposition, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if disposition != b"form-data":
            raise UploadError(400, "multipart part without 'Content-Disposition: form-data'")
        if options.get(b"name") != b"file":
            return
        if self.writer is not None:
            raise UploadError(400, "one file per request: the field 'file' appears twice")
        raw_name = options.get(b"filename")
        name = None if raw_name is None else _decode(raw_name)
        self.writer = self.open_writer(name)
        self._in_file = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file and self.writer is not None:
            self.writer.write(data[start:end])
            return
        self._field_bytes += end - start
        if self._field_bytes > MAX_FIELD_BYTES:
            raise UploadError(413, f"form fields other than 'file' exceed {MAX_FIELD_BYTES} bytes")

    def _part_end(self) -> None:
        if self._in_file:
            self.file_complete = True
        self._in_file = False

    def _end(self) -> None:
        self.done = True


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")
