"""Spleeter with its U-Nets in ONNX Runtime (ttsft_daemon/audio/spleeter_onnx.py) against the TensorFlow path.

Fast tests cover the numpy signal path (STFT, inverse, masks) and the model file checks. The slow test
separates real speech over music, in stereo, with both engines: TensorFlow's `VocalModel` in the
Spleeter environment (a subprocess) and `OnnxVocalModel` here, and in the Spleeter environment too
where onnxruntime is installed there. They must agree to float rounding.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import missing
from ttsft_daemon.audio import spleeter_onnx as so

REPO = Path(__file__).resolve().parents[1]
SPLEETER_PYTHON = REPO / ".venv-spleeter" / "bin" / "python"
SPLEETER_MODELS = REPO / "models" / "spleeter"
ONNX_MODEL = so.default_model_file(SPLEETER_MODELS)
SR = 44100
# Max |ONNX - TF| relative to max |TF|, and the SNR of TF's stem over the difference: float rounding only.
MAX_RELATIVE_DIFFERENCE = 1e-4
MIN_SNR_DB = 80.0

needs_onnx_model = pytest.mark.skipif(
    not ONNX_MODEL.is_file(), reason=missing(f"{ONNX_MODEL} (scripts/export_spleeter_onnx.py writes it)")
)


# ------------------------------------------------------------------------------------- numpy path


def test_hann_window_is_the_periodic_one() -> None:
    assert np.allclose(so.hann_window(), np.hanning(so.FRAME_LENGTH + 1)[:-1], atol=1e-7)


@pytest.mark.parametrize("samples", [1, 1023, 1024, 5000, 3 * so.FRAME_LENGTH + 17])
def test_frame_count_covers_every_sample(samples: int) -> None:
    frames = so.frame_count(samples)
    assert (frames - 1) * so.FRAME_STEP < samples <= (frames - 1) * so.FRAME_STEP + so.FRAME_LENGTH


def test_stft_then_inverse_reconstructs_the_signal_past_the_first_frame() -> None:
    rng = np.random.default_rng(3)
    samples = 5 * SR + 123
    signal = np.zeros((2, so.FRAME_LENGTH + samples), dtype=np.float32)
    signal[:, so.FRAME_LENGTH :] = rng.standard_normal((2, samples)).astype(np.float32) * 0.3
    window = so.hann_window()
    spectrum = so.stft(signal, window)
    assert spectrum.shape == (2, so.frame_count(signal.shape[1]), so.BINS) and spectrum.dtype == np.complex64
    for channel in range(2):
        back = so.istft(spectrum[channel], window)[so.FRAME_LENGTH : so.FRAME_LENGTH + samples]
        assert np.abs(back - signal[channel, so.FRAME_LENGTH :]).max() < 1e-5


def test_stft_frames_are_the_windowed_ffts() -> None:
    rng = np.random.default_rng(4)
    signal = rng.standard_normal((1, 3 * so.FRAME_LENGTH)).astype(np.float32)
    window = so.hann_window()
    spectrum = so.stft(signal, window)
    k = 5
    frame = signal[0, k * so.FRAME_STEP : k * so.FRAME_STEP + so.FRAME_LENGTH].astype(np.float64) * window
    assert np.allclose(spectrum[0, k], np.fft.rfft(frame), rtol=0, atol=1e-3)
    # The end is zero-padded: the last frame starts before the last sample.
    assert spectrum.shape[1] == so.frame_count(signal.shape[1])


def test_vocal_and_accompaniment_masks_sum_to_one() -> None:
    rng = np.random.default_rng(5)
    v = rng.lognormal(-2, 2, (2, 64, 32)).astype(np.float32)
    a = rng.lognormal(-2, 2, (2, 64, 32)).astype(np.float32)
    v[0, 0], a[0, 0] = 0.0, 0.0  # silence: eps/2 over eps, half each
    vocal, accompaniment = so.vocal_mask(v, a), so.vocal_mask(a, v)
    assert vocal.dtype == np.float32
    assert np.all((vocal >= 0) & (vocal <= 1))
    assert np.allclose(vocal + accompaniment, 1.0, atol=1e-6)
    assert np.allclose(vocal[0, 0], 0.5)


def test_missing_model_file_says_how_to_make_it(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    with pytest.raises(FileNotFoundError, match="export_spleeter_onnx"):
        so.OnnxVocalModel(tmp_path / "2stems.onnx")


def test_a_model_of_another_format_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    helper = onnx.helper
    x = helper.make_tensor_value_info(so.INPUT_NAME, onnx.TensorProto.FLOAT, [1])
    outputs = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1])
               for n in (so.VOCALS_OUTPUT, so.ACCOMPANIMENT_OUTPUT)]  # fmt: skip
    nodes = [helper.make_node("Identity", [so.INPUT_NAME], [n]) for n in (so.VOCALS_OUTPUT, so.ACCOMPANIMENT_OUTPUT)]
    model = helper.make_model(helper.make_graph(nodes, "stub", [x], outputs),
                              opset_imports=[helper.make_opsetid("", 17)])  # fmt: skip
    model.ir_version = 8
    helper.set_model_props(model, {so.FORMAT_KEY: "something-else/0"})
    path = tmp_path / "2stems.onnx"
    onnx.save(model, str(path))
    with pytest.raises(RuntimeError, match="not a current Spleeter export"):
        so.OnnxVocalModel(path)


def test_wrong_input_shape_is_refused() -> None:
    model = so.OnnxVocalModel.__new__(so.OnnxVocalModel)  # the check comes before the model is used
    with pytest.raises(ValueError, match="expected"):
        model.vocals(np.zeros(100, dtype=np.float32))


# ------------------------------------------------------------------------------ against TensorFlow

_TF_REFERENCE = r"""
import importlib.util, os, sys
import numpy as np
repo, models, out = sys.argv[1:4]
def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(repo, "ttsft_daemon", "audio", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module
inputs = np.load(os.path.join(out, "inputs.npz"))
worker = load("spleeter_worker")
model = worker.VocalModel(models)
np.savez(os.path.join(out, "tf.npz"), **{k: model.vocals(inputs[k]) for k in inputs.files})
try:
    import onnxruntime  # noqa: F401
except ImportError:
    sys.exit(0)
onnx_model = load("spleeter_onnx").OnnxVocalModel(os.path.join(models, "2stems.onnx"), threads=1)
np.savez(os.path.join(out, "onnx_spleeter_env.npz"), **{k: onnx_model.vocals(inputs[k]) for k in inputs.files})
"""


def speech_over_music_stereo(seconds: float) -> np.ndarray:
    """Real speech (Asterisk's Allison) over the demo's music bed, panned differently in each channel."""
    soxr = pytest.importorskip("soxr")
    from tests import realspeech
    from ttsft_daemon.demo.audio import make_music

    try:
        pool = realspeech.utterances("allison")
    except FileNotFoundError as exc:
        pytest.skip(missing(f"real speech: {exc}"))
    speech = np.concatenate([u.audio for u in pool[:20]])
    speech = soxr.resample(speech, realspeech.SR, SR).astype(np.float32)
    length = int(seconds * SR)
    speech = np.resize(speech, length)  # repeats if the utterances are shorter
    music = make_music(seconds, SR, seed=11)[:length]
    music *= 0.5 * float(np.sqrt(np.mean(speech**2) / max(np.mean(music**2), 1e-12)))
    left = speech + 0.8 * music
    right = 0.9 * speech + 0.5 * np.roll(music, 441)  # the music's image is not centred
    stereo = np.stack([left, right], axis=1)
    return (stereo * (0.9 / np.abs(stereo).max())).astype(np.float32)


def compare(reference: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """(max |got - reference| / max |reference|, SNR of reference over the difference in dB)."""
    assert got.shape == reference.shape and got.dtype == np.float32
    diff = got.astype(np.float64) - reference
    relative = float(np.abs(diff).max() / np.abs(reference).max())
    snr = float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / max(np.sum(diff**2), 1e-30)))
    return relative, snr


@pytest.mark.slow
@needs_onnx_model
@pytest.mark.skipif(not SPLEETER_PYTHON.exists(), reason=missing(".venv-spleeter"))
def test_onnx_vocals_match_tensorflow_on_real_speech_over_music(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    mix = speech_over_music_stereo(26.0)  # 3 segments, the last one partial
    inputs = {
        "mix": mix,
        "short": mix[SR : SR + 5000],  # below two STFT frames: padded then cropped
        "one_segment": mix[: so.SEGMENT_FRAMES * so.FRAME_STEP - so.FRAME_LENGTH],  # exactly 512 frames
    }
    np.savez(tmp_path / "inputs.npz", **inputs)
    subprocess.run(
        [str(SPLEETER_PYTHON), "-c", _TF_REFERENCE, str(REPO), str(SPLEETER_MODELS), str(tmp_path)],
        check=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )  # fmt: skip
    reference = np.load(tmp_path / "tf.npz")
    model = so.OnnxVocalModel(ONNX_MODEL, threads=1)
    for name, stereo in inputs.items():
        got = model.vocals(stereo)
        relative, snr = compare(reference[name], got)
        print(f"{name}: main env relative {relative:.2e} SNR {snr:.1f} dB")
        assert relative < MAX_RELATIVE_DIFFERENCE and snr > MIN_SNR_DB, (name, relative, snr)
    # The worker's own environment (numpy 1.24) gives the same, where onnxruntime is installed there.
    other = tmp_path / "onnx_spleeter_env.npz"
    if other.is_file():
        in_worker_env = np.load(other)
        for name in inputs:
            relative, snr = compare(reference[name], in_worker_env[name])
            print(f"{name}: spleeter env relative {relative:.2e} SNR {snr:.1f} dB")
            assert relative < MAX_RELATIVE_DIFFERENCE and snr > MIN_SNR_DB, (name, relative, snr)


def test_vocals_is_the_separated_voice_not_the_mix() -> None:
    """Cheap sanity of the ONNX path alone: on speech over music, the stem keeps the speech, drops music."""
    if not ONNX_MODEL.is_file():
        pytest.skip(f"no {ONNX_MODEL}")
    pytest.importorskip("onnxruntime")
    seconds = 8.0
    mix = speech_over_music_stereo(seconds)
    vocals = so.OnnxVocalModel(ONNX_MODEL, threads=1).vocals(mix)
    assert vocals.shape == (len(mix),) and vocals.dtype == np.float32
    assert np.isfinite(vocals).all()
    assert 0.05 < float(np.sqrt(np.mean(vocals**2)) / np.sqrt(np.mean(mix**2))) < 1.0


@pytest.mark.skipif(not SPLEETER_PYTHON.exists(), reason=missing(".venv-spleeter"))
@needs_onnx_model
def test_export_is_skipped_when_the_file_is_up_to_date(tmp_path: Path) -> None:
    probe = subprocess.run([str(SPLEETER_PYTHON), "-c", "import onnx"], capture_output=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip("onnx is not installed in .venv-spleeter")
    copy = tmp_path / so.MODEL_FILE
    shutil.copy2(ONNX_MODEL, copy)
    before = copy.stat().st_mtime_ns
    script = REPO / "scripts" / "export_spleeter_onnx.py"
    done = subprocess.run(
        [str(SPLEETER_PYTHON), str(script), "--model-path", str(SPLEETER_MODELS), "--output", str(copy)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "up to date" in done.stderr, f"the installed export is stale (run scripts/install.sh): {done.stderr}"
    assert copy.stat().st_mtime_ns == before


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
