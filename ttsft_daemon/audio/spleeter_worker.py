"""Spleeter 2-stem vocal separation served over JSON lines (runs in the Spleeter environment).

Run as ``.venv-spleeter/bin/python ttsft_daemon/audio/spleeter_worker.py MODEL_PATH``. This script imports
only the standard library, numpy and spleeter/tensorflow: never the ttsft_daemon package, whose
environment is incompatible (see DESIGN.md).

Protocol: one JSON object per line. Start-up prints ``{"ready": true, "pid", "gpu", ...}`` (or
``{"ready": false, "error"}``). Requests and answers:

* ``{"id", "op": "ping"}`` -> ``{"id", "ok": true, "pid", "served", "model_loads", "gpu"}``
* ``{"id", "input", "output", "chunk_seconds", "overlap_seconds"[, "crossfade", "level_dbfs"]}`` ->
  ``{"id", "ok": true, "seconds", "chunks", "input_dbfs", "gain_db", "elapsed", "pid", "served",
  "model_loads"}``
  or ``{"id", "ok": false, "kind": "rejected" | "failed" | "protocol", "error"}``.

``input`` is a 16-bit PCM 44100 Hz WAV (stereo; mono is duplicated). ``output`` receives the vocal
stem, 16-bit PCM mono 44100 Hz, written in place at exactly that path (the caller renames it). The
input is read in chunks of ``chunk_seconds`` extended by ``overlap_seconds`` on each side; adjacent
chunks are cross-faded over their shared ``2 * overlap_seconds``, so memory does not grow with the
input's length. Before separating, one gain brings the non-silent part of the input to
``level_dbfs`` (default -14; null: no gain), and is undone on the vocals. End of input (stdin
closed) ends the process with status 0.

Engines (``--engine``): ``onnx`` runs Spleeter's two U-Nets in ONNX Runtime (``spleeter_onnx.py``, the
export ``MODEL_PATH/2stems.onnx`` made by scripts/export_spleeter_onnx.py) with the STFT, masks and
inverse STFT in numpy: the same output to float rounding for less than half the CPU; ``tf`` is
TensorFlow; ``auto`` (default) takes onnx where the export and onnxruntime are there, else tf.

The tf model is Spleeter's own graph (its ``EstimatorSpecBuilder``) restored once into one persistent
TF session. ``Separator.separate`` would rebuild the graph and re-read the checkpoint through a TF
Estimator on every call (~2 s per chunk on 2 CPU cores); its results are bit-identical.
"""

from __future__ import annotations

import os
import sys

# Running this file as a script puts ttsft_daemon/audio/ first on sys.path, where the package's modules
# (config.py, errors.py ...) would shadow libraries of the same name: drop it before importing more.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import ctypes  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
import wave  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import IO, Any, Protocol  # noqa: E402

import numpy as np  # noqa: E402

SAMPLE_RATE = 44100
SAMPLE_WIDTH = 2
# Spleeter's STFT frame is 4096 samples: shorter chunks are zero-padded to two frames (and cropped).
MIN_MODEL_FRAMES = 8192
CROSSFADES = ("linear", "equal_power")
DEFAULT_CROSSFADE = "linear"
DEFAULT_LEVEL_DBFS = -14.0


class BadInput(Exception):
    """The input file can never be separated (not a WAV, wrong format, no samples)."""


class BadRequest(Exception):
    """The request line is not a valid request."""


# ------------------------------------------------------------------------------------ protocol I/O


def take_over_stdout() -> IO[str]:
    """Keep the real stdout for protocol lines; everything else printing to fd 1 goes to stderr.

    TensorFlow and its C++ runtime write to fd 1 directly, which would corrupt the protocol.
    """
    protocol = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return protocol


