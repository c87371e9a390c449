"""The daemon: owns every thread and signal.

Signal handlers only set flags; the main loop does the work (start, reload, drain, stop). One worker pool per
stage; each worker thread owns its own stage instance (so each loads its model once). watchdog events and
committed outputs only wake workers early: every worker rescans its source periodically, which is the truth.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from ttsft_daemon import engine
from ttsft_daemon.config import Config, load_config
from ttsft_daemon.core.backoff import Backoff
from ttsft_daemon.core.inbox import InboxScanner
from ttsft_daemon.core.items import ItemRunner
from ttsft_daemon.core.rates import StageRates
from ttsft_daemon.core.spool import Spool
from ttsft_daemon.daemon.notify import Notifier
from ttsft_daemon.errors import ConfigError
from ttsft_daemon.pipeline import INBOX, PIPELINE, TRAIN, StageSpec, downstream, spools_of
from ttsft_daemon.stages.base import Stage, StageEnv
from ttsft_daemon.status import collect, one_line, write_daemon_info
from ttsft_daemon.training.scheduler import TrainerWorker

PR_SET_NAME = 15  # prctl option (linux/prctl.h)

log = structlog.get_logger(__name__)

LOCK_SWEEP_SECONDS = 600.0

@dataclass
class Heartbeat:
    beat: float = field(default_factory=time.monotonic)
    busy_since: float | None = None
    limit: float = 0.0


class Health:
    """Per-thread heartbeats; WATCHDOG=1 is sent only while every thread is healthy."""

    def __init__(self, idle_timeout: float) -> None:
        self.idle_timeout = idle_timeout
        self._beats: dict[str, Heartbeat] = {}
        self._lock = threading.Lock()

    def beat(self, name: str, busy_limit: float | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            hb = self._beats.setdefault(name, Heartbeat())
            hb.beat = now
            if busy_limit is None:
                hb.busy_since = None
            elif hb.busy_since is None:
                hb.busy_since, hb.limit = now, busy_limit

    def forget(self, name: str) -> None:
        with self._lock:
            self._beats.pop(name, None)

    def stale(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            out = []
            for name, hb in self._beats.items():
                if hb.busy_since is not None:
                    if now - hb.busy_since > hb.limit + self.idle_timeout:
                        out.append(name)
                elif now - hb.beat > self.idle_timeout:
                    out.append(name)
            return out


class Waker:
    """Wakes every waiting thread of a pool; a wake between a thread's scan and its wait is never lost
    (threads compare generations instead of clearing a shared Event, which would eat other threads' wakes)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0

    def generation(self) -> int:
        with self._cond:
            return self._generation

    def wake(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._generation != seen, timeout)


def name_os_thread(name: str) -> None:
    """Give the calling thread its name in the OS too (Linux keeps 15 bytes), so that `top -H` and
    /proc/<pid>/task/*/comm show which stage a busy thread belongs to; the thread pools that Whisper, ONNX
    Runtime and torch start from it inherit the name. Best effort: other systems keep "python"."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
    except (OSError, AttributeError):
        pass


class WorkerPool:
    """`size` threads of one stage (one row of the pipeline table)."""

    def __init__(self, spec: StageSpec, size: int, daemon: Daemon) -> None:
        self.spec = spec
        self.name = spec.name
        self.size = size
        self.daemon = daemon
        self.stop = threading.Event()
        self.waker = Waker()
        self.busy = 0
        self.open_failed: str | None = None
        self._busy_lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(self.size):
            t = threading.Thread(target=self._loop, name=f"ttsft-{self.name}-{i}", daemon=True)
            self.threads.append(t)
            t.start()

    def is_busy(self) -> bool:
        with self._busy_lock:
            return self.busy > 0

    def _loop(self) -> None:
        me = threading.current_thread().name
        name_os_thread(me.removeprefix("ttsft-"))
        d = self.daemon
        stage: Stage | None = None
        crashed = False
        try:
            while not self.stop.is_set():
                d.health.beat(me)
                seen = self.waker.generation()
                if stage is None:
                    stage = self._open(me)
                    if stage is None:
                        self.stop.wait(d.config.daemon.retry_backoff_seconds or 5.0)
                        continue
                runner = ItemRunner(stage, d.config, d.spool, self.stop, d.backoff, d.disk_full, d.pipeline, d.rates)
                worked = False
                for item in stage.candidates():
                    if self.stop.is_set():
                        break
                    with self._busy_lock:
                        self.busy += 1
                    d.health.beat(me, busy_limit=self.spec.limit(d.config))
                    try:
                        did = runner.run(item)
                    except Exception as exc:  # a bug: never let it kill the worker; the item is retried later
                        log.exception("unexpected error in worker", stage=self.name, item=item.id, error=str(exc))
                        d.backoff.delay(runner.key(item), d.config.daemon.retry_backoff_seconds)
                        did = False
                    finally:
                        with self._busy_lock:
                            self.busy -= 1
                        d.health.beat(me)
                    if did:
                        worked = True
                        d.wake(downstream(self.name, d.pipeline))
                if not worked:
                    self.waker.wait(seen, self._idle_wait())
        except Exception as exc:  # a bug in the loop itself: log loudly; the health check stops WATCHDOG=1
            log.exception("worker thread crashed", stage=self.name, error=str(exc))
            crashed = True
        finally:
            if stage is not None:
                try:
                    stage.close()
                except Exception as exc:
                    log.warning("closing stage failed", stage=self.name, error=str(exc))
            if not crashed:  # a crashed worker keeps its heartbeat, which goes stale: systemd restarts the daemon
                d.health.forget(me)

    def _idle_wait(self) -> float:
        """How long an idle worker sleeps: the rescan interval, but files settling in the inbox are looked at
        again as soon as they may have settled (an inotify event only says a file changed, not that it is done)."""
        cfg = self.daemon.config.inbox
        if self.spec.source == INBOX and self.daemon.scanner.pending:
            return min(cfg.rescan_seconds, max(0.1, cfg.settle_seconds / 4))
        return cfg.rescan_seconds

    def _open(self, me: str) -> Stage | None:
        try:
            d = self.daemon
            stage = self.spec.build(StageEnv(d.config, d.spool, d.scanner, d.backoff, d.pipeline))
            started = time.monotonic()
            stage.open()
            log.info("stage ready", stage=self.name, worker=me, duration_s=round(time.monotonic() - started, 3))
            self.open_failed = None
            return stage
        except Exception as exc:
            self.open_failed = f"{type(exc).__name__}: {exc}"
            log.error("stage cannot start; retrying", stage=self.name, error=self.open_failed)
            return None

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))


class Daemon:
    def __init__(self, config: Config, exit_when_idle: bool = False, notifier: Notifier | None = None,
                 pipeline: tuple[StageSpec, ...] = PIPELINE) -> None:
        self.config = config
        self.exit_when_idle = exit_when_idle
        self.notifier = notifier or Notifier()
        self.pipeline = pipeline
        self.spool = Spool(config.paths.root, spools_of(pipeline))
        self.backoff = Backoff()
        self.rates = StageRates()  # audio seconds per wall second of each stage, for status' drain estimate
        self.disk_full = threading.Event()
        self.health = Health(config.daemon.heartbeat_timeout_seconds)
        self.stopping = threading.Event()
        self._reload_requested = False
        self.pools: dict[str, WorkerPool] = {}
        self.trainer: TrainerWorker | None = None
        self.api: Any = None  # ttsft_daemon.api.server.ApiServer while api.enabled
        self.scanner = InboxScanner(self.spool.layout.inbox, config.inbox)
        self._observer: Any = None
        self.exit_code = 0

    # ---------------------------------------------------------------------------------------- signals
    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self.stopping.set()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._reload_requested = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, self._on_hup)

    # ---------------------------------------------------------------------------------------- pools
    def start_workers(self) -> None:
        sizes = self.config.daemon.workers
        heavy = engine.current()  # a remote pool wants one waiting thread per actor
        for spec in self.pipeline:
            pool = WorkerPool(spec, heavy.threads(spec.name, getattr(sizes, spec.name, 1)), self)
            self.pools[spec.name] = pool
            pool.start()
        self.trainer = TrainerWorker(self.config, self.spool, self.health, exit_when_idle=self.exit_when_idle,
                                     data_busy=self.data_busy)
        self.trainer.start()

    def stop_workers(self, timeout: float) -> None:
        for pool in self.pools.values():
            pool.stop.set()
            pool.waker.wake()
        if self.trainer is not None:
            self.trainer.request_stop()
        deadline = time.monotonic() + timeout
        for pool in self.pools.values():
            pool.join(max(0.0, deadline - time.monotonic()))
        if self.trainer is not None:
            self.trainer.join(max(1.0, deadline - time.monotonic()))
        self.pools = {}
        self.trainer = None

    def wake(self, stage: str) -> None:
        if stage == TRAIN:
            if self.trainer is not None:
                self.trainer.wake.set()
        elif stage in self.pools:
            self.pools[stage].waker.wake()

    # ---------------------------------------------------------------------------------------- HTTP API
    def start_api(self) -> None:
        """Serve the HTTP API from its own thread when api.enabled (a failure to listen is logged, not fatal)."""
        if self.config.api.enabled and self.api is None:
            from ttsft_daemon.api.server import ApiServer

            self.api = ApiServer(self)
            self.api.start()

    def stop_api(self) -> None:
        if self.api is not None:
            self.api.stop()
            self.api = None

    # ---------------------------------------------------------------------------------------- watching
    def start_observer(self) -> None:
        try:
            from watchdog.events import FileSystemEvent, FileSystemEventHandler
            from watchdog.observers import Observer
            from watchdog.observers.polling import PollingObserver
        except ImportError:  # pragma: no cover - watchdog is a dependency; rescans still work without it
            return
        daemon = self

        class Wake(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                daemon.wake("ingest")

        cfg = self.config.inbox
        observer = PollingObserver(timeout=cfg.poll_interval_seconds) if cfg.polling else Observer()
        try:
            observer.schedule(Wake(), str(self.spool.layout.inbox), recursive=True)
            observer.daemon = True
            observer.start()
            self._observer = observer
        except OSError as exc:  # e.g. inotify watch limit: rescans still find everything
            log.warning("inbox watcher unavailable; relying on rescans", error=str(exc))

    def stop_observer(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)
            self._observer = None

    # ---------------------------------------------------------------------------------------- main loop
    def run(self) -> int:
        layout = self.spool.layout
        layout.ensure()
        if os.geteuid() == 0:
            log.warning("running as root: run the daemon as its own unprivileged user (deploy/ has the unit)")
        removed = self.spool.cleanup_temporaries()
        log.info("starting", root=str(layout.root), pid=os.getpid(), temporaries_removed=removed,
                 exit_when_idle=self.exit_when_idle)
        log.info("engine started", **engine.start(self.config).describe())  # engine.kind: local | ray
        self.start_observer()
        self.start_workers()
        self.start_api()
        self.notifier.ready(status="started")
        last_status = last_ping = 0.0
        last_sweep = time.monotonic()
        published_disk_full = False
        ping_every = min(self.notifier.watchdog_interval() or 5.0, 5.0)
        idle_rounds = 0
        while not self.stopping.is_set():
            self.stopping.wait(0.5)
            if self._reload_requested:
                self._reload_requested = False
                self.reload()
            if time.monotonic() - last_sweep >= LOCK_SWEEP_SECONDS:  # one lock file is left per finished item
                last_sweep = time.monotonic()
                self._sweep_locks()
            if time.monotonic() - last_ping >= ping_every:
                stale = self.health.stale()
                if not stale:
                    last_ping = time.monotonic()
                    self.notifier.watchdog()
                elif time.monotonic() - last_status > 5:
                    log.error("workers not responding: withholding WATCHDOG=1", threads=stale)
            # Every 5 s, and at once when the disk (or the state root's permissions) starts or stops failing us.
            if time.monotonic() - last_status > 5 or self.disk_full.is_set() != published_disk_full:
                last_status = time.monotonic()
                published_disk_full = self.disk_full.is_set()
                self._publish_status()
            if self.exit_when_idle:
                failed_open = [p.name for p in self.pools.values() if p.open_failed]
                if failed_open and self._has_work_for(failed_open):
                    log.error("cannot finish: a stage cannot start", stages=failed_open,
                              error=self.pools[failed_open[0]].open_failed)
                    self.exit_code = 1
                    break
                idle_rounds = idle_rounds + 1 if self.is_idle() else 0
                if idle_rounds >= 3:
                    log.info("no work left; exiting")
                    break
        self.notifier.stopping(status="stopping")
        log.info("stopping")
        self.stop_api()
        self.stop_workers(timeout=60.0)
        engine.stop()
        self.stop_observer()
        self._publish_status(final=True)
        log.info("stopped", exit_code=self.exit_code)
        return self.exit_code

    def _sweep_locks(self) -> None:
        try:
            removed = self.spool.sweep_locks()
        except OSError as exc:
            log.warning("cannot sweep lock files", error=str(exc))
            return
        if removed:
            log.debug("lock files of finished items removed", count=removed)

    def _has_work_for(self, stages: list[str]) -> bool:
        sources = [p.spec.source for name, p in self.pools.items() if name in stages]
        return any(self.spool.count(s) > 0 for s in sources if s != INBOX)

    def data_busy(self) -> bool:
        """Whether any data stage has work now or coming (settling inbox files included)."""
        if any(p.is_busy() for p in list(self.pools.values())):
            return True
        scan = self.scanner.scan()
        if scan.ready or scan.pending:
            return True
        for name, pool in list(self.pools.items()):
            if pool.spec.source != INBOX and any(not self.backoff.is_deferred(f"{name}-{item.id}")
                                                 for item in self.spool.items(pool.spec.source)):
                return True
        return False

    def is_idle(self) -> bool:
        if self.trainer is not None and (self.trainer.busy or self.trainer.due_voices()):
            return False
        return not self.data_busy()

    def reload(self) -> None:
        source = self.config.source
        if source is None:
            log.warning("reload requested but the config was not loaded from a file")
            return
        self.notifier.reloading()
        try:
            new = load_config(source)
        except ConfigError as exc:
            log.error("reload refused: the new config is invalid; keeping the running one", problems=exc.problems)
            self.notifier.ready(status="reload refused: invalid config")
            return
        except Exception as exc:  # whatever a bad file does to the loader, the running daemon keeps running
            log.error("reload refused: the new config cannot be read; keeping the running one",
                      error=f"{type(exc).__name__}: {str(exc)[:500]}")
            self.notifier.ready(status="reload refused: invalid config")
            return
        log.info("reloading configuration", source=str(source))
        from ttsft_daemon.logs import configure_logging

        configure_logging(new.logging.level, new.logging.format, new.logging.journal)
        self.stop_api()
        self.stop_workers(timeout=60.0)
        engine.stop()
        self.stop_observer()
        self.config = new
        self.spool = Spool(new.paths.root, spools_of(self.pipeline))
        self.spool.layout.ensure()
        self.scanner = InboxScanner(self.spool.layout.inbox, new.inbox)
        self.health = Health(new.daemon.heartbeat_timeout_seconds)
        engine.start(new)
        self.start_observer()
        self.start_workers()
        self.start_api()
        self.notifier.ready(status="reloaded")

    def _publish_status(self, final: bool = False) -> None:
        try:
            status = collect(self.config)
            text = one_line(status)
            if self.disk_full.is_set():
                text = "DISK FULL (retrying) | " + text
            self.notifier.status(text)
            write_daemon_info(self.spool.layout, {
                "state": "stopped" if final else "running", "disk_full": self.disk_full.is_set(),
                "stages": status["stages"], "started_by": Path(str(self.config.source or "")).name,
                "rates": self.rates.snapshot({name: pool.size for name, pool in self.pools.items()}),
            })
        except OSError as exc:
            log.warning("cannot publish status", error=str(exc))


def run_daemon(config: Config, exit_when_idle: bool) -> int:
    daemon = Daemon(config, exit_when_idle=exit_when_idle)
    daemon.install_signal_handlers()
    return daemon.run()
