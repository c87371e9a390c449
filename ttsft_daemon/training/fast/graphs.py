"""CUDA graphs of the training step's self-contained parts (CUDA, fast mode, one process).

The fast step has no host syncs left, yet the GPU still waits: ~15,600 kernels a step, each launched by
the host (bench/RESULTS.md section 4). A CUDA graph records a part's kernels once and replays them with
one launch. Graphed here, each forward and its backward as two graphs inside one autograd node:

    disc_train   the discriminator step's pass: all sub-discriminators over [real; generated.detach()]
                 (one batch of 2b), parameters trainable: its backward gives the discriminator's gradients
    disc_gen     the generator step's pass over the generated audio with the discriminator's parameters
                 frozen: its backward gives the gradient of the generated audio only
    dec          the decoder (HiFi-GAN generator) on the fixed-size latent slices
    dp           the stochastic duration predictor's training branch (`flows.sdp_nll`)
    enc_p        the text encoder (attention, feed-forward)
    enc_q        the posterior encoder (WaveNet stack over the spectrogram, its sampling noise)
    flow         the prior's coupling flows

The text and spectrogram lengths vary by batch, so while these parts are graphed the batch is padded
(zeros, outside every mask) to a multiple of `TEXT_BUCKET` phonemes and `FRAME_BUCKET` frames
(`FastVitsModel._compute_loss`): a few shapes, a graph each. Each part is a pure function of its tensor
inputs and parameters (no host reads, no host copies: the fast path's other pieces removed them), with
fixed shapes per graph; a new shape captures a new graph (at most `MAX_GRAPHS` per part, and only while
the device has `MIN_FREE_BYTES` free; eager otherwise). Exactness: a replay runs the kernels the eager call
ran, so values are the eager module's; the padding changes nothing inside the masks (masked convolutions,
attention with masked keys, masked sums; tests/test_training_fast.py), and dropout and the posterior's
noise draw from the device generator as in eager mode (other draws for the padded shapes: the same
distribution, another stream).
Parameters are read in place, so optimizer updates and checkpoint loads (in-place copies) are seen.
Used only while training with gradients on CUDA in a single process (DDP's gradient hooks are not
graphed); a capture that fails switches its part back to eager for the rest of the run, with a line.

`TTSFT_FAST_GRAPHS` picks the parts: unset/1/all: all (the default); 0/off/none: none; or a list.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils import _pytree as pytree

ENV = "TTSFT_FAST_GRAPHS"
TARGETS = ("disc_train", "disc_gen", "dec", "dp", "enc_p", "enc_q", "flow")
MAX_GRAPHS = 8
MIN_FREE_BYTES = 4 << 30
TEXT_BUCKET = 16
FRAME_BUCKET = 32
WARMUP = 2


def requested_targets(value: str | None = None) -> tuple[str, ...]:
    raw = (os.environ.get(ENV, "1") if value is None else value).strip().lower()
    if raw in ("", "1", "true", "yes", "on", "all"):
        return TARGETS
    if raw in ("0", "false", "no", "off", "none"):
        return ()
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        raise ValueError(f"{ENV}: unknown parts {unknown} (known: {', '.join(TARGETS)})")
    return names


def autocast(dtype: torch.dtype | None, device_type: str = "cuda") -> contextlib.AbstractContextManager[Any]:
    """Autocast to `dtype` (None: a no-op); without its weight cache, which graph capture cannot hold."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype, cache_enabled=False)


def _leaves(module: torch.nn.Module | None) -> list[tuple[torch.nn.Module, str, torch.nn.Parameter]]:
    """(owner, name, parameter) of each trainable parameter of `module`, in a fixed order."""
    if module is None:
        return []
    found = []
    for owner in module.modules():
        for name, param in owner._parameters.items():
            if param is not None and param.requires_grad:
                found.append((owner, name, param))
    return found


@contextlib.contextmanager
def _aliased(leaves: Sequence[tuple[torch.nn.Module, str, torch.nn.Parameter]]) -> Iterator[list[torch.Tensor]]:
    """Inside the block the modules read fresh leaf tensors sharing each parameter's memory (yielded).

    A capture's gradients are taken with respect to these, not to the parameters: a parameter's gradient
    accumulator may have been made on another stream (an eager step, weight norm's cached weight keeps it
    alive), and accumulating there from the capture stream would join that stream to the capture."""
    aliases = [param.detach().requires_grad_(True) for _, _, param in leaves]
    for (owner, name, _), alias in zip(leaves, aliases, strict=True):
        owner._parameters[name] = alias  # type: ignore[assignment]
    try:
        yield aliases
    finally:
        for owner, name, param in leaves:
            owner._parameters[name] = param