def send(out: IO[str], message: dict[str, Any]) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def log(message: str) -> None:
    print(f"spleeter_worker[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ memory
# glibc raises its mmap threshold each time a large mmapped block is freed (up to 32 MB), after which
# TensorFlow's chunk-sized tensors come from the heap and fragment it: the peak crept up with every
# chunk (10 minutes: 1642 MB, against 1468 MB for 1). A fixed threshold keeps large blocks in mmap,
# given back to the system when freed (10 minutes: 1519 MB; see also inter_op_parallelism_threads).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
PINNED_THRESHOLD_BYTES = 1 << 20


def pin_malloc_thresholds() -> bool:
    """Fix glibc's mmap/trim thresholds (disables their growth); False where there is no glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, PINNED_THRESHOLD_BYTES)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, PINNED_THRESHOLD_BYTES)
        )
    except (OSError, AttributeError):
        return False


# ------------------------------------------------------------------------------------------ model


def require_model(model_path: str) -> None:
    """Spleeter downloads a missing model from the network; the daemon must never do that."""
    folder = os.path.join(model_path, "2stems")
    missing = [name for name in (".probe", "checkpoint") if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise RuntimeError(
            f"the Spleeter 2stems model is not installed in {folder} (missing {', '.join(missing)}); "
            "run scripts/install.sh or set separation.model_dir"
        )


class StemModel(Protocol):
    def vocals(self, stereo: np.ndarray) -> np.ndarray: ...


class LoadedModel(StemModel, Protocol):
    gpu: bool

    def close(self) -> None: ...


ENGINES = ("auto", "onnx", "tf")
ONNX_MODEL_FILE = "2stems.onnx"  # spleeter_onnx.MODEL_FILE


def load_sibling(name: str) -> Any:
    """A module of this folder by path (the folder itself is off sys.path, see the top)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(_HERE, f"{name}.py"))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {name} from {_HERE}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_model(model_path: str, engine: str, threads: int) -> tuple[LoadedModel, str]:
    """(model, engine used). auto: onnx where the export and onnxruntime are there, else tf."""
    onnx_file = os.path.join(model_path, ONNX_MODEL_FILE)
    if engine == "auto":
        usable = os.path.isfile(onnx_file) and importlib.util.find_spec("onnxruntime") is not None
        engine = "onnx" if usable else "tf"
    if engine == "onnx":
        model: LoadedModel = load_sibling("spleeter_onnx").OnnxVocalModel(onnx_file, threads=threads)
        return model, engine
    return VocalModel(model_path, threads), engine


class VocalModel:
    """Spleeter 2stems restored once into a persistent session; `vocals()` separates one chunk."""

    def __init__(self, model_path: str, threads: int = 0) -> None:
        """`threads`: TensorFlow's intra-op threads (0: one per core, TensorFlow's default)."""
        require_model(model_path)
        os.environ["MODEL_PATH"] = model_path
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf
        from spleeter.model import EstimatorSpecBuilder, InputProviderFactory
        from spleeter.model.provider import ModelProvider
        from spleeter.separator import Separator

        tf.get_logger().setLevel("ERROR")
        separator = Separator("spleeter:2stems", multiprocess=False)
        params = dict(separator._params)
        params["model_dir"] = ModelProvider.default().get(params["model_dir"])
        params["MWF"] = False
        self.gpu = bool(tf.config.list_physical_devices("GPU"))
        self._graph = tf.Graph()
        with self._graph.as_default():
            self._features = InputProviderFactory.get(params).get_input_dict_placeholders()
            outputs = EstimatorSpecBuilder(self._features, params).outputs
            self._vocals = outputs["vocals"]
            session_config = tf.compat.v1.ConfigProto()
            session_config.gpu_options.allow_growth = True
            # One op at a time (each still uses every core): the peak then no longer depends on how
            # the two stems' U-Nets happen to interleave. Measured on 2 cores: 5 minutes peaked at
            # 1447-1449 MB (vs 1470-1518 MB), same speed.
            session_config.inter_op_parallelism_threads = 1
            session_config.intra_op_parallelism_threads = threads
            self._session = tf.compat.v1.Session(graph=self._graph, config=session_config)
            checkpoint = tf.train.latest_checkpoint(params["model_dir"])
            if checkpoint is None:
                raise RuntimeError(f"no Spleeter checkpoint in {params['model_dir']}")
            tf.compat.v1.train.Saver().restore(self._session, checkpoint)
        self._graph.finalize()

    def vocals(self, stereo: np.ndarray) -> np.ndarray:
        """Vocal stem of a float32 [frames, 2] chunk, as float32 mono (mean of the two channels)."""
        frames = len(stereo)
        if frames < MIN_MODEL_FRAMES:
            stereo = np.concatenate([stereo, np.zeros((MIN_MODEL_FRAMES - frames, 2), np.float32)])
        feed = {self._features["waveform"]: stereo, self._features["audio_id"]: ""}
        stem = np.asarray(self._session.run(self._vocals, feed_dict=feed))
        mono: np.ndarray = stem[:frames].mean(axis=1, dtype=np.float32)
        return mono

    def close(self) -> None:
        self._session.close()


