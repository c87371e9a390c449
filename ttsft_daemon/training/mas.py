"""Monotonic alignment search for Piper's trainer (defect 1 of the piper-tts 1.8.0 wheel).

The wheel lacks its compiled core `piper.train.vits.monotonic_align.monotonic_align.core`. Piper calls
`maximum_path_c(path, value, t_ys, t_xs)` on `[batch, frames, text]` arrays. The
`monotonic-alignment-search` package ships a compiled `maximum_path_c` with the transposed layout,
`(paths, values, t_xs, t_ys)` on `[batch, text, frames]`. `maximum_path_c` below adapts one to the
other; `maximum_path_reference` is a plain numpy implementation used to check the adapter.

The alignment: for each frame y (0 <= y < t_y) pick a text position x(y) with x(0) = 0,
x(t_y - 1) = t_x - 1 and x(y + 1) - x(y) in {0, 1}, maximising the sum of value[y, x(y)].
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from monotonic_alignment_search.core import maximum_path_c as _maximum_path_text_major

MAX_NEG_VAL = -1e9
"""Score of an impossible move; the same constant as the compiled cores use."""


def maximum_path_c(
    path: npt.NDArray[np.int32],
    value: npt.NDArray[np.float32],
    t_ys: npt.NDArray[np.int32],
    t_xs: npt.NDArray[np.int32],
    max_neg_val: float = MAX_NEG_VAL,
) -> None:
    """Piper's core signature: fill `path` [batch, frames, text] in place with the best alignment.

    `value` is [batch, frames, text] float32, `t_ys` the frame counts, `t_xs` the text lengths.
    """
    values_text_major = np.ascontiguousarray(value.transpose(0, 2, 1), dtype=np.float32)
    path_text_major = np.zeros(values_text_major.shape, dtype=np.int32)
    _maximum_path_text_major(
        path_text_major,
        values_text_major,
        np.ascontiguousarray(t_xs, dtype=np.int32),
        np.ascontiguousarray(t_ys, dtype=np.int32),
        max_neg_val,
    )
    path[...] = path_text_major.transpose(0, 2, 1)


def maximum_path_reference(
    value: npt.NDArray[np.float32],
    t_ys: npt.NDArray[np.int32],
    t_xs: npt.NDArray[np.int32],
    max_neg_val: float = MAX_NEG_VAL,
) -> npt.NDArray[np.int32]:
    """Plain numpy alignment of `value` [batch, frames, text]; returns the 0/1 path, same shape.

    Scores accumulate in float32 and ties resolve as in the compiled cores (stay on the same text
    position unless advancing is strictly better), so the result is bit-for-bit comparable.
    """
    path = np.zeros(value.shape, dtype=np.int32)
    for b in range(value.shape[0]):
        t_y, t_x = int(t_ys[b]), int(t_xs[b])
        scores = _cumulative_scores(value[b, :t_y, :t_x].astype(np.float32), max_neg_val)
        path[b, :t_y, :t_x] = _backtrack(scores)
    return path


def _cumulative_scores(value: npt.NDArray[np.float32], max_neg_val: float) -> npt.NDArray[np.float32]:
    """Best score of any monotonic path ending at (frame y, text x), for cells a full path can reach."""
    t_y, t_x = value.shape
    neg = np.float32(max_neg_val)
    scores = value.copy()
    for y in range(t_y):
        lowest, highest = max(0, t_x + y - t_y), min(t_x, y + 1)
        for x in range(lowest, highest):
            stay = neg if x == y else scores[y - 1, x]
            if x == 0:
                advance = np.float32(0.0) if y == 0 else neg
            else:
                advance = scores[y - 1, x - 1]
            scores[y, x] = np.float32(max(stay, advance) + value[y, x])
    return scores


def _backtrack(scores: npt.NDArray[np.float32]) -> npt.NDArray[np.int32]:
    t_y, t_x = scores.shape
    path = np.zeros((t_y, t_x), dtype=np.int32)
    x = t_x - 1
    for y in range(t_y - 1, -1, -1):
        path[y, x] = 1
        if x != 0 and (x == y or scores[y - 1, x] < scores[y - 1, x - 1]):
            x -= 1
    return path
