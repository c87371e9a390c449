"""Ingest: inbox file -> spool/raw/<job_id>.<ext> + sidecar (sha256, name, size, duration, codec ...)."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

from ttsft_daemon.audio.media import probe
from ttsft_daemon.core.spool import Item
from ttsft_daemon.errors import RejectedInput, TransientError
from ttsft_daemon.pipeline import StageSpec, recording_spools
from ttsft_daemon.stages.base import Output, Result, StageContext, StageEnv

_CHUNK = 1 << 20


def safe_ext(path: Path) -> str:
    ext = re.sub(r"[^a-z0-9]", "", path.suffix.lower())
    return ext[:8] or "bin"


class IngestStage:
    def __init__(self, spec: StageSpec, env: StageEnv) -> None:
        self.spec = spec
        self.config = env.config
        self.spool = env.spool
        self.scanner = env.scanner

    @property
    def name(self) -> str:
        return self.spec.name

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def candidates(self) -> list[Item]:
        in_flight = sum(self.spool.count(s) for s in recording_spools())
        room = self.config.daemon.max_jobs_in_flight - in_flight
        return self.scanner.scan().ready[:max(0, room)]  # the bound on recordings in flight

    def process(self, item: Item, ctx: StageContext) -> Result:
        path = item.payload
        voice = item.id.rsplit("--", 1)[0]
        st = self._check_file(path)
        ext = safe_ext(path)
        tmp = ctx.tmp_output(self.spec.target, f"incoming-{item.id}", ext)
        try:
            sha = self._copy_and_hash(path, tmp, st, ctx)
            job_id = sha[:16]
            existing = self.spool.read_job(job_id)
            src = (existing or {}).get("source") or {}
            if src:
                if src.get("inode") == st.st_ino and src.get("mtime_ns") == st.st_mtime_ns \
                        and src.get("rel") == os.path.relpath(path, self.spool.layout.inbox):
                    # This very file was ingested before a crash removed it from the inbox: finish the move.
                    tmp.unlink(missing_ok=True)
                    return Result(log={"job_id": job_id, "resumed": True})
                raise RejectedInput(
                    "duplicate", f"same content as '{src.get('name', '?')}' already taken as job {job_id}")
            try:
                info = probe(tmp, timeout=min(120.0, self.config.daemon.ffmpeg_timeout_seconds))
            except RejectedInput as exc:  # name the user's file, not our temporary copy
                raise RejectedInput(exc.reason, exc.detail.replace(str(tmp), path.name)) from None
            self._check_limits(info.duration)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        source = {
            "name": path.name, "rel": os.path.relpath(path, self.spool.layout.inbox), "size": st.st_size,
            "mtime_ns": st.st_mtime_ns, "inode": st.st_ino, "sha256": sha,
        }
        meta: dict[str, Any] = {
            "job_id": job_id, "voice": voice, "source_name": path.name, "sha256": sha, "size": st.st_size,
            "duration": info.duration, "codec": info.codec, "channels": info.channels,
            "sample_rate": info.sample_rate, "format": info.format_name, "has_video": info.has_video,
            "time": time.time(),
        }

        def update(job: dict[str, Any]) -> None:
            job.update(ingested=True, voice=voice, source=source, duration=info.duration)

        log = {"job_id": job_id, "voice": voice, "source": path.name, "audio_s": round(info.duration, 1)}
        if existing is not None and self._copy_committed_before(job_id, existing):
            # A crash struck between committing spool/raw and recording the job, and a later stage has since
            # created the record (by counting an attempt): the copy is in; only the record and the move remain.
            tmp.unlink(missing_ok=True)
            return Result([], update, log={**log, "resumed": True})
        return Result([Output(self.spec.target, job_id, tmp, ext, meta)], update, log=log)

    def _copy_committed_before(self, job_id: str, job: dict[str, Any]) -> bool:
        raw_committed = (self.spool.layout.spool(self.spec.target) / f"{job_id}.json").exists()
        return raw_committed or bool(job.get("separated") or job.get("failed"))

    # --------------------------------------------------------------------------------------------------
    def _check_file(self, path: Path) -> os.stat_result:
        try:
            st = path.lstat()
        except FileNotFoundError:
            raise TransientError("the file disappeared from the inbox before it was taken") from None
        if stat.S_ISLNK(st.st_mode):
            raise RejectedInput("symbolic link", f"links are never followed (points to {os.readlink(path)!r})")
        if not stat.S_ISREG(st.st_mode):
            raise RejectedInput("not a regular file", "only plain files are taken from the inbox")
        if st.st_size == 0:
            raise RejectedInput("empty file", "the file has zero bytes")
        max_bytes = self.config.inbox.max_file_mb * 1024 * 1024
        if st.st_size > max_bytes:
            raise RejectedInput(
                "file too large", f"{st.st_size / 1048576:.0f} MB is over inbox.max_file_mb "
                f"({self.config.inbox.max_file_mb:.0f} MB)")
        return st

    def _copy_and_hash(self, path: Path, tmp: Path, before: os.stat_result, ctx: StageContext) -> str:
        digest = hashlib.sha256()
        fd = self._open_checked(path, before)
        with os.fdopen(fd, "rb") as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(_CHUNK):
                digest.update(chunk)
                fout.write(chunk)
                ctx.check_stop()
                _check_not_deleted(os.fstat(fin.fileno()), path)
            fout.flush()
            os.fsync(fout.fileno())
            after = os.fstat(fin.fileno())
        _check_not_deleted(after, path)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise TransientError("the file changed while it was being copied; it will be taken once it settles")
        try:
            now = path.lstat()
        except FileNotFoundError:
            raise TransientError("the file was deleted while it was being copied") from None
        if now.st_ino != before.st_ino:
            raise TransientError("the file was replaced while it was being copied; the new one is taken once it "
                                 "settles")
        return digest.hexdigest()

    @staticmethod
    def _open_checked(path: Path, before: os.stat_result) -> int:
        """Open without following a link or blocking on a FIFO swapped in since `before` was taken."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except PermissionError:
            raise RejectedInput("cannot read the file", "permission denied for the daemon's user") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise RejectedInput("symbolic link", "links are never followed") from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_ino != before.st_ino:
            os.close(fd)
            raise TransientError("the file was replaced before it was taken; the new one is taken once it settles")
        return fd

    def _check_limits(self, duration: float) -> None:
        limit = self.config.inbox.max_duration_seconds
        if duration > limit:
            raise RejectedInput("recording too long",
                                f"{duration:.0f} s is over inbox.max_duration_seconds ({limit:.0f})")


def _check_not_deleted(st: os.stat_result, path: Path) -> None:
    """The file being copied has no name left: the user deleted it, so it is abandoned (TransientError)."""
    if st.st_nlink == 0:
        raise TransientError(f"'{path.name}' was deleted while it was being copied")