# -------------------------------------------------------------------------------------- chunking


@dataclass(frozen=True)
class Chunk:
    """Frames [start, stop) fed to the model; [start, emit_until) is final once the fade is applied."""

    start: int
    stop: int
    emit_until: int


def plan_chunks(total: int, chunk: int, overlap: int) -> list[Chunk]:
    """Chunks of `chunk` frames extended by `overlap` each side, so neighbours share 2 * overlap.

    A remainder shorter than the shared region is folded into the last chunk, so that no chunk
    is (almost) all overlap.
    """
    n = max(1, math.ceil(total / chunk))
    if n > 1 and total - (n - 1) * chunk <= 2 * overlap:
        n -= 1
    plan = []
    for k in range(n):
        start = max(0, k * chunk - overlap)
        stop = total if k == n - 1 else min(total, (k + 1) * chunk + overlap)
        emit_until = stop if k == n - 1 else (k + 1) * chunk - overlap
        plan.append(Chunk(start, stop, emit_until))
    return plan


def fade_in_curve(length: int, kind: str) -> np.ndarray:
    """Weights 0 -> 1 of the incoming chunk; the outgoing one gets the complement (linear) or the
    quadrature (equal power)."""
    ramp = (np.arange(length, dtype=np.float64) + 0.5) / max(length, 1)
    if kind == "equal_power":
        return np.sin(0.5 * np.pi * ramp).astype(np.float32)
    return ramp.astype(np.float32)


def cross_fade(outgoing: np.ndarray, incoming: np.ndarray, kind: str) -> np.ndarray:
    fade_in = fade_in_curve(len(outgoing), kind)
    if kind == "equal_power":
        fade_out = np.sqrt(np.clip(1.0 - fade_in**2, 0.0, 1.0))
    else:
        fade_out = 1.0 - fade_in
    mixed: np.ndarray = outgoing * fade_out + incoming * fade_in
    return mixed


def separated_pieces(
    model: StemModel, reader: wave.Wave_read, plan: list[Chunk], crossfade: str, gain: float,
    music_gap_db: float | None = None, skipped: list[int] | None = None,
) -> Iterator[np.ndarray]:
    """Final vocal samples in order: each chunk's own part, then the cross-faded shared part.

    The model sees the input times `gain`; the vocals are scaled back to the input's level. With `music_gap_db`,
    a chunk that `music_free()` finds without music is passed through (its channels' mean) instead of
    separated, and its index is appended to `skipped`.
    """
    carry: np.ndarray = np.zeros(0, dtype=np.float32)  # previous chunk's output over its shared tail
    for index, chunk in enumerate(plan):
        stereo = read_stereo(reader, chunk.start, chunk.stop) * np.float32(gain)
        vocals: np.ndarray
        if music_gap_db is not None and music_free(stereo, music_gap_db):
            vocals = stereo.mean(axis=1, dtype=np.float32) / np.float32(gain)
            if skipped is not None:
                skipped.append(index)
        else:
            vocals = model.vocals(stereo) / np.float32(gain)
        shared = len(carry)
        if shared:
            yield cross_fade(carry, vocals[:shared], crossfade)
        yield vocals[shared : chunk.emit_until - chunk.start]
        carry = vocals[chunk.emit_until - chunk.start :]
    if len(carry):
        raise AssertionError("the last chunk left samples behind")


