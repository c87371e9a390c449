"""The WaveNet-style stack of the posterior encoder and the flows without a host tensor per call
(replaces `modules.WN.forward`).

piper's `WN.forward` builds `torch.IntTensor([hidden_channels])` on the host every call and hands it to a
TorchScript function that reads it back (`n_channels[0]`) to split the gated activation. That costs a host
tensor per call and, more to the point, the read of a tensor's value stops `torch.compile` from tracing the
stack (a graph break per layer). Here the split uses the Python int directly; the operations and their
order are piper's (add, tanh of the first half, sigmoid of the second, product), so the values are
identical; the gradient goes through autograd's tanh/sigmoid formulas rather than TorchScript's, equal within
float rounding (tests: 1e-6 relative).
"""

from __future__ import annotations

from typing import Any

import torch

from ttsft_daemon.training.fast.patching import replace


def gated_activation(input_a: torch.Tensor, input_b: torch.Tensor, n_channels: int) -> torch.Tensor:
    """tanh(a + b)[:n] * sigmoid(a + b)[n:] over the channel axis (piper's fused_add_tanh_sigmoid_multiply)."""
    in_act = input_a + input_b
    return torch.tanh(in_act[:, :n_channels, :]) * torch.sigmoid(in_act[:, n_channels:, :])


def wn_forward(self: Any, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None,
               **kwargs: Any) -> torch.Tensor:
    hidden: int = self.hidden_channels
    output = torch.zeros_like(x)
    if g is not None:
        g = self.cond_layer(g)
    for i in range(self.n_layers):
        x_in = self.in_layers[i](x)
        if g is not None:
            g_l = g[:, i * 2 * hidden: (i + 1) * 2 * hidden, :]
        else:
            g_l = torch.zeros_like(x_in)
        acts = self.drop(gated_activation(x_in, g_l, hidden))
        res_skip_acts = self.res_skip_layers[i](acts)
        if i < self.n_layers - 1:
            x = (x + res_skip_acts[:, :hidden, :]) * x_mask
            output = output + res_skip_acts[:, hidden:, :]
        else:
            output = output + res_skip_acts
    result: torch.Tensor = output * x_mask
    return result


def install() -> str:
    from piper.train.vits import modules

    replace(modules.WN, "forward", wn_forward)
    return "wn: gated activation without a host tensor per call"
