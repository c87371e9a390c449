"""Monotonic alignment search: the adapter over the compiled core against a plain numpy reference."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
from monotonic_alignment_search.core import maximum_path_c as compiled_text_major

from ttsft_daemon.training.mas import maximum_path_c, maximum_path_reference


def _random_batch(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Piper-layout scores [batch, frames, text] with lengths like a padded training batch."""
    batch = int(rng.integers(1, 6))
    frames, text = int(rng.integers(8, 90)), int(rng.integers(2, 40))
    t_ys = rng.integers(max(2, frames // 2), frames + 1, size=batch).astype(np.int32)
    t_xs = np.minimum(rng.integers(1, text + 1, size=batch), t_ys).astype(np.int32)
    value = (rng.normal(size=(batch, frames, text)) * 4).astype(np.float32)
    return value, t_ys, t_xs


def _adapter_path(value: np.ndarray, t_ys: np.ndarray, t_xs: np.ndarray) -> np.ndarray:
    path = np.zeros(value.shape, dtype=np.int32)
    maximum_path_c(path, value.copy(), t_ys, t_xs)
    return path


def test_adapter_matches_reference_on_40_random_batches() -> None:
    rng = np.random.default_rng(20240607)
    for _ in range(40):
        value, t_ys, t_xs = _random_batch(rng)
        np.testing.assert_array_equal(_adapter_path(value, t_ys, t_xs), maximum_path_reference(value, t_ys, t_xs))


def test_paths_are_monotonic_alignments_covering_every_frame() -> None:
    rng = np.random.default_rng(5)
    value, t_ys, t_xs = _random_batch(rng)
    path = _adapter_path(value, t_ys, t_xs)
    for b in range(value.shape[0]):
        inside = path[b, : t_ys[b], : t_xs[b]]
        assert path[b].sum() == inside.sum() == t_ys[b]  # one text position per frame, nothing in the padding
        positions = inside.argmax(axis=1)
        assert positions[0] == 0 and positions[-1] == t_xs[b] - 1
        assert set(np.diff(positions)) <= {0, 1}


def _brute_force_best(value: np.ndarray) -> float:
    frames, text = value.shape
    best = -np.inf
    for advances in itertools.combinations(range(1, frames), text - 1):
        positions = np.zeros(frames, dtype=int)
        for frame in advances:
            positions[frame:] += 1
        best = max(best, float(value[np.arange(frames), positions].sum()))
    return best


def test_reference_finds_the_best_path_by_exhaustive_search() -> None:
    rng = np.random.default_rng(11)
    for _ in range(30):
        frames = int(rng.integers(2, 9))
        text = int(rng.integers(1, frames + 1))
        value = rng.normal(size=(1, frames, text)).astype(np.float32)
        path = maximum_path_reference(value, np.array([frames], np.int32), np.array([text], np.int32))
        score = float((value[0] * path[0]).sum())
        assert score == pytest.approx(_brute_force_best(value[0]), abs=1e-4)


def test_calling_the_compiled_core_in_piper_order_is_wrong() -> None:
    """Why the adapter exists: the package's argument order and layout differ from piper's."""
    rng = np.random.default_rng(3)
    wrong = 0
    for _ in range(10):
        value, t_ys, t_xs = _random_batch(rng)
        naive = np.zeros(value.shape, dtype=np.int32)
        compiled_text_major(naive, value.copy(), t_ys, t_xs)
        wrong += not np.array_equal(naive, maximum_path_reference(value, t_ys, t_xs))
    assert wrong == 10


def test_launcher_fix_resolves_piper_import_to_the_adapter() -> None:
    from ttsft_daemon.training.launcher import MAS_MODULE, install_fixes

    install_fixes()
    from piper.train.vits import monotonic_align

    assert sys.modules[f"{MAS_MODULE}.core"].maximum_path_c is maximum_path_c
    import torch

    rng = np.random.default_rng(9)
    value, t_ys, t_xs = _random_batch(rng)
    mask = np.zeros(value.shape, dtype=np.float32)
    for b in range(value.shape[0]):
        mask[b, : t_ys[b], : t_xs[b]] = 1.0
    path = monotonic_align.maximum_path(torch.from_numpy(value), torch.from_numpy(mask))  # type: ignore[no-untyped-call]
    np.testing.assert_array_equal(path.numpy().astype(np.int32), maximum_path_reference(value, t_ys, t_xs))