# ------------------------------------------------------------------------------- music-free chunks
# Speech alone falls silent between phrases; music under it fills those gaps. A chunk is taken as music-free
# when nearly every few seconds of it hold a moment at least `gap_db` below its loud part (or true silence).
# Measured on 4 s windows: clean real speech (Allison's prompts) and Piper speech 100 % of windows, the same over
# real game music 41 % at 20 dB below the speech and 0 % at 12 and 6 dB, over the demo's synthetic bed at 12 dB
# 27-43 %. Noisy recordings (a noise floor less than gap_db down) are separated as before.
GAP_FRAME_SECONDS = 0.02
GAP_SMOOTH_FRAMES = 5  # the quiet moment must last ~0.1 s
GAP_WINDOW_SECONDS = 4.0
GAP_HOP_SECONDS = 1.0
GAP_SILENCE_DBFS = -60.0
MUSIC_FREE_SHARE = 0.95


def music_free(stereo: np.ndarray, gap_db: float) -> bool:
    """Whether a chunk ([frames, 2] float at SAMPLE_RATE) sounds like speech without music under it."""
    return gap_share(frame_powers(stereo.mean(axis=1, dtype=np.float32), SAMPLE_RATE), gap_db) >= MUSIC_FREE_SHARE


def frame_powers(mono: np.ndarray, rate: int) -> np.ndarray:
    """Mean square of each whole GAP_FRAME_SECONDS frame of mono audio."""
    frame = int(GAP_FRAME_SECONDS * rate)
    n = len(mono) // frame
    power: np.ndarray = np.square(mono[: n * frame].reshape(n, frame), dtype=np.float64).mean(axis=1)
    return power


def smoothed_levels(power: np.ndarray) -> np.ndarray:
    """dB of frame powers averaged over GAP_SMOOTH_FRAMES (a quiet moment must last ~0.1 s)."""
    smooth = np.convolve(power, np.ones(GAP_SMOOTH_FRAMES) / GAP_SMOOTH_FRAMES, mode="same")
    return 10.0 * np.log10(np.maximum(smooth, 1e-12))


def gap_share(power: np.ndarray, gap_db: float) -> float:
    """Share of the 4 s windows (1 s hop) of `power` (frame_powers) that hold a ~0.1 s moment `gap_db` below
    their loud part, or true silence; 1.0 for audio shorter than one frame."""
    n = len(power)
    if n == 0:
        return 1.0
    level = smoothed_levels(power)
    width = int(GAP_WINDOW_SECONDS / GAP_FRAME_SECONDS)
    hop = int(GAP_HOP_SECONDS / GAP_FRAME_SECONDS)
    gaps = []
    for start in range(0, max(1, n - width + 1), hop):
        window = level[start : start + width]
        loud, quiet = float(np.percentile(window, 95)), float(window.min())
        gaps.append(loud < GAP_SILENCE_DBFS or quiet < GAP_SILENCE_DBFS or loud - quiet >= gap_db)
    return float(np.mean(gaps))


# -------------------------------------------------------------------------------- input level
# Spleeter was trained on mastered music and separates quiet input worse: a recording at -35 dBFS
# lost 2-3 dB of SI-SDR improvement against the same recording at -20 dBFS. The input is therefore
# brought to a fixed level of its non-silent parts (one global gain, so chunks stay consistent).
LEVEL_FRAME = SAMPLE_RATE // 10
LEVEL_BLOCK = 100 * LEVEL_FRAME
ACTIVE_BELOW_LOUDEST_DB = 50.0
DIGITAL_SILENCE = 1e-10  # mean square of a frame below this is silence whatever the loudest frame
MAX_GAIN_DB = 40.0


def frame_energies(reader: wave.Wave_read) -> np.ndarray:
    """Mean square of every 100 ms frame (both channels), read block by block."""
    total = reader.getnframes()
    energies = []
    for start in range(0, total, LEVEL_BLOCK):
        block = read_stereo(reader, start, min(total, start + LEVEL_BLOCK)).astype(np.float64)
        n_frames = math.ceil(len(block) / LEVEL_FRAME)
        squares = np.square(block).mean(axis=1)
        padded = np.concatenate([squares, np.full(n_frames * LEVEL_FRAME - len(squares), np.nan)])
        energies.append(np.nanmean(padded.reshape(n_frames, LEVEL_FRAME), axis=1))
    return np.concatenate(energies) if energies else np.zeros(0)


