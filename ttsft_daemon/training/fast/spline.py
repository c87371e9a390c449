"""The flows' rational-quadratic spline without boolean-mask indexing (replaces piper's
`transforms.piecewise_rational_quadratic_transform` as the coupling flows call it).

piper selects the inputs inside the spline's interval with boolean masks (`inputs[inside]`,
`outputs[outside] = ...`): each such index needs the count of selected elements on the host, a device
sync, about 18 a step. Here the spline is evaluated on every element, with the inputs clamped into the
interval, and `torch.where` keeps the spline's value inside and the identity (log-determinant 0) outside.
Every element goes through the same arithmetic as in piper's version (piper's own
`rational_quadratic_spline` does it), so values are equal; outside the interval the spline's branch gets
a zero gradient, as the masked version gives it none.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ttsft_daemon.training.fast.patching import replace


def piecewise_rational_quadratic_transform(
    inputs: torch.Tensor,
    unnormalized_widths: torch.Tensor,
    unnormalized_heights: torch.Tensor,
    unnormalized_derivatives: torch.Tensor,
    inverse: bool = False,
    tails: str | None = None,
    tail_bound: float = 1.0,
    **bins: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """piper's transform; the linear-tails case (the one the flows use) without syncs."""
    from piper.train.vits import transforms

    spline: Any = transforms.rational_quadratic_spline
    if tails is None:
        result: tuple[torch.Tensor, torch.Tensor] = spline(
            inputs, unnormalized_widths, unnormalized_heights, unnormalized_derivatives, inverse=inverse, **bins)
        return result
    if tails != "linear":
        raise RuntimeError(f"{tails} tails are not implemented.")
    min_derivative = float(bins.get("min_derivative", transforms.DEFAULT_MIN_DERIVATIVE))
    constant = float(np.log(np.exp(1 - min_derivative) - 1))
    derivatives = F.pad(unnormalized_derivatives, pad=(1, 1))
    derivatives[..., 0] = constant
    derivatives[..., derivatives.size(-1) - 1] = constant

    inside = (inputs >= -tail_bound) & (inputs <= tail_bound)
    spline_out, spline_logdet = spline(
        inputs=inputs.clamp(-tail_bound, tail_bound),
        unnormalized_widths=unnormalized_widths,
        unnormalized_heights=unnormalized_heights,
        unnormalized_derivatives=derivatives,
        inverse=inverse,
        left=-tail_bound,
        right=tail_bound,
        bottom=-tail_bound,
        top=tail_bound,
        **bins,
    )
    outputs = torch.where(inside, spline_out, inputs)
    logabsdet = torch.where(inside, spline_logdet, torch.zeros((), dtype=inputs.dtype, device=inputs.device))
    return outputs, logabsdet


def install() -> str:
    from piper.train.vits import modules

    replace(modules, "piecewise_rational_quadratic_transform", piecewise_rational_quadratic_transform)
    return "spline: no boolean-mask indexing in the flows"
