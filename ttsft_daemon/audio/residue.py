"""Music residue removal: RNNoise over Spleeter's vocal stem.

Spleeter's 2-stem model leaves the music ~18 dB under the speech in a 6 dB mix, not gone: the pauses still hold
it, DNSMOS' background score sees it, and the quality gate rejects half of such clips (bench/RESULTS.md §7).
RNNoise (Xiph's recurrent noise suppressor, trained with music among its noises) run over the stem takes the
residue down by another ~20 dB while the speech score hardly moves. It runs at 48 kHz in 10 ms frames and keeps a
state, so a whole stem is streamed through one instance: the stem is read in blocks, resampled to 48 kHz, denoised
frame by frame, resampled back and written, in constant memory whatever the recording's length.

Where Spleeter took the music out whole, the stem's pauses are already near silence and RNNoise has nothing to
remove; `pause_gap_db()` measures how far under the speech the pauses lie, so the step can be skipped
(separation.residue_skip_gap_db): RNNoise costs ~0.06 CPU-s per second of audio here, as much as Spleeter.

The library is the one the `pyrnnoise` wheel bundles (librnnoise.so, C, no dependencies): it is loaded with
ctypes, the package's Python side (and its dependencies) is never imported.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import soxr

from ttsft_daemon.audio.spleeter_worker import GAP_FRAME_SECONDS, frame_powers, smoothed_levels

RNNOISE_RATE = 48000
BLOCK_SECONDS = 10.0
_PCM_SCALE = 32768.0  # RNNoise works on float samples at 16-bit scale

# A stem's pauses: its quietest tenth of 0.1 s moments (speech with pauses spends 15-30 % of its time in them).
PAUSE_PERCENTILE = 10.0
SPEECH_PERCENTILE = 95.0

__all__ = ["ResidueRemover", "find_library", "library_missing", "pause_gap_db"]


def find_library(explicit: Path | None = None) -> Path | None:
    """librnnoise: `explicit`, else the copy inside the installed `pyrnnoise` package (not imported)."""
    if explicit is not None:
        return explicit if explicit.is_file() else None
    spec = importlib.util.find_spec("pyrnnoise")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(folder) / "librnnoise.so"
        if candidate.is_file():
            return candidate
    return None


def library_missing(explicit: Path | None = None) -> str | None:
    """Why the residue remover cannot run here, or None when it can."""
    if find_library(explicit) is None:
        where = str(explicit) if explicit is not None else "the pyrnnoise package"
        return f"librnnoise not found ({where}; pip install --no-deps pyrnnoise, or set separation.residue_library)"
    return None


def pause_gap_db(stem: Path) -> float:
    """How far a mono 16-bit WAV's pauses lie under its speech, in dB: its loud moments (95th percentile of ~0.1 s
    levels) over its quiet tenth, read block by block (constant memory). Where Spleeter took the music out whole
    the pauses are near silence (Piper speech over the demo's synthetic bed: 60-63 dB); music left in fills them
    (real speech over real game music at 20-6 dB below it: 30-33 dB; bench/RESULTS.md §1)."""
    with wave.open(os.fspath(stem), "rb") as reader:
        if reader.getnchannels() != 1 or reader.getsampwidth() != 2:
            raise ValueError(f"{stem.name}: a mono 16-bit WAV is expected")
        rate = reader.getframerate()
        block = int(GAP_FRAME_SECONDS * rate) * max(1, int(BLOCK_SECONDS / GAP_FRAME_SECONDS))
        powers = []
        while raw := reader.readframes(block):
            powers.append(frame_powers(np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0, rate))
    power = np.concatenate(powers) if powers else np.zeros(0)
    if len(power) == 0:
        return float("inf")
    levels = smoothed_levels(power)
    return float(np.percentile(levels, SPEECH_PERCENTILE) - np.percentile(levels, PAUSE_PERCENTILE))


class _RNNoise:
    """One RNNoise state (it carries context from frame to frame)."""

    _libs: ClassVar[dict[str, ctypes.CDLL]] = {}

    def __init__(self, library: Path) -> None:
        lib = self._libs.get(str(library))
        if lib is None:
            lib = ctypes.CDLL(os.fspath(library))
            lib.rnnoise_create.restype = ctypes.c_void_p
            lib.rnnoise_create.argtypes = [ctypes.c_void_p]
            lib.rnnoise_destroy.argtypes = [ctypes.c_void_p]
            lib.rnnoise_get_frame_size.restype = ctypes.c_int
            lib.rnnoise_process_frame.restype = ctypes.c_float
            lib.rnnoise_process_frame.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float),
                                                  ctypes.POINTER(ctypes.c_float)]
            self._libs[str(library)] = lib
        self.lib = lib
        self.frame = int(lib.rnnoise_get_frame_size())
        self.state = lib.rnnoise_create(None)
        if not self.state:
            raise MemoryError("rnnoise_create failed")
        self._in = np.zeros(self.frame, dtype=np.float32)
        self._out = np.zeros(self.frame, dtype=np.float32)
        self._in_ptr = self._in.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        self._out_ptr = self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Denoise whole frames of 48 kHz float audio (len a multiple of the frame size)."""
        out = np.empty_like(samples)
        step = self.frame
        for i in range(0, len(samples), step):
            self._in[:] = samples[i : i + step] * _PCM_SCALE
            self.lib.rnnoise_process_frame(self.state, self._out_ptr, self._in_ptr)
            out[i : i + step] = self._out / _PCM_SCALE
        return out

    def close(self) -> None:
        if self.state:
            self.lib.rnnoise_destroy(self.state)
            self.state = None


class ResidueRemover:
    """Streams a mono 16-bit WAV through RNNoise into another of the same rate and length, time-aligned. `keep`
    is the share of the input mixed back into RNNoise's output (0: RNNoise alone): it bounds how far anything is
    taken down (to 20*log10(keep) dB) and gives back the soft word edges RNNoise thins."""

    def __init__(self, library: Path, keep: float = 0.0) -> None:
        if not 0.0 <= keep < 1.0:
            raise ValueError(f"keep must be in [0, 1): {keep}")
        self.library = library
        self.keep = keep

    def run(self, src: Path, dst: Path) -> None:
        with wave.open(os.fspath(src), "rb") as reader:
            if reader.getnchannels() != 1 or reader.getsampwidth() != 2:
                raise ValueError(f"{src.name}: a mono 16-bit WAV is expected")
            rate, total = reader.getframerate(), reader.getnframes()
            with wave.open(os.fspath(dst), "wb") as writer:
                writer.setnchannels(1)
                writer.setsampwidth(2)
                writer.setframerate(rate)
                for piece in _stream(reader, rate, total, _RNNoise(self.library), self.keep):
                    writer.writeframes(np.clip(np.round(piece * 32767.0), -32768, 32767).astype("<i2").tobytes())


def _stream(reader: wave.Wave_read, rate: int, total: int, rnn: _RNNoise, keep: float) -> Iterator[np.ndarray]:
    """Yield the denoised stem in blocks; exactly `total` samples in all, the denoiser's delay removed, `keep` of
    the input mixed back."""
    up = soxr.ResampleStream(rate, RNNOISE_RATE, 1, dtype="float32", quality="HQ")
    down = soxr.ResampleStream(RNNOISE_RATE, rate, 1, dtype="float32", quality="HQ")
    pending = np.zeros(0, dtype=np.float32)  # 48 kHz samples short of a whole frame
    skip = 2 * rnn.frame  # RNNoise's output lags its input by two frames (measured: 20 ms)
    skip_out = round(skip * rate / RNNOISE_RATE)
    emitted = 0
    originals = np.zeros(0, dtype=np.float32)  # input samples not yet matched by output ones
    block = max(1, int(BLOCK_SECONDS * rate))
    try:
        read = 0
        while True:
            raw = reader.readframes(block)
            read += len(raw) // 2
            last = read >= total or not raw
            x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
            if keep:
                originals = np.concatenate([originals, x])
            hi = np.concatenate([pending, up.resample_chunk(x, last=last)])
            if last:  # the frame lag and the tail: flush with silence
                hi = np.concatenate([hi, np.zeros(skip + rnn.frame, dtype=np.float32)])
            whole = len(hi) // rnn.frame * rnn.frame
            pending = hi[whole:]
            lo = down.resample_chunk(rnn.process(hi[:whole]), last=last)
            if skip_out:
                cut = min(skip_out, len(lo))
                lo, skip_out = lo[cut:], skip_out - cut
            lo = lo[: max(0, total - emitted)]
            if keep:
                lo = (1.0 - keep) * lo + keep * originals[: len(lo)]
                originals = originals[len(lo) :]
            emitted += len(lo)
            if len(lo):
                yield lo
            if last:
                break
        if emitted < total:
            yield keep * originals[: total - emitted] if keep else np.zeros(total - emitted, dtype=np.float32)
    finally:
        rnn.close()
