"""Piper's quality levels as model sizes of `piper.train` (VitsModel init arguments).

`piper.train` (piper-tts 1.8.0) has no quality switch: its VitsModel defaults are the "medium"
architecture, and `vits/config.py` holds the two vocoder layouts piper voices use
(`ModelAudioConfig.low_quality()`, the default, and `high_quality()`). Piper's published voices use:

* x_low:  hidden/inter channels 96, filter channels 384, low-quality vocoder (published at 16 kHz)
* low:    the medium sizes (published at 16 kHz: "low" differs from "medium" by sample rate only)
* medium: the defaults: hidden/inter 192, filter 768, low-quality vocoder (22.05 kHz)
* high:   the defaults with the high-quality vocoder (resblock 1, 512 initial upsample channels)

The sample rate is a separate choice (audio.sample_rate); quality only sets the sizes.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any

QUALITIES = ("x_low", "low", "medium", "high")

_MEDIUM: dict[str, Any] = {
    "hidden_channels": 192,
    "inter_channels": 192,
    "filter_channels": 768,
    "resblock": "2",
    "resblock_kernel_sizes": [3, 5, 7],
    "resblock_dilation_sizes": [[1, 2], [2, 6], [3, 12]],
    "upsample_rates": [8, 8, 4],
    "upsample_initial_channel": 256,
    "upsample_kernel_sizes": [16, 16, 8],
}

MODEL_SIZES: dict[str, dict[str, Any]] = {
    "x_low": {**_MEDIUM, "hidden_channels": 96, "inter_channels": 96, "filter_channels": 384},
    "low": dict(_MEDIUM),
    "medium": dict(_MEDIUM),
    "high": {
        **_MEDIUM,
        "resblock": "1",
        "resblock_kernel_sizes": [3, 7, 11],
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        "upsample_rates": [8, 8, 2, 2],
        "upsample_initial_channel": 512,
        "upsample_kernel_sizes": [16, 16, 4, 4],
    },
}


def model_args(quality: str) -> list[str]:
    """`--model.<name> <value>` arguments of piper.train fit for a quality level."""
    if quality not in MODEL_SIZES:
        raise ValueError(f"unknown quality {quality!r}; choose one of {', '.join(QUALITIES)}")
    args: list[str] = []
    for name, value in MODEL_SIZES[quality].items():
        args += [f"--model.{name}", _cli_value(value)]
    return args


def _cli_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_cli_value(v) for v in value) + "]"
    return str(value)


def _normalised(value: Any) -> Any:
    """Tuples, lists and their string forms ("(3, 5, 7)") compare equal; "2" equals 2."""
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in "([":
            try:
                return _normalised(ast.literal_eval(text))
            except (ValueError, SyntaxError):
                return text
        return text
    if isinstance(value, (list, tuple)):
        return [_normalised(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def size_mismatches(hparams: Mapping[str, Any], quality: str) -> list[str]:
    """Model-size hyper-parameters of a checkpoint that differ from `quality` ([] when they match).

    A key missing from the checkpoint counts as piper's default (the medium value).
    """
    problems = []
    for name, expected in MODEL_SIZES[quality].items():
        actual = hparams.get(name, _MEDIUM[name])
        if _normalised(actual) != _normalised(expected):
            problems.append(f"{name} is {actual!r}, {quality} needs {expected!r}")
    return problems


def quality_of(hparams: Mapping[str, Any]) -> str | None:
    """The quality level whose sizes a checkpoint has ("medium" also stands for "low"), or None."""
    for quality in ("x_low", "medium", "high"):
        if not size_mismatches(hparams, quality):
            return quality
    return None
