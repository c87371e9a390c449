"""Monotonic alignment search on the GPU (replaces `piper.train.vits.monotonic_align.maximum_path`).

piper's `maximum_path` copies the scores and both length vectors to the host every training step (three
device syncs), runs a single-threaded loop there and copies the path back. On a CUDA tensor with Triton
available, `maximum_path` here runs one Triton program per batch item instead: the frame loop inside the
program, the text axis across its threads, the cumulative scores in place in a scratch copy of the scores,
then the backtrack in the same program. Nothing leaves the device and nothing waits on it. Elsewhere (CPU
tensors, no Triton) it calls piper's original, which goes through the project's compiled-core adapter.

The recurrence and tie-breaking are those of the compiled cores (see ttsft_daemon/training/mas.py), in
float32 as they do, so the paths are the same bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from ttsft_daemon.training.fast.patching import replace
from ttsft_daemon.training.mas import MAX_NEG_VAL

try:  # Triton ships with CUDA builds of torch; CPU builds lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the torch build
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # Triton's CPU interpreter (for checking the kernel)
Original = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_original: Original | None = None


def triton_available() -> bool:
    return triton is not None and torch.cuda.is_available()


if triton is not None:

    # No annotations but the constexpr: Triton resolves them itself and cannot see module globals such as Any.
    @triton.jit  # type: ignore[untyped-decorator]
    def _mas_kernel(values, path, t_ys, t_xs, frames, stride_b, stride_y, neg,  # type: ignore[no-untyped-def]
                    BLOCK_X: tl.constexpr):
        b = tl.program_id(0)
        t_y = tl.load(t_ys + b)
        t_x = tl.load(t_xs + b)
        base = values + b * stride_b
        out = path + b * stride_b
        xs = tl.arange(0, BLOCK_X)
        # forward: row y of `values` becomes the best score of a path ending at (y, x), for reachable x.
        # The loop runs over the padded frame count (known on the host); rows past this item's end are idle.
        for y in range(0, frames):
            lowest = tl.maximum(0, t_x + y - t_y)
            highest = tl.minimum(t_x, y + 1)
            live = (xs >= lowest) & (xs < highest) & (y < t_y)
            prev_row = base + (y - 1) * stride_y
            stay = tl.load(prev_row + xs, mask=live & (y > 0) & (xs != y), other=neg)
            advance = tl.load(prev_row + xs - 1, mask=live & (y > 0) & (xs > 0), other=neg)
            advance = tl.where((xs == 0) & (y == 0), 0.0, advance)
            stay = tl.where(xs == y, neg, stay)
            row = base + y * stride_y
            current = tl.load(row + xs, mask=live, other=0.0)
            tl.store(row + xs, current + tl.maximum(stay, advance), mask=live)
            tl.debug_barrier()
        # backtrack from the last frame's last text position
        index = t_x - 1
        for step in range(0, frames):
            y = t_y - 1 - step
            active = y >= 0
            tl.store(out + y * stride_y + index, 1, mask=active)
            prev_row = base + (y - 1) * stride_y
            look = active & (index != 0) & (y > 0) & (index != y)
            here = tl.load(prev_row + index, mask=look, other=0.0)
            left = tl.load(prev_row + index - 1, mask=look, other=0.0)
            move = active & (index != 0) & ((index == y) | (here < left))
            index = tl.where(move, index - 1, index)


def maximum_path_triton(neg_cent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The 0/1 alignment [b, frames, text] of `neg_cent` within `mask`, computed on the GPU."""
    frames = mask.sum(1)[:, 0].to(torch.int32)  # text positions are along dim 2: a column sum counts frames
    texts = mask.sum(2)[:, 0].to(torch.int32)
    values = neg_cent.detach().to(torch.float32).contiguous().clone()
    path = torch.zeros(values.shape, dtype=torch.int32, device=values.device)
    batch, _, t_s = values.shape  # shapes are host-side: no sync
    block = max(16, triton.next_power_of_2(t_s))
    _mas_kernel[(batch,)](values, path, frames.contiguous(), texts.contiguous(), values.shape[1], values.stride(0),
                          values.stride(1), MAX_NEG_VAL, BLOCK_X=block, num_warps=4 if block <= 256 else 8)
    return path.to(dtype=neg_cent.dtype)


def maximum_path(neg_cent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Drop-in for piper's `monotonic_align.maximum_path`: GPU kernel where it can run, piper's path else."""
    if (neg_cent.is_cuda or _INTERPRET) and triton is not None:
        return maximum_path_triton(neg_cent, mask)
    assert _original is not None, "install() first"
    return _original(neg_cent, mask)


def install() -> str:
    """Point piper's `monotonic_align.maximum_path` at `maximum_path`; returns a description."""
    global _original
    from piper.train.vits import monotonic_align

    if monotonic_align.maximum_path is not maximum_path:
        _original = monotonic_align.maximum_path
        replace(monotonic_align, "maximum_path", maximum_path)
    return "mas: Triton kernel on CUDA" if triton_available() else "mas: piper's host path (no CUDA/Triton)"
