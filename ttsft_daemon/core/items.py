"""Runs one stage on one item: claim, process, commit outputs, record the step, remove the input.

Order (see spool.py for why a crash anywhere is safe): outputs committed -> job record updated -> input removed.
The job record keeps the steps done, so a step recorded before a crash is not redone, only its input removed; an
output commit waits for the claim of the stage that consumes it, so a redo never interleaves with that stage's
removal. A quarantine records the verdict in the job first and then moves the input, so a crash in between redoes it.
Attempts are counted *before* processing, so an input that kills the whole process (a poison file) is still
quarantined after `max_attempts` restarts. A full disk is nobody's fault: it is retried with back-off without
counting an attempt, and the daemon reports it (`disk_full`) until an item succeeds again.
"""

from __future__ import annotations

import errno
import os
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from ttsft_daemon.config import Config
from ttsft_daemon.core.backoff import Backoff
from ttsft_daemon.core.jobs import CLIP_REJECTED, JobRecord
from ttsft_daemon.core.rates import StageRates
from ttsft_daemon.core.spool import Item, Spool, remove, storage_fault
from ttsft_daemon.errors import Deferred, RejectedInput, ShuttingDown
from ttsft_daemon.events import DISK_NEARLY_FULL, FILE_QUARANTINED, notify
from ttsft_daemon.pipeline import INBOX, PIPELINE, StageSpec, consumer_of
from ttsft_daemon.stages.base import Result, Stage, StageContext

log = structlog.get_logger(__name__)

CONSUMER_WAIT_SECONDS = 3600.0
# A failure while the state root's filesystem has less free space than this counts as disk full, whatever the
# exception says: some libraries lose the errno (libsndfile reports a full disk as "System error.").
LOW_SPACE_BYTES = 16 * 1024 * 1024


