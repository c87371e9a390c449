"""Ingest: inbox file -> spool/raw/<job_id>.<ext> + sidecar (sha256, name, size, duration, codec ...)."""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import os
import re
import stat
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import structlog

from ttsft_daemon.audio.media import MediaInfo, probe
from ttsft_daemon.core.inbox import FileIdentity, NotInInbox, open_folder, take_file
from ttsft_daemon.core.jobs import JobRecord
from ttsft_daemon.core.speakers import is_enrollment
from ttsft_daemon.core.spool import Item, display_name
from ttsft_daemon.errors import Deferred, RejectedInput, TransientError
from ttsft_daemon.pipeline import StageSpec, recording_spools
from ttsft_daemon.stages.base import Output, Result, StageContext, StageEnv

log = structlog.get_logger(__name__)

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
        ready = self.scanner.scan().ready
        if self.config.speaker.enabled:  # enrollment samples are the speaker stage's, never training data
            ready = [i for i in ready if not is_enrollment(i.payload.name, self.config.speaker.enroll_name)]
        return ready[:max(0, room)]  # the bound on recordings in flight

    def process(self, item: Item, ctx: StageContext) -> Result:
        path = item.payload
        voice = item.id.rsplit("--", 1)[0]
        inbox = self.spool.layout.inbox
        _test_pause("before-open", item.id)
        try:
            folder_fd = open_folder(inbox, path.parent)
        except NotInInbox as exc:  # the scan saw a folder; a link is there now: never followed, nothing taken
            raise TransientError(f"not taken: {exc}") from None
        try:
            st = self._check_file(folder_fd, path)
            ext = safe_ext(path)
            tmp = ctx.tmp_output(self.spec.target, f"incoming-{item.id}", ext)
            try:
                sha, ident = self._copy_and_hash(folder_fd, path, tmp, st, ctx)
                result = self._take(item, path, voice, tmp, ext, sha, st, ctx)
                _test_pause("after-probe", item.id)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        finally:
            os.close(folder_fd)
        # The inbox file is removed (after the commit) only if it is still the very file that was read.
        result.remove_input = functools.partial(take_file, inbox, path, ident)
        return result

    def _take(self, item: Item, path: Path, voice: str, tmp: Path, ext: str, sha: str, st: os.stat_result,
              ctx: StageContext) -> Result:
        name, rel = display_name(path.name), display_name(os.path.relpath(path, self.spool.layout.inbox))
        job_id = sha[:16]
        existing = self.spool.read_job(job_id)
        src = existing.source if existing is not None else {}
        retake = False
        if src:
            if src.get("inode") == st.st_ino and src.get("mtime_ns") == st.st_mtime_ns and src.get("rel") == rel:
                # This very file was ingested before a crash removed it from the inbox: finish the move.
                tmp.unlink(missing_ok=True)
                return Result(log={"job_id": job_id, "resumed": True})
            if existing is None or not existing.failed:
                raise RejectedInput(
                    "duplicate", f"same content as '{src.get('name', '?')}' already taken as job {job_id}")
            retake = True  # its last run ended in quarantine: dropping it again means "try again"
        info = self._probe(tmp, path)
        duration = self._check_complete(tmp, path, info.duration, st)
        self._check_limits(duration)
        source = {"name": name, "rel": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino,
                  "sha256": sha}
        meta: dict[str, Any] = {
            "job_id": job_id, "voice": voice, "source_name": name, "sha256": sha, "size": st.st_size,
            "duration": duration, "codec": info.codec, "channels": info.channels,
            "sample_rate": info.sample_rate, "format": info.format_name, "has_video": info.has_video,
            "time": time.time(),
        }
        if info.audio_streams > 1:
            meta["audio_streams"] = info.audio_streams

        def update(job: JobRecord) -> None:
            if retake:
                start_over(job)
            job.ingested, job.voice, job.source, job.duration = True, voice, source, duration

        log = {"job_id": job_id, "voice": voice, "source": name, "audio_s": round(duration, 1)}
        if retake:
            log["retake_of"] = dict(existing.failed or {}) if existing is not None else {}
        elif existing is not None and self._copy_committed_before(job_id, existing):
            # A crash struck between committing spool/raw and recording the job, and a later stage has since
            # created the record (by counting an attempt): the copy is in; only the record and the move remain.
            tmp.unlink(missing_ok=True)
            return Result([], update, log={**log, "resumed": True})
        return Result([Output(self.spec.target, job_id, tmp, ext, meta)], update, log=log)

    def _probe(self, tmp: Path, path: Path) -> MediaInfo:
        try:
            info = probe(tmp, timeout=min(120.0, self.config.daemon.ffmpeg_timeout_seconds))
        except RejectedInput as exc:  # name the user's file, not our temporary copy
            raise RejectedInput(exc.reason, exc.detail.replace(str(tmp), display_name(path.name))) from None
        if info.audio_streams > 1:
            log.warning("only the first audio stream is used", source=display_name(path.name),
                        audio_streams=info.audio_streams, stage="ingest")
        return info

    def _check_complete(self, tmp: Path, path: Path, duration: float, st: os.stat_result) -> float:
        """The recording's real duration; a file whose content stops short of what its header announces was taken
        while still being written (a copier pausing longer than settle_seconds): it is held while young, then
        quarantined as truncated."""
        timeout = min(600.0, self.config.daemon.ffmpeg_timeout_seconds)
        why = truncation(tmp, duration, timeout)
        if why is None:
            real = demuxed_seconds(tmp, timeout)
            if real is not None and real > duration * 1.1 + 1.0:  # the header under-states it: trust the content
                log.warning("the container's duration is wrong; using the decoded length",
                            source=display_name(path.name), header_s=round(duration, 1), real_s=round(real, 1))
                return real
            return duration
        settle = self.config.inbox.settle_seconds
        hold = min(INCOMPLETE_HOLD_MAX, max(INCOMPLETE_HOLD_MIN, 20 * settle))
        age = time.time() - st.st_mtime
        if age < hold:  # a copier may only be pausing: wait (no attempt spent) for it to go on
            raise Deferred(f"'{display_name(path.name)}' looks incomplete ({why}): held until it is complete or "
                           f"unchanged for {hold:.0f} s (copiers: write to a *.part or dot-file name and rename when "
                           "done)", retry_seconds=max(1.0, min(settle, hold - age)))
        raise RejectedInput("truncated recording", f"{why}; the copy may have been cut short: drop the whole file "
                            "again (copiers: write to a *.part or dot-file name and rename when done)")

    def _copy_committed_before(self, job_id: str, job: JobRecord) -> bool:
        raw_committed = (self.spool.layout.spool(self.spec.target) / f"{job_id}.json").exists()
        return raw_committed or bool(job.separated or job.failed)

    # --------------------------------------------------------------------------------------------------
    def _check_file(self, folder_fd: int, path: Path) -> os.stat_result:
        try:
            st = os.stat(path.name, dir_fd=folder_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise TransientError("the file disappeared from the inbox before it was taken") from None
        if stat.S_ISLNK(st.st_mode):
            target = display_name(os.readlink(path.name, dir_fd=folder_fd))
            raise RejectedInput("symbolic link", f"links are never followed (points to {target!r})")
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

    def _copy_and_hash(self, folder_fd: int, path: Path, tmp: Path, before: os.stat_result,
                       ctx: StageContext) -> tuple[str, FileIdentity]:
        digest = hashlib.sha256()
        fd = self._open_checked(folder_fd, path, before)
        with os.fdopen(fd, "rb") as fin, open(tmp, "wb") as fout:
            first = os.fstat(fin.fileno())
            while chunk := fin.read(_CHUNK):
                digest.update(chunk)
                fout.write(chunk)
                ctx.check_stop()
                _check_not_deleted(os.fstat(fin.fileno()), path)
            fout.flush()
            os.fsync(fout.fileno())
            after = os.fstat(fin.fileno())
        _check_not_deleted(after, path)
        if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (first.st_size, first.st_mtime_ns,
                                                                     first.st_ctime_ns) \
                or (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise TransientError("the file changed while it was being copied; it will be taken once it settles")
        try:
            now = os.stat(path.name, dir_fd=folder_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise TransientError("the file was deleted while it was being copied") from None
        if now.st_ino != before.st_ino:
            raise TransientError("the file was replaced while it was being copied; the new one is taken once it "
                                 "settles")
        return digest.hexdigest(), FileIdentity.of(os.fstat(folder_fd), first)

    @staticmethod
    def _open_checked(folder_fd: int, path: Path, before: os.stat_result) -> int:
        """Open without following a link or blocking on a FIFO swapped in since `before` was taken."""
        try:
            fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder_fd)
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
        raise TransientError(f"'{display_name(path.name)}' was deleted while it was being copied")


def start_over(job: JobRecord) -> None:
    """A recording dropped again after its job ended in quarantine: the record starts over; the earlier verdicts
    are kept in `retakes`."""
    history = [*job.extra.get("retakes", []), {"failed": job.failed, "time": time.time()}]
    fresh = JobRecord(job.job_id)
    for f in dataclasses.fields(JobRecord):
        if f.name not in ("job_id", "created", "extra"):
            setattr(job, f.name, getattr(fresh, f.name))
    job.extra["retakes"] = history


# ------------------------------------------------------------------------------------------ truncated media
# A file that looks cut short is held this long after its last change (20 x settle_seconds, within these bounds)
# before it is quarantined as truncated.
INCOMPLETE_HOLD_MIN, INCOMPLETE_HOLD_MAX = 60.0, 600.0
WAV_SIZE_UNKNOWN = 0xFFFF0000  # streaming writers put 0 or ~4 GiB in the size fields until they finish


def truncation(path: Path, duration: float, timeout: float) -> str | None:
    """Why the file stops short of what its header announces, or None: a WAV whose data chunk is declared larger
    than the file holds, or a stream whose packets end well before the container's duration (an mp3 whose
    Xing/VBRI header counts more frames than there are, an MP4 cut after its index)."""
    wav = _wav_missing_bytes(path)
    if wav is not None:
        return wav
    real = demuxed_seconds(path, timeout)
    if real is not None and real < duration * 0.9 - 0.5:
        return f"its header announces {duration:.1f} s but it holds only {real:.1f} s of audio"
    return None


def _wav_missing_bytes(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
            size = os.fstat(fh.fileno()).st_size
    except OSError:
        return None
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(head):
        cid, length = head[pos:pos + 4], struct.unpack("<I", head[pos + 4:pos + 8])[0]
        if cid == b"data":
            have = size - (pos + 8)
            if 0 < length < WAV_SIZE_UNKNOWN and have < length * 0.98:
                return f"its WAV header announces {length} bytes of audio but the file holds {max(0, have)}"
            return None
        pos += 8 + length + (length & 1)
    return None


def demuxed_seconds(path: Path, timeout: float) -> float | None:
    """Seconds of audio packets actually present in the first audio stream (read without decoding), or None."""
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-c", "copy", "-f", "null", "-",
           "-progress", "pipe:1"]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.findall(rb"out_time_us=(\d+)", proc.stdout)
    return int(found[-1]) / 1e6 if found else None


def _test_pause(point: str, item_id: str) -> None:
    """Test hook (inactive unless TTSFT_TEST_PAUSE_DIR is set and `<dir>/<point>` exists): announce the item at
    `point` (`<dir>/<item>.<point>.waiting`) and wait for `<dir>/<item>.<point>.go`, so that a test can change the
    inbox at exactly that instant."""
    folder = os.environ.get("TTSFT_TEST_PAUSE_DIR")
    if not folder or not os.path.exists(os.path.join(folder, point)):
        return
    base = os.path.join(folder, f"{item_id}.{point}")
    Path(base + ".waiting").write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not os.path.exists(base + ".go") and time.monotonic() < deadline:
        time.sleep(0.01)
    for suffix in (".waiting", ".go"):
        Path(base + suffix).unlink(missing_ok=True)
