"""Export Spleeter 2stems' two U-Nets to ONNX (models/spleeter/2stems.onnx) for ttsft_daemon/audio/spleeter_onnx.py.

Run once at install time in the Spleeter environment, which needs tf2onnx and onnx besides spleeter:

    .venv-spleeter/bin/python scripts/export_spleeter_onnx.py [--model-path models/spleeter] [--force]

The graph is Spleeter's own (`EstimatorSpecBuilder.model_outputs`, the same Keras layers the worker's
TensorFlow path builds) fed with a placeholder for the mix magnitude spectrogram, restored from the
installed checkpoint, frozen and converted with tf2onnx. Input and outputs are channel-first:

    mix_spectrogram [segments, 2, 512, 1024] -> vocals, accompaniment [segments, 2, 512, 1024]

(the estimated magnitudes of each stem, from which spleeter_onnx builds the ratio mask).

The decoders' transposed convolutions (stride 2, 5x5 kernel) with 32 or more output channels are then
rewritten as four ordinary convolutions, one per output phase (even/odd row x even/odd column, each
with the 2 or 3 kernel taps that reach it), interleaved by DepthToSpace: the same products and sums
in another order (float rounding only), and ONNX Runtime's convolutions are faster than its
ConvTranspose on CPU (measured 8 % less CPU for the U-Nets; with fewer channels they are slower).

The file is written atomically (temporary file, then rename) with the checkpoint's SHA-256, the
export format and the exporter's version in its metadata; a later run whose file already matches all
three does nothing (about a second). Unless
--no-check, the exported model is compared with TensorFlow on one segment before it is installed
(needs onnxruntime; skipped with a note where it is missing).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OPSET = 17
# Bumped whenever the export itself changes (a file made by an older exporter is then redone).
EXPORTER_VERSION = "2"
EXPORTER_KEY = "ttsft.exporter"
# Kernel taps reaching each output phase of a stride-2, 5-tap transposed convolution padded (1, 2),
# in correlation order (input offsets -1, 0[, +1]), and the phase convolution's (begin, end) padding.
PHASE_TAPS = {0: [3, 1], 1: [4, 2, 0]}
PHASE_PADS = {0: (1, 0), 1: (1, 1)}
POLYPHASE_MIN_OUT_CHANNELS = 32
CHECK_TOLERANCE = 1e-4  # max |ONNX - TF| relative to max |TF| on the check segment


def load_runtime_module() -> ModuleType:
    """spleeter_onnx by file path: its constants (names, format) without importing the ttsft_daemon package."""
    path = REPO / "ttsft_daemon" / "audio" / "spleeter_onnx.py"
    spec = importlib.util.spec_from_file_location("spleeter_onnx", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def say(message: str) -> None:
    print(f"export_spleeter_onnx: {message}", file=sys.stderr, flush=True)


def checkpoint_digest(folder: Path) -> str:
    """SHA-256 over the checkpoint's files (names and contents), the export's source identity."""
    names = sorted(p.name for p in folder.iterdir() if p.name.startswith("model.") and p.is_file())
    if not any(n.startswith("model.data-") for n in names) or "model.index" not in names:
        raise SystemExit(
            f"no Spleeter 2stems checkpoint in {folder}: run scripts/install.sh first (it installs the model)"
        )
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + b"\0")
        with open(folder / name, "rb") as stream:
            while block := stream.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def current_metadata(path: Path) -> dict[str, str]:
    """Metadata of an existing export ({} where absent or unreadable)."""
    if not path.is_file():
        return {}
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return {}
    return {p.key: p.value for p in model.metadata_props}


def build_frozen_graph(model_dir: Path, runtime: ModuleType) -> Any:
    """Spleeter's U-Nets from a mix-spectrogram placeholder, weights restored and frozen to constants."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from spleeter.model import EstimatorSpecBuilder
    from spleeter.utils.configuration import load_configuration

    tf.get_logger().setLevel("ERROR")
    params = load_configuration("spleeter:2stems")
    params["model_dir"] = str(model_dir)
    params["MWF"] = False
    expected = {"T": runtime.SEGMENT_FRAMES, "F": runtime.MODEL_BINS, "frame_length": runtime.FRAME_LENGTH,
                "frame_step": runtime.FRAME_STEP, "n_channels": runtime.CHANNELS, "separation_exponent": 2,
                "mask_extension": "zeros"}  # fmt: skip
    differing = {k: params.get(k) for k, v in expected.items() if params.get(k) != v}
    if differing or params["instrument_list"] != [runtime.VOCALS_OUTPUT, runtime.ACCOMPANIMENT_OUTPUT]:
        raise SystemExit(f"Spleeter's 2stems configuration is not the one spleeter_onnx implements: {differing}")
    checkpoint = tf.train.latest_checkpoint(str(model_dir))
    if checkpoint is None:
        raise SystemExit(f"no Spleeter checkpoint in {model_dir}")
    graph = tf.Graph()
    with graph.as_default():
        shape = (None, runtime.SEGMENT_FRAMES, runtime.MODEL_BINS, runtime.CHANNELS)
        spectrogram = tf.compat.v1.placeholder(tf.float32, shape=shape, name=runtime.INPUT_NAME)
        # The builder takes a given "<mix>_spectrogram" feature as the U-Nets' input (no STFT built).
        builder = EstimatorSpecBuilder({f"{params['mix_name']}_spectrogram": spectrogram}, params)
        outputs = builder.model_outputs
        for instrument in params["instrument_list"]:
            tf.identity(outputs[f"{instrument}_spectrogram"], name=instrument)
        with tf.compat.v1.Session(graph=graph) as session:
            tf.compat.v1.train.Saver().restore(session, checkpoint)
            return tf.compat.v1.graph_util.convert_variables_to_constants(
                session, graph.as_graph_def(), [runtime.VOCALS_OUTPUT, runtime.ACCOMPANIMENT_OUTPUT]
            )