def is_disk_full(exc: BaseException, root: Path | None = None) -> bool:
    """A full disk, or (given the state root) a write the state root refuses for a while (read-only, permissions,
    I/O errors): nobody's fault, so retried without spending attempts (spool.storage_fault)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return root is not None and storage_fault(exc, root)


def space_left(path: Path) -> int | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


class ItemRunner:
    def __init__(self, stage: Stage, config: Config, spool: Spool, stop: threading.Event, backoff: Backoff,
                 disk_full: threading.Event | None = None, pipeline: tuple[StageSpec, ...] = PIPELINE,
                 rates: StageRates | None = None) -> None:
        self.stage = stage
        self.rates = rates
        self.pipeline = pipeline
        self.config = config
        self.spool = spool
        self.stop = stop
        self.backoff = backoff
        self.disk_full = disk_full or threading.Event()

    def key(self, item: Item) -> str:
        return f"{self.stage.name}-{item.id}"

    def run(self, item: Item) -> bool:
        """Process `item` if it can be claimed; True when work was done (success, quarantine or a retry)."""
        key = self.key(item)
        if not self.backoff.ready(key):
            return False
        claim = self.spool.try_claim(key)
        if claim is None:
            return False
        finished = False
        try:
            if not _present(item):
                return False
            outcome = self._run_claimed(item, key)
            finished = outcome is True
            return outcome is not None
        except OSError as exc:  # counting the attempt or quarantining hit a full disk: nothing was lost
            if not is_disk_full(exc, self.spool.layout.root):
                raise
            self._retry_when_space(item, key, exc, counted=False)
            return True
        finally:
            claim.release(done=finished)

    # ------------------------------------------------------------------------------------------------
    def _run_claimed(self, item: Item, key: str) -> bool | None:
        """True: the item is finished (done or quarantined); False: it stays (retry, shutdown); None: it waits
        (Deferred), which is no work done."""
        meta = item.meta() if item.spool != "inbox" else {}
        job_id = str(meta.get("job_id", ""))
        fields = {k: v for k, v in {"stage": self.stage.name, "job_id": job_id or None, "voice": meta.get("voice"),
                                    "clip": meta.get("clip_id")}.items() if v is not None}
        attempt = self._count_attempt(job_id, key)
        if attempt == 0:
            self._finish_recorded_step(item, key, fields)
            return True
        if attempt > self.config.daemon.max_attempts:
            last = self._last_error(job_id, key)
            self._quarantine(item, job_id, "too many failed attempts",
                             f"{attempt - 1} attempts failed; last error: {last}", fields)
            return True
        started = time.monotonic()
        ctx = StageContext(self.config, self.spool, self.stop)
        wakes = self.backoff.wakes()
        try:
            result = self.stage.process(item, ctx)
            try:
                self._commit(item, result, job_id, key)
            except BaseException:
                for o in result.outputs:
                    o.payload_tmp.unlink(missing_ok=True)  # not committed: the input is redone later
                raise
        except ShuttingDown:
            self._uncount_attempt(job_id, key)
            log.info("left for the next start", item=item.id, **fields)
            return False
        except Deferred as exc:
            self._uncount_attempt(job_id, key)
            was_deferred = self.backoff.is_deferred(key)
            if not self.backoff.defer(key, exc.retry_seconds, wakes_before=wakes):
                log.info("looking again at once: what it waited for came meanwhile", item=item.id, **fields)
                return False
            if not was_deferred:
                log.info("waiting", item=item.id, why=exc.reason, **fields)
            return None
        except RejectedInput as exc:
            self._quarantine(item, job_id, exc.reason, exc.detail, fields)
            return True
        except Exception as exc:  # a transient failure or a bug: retried with back-off, then quarantined
            if item.spool == "inbox" and not _present(item):
                self._forget_vanished(item, key, exc, fields)
                return True
            if is_disk_full(exc, self.spool.layout.root) or self._low_on_space():
                self._retry_when_space(item, key, exc, counted=True, job_id=job_id)
                return False
            self._retry_later(item, job_id, key, attempt, exc, fields)
            return False
        self.disk_full.clear()
        self.backoff.clear(key)
        busy = time.monotonic() - started
        if self.rates is not None:
            self.rates.record(self.stage.name, meta.get("duration"), busy)
        done = {**fields, **result.log, "item": item.id, "outputs": len(result.outputs),
                "duration_s": round(busy, 3)}
        log.info(f"{self.stage.name} done", **{k: v for k, v in done.items() if v is not None})
        return True

    def _commit(self, item: Item, result: Result, job_id: str, key: str) -> None:
        for o in result.outputs:
            # A redo after a crash may recommit an item that the next stage is removing right now: the commit
            # waits for that stage's claim, or the two could interleave into a lone payload or sidecar.
            consumer = consumer_of(o.spool, self.pipeline)
            with self.spool.locked(f"{consumer}-{o.item_id}", timeout=CONSUMER_WAIT_SECONDS):
                self.spool.commit_item(o.spool, o.item_id, o.payload_tmp, o.ext, o.meta)
            # rename(2) does nothing when both names are hard links to one file (a redo of a step whose output
            # is a link of its input, after a crash): the temporary name would then stay behind.
            o.payload_tmp.unlink(missing_ok=True)
        job_id = job_id or str(result.log.get("job_id", ""))
        if job_id:
            def change(job: JobRecord) -> None:
                if result.job_update is not None:
                    result.job_update(job)
                job.attempts.pop(key, None)
                if item.spool != INBOX:
                    job.done[key] = True

            self.spool.update_job(job_id, change)
        if item.spool == "inbox":
            self.backoff.forget_inbox_attempts(key)
            result.remove_input() if result.remove_input is not None else remove(item.payload)
        else:
            self.spool.remove_item(item)

    def _quarantine(self, item: Item, job_id: str, reason: str, detail: str, fields: dict[str, Any]) -> None:
        files = [item.payload] if item.spool == "inbox" else [item.payload, item.sidecar]
        meta = item.meta() if item.spool != "inbox" else {}
        extra = {"job_id": job_id or None, "item": item.id, "source": meta.get("source_name"),
                 "voice": meta.get("voice")}
        if job_id:
            # The verdict goes into the job first: a crash before the move below leaves the input in place, and
            # the redo records the same verdict again. The other order would lose the verdict for good.
            self.spool.update_job(job_id, _record_rejection(meta.get("clip_id"), self.stage.name, reason,
                                                            self.key(item)))
        error_file = self.spool.quarantine(files, self.stage.name, reason, detail, extra)
        self.backoff.clear(self.key(item))
        if item.spool == "inbox":
            self.backoff.forget_inbox_attempts(self.key(item))
        log.warning("rejected", reason=reason, detail=detail, item=item.id, quarantine=error_file.name, **fields)
        if not meta.get("clip_id"):  # a whole recording (a rejected clip is routine, and the report lists them)
            notify(self.config.notify, FILE_QUARANTINED, stage=self.stage.name, reason=reason, detail=detail,
                   item=item.id, voice=meta.get("voice"), source=meta.get("source_name") or item.payload.name,
                   report=error_file.name)

    def _finish_recorded_step(self, item: Item, key: str, fields: dict[str, Any]) -> None:
        """The job already records this step (a crash struck before its input was removed): redoing it would
        recommit outputs that the next stage may have consumed by now, so only the removal is left to do."""
        self.spool.remove_item(item)
        self.backoff.clear(key)
        log.info("step already recorded before a restart; input removed", item=item.id, **fields)

    def _forget_vanished(self, item: Item, key: str, exc: Exception, fields: dict[str, Any]) -> None:
        """The inbox file was deleted (or moved away) while it was being taken: nothing to keep, nothing to retry."""
        self.backoff.clear(key)
        self.backoff.forget_inbox_attempts(key)
        log.info("inbox file removed while it was being taken; skipped", path=str(item.payload),
                 error=f"{type(exc).__name__}: {exc}", item=item.id, **fields)

    def _low_on_space(self) -> bool:
        free = space_left(self.spool.layout.root)
        return free is not None and free < LOW_SPACE_BYTES

    def _retry_when_space(self, item: Item, key: str, exc: Exception, counted: bool, job_id: str = "") -> None:
        """Disk full: back off and retry, without spending one of the item's attempts."""
        if not self.disk_full.is_set():
            notify(self.config.notify, DISK_NEARLY_FULL, path=str(self.spool.layout.root),
                   free_bytes=space_left(self.spool.layout.root), error=f"{type(exc).__name__}: {exc}")
        self.disk_full.set()
        if counted:
            try:
                self._uncount_attempt(job_id, key)
            except OSError:
                pass  # still full: this attempt stays counted, which only matters after max_attempts of them
        delay = self.backoff.disk_full_delay(key, self.config.daemon.retry_backoff_seconds)
        self.backoff.delay(key, delay)
        log.error("disk full; will retry" if is_disk_full(exc) else "state root refuses writes; will retry",
                  item=item.id, error=f"{type(exc).__name__}: {exc}", retry_in_s=delay,
                  **{k: v for k, v in {"stage": self.stage.name, "job_id": job_id or None}.items() if v})

    def _retry_later(self, item: Item, job_id: str, key: str, attempt: int, exc: Exception,
                     fields: dict[str, Any]) -> None:
        summary = f"{type(exc).__name__}: {exc}"
        delay = self.config.daemon.retry_backoff_seconds * (2 ** max(0, attempt - 1))
        self.backoff.delay(key, delay)
        if job_id:
            try:
                self.spool.update_job(job_id, lambda job: job.note_failure(key, attempt, summary))
            except OSError:
                pass  # the disk may still be full: the in-memory back-off is enough for now
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        log.error("failed, will retry", item=item.id, error=summary, attempt=attempt, retry_in_s=delay,
                  traceback="".join(tb[-3:]).strip(), **fields)

    # ------------------------------------------------------------------------------------------------
    def _count_attempt(self, job_id: str, key: str) -> int:
        """This attempt's number, counted before the work; 0 when the job already records the step as done."""
        if not job_id:
            return self.backoff.count_inbox_attempt(key)
        counted = {"n": 0}

        def change(job: JobRecord) -> None:
            counted["n"] = job.count_attempt(key)

        self.spool.update_job(job_id, change)
        return counted["n"]

    def _uncount_attempt(self, job_id: str, key: str) -> None:
        if not job_id:
            self.backoff.count_inbox_attempt(key, -1)
            return

        self.spool.update_job(job_id, lambda job: job.uncount_attempt(key))

    def _last_error(self, job_id: str, key: str) -> str:
        job = self.spool.read_job(job_id) if job_id else None
        return job.last_error(key) if job else JobRecord(job_id).last_error(key)


def _present(item: Item) -> bool:
    """Whether the item is still there; an inbox entry counts even when it is a dangling or looping symlink."""
    return os.path.lexists(item.payload) if item.spool == "inbox" else item.exists()


def _record_rejection(clip: Any, stage: str, reason: str, key: str) -> Callable[[JobRecord], None]:
    def change(job: JobRecord) -> None:
        if clip:
            job.set_clip(str(clip), CLIP_REJECTED)  # its last clip rejected: the job is finished all the same
        else:
            job.failed = {"stage": stage, "reason": reason}
        job.attempts.pop(key, None)

    return change