def active_level_dbfs(energies: np.ndarray) -> float | None:
    """RMS level of the frames within ACTIVE_BELOW_LOUDEST_DB of the loudest; None for silence."""
    if not len(energies) or energies.max() < DIGITAL_SILENCE:
        return None
    floor = max(DIGITAL_SILENCE, energies.max() * 10 ** (-ACTIVE_BELOW_LOUDEST_DB / 10))
    return float(10 * np.log10(energies[energies >= floor].mean()))


def level_gain_db(level_dbfs: float | None, target_dbfs: float | None) -> float:
    if level_dbfs is None or target_dbfs is None:
        return 0.0
    return float(np.clip(target_dbfs - level_dbfs, -MAX_GAIN_DB, MAX_GAIN_DB))


# ---------------------------------------------------------------------------------------- WAV I/O


def open_input(path: str) -> wave.Wave_read:
    try:
        reader = wave.open(path, "rb")
    except FileNotFoundError:
        raise BadInput(f"input not found: {path}") from None
    except (wave.Error, EOFError) as exc:
        raise BadInput(f"not a PCM WAV file: {exc}") from None
    except OSError as exc:
        raise BadInput(f"cannot read input: {exc}") from None
    try:
        check_format(reader)
    except BadInput:
        reader.close()
        raise
    return reader


def check_format(reader: wave.Wave_read) -> None:
    if reader.getsampwidth() != SAMPLE_WIDTH:
        raise BadInput(f"expected 16-bit PCM, got {8 * reader.getsampwidth()}-bit samples")
    if reader.getframerate() != SAMPLE_RATE:
        raise BadInput(f"expected {SAMPLE_RATE} Hz, got {reader.getframerate()} Hz")
    if reader.getnchannels() not in (1, 2):
        raise BadInput(f"expected stereo (or mono), got {reader.getnchannels()} channels")
    if reader.getnframes() == 0:
        raise BadInput("the WAV file holds no audio samples")


def read_stereo(reader: wave.Wave_read, start: int, stop: int) -> np.ndarray:
    reader.setpos(start)
    raw = reader.readframes(stop - start)
    channels = reader.getnchannels()
    samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    frames = samples.reshape(-1, channels)
    if len(frames) != stop - start:
        raise BadInput(f"WAV file is truncated: expected {stop} frames, it ends at {start + len(frames)}")
    if channels == 1:
        frames = np.repeat(frames, 2, axis=1)
    return frames


def to_pcm16(samples: np.ndarray) -> bytes:
    scaled = np.clip(np.rint(samples * 32767.0), -32768, 32767).astype("<i2")
    return scaled.tobytes()


def open_output(path: str) -> wave.Wave_write:
    writer = wave.open(path, "wb")
    writer.setnchannels(1)
    writer.setsampwidth(SAMPLE_WIDTH)
    writer.setframerate(SAMPLE_RATE)
    return writer


# --------------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class SeparateRequest:
    input: str
    output: str
    chunk_seconds: float
    overlap_seconds: float
    crossfade: str
    level_dbfs: float | None
    music_gap_db: float | None = None  # None: separate every chunk


