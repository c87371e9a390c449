"""Host-to-device copies taken out of the flows (replaces `modules.Flip.forward` and the training branch
of `models.StochasticDurationPredictor.forward`).

piper's `Flip` builds its zero log-determinant on the host and copies it over (`torch.zeros(b).type_as(x)`),
eight times a step; the duration predictor draws its posterior noise on the host and copies it the same
way. A copy from pageable host memory waits for the device. Here the zeros are made on the device, and the
noise is still drawn by the CPU generator (same numbers as piper) but sent from pinned memory without
waiting. Both are exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F

from ttsft_daemon.training.fast.patching import replace
from ttsft_daemon.training.fast.segments import to_device_async

_original_sdp_forward: Callable[..., Any] | None = None


def flip_forward(self: Any, x: torch.Tensor, *args: Any, reverse: bool = False,
                 **kwargs: Any) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    x = torch.flip(x, [1])
    if reverse:
        return x
    return x, x.new_zeros(x.size(0))


def sdp_forward(self: Any, x: torch.Tensor, x_mask: torch.Tensor, w: torch.Tensor | None = None,
                g: torch.Tensor | None = None, reverse: bool = False, noise_scale: float = 1.0) -> Any:
    """The stochastic duration predictor's negative log-likelihood [b] (training); inference as piper."""
    if reverse:
        assert _original_sdp_forward is not None
        return _original_sdp_forward(self, x, x_mask, w=w, g=g, reverse=reverse, noise_scale=noise_scale)
    assert w is not None
    graphs = self.__dict__.get("ttsft_graphs")  # fast/graphs.py (CUDA): the padded, graphed branch
    if graphs is not None and g is None and x.is_cuda and self.training and torch.is_grad_enabled() \
            and graphs.wants("dp"):
        return graphed_nll(self, graphs, x, x_mask, w)
    nll = getattr(self, "ttsft_nll", None)  # the compiled version where `compiled.compile_hot_modules` set one
    if nll is None or not (self.training and torch.is_grad_enabled()):
        eager: torch.Tensor = sdp_nll(self, x, x_mask, w, g, None)
        return eager
    # the noise is drawn before the convolutions here, not between them as piper does: the same CPU draws,
    # since on CUDA the convolutions' dropout uses the device's generator, not the CPU's
    noise = to_device_async(torch.randn(w.size(0), 2, w.size(2)), x.device)
    compiled: torch.Tensor = nll(x, x_mask, w, g, noise)
    return compiled


def graphed_nll(self: Any, graphs: Any, x: torch.Tensor, x_mask: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`sdp_nll` with the text axis zero-padded to a multiple of graphs.TEXT_BUCKET (masked: the same nll),
    through the step's graph of that length. The noise is drawn by the CPU generator as piper draws it, for
    the text length given (the batch's, once `model.bucketed` has padded it)."""
    from ttsft_daemon.training.fast.graphs import TEXT_BUCKET, pad_time

    noise = to_device_async(torch.randn(w.size(0), 2, w.size(2)), x.device)
    padded, _ = pad_time([torch.detach(x), x_mask, w, noise], TEXT_BUCKET)

    def nll(x: torch.Tensor, x_mask: torch.Tensor, w: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return sdp_nll(self, x, x_mask, w, None, noise)

    result: torch.Tensor = graphs.run("dp", nll, padded, self, mixed=False)
    return result


def sdp_nll(self: Any, x: torch.Tensor, x_mask: torch.Tensor, w: torch.Tensor, g: torch.Tensor | None,
            noise: torch.Tensor | None) -> torch.Tensor:
    """The duration predictor's training branch; `noise` None draws it where piper does (CPU generator);
    given, nothing here touches the host (compilable)."""
    x = self.pre(torch.detach(x))
    if g is not None:
        x = x + self.cond(torch.detach(g))
    x = self.convs(x, x_mask)
    x = self.proj(x) * x_mask

    h_w = self.post_pre(w)
    h_w = self.post_convs(h_w, x_mask)
    h_w = self.post_proj(h_w) * x_mask
    if noise is None:
        noise = to_device_async(torch.randn(w.size(0), 2, w.size(2)), x.device)  # the CPU generator, as piper
    e_q = noise.to(dtype=x.dtype) * x_mask
    z_q = e_q
    logdet_tot_q: Any = 0
    for flow in self.post_flows:
        z_q, logdet_q = flow(z_q, x_mask, g=(x + h_w))
        logdet_tot_q += logdet_q
    z_u, z1 = torch.split(z_q, [1, 1], 1)
    u = torch.sigmoid(z_u) * x_mask
    z0 = (w - u) * x_mask
    logdet_tot_q += torch.sum((F.logsigmoid(z_u) + F.logsigmoid(-z_u)) * x_mask, [1, 2])
    logq = torch.sum(-0.5 * (math.log(2 * math.pi) + (e_q**2)) * x_mask, [1, 2]) - logdet_tot_q

    logdet_tot: Any = 0
    z0, logdet = self.log_flow(z0, x_mask)
    logdet_tot += logdet
    z = torch.cat([z0, z1], 1)
    for flow in self.flows:
        z, logdet = flow(z, x_mask, g=x, reverse=False)
        logdet_tot = logdet_tot + logdet
    nll = torch.sum(0.5 * (math.log(2 * math.pi) + (z**2)) * x_mask, [1, 2]) - logdet_tot
    result: torch.Tensor = nll + logq
    return result


def install() -> str:
    global _original_sdp_forward
    from piper.train.vits import models, modules

    replace(modules.Flip, "forward", flip_forward)
    if models.StochasticDurationPredictor.forward is not sdp_forward:
        _original_sdp_forward = models.StochasticDurationPredictor.forward
        replace(models.StochasticDurationPredictor, "forward", sdp_forward)
    return "flows: device-side zeros, duration noise sent without a sync"
