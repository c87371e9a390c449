"""The Ray engine: the heavy work of separation, speaker embedding and transcription on a Ray cluster.

Per stage, a pool of actors (`SeparateActor`, `SpeakerActor`, `TranscribeActor`) each loads its model once and
then serves any number of items. A stage worker thread of the daemon takes an idle actor, puts the item's input
into Ray's object store (a recording's bytes, a clip's samples: the worker nodes need no access to the state
root), waits for the answer and hands the actor back. The answer comes back to the daemon, which writes the
temporary outputs and commits them as with the local engine: the daemon stays the only process that claims,
commits and removes spool items.

Failures: an actor that dies (its process killed, its node lost) is restarted by Ray, on another node when its own
is gone (`engine.ray.actor_restarts`), and the call is retried on it (`engine.ray.task_retries`); past those, or
past the stage's time limit, the item fails with a TransientError and the item runner retries it later as any
failed item (it counts an attempt). When the daemon dies, its actors end with it (they belong to its Ray job); the
restarted daemon rescans its spools, and the items whose outputs were not committed are simply done again.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from ttsft_daemon.config import Config, RayPoolConfig
from ttsft_daemon.core import cpu
from ttsft_daemon.engine import PassResult, Windows
from ttsft_daemon.engine.local import LocalEngine, LocalSeparator, LocalTranscriber
from ttsft_daemon.errors import ConfigError, RejectedInput, ShuttingDown, TransientError, TtsftError, WorkerDied
from ttsft_daemon.text.quality import QualityReport
from ttsft_daemon.text.transcription import Transcript

ray: Any  # the optional extra (pip install 'ttsft-daemon[ray]'), typed loosely: Ray ships partial hints
try:
    ray = importlib.import_module("ray")
    importlib.import_module("ray.exceptions")
except ImportError:  # pragma: no cover - the extra is installed wherever the tests run
    ray = None

log = structlog.get_logger(__name__)

NAMESPACE = "ttsft-daemon"
POLL_SECONDS = 0.5  # how often a waiting thread looks at its stop flag
START_SECONDS = 600.0  # how long a stage waits for the first actor of its pool to load its model
# (kind, value, seconds of work in the actor): ("ok", value, s) | ("rejected", (reason, detail), s) |
# ("failed", "Type: message", s)
Outcome = tuple[str, Any, float]
# Thread settings the actors take over from the daemon. Ray sets OMP_NUM_THREADS to an actor's CPUs before the
# worker imports numpy, so its BLAS runs on one thread, and Whisper's features, summed in another order, give other
# word probabilities than in the daemon (measured: 0.4907 against 0.4998). With the daemon's settings (environment
# and BLAS threads) the actors give exactly the local engine's results on the same kind of host. The models' own
# thread counts (transcription.cpu_threads, the speaker encoder's 2 torch threads, DNSMOS's one) apply as there.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# ------------------------------------------------------------------------------------------------ actors (workers)
def _outcome(work: Callable[[], Any]) -> Outcome:
    """Errors travel back as values: the daemon re-raises them as its own kinds (RejectedInput quarantines)."""
    started = time.monotonic()
    try:
        value = work()
    except RejectedInput as exc:
        return "rejected", (exc.reason, exc.detail), time.monotonic() - started
    except Exception as exc:
        return "failed", f"{type(exc).__name__}: {str(exc)[:2000]}", time.monotonic() - started
    return "ok", value, time.monotonic() - started


class _StageActor:
    """Runs on a node of the cluster: builds its worker (models) once in `__init__`."""

    def __init__(self, config: Config, thread_env: dict[str, str | None], blas_threads: int | None) -> None:
        started = time.monotonic()
        for name, value in thread_env.items():  # before any model library is loaded in this process
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if blas_threads:  # numpy is loaded already (by Ray): set its BLAS pool as the daemon has it
            _blas(blas_threads)
        self.config = config
        self._load()
        self.load_seconds = round(time.monotonic() - started, 3)

    def _load(self) -> None:
        raise NotImplementedError

    def ready(self) -> dict[str, Any]:
        node = ray.get_runtime_context().get_node_id() if ray is not None else ""
        return {"pid": os.getpid(), "host": socket.gethostname(), "node": node, "load_s": self.load_seconds}


class SeparateActor(_StageActor):
    def _load(self) -> None:
        self.work = LocalSeparator(self.config)
        self.work.open()
        self.tmp = Path(tempfile.mkdtemp(prefix="ttsft-separate-"))

    def separate(self, data: bytes, suffix: str) -> Outcome:
        def run() -> tuple[bytes, dict[str, Any]]:
            folder = Path(tempfile.mkdtemp(dir=self.tmp))
            try:
                src, dst = folder / f"input{suffix}", folder / "vocals.wav"
                src.write_bytes(data)
                meta = self.work.separate(src, dst, folder)
                return dst.read_bytes(), {**meta, "pid": os.getpid()}
            finally:
                shutil.rmtree(folder, ignore_errors=True)

        return _outcome(run)


class SpeakerActor(_StageActor):
    def _load(self) -> None:
        from ttsft_daemon.audio.speaker import SpeakerEncoder

        self.work = SpeakerEncoder(threads=cpu.pool_threads(self.config.speaker.threads, big_host=2))

    def embed(self, samples: np.ndarray, sr: int) -> Outcome:
        return _outcome(lambda: self.work.embed(samples, sr))

    def embed_windows(self, samples: np.ndarray, sr: int, window_s: float, hop_s: float, min_loud: float) -> Outcome:
        return _outcome(lambda: self.work.embed_windows(samples, sr, window_s, hop_s, min_loud))


class TranscribeActor(_StageActor):
    def _load(self) -> None:
        self.work = LocalTranscriber(self.config)
        self.work.open()

    def packed_pass(self, clips16k: list[np.ndarray]) -> Outcome:
        return _outcome(lambda: self.work.packed_pass(clips16k))

    def judge(self, samples: np.ndarray, sr: int, packed: Transcript | None,
              group_dnsmos: dict[str, float] | None) -> Outcome:
        return _outcome(lambda: self.work.judge(samples, sr, packed, group_dnsmos))


ACTORS: dict[str, type[_StageActor]] = {"separate": SeparateActor, "speaker": SpeakerActor,
                                        "transcribe": TranscribeActor}


# ------------------------------------------------------------------------------------------------ the daemon's side
class ActorPool:
    """The actors of one stage; each serves one call at a time, lent to one daemon thread at a time."""

    def __init__(self, stage: str, actors: list[Any], need: RayPoolConfig) -> None:
        self.stage = stage
        self.need = need
        self.size = len(actors)
        self._cond = threading.Condition()
        self._starting: dict[Any, Any] = {actor.ready.remote(): actor for actor in actors}  # ready ref -> actor
        self._idle: list[Any] = []
        self._lent = 0
        self._closed = False
        self._last_error = ""
        self._all = list(actors)
        self._gone: set[int] = set()  # actors dead for good (past their restarts): never lent again
        # Calls answered, their time as the daemon saw it and the actors' own work time: the difference is the
        # engine's overhead (object store, scheduling, the round trip), logged when the pool closes.
        self.calls, self.call_s, self.work_s = 0, 0.0, 0.0

    # -- lending
    def _collect_ready(self) -> None:
        """Actors whose model has loaded join the idle ones (called with the lock held)."""
        if not self._starting:
            return
        done, _ = ray.wait(list(self._starting), num_returns=len(self._starting), timeout=0)
        for ref in done:
            actor = self._starting.pop(ref)
            try:
                info = ray.get(ref)
            except ray.exceptions.RayError as exc:
                self._last_error = _short(exc)
                log.error("ray actor failed to start", stage=self.stage, error=self._last_error)
                continue
            log.info("ray actor ready", stage=self.stage, **info)
            self._idle.append(actor)
            self._cond.notify_all()

    def wait_ready(self, timeout: float, stop: threading.Event | None = None) -> None:
        """Until one actor of the pool has loaded its model; WorkerDied when none can."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                self._collect_ready()
                if self._idle or self._lent:
                    return
                self._check_open(stop)
                if not self._starting:
                    raise WorkerDied(f"no {self.stage} actor could start on the Ray cluster: {self._last_error}")
                if time.monotonic() > deadline:
                    raise WorkerDied(
                        f"no {self.stage} actor started on the Ray cluster within {timeout:.0f} s; each asks for "
                        f"{self.need.cpus:g} CPU and {self.need.gpus:g} GPU, the cluster has "
                        f"{ray.cluster_resources()} (engine.ray.{self.stage})")
                self._cond.wait(POLL_SECONDS)

    def _check_open(self, stop: threading.Event | None) -> None:
        if self._closed or (stop is not None and stop.is_set()):
            raise ShuttingDown("stopping")

    def _take(self, deadline: float, stop: threading.Event | None) -> Any:
        with self._cond:
            while True:
                self._collect_ready()
                if self._idle:
                    self._lent += 1
                    return self._idle.pop()
                self._check_open(stop)
                if not self._starting and not self._lent:
                    raise WorkerDied(f"no {self.stage} actor is left on the Ray cluster: {self._last_error}")
                if time.monotonic() > deadline:
                    raise TransientError(f"no {self.stage} actor was free on the Ray cluster in time")
                self._cond.wait(POLL_SECONDS)

    def _give_back(self, actor: Any) -> None:
        with self._cond:
            self._lent -= 1
            if not self._closed and id(actor) not in self._gone:
                self._idle.append(actor)
            self._cond.notify_all()

    # -- calling
    def call(self, method: str, args: tuple[Any, ...], limit: float, stop: threading.Event | None = None) -> Any:
        """`method` of an idle actor with `args` (arrays and bytes go through the object store); its value, or the
        daemon's own error kinds: RejectedInput (quarantine), TransientError (retry later), ShuttingDown."""
        deadline = time.monotonic() + limit
        actor = self._take(deadline, stop)
        try:
            started = time.monotonic()
            refs = [ray.put(a) if isinstance(a, (bytes, np.ndarray, list)) else a for a in args]
            ref = getattr(actor, method).remote(*refs)
            outcome: Outcome = self._wait(actor, ref, deadline, stop)
            elapsed = time.monotonic() - started
        finally:
            self._give_back(actor)
        kind, value, work_s = outcome
        with self._cond:
            self.calls, self.call_s, self.work_s = self.calls + 1, self.call_s + elapsed, self.work_s + work_s
        if kind == "ok":
            return value
        if kind == "rejected":
            raise RejectedInput(*value)
        raise TransientError(f"{self.stage} on the Ray cluster failed: {value}")

    def _wait(self, actor: Any, ref: Any, deadline: float, stop: threading.Event | None) -> Outcome:
        while True:
            done, _ = ray.wait([ref], timeout=POLL_SECONDS)
            if done:
                try:
                    outcome: Outcome = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the actor died past its restarts and retries, ...
                    if isinstance(exc, ray.exceptions.ActorDiedError):
                        with self._cond:
                            self._gone.add(id(actor))
                            self._last_error = _short(exc)
                        log.error("ray actor lost for good", stage=self.stage, error=self._last_error)
                    raise WorkerDied(f"{self.stage} on the Ray cluster: {_short(exc)}") from None
                return outcome
            if self._closed or (stop is not None and stop.is_set()):
                _cancel(ref)
                raise ShuttingDown("stopping")
            if time.monotonic() > deadline:
                ray.kill(actor, no_restart=False)  # a hung actor: Ray starts it afresh
                raise WorkerDied(f"{self.stage} on the Ray cluster ran past its time limit; the actor was restarted")

    def close(self) -> None:
        if self.calls:
            log.info("ray pool stats", stage=self.stage, calls=self.calls, call_s=round(self.call_s / self.calls, 4),
                     work_s=round(self.work_s / self.calls, 4),
                     overhead_s=round((self.call_s - self.work_s) / self.calls, 4))
        with self._cond:
            self._closed = True
            actors, self._all, self._idle, self._starting = self._all, [], [], {}
            self._cond.notify_all()
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception as exc:  # the cluster may be gone already
                log.debug("ray actor not killed", stage=self.stage, error=str(exc))