def parse_separate(request: dict[str, Any]) -> SeparateRequest:
    try:
        parsed = SeparateRequest(
            input=str(request["input"]),
            output=str(request["output"]),
            chunk_seconds=float(request["chunk_seconds"]),
            overlap_seconds=float(request.get("overlap_seconds", 0.0)),
            crossfade=str(request.get("crossfade", DEFAULT_CROSSFADE)),
            level_dbfs=optional_float(request.get("level_dbfs", DEFAULT_LEVEL_DBFS)),
            music_gap_db=optional_float(request.get("music_gap_db")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BadRequest(f"bad separate request: {exc!r}") from None
    if parsed.chunk_seconds <= 0 or parsed.overlap_seconds < 0:
        raise BadRequest("chunk_seconds must be > 0 and overlap_seconds >= 0")
    if parsed.crossfade not in CROSSFADES:
        raise BadRequest(f"crossfade must be one of {CROSSFADES}, not {parsed.crossfade!r}")
    return parsed


def optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


class Worker:
    def __init__(self, model: LoadedModel, out: IO[str], engine: str = "tf") -> None:
        self.model = model
        self.engine = engine
        self.out = out
        self.served = 0
        self.parent = os.getppid()

    def identity(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "served": self.served, "model_loads": 1, "gpu": self.model.gpu,
                "engine": self.engine}

    def handle_line(self, line: str) -> None:
        request_id: Any = None
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise BadRequest("a request must be a JSON object")
            request_id = request.get("id")
            answer = self.dispatch(request)
            send(self.out, {"id": request_id, "ok": True, **answer, **self.identity()})
        except (BadRequest, json.JSONDecodeError) as exc:
            send(self.out, {"id": request_id, "ok": False, "kind": "protocol", "error": str(exc)})
        except BadInput as exc:
            send(self.out, {"id": request_id, "ok": False, "kind": "rejected", "error": str(exc)})
        except Exception as exc:  # the worker must outlive one failed request
            log(f"request {request_id!r} failed: {exc!r}")
            send(self.out, {"id": request_id, "ok": False, "kind": "failed", "error": repr(exc)})

    def dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op", "separate")
        if op == "ping":
            return {"pong": True}
        if op != "separate":
            raise BadRequest(f"unknown op {op!r}")
        result = self.separate(parse_separate(request))
        self.served += 1
        return result

    def separate(self, req: SeparateRequest) -> dict[str, Any]:
        began = time.monotonic()
        with open_input(req.input) as reader:
            total = reader.getnframes()
            plan = plan_chunks(
                total, max(1, round(req.chunk_seconds * SAMPLE_RATE)), round(req.overlap_seconds * SAMPLE_RATE)
            )
            level = active_level_dbfs(frame_energies(reader)) if req.level_dbfs is not None else None
            gain_db = level_gain_db(level, req.level_dbfs)
            skipped: list[int] = []
            try:
                with open_output(req.output) as writer:
                    for piece in separated_pieces(self.model, reader, plan, req.crossfade, 10 ** (gain_db / 20),
                                                  req.music_gap_db, skipped):
                        writer.writeframes(to_pcm16(piece))
                        self.stop_if_orphaned()
            except BaseException:
                remove_quietly(req.output)
                raise
        return {
            "seconds": total / SAMPLE_RATE,
            "chunks": len(plan),
            "music_free_chunks": len(skipped),
            "input_dbfs": None if level is None else round(level, 2),
            "gain_db": round(gain_db, 2),
            "elapsed": round(time.monotonic() - began, 3),
        }

    def stop_if_orphaned(self) -> None:
        """A daemon killed mid-request cannot read the answer: stop instead of finishing for nobody."""
        if os.getppid() != self.parent:
            log("parent process is gone; exiting")
            raise SystemExit(3)


def remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# ------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("model_path", help="Spleeter MODEL_PATH (the folder holding 2stems/)")
    parser.add_argument("--engine", choices=ENGINES, default="auto",
                        help="onnx: U-Nets in ONNX Runtime (MODEL_PATH/2stems.onnx); tf: TensorFlow; "
                        "auto: onnx where its export and onnxruntime are installed, else tf")
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op threads of ONNX Runtime or TensorFlow (0: the library's default, one per "
                        "core; 1 measured the least CPU per audio second on a busy 2-core machine)")
    args = parser.parse_args(argv)
    out = take_over_stdout()
    if not pin_malloc_thresholds():
        log("could not pin malloc thresholds (not glibc?): memory may grow with input length")
    began = time.monotonic()
    try:
        model, engine = load_model(args.model_path, args.engine, max(0, args.threads))
    except Exception as exc:
        log(f"model load failed: {exc!r}")
        send(out, {"ready": False, "error": f"cannot load Spleeter 2stems: {type(exc).__name__}: {exc}"})
        return 2
    worker = Worker(model, out, engine)
    send(out, {"ready": True, "load_seconds": round(time.monotonic() - began, 3), **worker.identity()})
    log(f"ready (engine={engine}, gpu={model.gpu})")
    for line in sys.stdin:
        if line.strip():
            worker.handle_line(line)
    model.close()
    log("end of input; exiting")
    return 0


if __name__ == "__main__":
    sys.exit(main())
