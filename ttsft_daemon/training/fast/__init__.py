"""The project's faster versions of piper.train's hot pieces, installed in the training process.

`install()` swaps them into piper's modules (module attributes and class methods, never files), and the
launcher builds `FastVitsModel` instead of piper's `VitsModel`. Each piece is in its own module, with the
reason and the exactness argument in its docstring; tests/test_training_fast.py compares each one with
piper's original on random inputs.

    mas          monotonic alignment search as a Triton kernel on the GPU (piper's host path elsewhere)
    segments     slice_segments as one gather; rand_slice_segments without a sync
    spline       the flows' spline without boolean-mask indexing
    flows        Flip's zeros and the duration predictor's noise without host-device copies
    losses       no .item() in the discriminator loss, no range check in the mel features
    batch        batches in pinned memory
    model        FastVitsModel: no discriminator grads in the generator step, the discriminator step's
                 real and generated audio in one pass, fused AdamW on CUDA, Lightning logging thinned;
                 on CUDA the graphed parts and the bf16 decoder and discriminators (precision auto)
    graphs       CUDA graphs of the step's parts (discriminator passes, decoder, duration predictor,
                 text and posterior encoders, flows), the batch padded to a few lengths (CUDA only)
    checkpoint   background checkpoint writes from a device-side snapshot, at a bounded share of the
                 wall time (CUDA only)
    wn           the WaveNet stacks' gate without a host tensor per call (exact; lets them compile)
    compiled     torch.compile of the hot modules on CUDA (off by default: did not pay; TTSFT_FAST_COMPILE)
"""

from __future__ import annotations

from ttsft_daemon.training.fast import batch, flows, losses, mas, patching, segments, spline, wn

_installed: list[str] = []


def install() -> list[str]:
    """Patch piper.train's modules (idempotent); returns one line per replacement."""
    if not _installed:
        for module in (mas, segments, spline, flows, losses, batch, wn):
            _installed.append(module.install())
    return list(_installed)


def uninstall() -> None:
    """Put piper's originals back (for comparisons in one process)."""
    patching.restore_all()
    _installed.clear()