class RaySeparator:
    def __init__(self, pool: ActorPool, limit: float) -> None:
        self.pool, self.limit = pool, limit

    def open(self) -> None:
        self.pool.wait_ready(START_SECONDS)

    def separate(self, src: Path, dst: Path, workdir: Path, stop: threading.Event | None = None) -> dict[str, Any]:
        wav, meta = self.pool.call("separate", (Path(src).read_bytes(), Path(src).suffix), self.limit, stop)
        with open(dst, "wb") as fh:  # the stage's temporary output: the item runner fsyncs and commits it
            fh.write(wav)
        return {"separated": bool(meta["separated"]), "chunks": meta.get("chunks"),
                "music_free_chunks": meta.get("music_free_chunks")}

    def close(self) -> None:
        pass


class RaySpeaker:
    def __init__(self, pool: ActorPool, limit: float) -> None:
        self.pool, self.limit = pool, limit
        pool.wait_ready(START_SECONDS)

    def embed(self, samples: np.ndarray, sr: int) -> np.ndarray:
        emb: np.ndarray = self.pool.call("embed", (np.ascontiguousarray(samples), sr), self.limit)
        return emb

    def embed_windows(self, samples: np.ndarray, sr: int, window_s: float = 1.6, hop_s: float = 0.2,
                      min_loud: float = 0.5) -> Windows:
        windows: Windows = self.pool.call("embed_windows", (np.ascontiguousarray(samples), sr, window_s, hop_s,
                                                             min_loud), self.limit)
        return windows


