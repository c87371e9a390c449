"""Batches in pinned memory (adds `pin_memory` to piper's `dataset.Batch`).

piper's data loader asks for pinned memory, but its batches are a dataclass, which the loader's pinning
passes over (it pins tensors, mappings, sequences and objects with a `pin_memory` method). So each batch
went to the GPU from pageable memory, a copy the host waits for. With the method the loader's pin thread
pins every tensor of the batch, and Lightning's non-blocking transfer then does not wait.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ttsft_daemon.training.fast.patching import replace


def pin_batch(self: Any) -> Any:
    """A copy of the batch with each tensor field in pinned memory (other fields as they are)."""
    values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    pinned = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in values.items()}
    return dataclasses.replace(self, **pinned)


def install() -> str:
    from piper.train.vits import dataset

    replace(dataset.Batch, "pin_memory", pin_batch)
    return "batch: pinned host memory, non-blocking copies"
