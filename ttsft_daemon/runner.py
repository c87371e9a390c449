"""Runs one stage on one item: claim, process, commit outputs, record the step, remove the input.

Order (see spool.py for why a crash anywhere is safe): outputs committed -> job record updated -> input removed.
Attempts are counted *before* processing, so an input that kills the whole process (a poison file) is still
quarantined after `max_attempts` restarts.
"""

from __future__ import annotations

import errno
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

import structlog

from .config import Config
from .errors import RejectedInput, ShuttingDown
from .spool import Item, Spool, remove
from .stages.base import Result, Stage, StageContext

log = structlog.get_logger("ttsft.runner")


@dataclass
class Backoff:
    """In-memory retry schedule of this process (the persisted attempt count lives in the job record)."""

    def __post_init__(self) -> None:
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def ready(self, key: str) -> bool:
        with self._lock:
            return self._next.get(key, 0.0) <= time.monotonic()

    def delay(self, key: str, seconds: float) -> None:
        with self._lock:
            self._next[key] = time.monotonic() + seconds

    def clear(self, key: str) -> None:
        with self._lock:
            self._next.pop(key, None)

    def pending(self) -> int:
        now = time.monotonic()
        with self._lock:
            return sum(1 for t in self._next.values() if t > now)


class ItemRunner:
    def __init__(self, stage: Stage, config: Config, spool: Spool, stop: threading.Event, backoff: Backoff,
                 disk_full: threading.Event | None = None) -> None:
        self.stage = stage
        self.config = config
        self.spool = spool
        self.stop = stop
        self.backoff = backoff
        self.disk_full = disk_full or threading.Event()
        # Inbox files have no job yet: their attempts are counted here.
        self._inbox_attempts: dict[str, int] = {}

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
            if not item.exists():
                return False
            finished = self._run_claimed(item, key)
            return True
        finally:
            claim.release(done=finished)

    # ------------------------------------------------------------------------------------------------
    def _run_claimed(self, item: Item, key: str) -> bool:
        meta = item.meta() if item.spool != "inbox" else {}
        job_id = str(meta.get("job_id", ""))
        fields = {k: v for k, v in {"stage": self.stage.name, "job_id": job_id or None, "voice": meta.get("voice"),
                                    "clip": meta.get("clip_id")}.items() if v is not None}
        attempt = self._count_attempt(job_id, key)
        if attempt > self.config.daemon.max_attempts:
            last = self._last_error(job_id, key)
            self._quarantine(item, job_id, "too many failed attempts",
                             f"{attempt - 1} attempts failed; last error: {last}", fields)
            return True
        started = time.monotonic()
        ctx = StageContext(self.config, self.spool, self.stop)
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
        except RejectedInput as exc:
            self._quarantine(item, job_id, exc.reason, exc.detail, fields)
            return True
        except Exception as exc:  # a transient failure or a bug: retried with back-off, then quarantined
            self._retry_later(item, job_id, key, attempt, exc, fields)
            return False
        self.disk_full.clear()
        self.backoff.clear(key)
        done = {**fields, **result.log, "item": item.id, "outputs": len(result.outputs),
                "duration_s": round(time.monotonic() - started, 3)}
        log.info(f"{self.stage.name} done", **{k: v for k, v in done.items() if v is not None})
        return True

    def _commit(self, item: Item, result: Result, job_id: str, key: str) -> None:
        for o in result.outputs:
            self.spool.commit_item(o.spool, o.item_id, o.payload_tmp, o.ext, o.meta)
        job_id = job_id or str(result.log.get("job_id", ""))
        if job_id:
            def change(job: dict[str, Any]) -> None:
                if result.job_update is not None:
                    result.job_update(job)
                job.get("attempts", {}).pop(key, None)

            self.spool.update_job(job_id, change)
        if item.spool == "inbox":
            self._inbox_attempts.pop(key, None)
            remove(item.payload)
        else:
            self.spool.remove_item(item)

    def _quarantine(self, item: Item, job_id: str, reason: str, detail: str, fields: dict[str, Any]) -> None:
        files = [item.payload] if item.spool == "inbox" else [item.payload, item.sidecar]
        meta = item.meta() if item.spool != "inbox" else {}
        extra = {"job_id": job_id or None, "item": item.id, "source": meta.get("source_name"),
                 "voice": meta.get("voice")}
        error_file = self.spool.quarantine(files, self.stage.name, reason, detail, extra)
        if job_id:
            clip = meta.get("clip_id")

            def change(job: dict[str, Any]) -> None:
                if clip:
                    job.setdefault("clips", {})[clip] = "rejected"
                    job["rejected_count"] = sum(1 for s in job["clips"].values() if s == "rejected")
                else:
                    job["failed"] = {"stage": self.stage.name, "reason": reason}
                job.get("attempts", {}).pop(self.key(item), None)

            self.spool.update_job(job_id, change)
        self.backoff.clear(self.key(item))
        log.warning("rejected", reason=reason, detail=detail, item=item.id, quarantine=error_file.name, **fields)

    def _retry_later(self, item: Item, job_id: str, key: str, attempt: int, exc: Exception,
                     fields: dict[str, Any]) -> None:
        summary = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            self.disk_full.set()
            summary = f"disk full: {exc}"
        delay = self.config.daemon.retry_backoff_seconds * (2 ** max(0, attempt - 1))
        self.backoff.delay(key, delay)
        if job_id:
            try:
                self.spool.update_job(job_id, lambda job: job.setdefault("attempts", {}).setdefault(
                    key, {"count": attempt}).update(last_error=summary, time=time.time()))
            except OSError:
                pass  # the disk may still be full: the in-memory back-off is enough for now
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        log.error("failed, will retry", item=item.id, error=summary, attempt=attempt, retry_in_s=delay,
                  traceback="".join(tb[-3:]).strip(), **fields)

    # ------------------------------------------------------------------------------------------------
    def _count_attempt(self, job_id: str, key: str) -> int:
        if not job_id:
            n = self._inbox_attempts.get(key, 0) + 1
            self._inbox_attempts[key] = n
            return n
        counted = {"n": 0}

        def change(job: dict[str, Any]) -> None:
            entry = job.setdefault("attempts", {}).setdefault(key, {"count": 0})
            entry["count"] = int(entry.get("count", 0)) + 1
            counted["n"] = entry["count"]

        self.spool.update_job(job_id, change)
        return counted["n"]

    def _uncount_attempt(self, job_id: str, key: str) -> None:
        if not job_id:
            self._inbox_attempts[key] = max(0, self._inbox_attempts.get(key, 1) - 1)
            return

        def change(job: dict[str, Any]) -> None:
            entry = job.get("attempts", {}).get(key)
            if entry:
                entry["count"] = max(0, int(entry.get("count", 1)) - 1)

        self.spool.update_job(job_id, change)

    def _last_error(self, job_id: str, key: str) -> str:
        job = self.spool.read_job(job_id) if job_id else None
        entry = (job or {}).get("attempts", {}).get(key) or {}
        return str(entry.get("last_error", "the process was killed while working on it"))
