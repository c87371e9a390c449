"""Where the heavy work of the data stages runs: in the daemon's own process (`local`) or on a Ray cluster (`ray`).

The stages keep everything that touches the state root: claims, commits, the job record, the speaker decision
state, the packing of clips into passes. Only the model work goes through the engine: decoding and separating a
recording (separate), embedding a clip (speaker), a packed Whisper pass and transcribing + judging a clip
(transcribe). Each stage instance (one per worker thread) asks the engine for its *worker* once, in `open()`, and
calls it per item; a worker of the local engine holds the models in this process (as the stages did themselves),
one of the Ray engine is a thin client of an actor pool on the cluster that ships the input to an actor through
Ray's object store and hands the result back, so the stage writes its temporary outputs and the item runner commits
them exactly as with the local engine.

The daemon starts the engine of its config (`start`) before its worker threads and stops it after them (`stop`);
a stage built without a started engine (the one-shot tools, tests building stages directly) gets a local one.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ttsft_daemon.config import Config
from ttsft_daemon.text.quality import QualityReport
from ttsft_daemon.text.transcription import Transcript

# A clip's share of a packed pass: its Transcript, or why it must be transcribed alone; and its DNSMOS group score.
PassResult = tuple[Transcript | str, dict[str, float] | None]
Windows = list[tuple[float, float, np.ndarray]]


class SeparateWorker(Protocol):
    def open(self) -> None:
        """Load the model (start the Spleeter worker process, or the remote actors)."""

    def separate(self, src: Path, dst: Path, workdir: Path, stop: threading.Event | None = None) -> dict[str, Any]:
        """Write the voice of recording `src` to `dst` (16-bit mono 44.1 kHz WAV); metadata: {"separated": bool}."""

    def close(self) -> None: ...


class SpeakerWorker(Protocol):
    def embed(self, samples: np.ndarray, sr: int) -> np.ndarray:
        """The clip's 256-d unit embedding (audio/speaker.py's SpeakerEncoder.embed)."""

    def embed_windows(self, samples: np.ndarray, sr: int, window_s: float = 1.6, hop_s: float = 0.2,
                      min_loud: float = 0.5) -> Windows:
        """Embeddings of windows of the clip (SpeakerEncoder.embed_windows)."""


class TranscribeWorker(Protocol):
    def open(self) -> None: ...

    def packed_pass(self, clips16k: list[np.ndarray], stop: threading.Event | None = None) -> list[PassResult]:
        """One Whisper pass over clips (mono float32, 16 kHz) joined with gaps, and their DNSMOS group scores."""

    def judge(self, samples: np.ndarray, sr: int, packed: Transcript | None, group_dnsmos: dict[str, float] | None,
              stop: threading.Event | None = None) -> tuple[Transcript, QualityReport]:
        """The clip's transcript (`packed` when given, else Whisper on the clip alone) and the quality gate's
        verdict on it."""

    def close(self) -> None: ...


class Engine(Protocol):
    kind: str

    def separator(self, config: Config, limit: float) -> SeparateWorker: ...

    def speaker_encoder(self, config: Config, limit: float) -> SpeakerWorker: ...

    def transcriber(self, config: Config, limit: float) -> TranscribeWorker: ...

    def threads(self, stage: str, configured: int) -> int:
        """Worker threads for `stage`: a remote pool needs one waiting thread per actor to keep it busy."""

    def describe(self) -> dict[str, Any]:
        """What the engine runs on (for the log)."""

    def close(self) -> None: ...


_lock = threading.Lock()
_engine: Engine | None = None


def start(config: Config) -> Engine:
    """Start the engine of `config` (connects to the Ray cluster for `ray`) and make it the current one."""
    global _engine
    stop()
    engine: Engine
    if config.engine.kind == "ray":
        from ttsft_daemon.engine.ray_engine import RayEngine

        engine = RayEngine(config)
    else:
        from ttsft_daemon.engine.local import LocalEngine

        engine = LocalEngine()
    with _lock:
        _engine = engine
    return engine


def stop() -> None:
    """Stop the current engine (its actors end; work in flight is left to the next start)."""
    global _engine
    with _lock:
        engine, _engine = _engine, None
    if engine is not None:
        engine.close()


def current() -> Engine:
    """The started engine, else a local one."""
    with _lock:
        engine = _engine
    if engine is not None:
        return engine
    from ttsft_daemon.engine.local import LocalEngine

    return LocalEngine()
