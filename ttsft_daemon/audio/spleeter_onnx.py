"""Spleeter 2-stem vocal separation with its two U-Nets in ONNX Runtime instead of TensorFlow.

Same output as `spleeter_worker.VocalModel` (float rounding only) for less than half its CPU. The U-Nets,
from the mix magnitude spectrogram to the two stems' estimated magnitudes, are Spleeter's own weights
exported once by scripts/export_spleeter_onnx.py (models/spleeter/2stems.onnx); everything around them
is done here in numpy as Spleeter's predict graph (`spleeter.model.EstimatorSpecBuilder`, MWF off) does:

* a frame of 4096 zeros is put before the waveform; STFT of each channel with a periodic Hann window
  of 4096 samples, hop 1024, FFT size 4096, the end zero-padded so that every sample is in a frame
  (TensorFlow's ``pad_end``);
* the magnitudes of the lowest 1024 bins, zero-padded to a multiple of 512 frames and cut into
  segments of 512 frames, are the U-Nets' input;
* the vocal ratio mask is ``(v**2 + eps/2) / (v**2 + a**2 + eps)`` (eps 1e-10) from the two stems'
  estimated magnitudes v and a, zero above bin 1024; it multiplies the mix STFT;
* inverse STFT: inverse real FFT of each frame, the same Hann window, overlap-add, times 2/3; the
  leading zero frame's samples are dropped and the length cropped to the input's.

Two liberties, both exact up to float rounding: the channel mean is taken before the inverse STFT (it
is linear: one inverse instead of two), and the arrays are channel-first (the export's layout).

This module imports only the standard library, numpy and (when a model is opened) onnxruntime, so that
it runs in the Spleeter worker's environment as well as in the daemon's own.

Measured on 2 AVX2 cores (60 s stereo, CPU seconds per audio second): TensorFlow 0.105; this with one
ONNX Runtime thread 0.044, with two 0.048. Idle pool threads are kept from spinning (ONNX Runtime's
default): spinning cost ~25 % more CPU for no speed on a shared machine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

MODEL_FILE = "2stems.onnx"
INPUT_NAME = "mix_spectrogram"
VOCALS_OUTPUT = "vocals"
ACCOMPANIMENT_OUTPUT = "accompaniment"
# Written into the export's metadata; a model of another format is refused (layout or names changed).
FORMAT_KEY = "ttsft.format"
FORMAT = "spleeter-2stems-unets-nchw/1"

FRAME_LENGTH = 4096  # STFT window and FFT size
FRAME_STEP = 1024
HOPS_PER_FRAME = FRAME_LENGTH // FRAME_STEP
BINS = FRAME_LENGTH // 2 + 1
MODEL_BINS = 1024  # the U-Nets see (and the masks cover) only the lowest 1024 bins, up to ~11 kHz
SEGMENT_FRAMES = 512  # the U-Nets' time extent: the spectrogram is cut into segments of this many frames
CHANNELS = 2
EPSILON = 1e-10
WINDOW_COMPENSATION = 2.0 / 3.0  # 1 / sum of the squared Hann windows over a hop at 75 % overlap
# Spleeter's TensorFlow path zero-pads chunks shorter than this (and crops); done here too for parity.
MIN_MODEL_FRAMES = 2 * FRAME_LENGTH
# Frames per FFT call: small blocks stay in cache (measured 3x cheaper than one call for 60 s).
FFT_BLOCK = 32


def hann_window(length: int = FRAME_LENGTH) -> np.ndarray:
    """Periodic Hann window (the DFT-even one of TensorFlow's ``hann_window(periodic=True)``)."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / length)).astype(np.float32)


def frame_count(samples: int) -> int:
    """Frames of the STFT of `samples` samples with the end padded (every sample in some frame)."""
    return max(1, -(-samples // FRAME_STEP))


def stft(signal: np.ndarray, window: np.ndarray) -> np.ndarray:
    """STFT of a float32 [channels, samples] signal: complex64 [channels, frames, BINS]."""
    channels, samples = signal.shape
    frames = frame_count(samples)
    padded = np.zeros((channels, (frames - 1) * FRAME_STEP + FRAME_LENGTH), dtype=np.float32)
    padded[:, :samples] = signal
    out = np.empty((channels, frames, BINS), dtype=np.complex64)
    for channel in range(channels):
        framed = np.lib.stride_tricks.sliding_window_view(padded[channel], FRAME_LENGTH)[::FRAME_STEP]
        for start in range(0, frames, FFT_BLOCK):
            out[channel, start : start + FFT_BLOCK] = np.fft.rfft(framed[start : start + FFT_BLOCK] * window, axis=1)
    return out


def istft(spectrum: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Inverse of `stft` for one channel, complex [frames, BINS]: float32 [(frames - 1) * hop + length].

    Overlap-add of the windowed inverse FFTs, times WINDOW_COMPENSATION (no window-sum normalisation,
    as TensorFlow's ``inverse_stft`` given the analysis window does).
    """
    frames = len(spectrum)
    out = np.zeros((frames - 1 + HOPS_PER_FRAME, FRAME_STEP), dtype=np.float32)
    for start in range(0, frames, FFT_BLOCK):
        pieces = np.fft.irfft(spectrum[start : start + FFT_BLOCK], n=FRAME_LENGTH, axis=1) * window
        blocks = pieces.reshape(len(pieces), HOPS_PER_FRAME, FRAME_STEP)
        for k in range(HOPS_PER_FRAME):
            out[start + k : start + k + len(blocks)] += blocks[:, k]
    result: np.ndarray = out.reshape(-1) * np.float32(WINDOW_COMPENSATION)
    return result


def vocal_mask(vocals: np.ndarray, accompaniment: np.ndarray) -> np.ndarray:
    """Spleeter's ratio mask of the vocals from both stems' estimated magnitudes (float32, same shape)."""
    mask: np.ndarray = np.square(vocals)
    total = mask + np.square(accompaniment)
    total += np.float32(EPSILON)
    mask += np.float32(EPSILON / 2)
    mask /= total
    return mask


def default_model_file(model_path: str | os.PathLike[str]) -> Path:
    """Where the export puts the ONNX model for Spleeter's MODEL_PATH (the folder holding 2stems/)."""
    return Path(model_path) / MODEL_FILE


class OnnxVocalModel:
    """Spleeter 2stems with the U-Nets in ONNX Runtime; `vocals()` separates one chunk.

    A drop-in for `spleeter_worker.VocalModel`: `vocals(stereo float32 [frames, 2])` returns the vocal
    stem as float32 mono [frames] (mean of the two channels).
    """

    def __init__(self, model_file: str | os.PathLike[str], threads: int = 0, spinning: bool = False) -> None:
        """`threads`: ONNX Runtime's intra-op threads (0: its default, one per core).

        `spinning`: let idle pool threads busy-wait for work (ONNX Runtime's default). Off, they sleep:
        no CPU burnt between operators on a machine shared with other stages (measured: same speed).
        """
        import onnxruntime as ort

        path = Path(model_file)
        if not path.is_file():
            raise FileNotFoundError(
                f"no ONNX Spleeter model at {path}: run scripts/export_spleeter_onnx.py (scripts/install.sh does)"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = max(0, threads)
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self._session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        found = self._session.get_modelmeta().custom_metadata_map.get(FORMAT_KEY)
        if found != FORMAT:
            raise RuntimeError(
                f"{path} is not a current Spleeter export (format {found!r}, expected {FORMAT!r}): "
                "run scripts/export_spleeter_onnx.py --force"
            )
        self._window = hann_window()
        self.gpu = False

    def stem_magnitudes(self, magnitude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The U-Nets: (vocals, accompaniment) for float32 [segments, 2, 512, 1024] mix magnitudes."""
        feed: dict[str, Any] = {INPUT_NAME: np.ascontiguousarray(magnitude, dtype=np.float32)}
        vocals, accompaniment = self._session.run([VOCALS_OUTPUT, ACCOMPANIMENT_OUTPUT], feed)
        return vocals, accompaniment

    def vocals(self, stereo: np.ndarray) -> np.ndarray:
        """Vocal stem of a float32 [frames, 2] chunk, as float32 mono (mean of the two channels)."""
        if stereo.ndim != 2 or stereo.shape[1] != CHANNELS:
            raise ValueError(f"expected [frames, {CHANNELS}] samples, got shape {stereo.shape}")
        samples = len(stereo)
        signal = np.zeros((CHANNELS, FRAME_LENGTH + max(samples, MIN_MODEL_FRAMES)), dtype=np.float32)
        signal[:, FRAME_LENGTH : FRAME_LENGTH + samples] = stereo.T
        spectrum = stft(signal, self._window)
        del signal
        frames = spectrum.shape[1]
        mono = np.zeros((frames, BINS), dtype=np.complex64)  # mean of the channels' masked spectra
        magnitude = np.zeros((1, CHANNELS, SEGMENT_FRAMES, MODEL_BINS), dtype=np.float32)
        for start in range(0, frames, SEGMENT_FRAMES):
            stop = min(frames, start + SEGMENT_FRAMES)
            low = spectrum[:, start:stop, :MODEL_BINS]
            magnitude[0, :, stop - start :] = 0.0  # the last segment is zero-padded, as Spleeter's
            np.abs(low, out=magnitude[0, :, : stop - start])
            vocals, accompaniment = self.stem_magnitudes(magnitude)
            mask = vocal_mask(vocals[0, :, : stop - start], accompaniment[0, :, : stop - start])
            mixed = mask[0] * low[0]
            for channel in range(1, CHANNELS):
                mixed += mask[channel] * low[channel]
            mono[start:stop, :MODEL_BINS] = mixed * np.float32(1.0 / CHANNELS)
        del spectrum
        waveform = istft(mono, self._window)
        out: np.ndarray = waveform[FRAME_LENGTH : FRAME_LENGTH + samples]
        return out

    def close(self) -> None:
        """Nothing to release beyond the session (kept for parity with VocalModel)."""
