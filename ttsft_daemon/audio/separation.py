"""Vocal separation: drives the long-lived Spleeter worker process (`spleeter_worker.py`).

Spleeter lives in its own virtual environment (TF 2.12 and numpy 1.24 clash with the main one), so
the daemon talks to it over JSON lines on the worker's stdin/stdout. The worker loads the model once
and separates any number of files; this side restarts it when it has died, kills it when a request
runs past its time limit, and keeps the last lines of its stderr for error messages.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import subprocess
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import structlog

from ttsft_daemon.audio import media
from ttsft_daemon.errors import RejectedInput, ShuttingDown, TransientError, WorkerDied

log = structlog.get_logger(__name__)

WORKER_SCRIPT = Path(__file__).resolve().with_name("spleeter_worker.py")
SAMPLE_RATE = 44100
STDERR_LINES = 50
CROSSFADES = ("linear", "equal_power")
# Grace periods of close(): an idle worker exits at once on end of input; a busy one needs signals.
_EXIT_GRACE_SECONDS = 2.0
_TERM_GRACE_SECONDS = 5.0


class _Worker:
    """One spawned worker process with its pump threads: stdout lines to a queue, stderr to a ring."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        # A session of its own: a Ctrl-C meant for the daemon must not kill the worker mid-request;
        # the daemon stops it through close().
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, start_new_session=True, close_fds=True,
        )  # fmt: skip
        self.pid = self.proc.pid
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_LINES)
        self._tail_lock = threading.Lock()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._pumps = [
            threading.Thread(target=self._pump_stdout, args=(self.proc.stdout,), daemon=True,
                             name=f"spleeter-{self.pid}-stdout"),
            threading.Thread(target=self._pump_stderr, args=(self.proc.stderr,), daemon=True,
                             name=f"spleeter-{self.pid}-stderr"),
        ]
        for pump in self._pumps:
            pump.start()

    def _pump_stdout(self, stream: IO[bytes]) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put(None)

    def _pump_stderr(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self.remember(line)
                log.debug("spleeter worker", pid=self.pid, line=line)

    def remember(self, line: str) -> None:
        with self._tail_lock:
            self._stderr_tail.append(line)

    def stderr_tail(self) -> str:
        self._pumps[1].join(timeout=1.0)  # after an exit, let the last lines arrive
        with self._tail_lock:
            lines = list(self._stderr_tail)
        return "\n".join(lines) if lines else "(no output on stderr)"

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(message) + "\n").encode("utf-8"))
        self.proc.stdin.flush()

    def receive(self, deadline: float) -> dict[str, Any] | None:
        """The next protocol message; None at end of output; TimeoutError past `deadline`."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                raise TimeoutError from None
            if line is None:
                self.lines.put(None)  # stay at end of output for later readers
                return None
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                message = None
            if isinstance(message, dict):
                return message
            self.remember("stdout: " + line.decode("utf-8", "replace").rstrip())

    def exit_status(self) -> str:
        try:
            code = self.proc.wait(timeout=_TERM_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            return "still running"
        return f"exit status {code}" if code >= 0 else f"killed by signal {-code}"

    def stop(self) -> None:
        """End of input first (clean exit when idle), then SIGTERM, then SIGKILL."""
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        except OSError:
            pass
        for grace, signal_it in ((_EXIT_GRACE_SECONDS, self.proc.terminate),
                                 (_TERM_GRACE_SECONDS, self.proc.kill)):
            try:
                self.proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                signal_it()
        self.proc.wait()
        for pump in self._pumps:
            pump.join(timeout=2.0)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def kill(self) -> None:
        self.proc.kill()
        self.stop()


class SeparatorProcess:
    """A Spleeter 2-stem worker process, started once and reused for every recording.

    `level_dbfs` is the level the worker brings the input to before separating (Spleeter separates
    quiet input worse); None feeds the input as it is. Thread-safe: one request at a time per
    instance. `close()` may be called from another thread while a request runs; that request then
    raises ShuttingDown.
    """

    def __init__(
        self,
        python: Path,
        model_dir: Path,
        chunk_seconds: float,
        overlap_seconds: float,
        timeout: float,
        *,
        start_timeout: float = 300.0,
        crossfade: str = "linear",
        level_dbfs: float | None = -14.0,
        threads: int = 0,
        engine: str = "auto",
        music_gap_db: float | None = None,
    ) -> None:
        if crossfade not in CROSSFADES:
            raise ValueError(f"crossfade must be one of {CROSSFADES}, not {crossfade!r}")
        if chunk_seconds <= 0 or overlap_seconds < 0:
            raise ValueError("chunk_seconds must be > 0 and overlap_seconds >= 0")
        self.python = Path(python)
        self.model_dir = Path(model_dir)
        self.chunk_seconds = chunk_seconds
        self.overlap_seconds = overlap_seconds
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.crossfade = crossfade
        self.level_dbfs = level_dbfs
        self.threads = threads
        self.engine = engine
        self.music_gap_db = music_gap_db
        self._request_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._worker: _Worker | None = None
        self._closed = False
        self._ids = itertools.count(1)
        self.last_result: dict[str, Any] | None = None
        """The worker's answer to the last successful separate(): seconds, chunks, gain_db, elapsed, pid ..."""

    # -------------------------------------------------------------------------------- life cycle

    @property
    def pid(self) -> int | None:
        """Process id of the running worker, or None."""
        worker = self._worker
        return worker.pid if worker is not None and worker.alive else None

    def start(self) -> None:
        """Start the worker (no-op when it runs) and wait until it has loaded the model."""
        with self._request_lock:
            with self._state_lock:
                self._closed = False
            self._ensure_worker()

    def close(self) -> None:
        """Stop the worker (idempotent). A request in flight in another thread gets ShuttingDown."""
        with self._state_lock:
            self._closed = True
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()
            log.info("spleeter worker stopped", pid=worker.pid)

    def __enter__(self) -> SeparatorProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _ensure_worker(self) -> _Worker:
        with self._state_lock:
            if self._closed:
                raise ShuttingDown("the Spleeter worker was closed")
            worker = self._worker
        if worker is not None and worker.alive:
            return worker
        if worker is not None:
            log.warning("spleeter worker died; restarting", pid=worker.pid, status=worker.exit_status())
            worker.stop()
        worker = self._spawn()
        with self._state_lock:
            if self._closed:  # close() ran while the model loaded
                worker.stop()
                raise ShuttingDown("the Spleeter worker was closed")
            self._worker = worker
        return worker

    def _spawn(self) -> _Worker:
        argv = [str(self.python), str(WORKER_SCRIPT), str(self.model_dir), "--engine", self.engine,
                "--threads", str(self.threads)]
        try:
            worker = _Worker(argv, _worker_env())
        except OSError as exc:
            raise WorkerDied(f"cannot start the Spleeter worker with {self.python}: {exc}") from None
        deadline = time.monotonic() + self.start_timeout
        try:
            ready = worker.receive(deadline)
        except TimeoutError:
            worker.kill()
            self._forget(worker)
            raise WorkerDied(
                f"the Spleeter worker did not load its model within {self.start_timeout:.0f} s; "
                f"its stderr ends with:\n{worker.stderr_tail()}"
            ) from None
        if ready is None or not ready.get("ready"):
            reason = ready.get("error") if ready else worker.exit_status()
            worker.stop()
            raise WorkerDied(
                f"the Spleeter worker failed to start ({reason}); its stderr ends with:\n{worker.stderr_tail()}"
            )
        log.info("spleeter worker ready", pid=worker.pid, gpu=ready.get("gpu"), load_s=ready.get("load_seconds"))
        return worker

    # ---------------------------------------------------------------------------------- requests

    def ping(self) -> dict[str, Any]:
        """Health check: the worker's answer (pid, served, model_loads, gpu); starts it if needed."""
        return self._call({"op": "ping"}, timeout=min(self.timeout, 60.0))

    def separate(self, src_wav: Path, dst_wav: Path) -> None:
        """Write the vocal stem of `src_wav` (16-bit 44.1 kHz stereo WAV) to `dst_wav` (16-bit mono WAV).

        RejectedInput when the input is not such a WAV file; WorkerDied when the worker dies or runs
        past the time limit (it is killed, and the next call starts a new one).
        """
        request = {
            "op": "separate",
            "input": str(Path(src_wav).resolve()),
            "output": str(Path(dst_wav).resolve()),
            "chunk_seconds": self.chunk_seconds,
            "overlap_seconds": self.overlap_seconds,
            "crossfade": self.crossfade,
            "level_dbfs": self.level_dbfs,
            "music_gap_db": self.music_gap_db,
        }
        try:
            self.last_result = self._call(request, timeout=self.timeout)
        except BaseException:
            Path(dst_wav).unlink(missing_ok=True)
            raise
        if not Path(dst_wav).is_file():
            raise TransientError(f"the Spleeter worker reported success but wrote no {dst_wav}")

    def _call(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        with self._request_lock:
            worker = self._ensure_worker()
            request_id = next(self._ids)
            reply = self._exchange(worker, {"id": request_id, **request}, timeout)
        if reply.get("ok"):
            return reply
        error = str(reply.get("error", "no reason given"))
        if reply.get("kind") == "rejected":
            raise RejectedInput("vocal separation cannot read the decoded audio", error)
        raise TransientError(f"the Spleeter worker failed: {error}")

    def _exchange(self, worker: _Worker, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        try:
            worker.send(request)
            while True:
                reply = worker.receive(deadline)
                if reply is None:
                    break
                if reply.get("id") == request["id"]:
                    return reply
                worker.remember(f"stdout (stale reply): {json.dumps(reply)}")
        except TimeoutError:
            worker.kill()
            self._forget(worker)
            raise WorkerDied(
                f"the Spleeter worker (pid {worker.pid}) ran past the {timeout:.0f} s time limit and was killed"
            ) from None
        except OSError:  # broken pipe: it died before reading the request
            pass
        if self._closed:
            raise ShuttingDown("the Spleeter worker was stopped during a request")
        status = worker.exit_status()
        worker.stop()
        self._forget(worker)
        raise WorkerDied(
            f"the Spleeter worker (pid {worker.pid}) died during a request ({status}); "
            f"its stderr ends with:\n{worker.stderr_tail()}"
        )


    def _forget(self, worker: _Worker) -> None:
        with self._state_lock:
            if self._worker is worker:
                self._worker = None


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    # The worker runs another interpreter with its own site-packages: nothing of ours may leak in.
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"):
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def decode_and_separate(
    sep: SeparatorProcess | None, src: Path, dst_wav: Path, workdir: Path, ffmpeg_timeout: float
) -> None:
    """Decode `src` and write its voice to `dst_wav` as 16-bit mono 44.1 kHz WAV.

    With `sep` None (separation disabled) the audio is decoded straight to `dst_wav`; otherwise it is
    decoded to a temporary stereo WAV in `workdir`, separated, and the temporary removed.
    """
    if sep is None:
        media.decode_to_wav(src, dst_wav, SAMPLE_RATE, 1, ffmpeg_timeout)
        return
    workdir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{Path(dst_wav).stem}.", suffix=".stereo.wav", dir=workdir)
    os.close(fd)
    stereo = Path(name)
    try:
        media.decode_to_wav(src, stereo, SAMPLE_RATE, 2, ffmpeg_timeout)
        sep.separate(stereo, dst_wav)
    finally:
        stereo.unlink(missing_ok=True)