class GraphedCall:
    """`fn(*args)` captured as a forward graph and a backward graph (the inputs' and `module`'s trainable
    parameters' gradients).

    `args` are the first call's tensors: their shapes, dtypes and which require grad are the graph's;
    later calls copy their tensors into the captured inputs. `module`: the parameters `fn` reads whose
    gradients the backward graph computes (None: none; e.g. a frozen module)."""

    def __init__(self, fn: Callable[..., Any], args: Sequence[torch.Tensor], module: torch.nn.Module | None,
                 dtype: torch.dtype | None) -> None:
        leaves = _leaves(module)
        self.params = tuple(param for _, _, param in leaves)
        self.pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # cuDNN/cuBLAS handles, workspaces, lazy inits: not in the capture
            for _ in range(WARMUP):
                inputs = [a.detach().clone().requires_grad_(a.requires_grad) for a in args]
                with _aliased(leaves) as aliases, autocast(dtype):
                    outs = [o for o in pytree.tree_leaves(fn(*inputs)) if o.requires_grad]
                surface = [t for t in inputs if t.requires_grad] + aliases
                if outs and surface:
                    torch.autograd.grad(outs, surface, [torch.ones_like(o) for o in outs], allow_unused=True)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()

        self.inputs = tuple(a.detach().clone().requires_grad_(a.requires_grad) for a in args)
        self.forward_graph = torch.cuda.CUDAGraph()
        with _aliased(leaves) as aliases, \
                torch.cuda.graph(self.forward_graph, pool=self.pool, capture_error_mode="thread_local"), \
                autocast(dtype):
            result = fn(*self.inputs)
        surface = [t for t in self.inputs if t.requires_grad] + aliases
        flat, self.spec = pytree.tree_flatten(result)
        self.outputs: tuple[torch.Tensor, ...] = tuple(flat)
        self.differentiable = tuple(o.requires_grad for o in self.outputs)
        self.grad_outputs = tuple(torch.zeros_like(o) for o, d in zip(self.outputs, self.differentiable,
                                                                      strict=True) if d)
        self.backward_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.backward_graph, pool=self.pool, capture_error_mode="thread_local"):
            grads = torch.autograd.grad([o for o in self.outputs if o.requires_grad], surface,
                                        list(self.grad_outputs), allow_unused=True)
        grads_of = dict(zip((id(t) for t in surface), grads, strict=True))
        self.input_grads = tuple(grads_of.get(id(t)) if t.requires_grad else None for t in self.inputs)
        self.param_grads = tuple(grads_of.get(id(a)) for a in aliases)
        torch.cuda.synchronize()

    def __call__(self, *args: torch.Tensor) -> Any:
        flat = _Replay.apply(self, *args, *self.params)  # type: ignore[no-untyped-call]
        return pytree.tree_unflatten(list(flat), self.spec)


class _Replay(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, call: GraphedCall, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        ctx.call = call
        for static, given in zip(call.inputs, tensors, strict=False):  # the user's args come first
            if static.data_ptr() != given.data_ptr():
                static.copy_(given)
        call.forward_graph.replay()
        outputs = tuple(o.detach() for o in call.outputs)
        ctx.mark_non_differentiable(*(o for o, d in zip(outputs, call.differentiable, strict=True) if not d))
        return outputs

    @staticmethod
    @torch.autograd.function.once_differentiable  # type: ignore[untyped-decorator]
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        call: GraphedCall = ctx.call
        wanted = (g for g, d in zip(grads, call.differentiable, strict=True) if d)
        for static, grad in zip(call.grad_outputs, wanted, strict=True):
            if grad is None:
                static.zero_()
            elif static.data_ptr() != grad.data_ptr():
                static.copy_(grad)
        call.backward_graph.replay()
        out: list[torch.Tensor | None] = [None]  # the GraphedCall argument
        out += [g.detach() if g is not None else None for g in call.input_grads]
        out += [g.detach() if g is not None else None for g in call.param_grads]
        return tuple(out)


def _signature(args: Sequence[torch.Tensor]) -> tuple[Any, ...]:
    return tuple((tuple(a.shape), a.dtype, a.requires_grad) for a in args)


class StepGraphs:
    """The graphed parts of one FastVitsModel: captured on first use per shape, eager where they cannot be."""

    def __init__(self, targets: Sequence[str], dtype: torch.dtype | None) -> None:
        self.targets = set(targets)
        self.dtype = dtype
        self.calls: dict[tuple[Any, ...], GraphedCall] = {}
        self.failed: dict[str, str] = {}
        self.captured: dict[str, int] = dict.fromkeys(TARGETS, 0)
        self.paused = False  # `no_graphs`: eager (still under the autocast dtype)

    def wants(self, target: str) -> bool:
        return target in self.targets and target not in self.failed and not self.paused

    def run(self, target: str, fn: Callable[..., Any], args: Sequence[torch.Tensor],
            module: torch.nn.Module | None, mixed: bool = True) -> Any:
        """`fn(*args)` through its graph (capturing it on first use of these shapes); eager once the part
        has failed or has `MAX_GRAPHS` graphs. `mixed`: under the autocast dtype (if any), graphed or not."""
        dtype = self.dtype if mixed else None
        key = (target, *_signature(args))
        call = None if self.paused else self.calls.get(key)
        if call is None and self.wants(target) and args[0].is_cuda and self.captured[target] < MAX_GRAPHS \
                and torch.cuda.mem_get_info(args[0].device)[0] >= MIN_FREE_BYTES:
            try:
                call = GraphedCall(fn, args, module, dtype)
            except Exception as exc:  # any capture failure: this part stays eager
                self.failed[target] = f"{type(exc).__name__}: {str(exc)[:300]}"
                print(f"[ttsft] fast graphs: {target} stays eager ({self.failed[target]})", file=sys.stderr,
                      flush=True)
                torch.cuda.synchronize()
            else:
                self.calls[key] = call
                self.captured[target] += 1
        if call is None:
            with autocast(dtype):
                return fn(*args)
        return call(*args)


def pad_time(tensors: Sequence[torch.Tensor], multiple: int) -> tuple[list[torch.Tensor], int]:
    """Each tensor zero-padded on its last axis to the next multiple of `multiple`; returns them and the
    original length."""
    length = tensors[0].size(-1)
    padded = -(-length // multiple) * multiple
    if padded == length:
        return list(tensors), length
    return [torch.nn.functional.pad(t, (0, padded - length)) for t in tensors], length


@contextlib.contextmanager
def no_graphs(model: Any) -> Iterator[None]:
    """Run `model`'s graphed parts eagerly inside the block (for comparisons)."""
    state: StepGraphs | None = model.__dict__.get("ttsft_graphs")
    if state is not None:
        state.paused = True
    try:
        yield
    finally:
        if state is not None:
            state.paused = False
