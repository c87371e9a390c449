"""`torch.compile` of the training step's hot modules (CUDA, fast mode; `FastVitsModel.on_fit_start`).

The fast path's training loop is launch-bound: about 9,700 kernels a step at batch 32, most of them small
elementwise ones (the duration predictor's flows and spline, the WaveNet stacks' gates, the decoder's and
discriminators' activations, the feature-matching loss), so the GPU waits for the host that launches them.
Compiling a module fuses its elementwise chains (and their backward) into a few generated kernels; the
convolutions and matrix products stay cuDNN/cuBLAS calls.

What is compiled (each `TARGETS` entry; only while training with gradients, the eager module otherwise, so
validation and export run piper's code as it is):

    dec      the decoder (HiFi-GAN generator) on the fixed-size slices: one static shape
    disc     each sub-discriminator of the multi-period discriminator on fixed-size audio: static
    dp       the stochastic duration predictor's training branch (`flows.sdp_nll`): text length varies
    flow     the prior's coupling flows: spectrogram length varies
    enc_q    the posterior encoder's WaveNet stack: spectrogram length varies
    enc_p    the text encoder (attention): text length varies
    loss     the feature-matching, generator, discriminator and KL losses

The variable-length modules are compiled with symbolic lengths (`dynamic=True`), so each compiles once,
not once per batch; the static ones once per batch size. Exactness: compiled kernels may round differently
(fused arithmetic), within float32 tolerance of the eager modules (tests/test_training_fast.py compares
them on the CPU), and dropout inside compiled modules draws from the compiled code's generator (same
distribution, another random stream). The loss curve is held to plain piper's run-to-run spread by
bench/train_gpu_vs_piper.py.

Off by default: `TTSFT_FAST_COMPILE=1` turns it on, `TTSFT_FAST_COMPILE=dec,disc` picks targets.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ttsft_daemon.training.fast import flows

ENV = "TTSFT_FAST_COMPILE"
TARGETS = ("dec", "disc", "dp", "flow", "enc_q", "enc_p", "loss")
DYNAMIC = {"dp", "flow", "enc_q", "enc_p"}


def requested_targets(value: str | None = None) -> tuple[str, ...]:
    """Targets named by TTSFT_FAST_COMPILE: 1/true/all: all of them; unset/0/false/off/none: none (the
    default: on the H200 profile compiling did not pay, see bench/RESULTS.md section 4)."""
    raw = (os.environ.get(ENV, "0") if value is None else value).strip().lower()
    if raw in ("1", "true", "yes", "on", "all"):
        return TARGETS
    if raw in ("", "0", "false", "no", "off", "none"):
        return ()
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        raise ValueError(f"{ENV}: unknown targets {unknown} (known: {', '.join(TARGETS)})")
    return names


class TrainingOnly:
    """Calls `compiled` while `module` trains with gradients enabled, `eager` otherwise."""

    def __init__(self, module: torch.nn.Module, eager: Callable[..., Any], compiled: Callable[..., Any]) -> None:
        self.module = module
        self.eager = eager
        self.compiled = compiled

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.module.training and torch.is_grad_enabled():
            return self.compiled(*args, **kwargs)
        return self.eager(*args, **kwargs)


_backend = "inductor"


def _compile(fn: Callable[..., Any], dynamic: bool, mode: str | None) -> Callable[..., Any]:
    compiled: Callable[..., Any] = torch.compile(fn, dynamic=dynamic, mode=mode if _backend == "inductor" else None,
                                                 backend=_backend)
    return compiled


def compile_forward(module: torch.nn.Module, dynamic: bool, mode: str | None = None) -> None:
    """Replace `module.forward` (on this instance) by its compiled version while training."""
    eager = module.forward
    module.forward = TrainingOnly(module, eager, _compile(eager, dynamic, mode))  # type: ignore[method-assign]


def _sdp_nll_of(dp: torch.nn.Module) -> Callable[..., torch.Tensor]:
    def nll(x: torch.Tensor, x_mask: torch.Tensor, w: torch.Tensor, g: torch.Tensor | None,
            noise: torch.Tensor) -> torch.Tensor:
        return flows.sdp_nll(dp, x, x_mask, w, g, noise)

    return nll


def uncompile(model: Any) -> None:
    """Put the eager forwards back (for comparisons in one process)."""
    for module in model.modules():
        if isinstance(module.__dict__.get("forward"), TrainingOnly):
            del module.forward
        module.__dict__.pop("ttsft_nll", None)
    model.__dict__.pop("ttsft_losses", None)


def compile_hot_modules(model: Any, targets: Sequence[str] = TARGETS, static_mode: str | None = None,
                        backend: str = "inductor") -> list[str]:
    """Compile `targets` of a FastVitsModel in place; returns one line per target. `static_mode` is the
    torch.compile mode of the fixed-shape targets (e.g. "reduce-overhead" for CUDA graphs); `backend` other
    than inductor ("aot_eager") checks the tracing on the CPU without generating code."""
    global _backend
    import torch._dynamo

    _backend = backend

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 16)
    gen = model.model_g
    lines: list[str] = []
    for target in targets:
        dynamic = target in DYNAMIC
        mode = None if dynamic else static_mode
        if target == "dec":
            compile_forward(gen.dec, dynamic, mode)
        elif target == "disc":
            for disc in model.model_d.discriminators:
                compile_forward(disc, dynamic, mode)
        elif target == "dp":
            if not isinstance(gen.dp, torch.nn.Module) or not hasattr(gen.dp, "post_flows"):
                continue  # the deterministic duration predictor (use_sdp false) keeps piper's
            setattr(gen.dp, "ttsft_nll", _compile(_sdp_nll_of(gen.dp), dynamic, mode))  # noqa: B010 (a plain attribute)
        elif target == "flow":
            compile_forward(gen.flow, dynamic, mode)
        elif target == "enc_q":
            compile_forward(gen.enc_q.enc, dynamic, mode)
        elif target == "enc_p":
            compile_forward(gen.enc_p, dynamic, mode)
        elif target == "loss":
            from ttsft_daemon.training.fast import model as fast_model

            model.ttsft_losses = {
                "generator": _compile(fast_model.generator_losses, False, None),
                "discriminator": _compile(fast_model.discriminator_losses, False, None),
                "kl": _compile(fast_model.kl_loss, True, None),
            }
        else:
            raise ValueError(f"unknown compile target {target!r}")
        lines.append(f"compiled {target} ({'dynamic lengths' if dynamic else mode or 'static shapes'})")
    return lines