def convert(frozen: Any, runtime: ModuleType, metadata: dict[str, str]) -> Any:
    import logging

    import onnx
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    tf2onnx.logging.set_level(logging.ERROR)
    names = [runtime.INPUT_NAME, runtime.VOCALS_OUTPUT, runtime.ACCOMPANIMENT_OUTPUT]
    inputs, outputs = [f"{runtime.INPUT_NAME}:0"], [f"{runtime.VOCALS_OUTPUT}:0", f"{runtime.ACCOMPANIMENT_OUTPUT}:0"]
    model, _ = tf2onnx.convert.from_graph_def(
        frozen, name="spleeter_2stems_unets", input_names=inputs, output_names=outputs, opset=OPSET,
        inputs_as_nchw=inputs, outputs_as_nchw=outputs, tensors_to_rename={f"{n}:0": n for n in names},
    )  # fmt: skip
    rewritten = polyphase_conv_transposes(model)
    say(f"{rewritten} transposed convolutions rewritten as phase convolutions")
    onnx.helper.set_model_props(model, {**metadata, "ttsft.tf2onnx": tf2onnx.__version__})
    onnx.checker.check_model(model)
    return model


def polyphase_conv_transposes(model: Any, min_out_channels: int = POLYPHASE_MIN_OUT_CHANNELS) -> int:
    """Rewrite the stride-2 5x5 ConvTransposes (pads 1, 2) in place as 4 phase Convs + DepthToSpace.

    Output row 2m (after the transposed convolution's crop of 1 row at the top) gathers kernel rows
    1 and 3 from input rows m and m - 1, row 2m + 1 kernel rows 0, 2, 4 from input rows m + 1, m,
    m - 1; columns likewise. Each phase is an ordinary convolution over the input with those taps
    (flipped into correlation order); DepthToSpace (DCR) interleaves the four phases, which Concat
    stacks phase-major as it expects. Returns how many were rewritten.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    nodes: list[Any] = []
    rewritten = 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = None
        if (
            node.op_type == "ConvTranspose"
            and list(attrs.get("strides", [])) == [2, 2]
            and list(attrs.get("kernel_shape", [])) == [5, 5]
            and list(attrs.get("pads", [])) == [1, 1, 2, 2]
            and list(attrs.get("dilations", [1, 1])) == [1, 1]
            and attrs.get("group", 1) == 1
            and "output_shape" not in attrs
            and not any(attrs.get("output_padding", [0, 0]))
            and len(node.input) == 3
            and all(name in initializers for name in node.input[1:])
        ):
            weight = numpy_helper.to_array(initializers[node.input[1]])  # [in, out, 5, 5]
        if weight is None or weight.shape[1] < min_out_channels:
            nodes.append(node)
            continue
        base = node.name or node.output[0]
        phases = []
        for row in (0, 1):
            for col in (0, 1):
                name = f"{base}/phase{row}{col}"
                taps = weight[:, :, PHASE_TAPS[row], :][:, :, :, PHASE_TAPS[col]]
                kernel = np.ascontiguousarray(taps.transpose(1, 0, 2, 3))  # Conv's [out, in, kh, kw]
                graph.initializer.append(numpy_helper.from_array(kernel, f"{name}/W"))
                pads = [PHASE_PADS[row][0], PHASE_PADS[col][0], PHASE_PADS[row][1], PHASE_PADS[col][1]]
                nodes.append(
                    helper.make_node(
                        "Conv", [node.input[0], f"{name}/W", node.input[2]], [name], name=name,
                        kernel_shape=list(kernel.shape[2:]), pads=pads,
                    )
                )  # fmt: skip
                phases.append(name)
        nodes.append(helper.make_node("Concat", phases, [f"{base}/phases"], name=f"{base}/phases", axis=1))
        nodes.append(
            helper.make_node(
                "DepthToSpace", [f"{base}/phases"], [node.output[0]], name=f"{base}/interleave",
                blocksize=2, mode="DCR",
            )
        )  # fmt: skip
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for n in graph.node for name in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return rewritten


def check_against_tensorflow(frozen: Any, model_bytes: bytes, runtime: ModuleType) -> float | None:
    """Max |ONNX - TF| / max |TF| over both stems for one segment of spectrogram-like input; None: no ORT."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(20)
    shape = (1, runtime.SEGMENT_FRAMES, runtime.MODEL_BINS, runtime.CHANNELS)
    # Magnitudes falling with frequency like music's, with a few silent frames (zeros) at the end.
    tilt = 1.0 / (1.0 + np.arange(runtime.MODEL_BINS, dtype=np.float32) / 16.0)
    nhwc = (rng.lognormal(-2.0, 1.5, shape).astype(np.float32) * tilt[None, None, :, None]).astype(np.float32)
    nhwc[:, -40:] = 0.0
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(frozen, name="")
        with tf.compat.v1.Session(graph=graph) as session:
            expected = session.run(
                [f"{runtime.VOCALS_OUTPUT}:0", f"{runtime.ACCOMPANIMENT_OUTPUT}:0"],
                {f"{runtime.INPUT_NAME}:0": nhwc},
            )
    session_ort = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    got = session_ort.run(
        [runtime.VOCALS_OUTPUT, runtime.ACCOMPANIMENT_OUTPUT],
        {runtime.INPUT_NAME: np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))},
    )
    worst = 0.0
    for want, have in zip(expected, got, strict=True):
        want_nchw = want.transpose(0, 3, 1, 2)
        worst = max(worst, float(np.abs(have - want_nchw).max() / max(np.abs(want_nchw).max(), 1e-30)))
    return worst


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--model-path",
        type=Path,
        default=REPO / "models" / "spleeter",
        help="Spleeter MODEL_PATH, the folder holding 2stems/ (default: models/spleeter)",
    )
    parser.add_argument("--output", type=Path, default=None, help="default: <model-path>/2stems.onnx")
    parser.add_argument("--force", action="store_true", help="export even when the file is up to date")
    parser.add_argument("--no-check", action="store_true", help="skip the comparison with TensorFlow")
    args = parser.parse_args(argv)  # fmt: skip
    runtime = load_runtime_module()
    model_dir = args.model_path / "2stems"
    output = args.output or runtime.default_model_file(args.model_path)
    metadata = {
        runtime.FORMAT_KEY: runtime.FORMAT,
        EXPORTER_KEY: EXPORTER_VERSION,
        "ttsft.checkpoint_sha256": checkpoint_digest(model_dir),
    }
    existing = current_metadata(output)
    if not args.force and all(existing.get(k) == v for k, v in metadata.items()):
        say(f"{output} is up to date")
        return 0
    began = time.monotonic()
    say(f"exporting {model_dir} -> {output} (about a minute)")
    frozen = build_frozen_graph(model_dir, runtime)
    model_bytes = convert(frozen, runtime, metadata).SerializeToString()
    if not args.no_check:
        error = check_against_tensorflow(frozen, model_bytes, runtime)
        if error is None:
            say("onnxruntime is not installed here: the export was not compared with TensorFlow")
        elif error > CHECK_TOLERANCE:
            raise SystemExit(f"the ONNX export differs from TensorFlow by {error:.2e} (relative): not installed")
        else:
            say(f"ONNX vs TensorFlow on one segment: max relative difference {error:.1e}")
    write_atomically(output, model_bytes)
    say(f"wrote {output} ({len(model_bytes) / 1e6:.0f} MB) in {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