class RayTranscriber:
    def __init__(self, pool: ActorPool, limit: float) -> None:
        self.pool, self.limit = pool, limit

    def open(self) -> None:
        self.pool.wait_ready(START_SECONDS)

    def packed_pass(self, clips16k: list[np.ndarray], stop: threading.Event | None = None) -> list[PassResult]:
        results: list[PassResult] = self.pool.call("packed_pass", (list(clips16k),), self.limit, stop)
        return results

    def judge(self, samples: np.ndarray, sr: int, packed: Transcript | None, group_dnsmos: dict[str, float] | None,
              stop: threading.Event | None = None) -> tuple[Transcript, QualityReport]:
        verdict: tuple[Transcript, QualityReport] = self.pool.call(
            "judge", (np.ascontiguousarray(samples), sr, packed, group_dnsmos), self.limit, stop)
        return verdict

    def close(self) -> None:
        pass


class RayEngine:
    """Connects to the cluster (or starts a private Ray instance) and keeps one actor pool per heavy stage."""

    kind = "ray"

    def __init__(self, config: Config) -> None:
        if ray is None:
            raise ConfigError("engine.kind", ["engine.kind is ray but Ray is not installed in this environment: "
                                              "pip install 'ttsft-daemon[ray]' (scripts/install.sh does), or set "
                                              "engine.kind: local"])
        self.config = config
        self.cfg = config.engine.ray
        self.pools: dict[str, ActorPool] = {}
        self._connect()
        try:
            self._start_pools()
        except BaseException:
            self.close()
            raise

    def _connect(self) -> None:
        handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        common: dict[str, Any] = {"namespace": NAMESPACE, "log_to_driver": False, "logging_level": "warning"}
        try:
            if self.cfg.address:
                ray.init(address=self.cfg.address, **common)
            else:
                need = sum(p.cpus for p in self._pools_needed().values())
                ray.init(num_cpus=max(self.cfg.num_cpus or os.cpu_count() or 1, int(np.ceil(need))),
                         include_dashboard=False, **common)
        except ConnectionError as exc:
            raise TtsftError(f"cannot join the Ray cluster at engine.ray.address {self.cfg.address!r}: {exc}. "
                             "Start its head (ray start --head) or fix the address") from None
        finally:
            if threading.current_thread() is threading.main_thread():
                for sig, handler in handlers.items():  # the daemon's own handlers, whatever Ray installed
                    if handler is not None and signal.getsignal(sig) is not handler:
                        signal.signal(sig, handler)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        log.info("ray engine connected", address=self.cfg.address or "private instance", nodes=len(nodes),
                 resources={k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")})

    def _pools_needed(self) -> dict[str, RayPoolConfig]:
        c = self.config
        wanted = {"separate": c.separation.enabled, "speaker": c.speaker.enabled, "transcribe": True}
        return {stage: getattr(self.cfg, stage) for stage, on in wanted.items() if on}

    def _worker_config(self) -> Config:
        """The config the actors run with: the worker nodes' own model folder and Spleeter python when given."""
        c = self.config
        paths = dataclasses.replace(c.paths, models=self.cfg.models_dir or c.paths.models)
        sep = dataclasses.replace(c.separation, python=self.cfg.spleeter_python or c.separation.python)
        return dataclasses.replace(c, paths=paths, separation=sep)

    def _start_pools(self) -> None:
        nodes = max(1, len([n for n in ray.nodes() if n.get("Alive")]))
        worker_config = self._worker_config()  # inline (small): a restarted actor needs its arguments again
        thread_env = {name: os.environ.get(name) for name in THREAD_VARS}
        blas_threads = _blas()
        for stage, need in self._pools_needed().items():
            count = need.actors or nodes
            cls = ray.remote(ACTORS[stage]).options(
                num_cpus=need.cpus, num_gpus=need.gpus, max_restarts=self.cfg.actor_restarts,
                max_task_retries=self.cfg.task_retries, scheduling_strategy="SPREAD", max_concurrency=1)
            actors = [cls.remote(worker_config, thread_env, blas_threads) for _ in range(count)]
            self.pools[stage] = ActorPool(stage, actors, need)
            log.info("ray actor pool", stage=stage, actors=count, cpus=need.cpus, gpus=need.gpus)

    # -- the Engine interface
    def separator(self, config: Config, limit: float) -> LocalSeparator | RaySeparator:
        if "separate" not in self.pools:  # separation off: a plain decode, done here
            return LocalEngine().separator(config, limit)
        return RaySeparator(self.pools["separate"], limit)

    def speaker_encoder(self, config: Config, limit: float) -> RaySpeaker:
        return RaySpeaker(self.pools["speaker"], limit)

    def transcriber(self, config: Config, limit: float) -> RayTranscriber:
        return RayTranscriber(self.pools["transcribe"], limit)

    def threads(self, stage: str, configured: int) -> int:
        pool = self.pools.get(stage)
        return max(configured, pool.size) if pool is not None else configured

    def describe(self) -> dict[str, Any]:
        return {"engine": self.kind, "address": self.cfg.address,
                "pools": {name: pool.size for name, pool in self.pools.items()}}

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        self.pools = {}
        if ray is not None and ray.is_initialized():
            ray.shutdown()


def _blas(threads: int | None = None) -> int | None:
    """This process's BLAS threads (set to `threads` when given); None when threadpoolctl cannot tell."""
    try:
        import threadpoolctl
    except ImportError:
        return None
    if threads is not None:
        threadpoolctl.threadpool_limits(limits=threads, user_api="blas")
    counts = [int(i["num_threads"]) for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
    return max(counts) if counts else None


def _cancel(ref: Any) -> None:
    try:
        ray.cancel(ref)
    except Exception:  # not every kind of task can be cancelled; the actor finishes it and is then killed
        pass


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 1500 else text[:1500] + " ..."
