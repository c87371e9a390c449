#!/usr/bin/env python3
"""Where the fast training step's time goes, and what `torch.compile` of its hot modules changes (one GPU).

For each variant (which modules `ttsft_daemon.training.fast.compiled` compiles) a fresh medium
`FastVitsModel` (same seed) trains on random batches shaped like the bench dataset's (batch 32, 2.6-4 s
clips: 226-347 spectrogram frames, 40-80 phonemes; several distinct lengths, so recompiles show), with
piper's manual step (generator loss backward + AdamW, discriminator loss backward + AdamW). Per variant:
compile/warm-up seconds, recompiles and graph breaks, ms per step and clips/s over timed steps, CUDA
kernels per step and kernel time per step (torch.profiler), GPU busy = kernel time / step time, host
syncs per step (torch.cuda sync debug mode), and the top kernels by count.

    python3 bench/train_gpu_profile.py --out $OUT/profile.json                 # GPU host
    .venv/bin/python bench/train_gpu_profile.py --tiny --backend aot_eager   # CPU check of the code path
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GRAPHED = ("disc_train", "disc_gen", "dec", "dp", "enc_p", "enc_q", "flow")  # = fast.graphs.TARGETS
# name: (compiled targets, compile mode for static targets, graphed parts, bf16 decoder + discriminators)
VARIANTS: dict[str, tuple[tuple[str, ...], str | None, tuple[str, ...], bool]] = {
    "eager": ((), None, (), False),
    "bf16": ((), None, (), True),
    "graphs": ((), None, GRAPHED, False),
    "graphs-bf16": ((), None, GRAPHED, True),
    "graphs4-bf16": ((), None, ("disc_train", "disc_gen", "dec", "dp"), True),  # the first round's four parts
    "graphs-disc-bf16": ((), None, ("disc_train", "disc_gen"), True),
    "eager-channels-last": ((), None, (), False),  # experiment: period discriminators' conv weights channels-last
    "static": (("dec", "disc", "loss"), None, (), False),
    "dynamic": (("dp", "flow", "enc_q", "enc_p"), None, (), False),
    "all": (("dec", "disc", "dp", "flow", "enc_q", "enc_p", "loss"), None, (), False),
    "all-cudagraphs": (("dec", "disc", "dp", "flow", "enc_q", "enc_p", "loss"), "reduce-overhead", (), False),
}
HOST_LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch",
                 "cudaMemcpyAsync", "cudaMemsetAsync")
TINY = {"resblock": "2", "resblock_kernel_sizes": (3, 5, 7), "resblock_dilation_sizes": ((1, 2), (2, 6), (3, 12)),
        "upsample_rates": (8, 8, 4), "upsample_initial_channel": 32, "upsample_kernel_sizes": (16, 16, 8),
        "inter_channels": 32, "hidden_channels": 32, "filter_channels": 64, "n_layers": 2,
        "segment_size": 1024, "num_symbols": 40}


def make_batches(count: int, batch: int, device: str, tiny: bool, seed: int = 0) -> list[Any]:
    import torch
    from piper.train.vits.dataset import Batch

    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        lo, hi, plo, phi = (20, 40, 6, 12) if tiny else (226, 348, 40, 81)
        frames = torch.randint(lo, hi, (batch,), generator=gen).sort(descending=True).values
        phonemes = torch.randint(plo, phi, (batch,), generator=gen)
        t, p = int(frames.max()), int(phonemes.max())
        spec = torch.rand(batch, 513, t, generator=gen) * (torch.arange(t) < frames[:, None, None])
        audio = (torch.rand(batch, 1, t * 256, generator=gen) - 0.5) * 0.5
        audio = audio * (torch.arange(t * 256) < frames[:, None, None] * 256)
        ids = torch.randint(1, 40, (batch, p), generator=gen) * (torch.arange(p) < phonemes[:, None])
        values = {"phoneme_ids": ids, "phoneme_lengths": phonemes, "spectrograms": spec,
                  "spectrogram_lengths": frames, "audios": audio, "audio_lengths": frames * 256}
        out.append(Batch(**{k: v.to(device) for k, v in values.items()}))
    return out


def step(model: Any, opts: tuple[Any, Any], batch: Any) -> tuple[Any, Any]:
    opt_g, opt_d = opts
    loss_g, loss_d, _ = model._compute_loss(batch)
    opt_g.zero_grad()
    loss_g.backward()
    opt_g.step()
    opt_d.zero_grad()
    loss_d.backward()
    opt_d.step()
    return loss_g.detach(), loss_d.detach()


def step_phases(model: Any, opts: tuple[Any, Any], batch: Any) -> list[float]:
    """`step` with the host's time per phase (no syncs: what the host spends issuing each part)."""
    opt_g, opt_d = opts
    marks = [time.perf_counter()]
    loss_g, loss_d, _ = model._compute_loss(batch)
    marks.append(time.perf_counter())
    opt_g.zero_grad()
    loss_g.backward()
    marks.append(time.perf_counter())
    opt_g.step()
    marks.append(time.perf_counter())
    opt_d.zero_grad()
    loss_d.backward()
    marks.append(time.perf_counter())
    opt_d.step()
    marks.append(time.perf_counter())
    return [b - a for a, b in itertools.pairwise(marks)]


def host_breakdown(model: Any, opts: tuple[Any, Any], batches: list[Any], steps: int = 6) -> dict[str, Any]:
    """Host ms per phase and per step (no syncs inside), the step's wall time with the device (one sync at
    the end), Python's garbage collections in those steps, and the graphs (part, first input shape: the
    parameters they take)."""
    import gc

    import torch

    collections_seen: list[float] = []
    started_at: list[float] = []

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started_at.append(time.perf_counter())
        elif started_at:
            collections_seen.append(time.perf_counter() - started_at.pop())

    torch.cuda.synchronize()
    gc.callbacks.append(on_gc)
    try:
        began = time.perf_counter()
        phases = [step_phases(model, opts, batches[i % len(batches)]) for i in range(steps)]
        issued = time.perf_counter() - began
        torch.cuda.synchronize()
        wall = time.perf_counter() - began
    finally:
        gc.callbacks.remove(on_gc)
    names = ("forward", "backward_g", "adamw_g", "backward_d", "adamw_d")
    result: dict[str, Any] = {
        "host_ms": {n: round(1000 * sum(p[i] for p in phases) / steps, 2) for i, n in enumerate(names)},
        "host_ms_per_step": round(1000 * issued / steps, 2), "wall_ms_per_step": round(1000 * wall / steps, 2),
        "gc_collections": len(collections_seen), "gc_ms_per_step": round(1000 * sum(collections_seen) / steps, 2),
    }
    state = model.__dict__.get("ttsft_graphs")
    if state is not None:
        result["graphs"] = {f"{key[0]} {key[1][0]}": len(call.params) for key, call in state.calls.items()}
    return result


def channels_last_discriminators(model: Any) -> int:
    """Experiment: each 2-D convolution of the period discriminators gets its (weight-normed) weight in
    channels-last layout, so cuDNN's NHWC tensor-core kernels take the activations without converting them
    (the folded audio has one channel, so its layout alone decides nothing). Returns the convolutions changed."""
    import torch

    def to_channels_last(module: torch.nn.Module, _: Any) -> None:
        module.weight = module.weight.contiguous(memory_format=torch.channels_last)  # after weight_norm's hook

    changed = 0
    for disc in model.model_d.discriminators:
        for module in disc.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.register_forward_pre_hook(to_channels_last)
                changed += 1
    return changed


def run_variant(name: str, args: argparse.Namespace, batches: list[Any]) -> dict[str, Any]:
    import torch
    import torch._dynamo
    from torch.profiler import ProfilerActivity, profile

    from ttsft_daemon.training.fast import compiled
    from ttsft_daemon.training.fast.model import FastVitsModel

    targets, mode, graphed, bf16 = VARIANTS[name]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(0)
    kwargs: dict[str, Any] = {"mos_metric": None, **(TINY if args.tiny else {})}
    model = FastVitsModel(**kwargs).to(args.device).train()
    (opt_g, opt_d), _ = model.configure_optimizers()
    opts = (opt_g, opt_d)
    cuda = args.device == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    compiled.compile_hot_modules(model, targets, static_mode=mode, backend=args.backend)
    if cuda and (graphed or bf16):
        print(f"[profile] {name}: {model.enable_cuda_parts(graphed, torch.bfloat16 if bf16 else None)}", flush=True)
    changed = channels_last_discriminators(model) if name.endswith("channels-last") else 0
    started = time.perf_counter()
    for b in batches + batches[:2]:  # every distinct shape once: compiles and recompiles happen here
        step(model, opts, b)
    sync()
    warm_s = time.perf_counter() - started
    counters = torch._dynamo.utils.counters
    graphs = int(counters["stats"].get("unique_graphs", 0))
    breaks = int(sum(counters["graph_break"].values()))
    recompiles = int(counters["recompiles"].get("total", 0)) if "recompiles" in counters else None

    started = time.perf_counter()
    losses = None
    done = 0
    while done < args.steps and (done < 2 or time.perf_counter() - started < args.max_seconds):
        losses = step(model, opts, batches[done % len(batches)])
        done += 1
    sync()
    step_s = (time.perf_counter() - started) / done
    result: dict[str, Any] = {
        "targets": list(targets), "static_mode": mode, "graphed": list(graphed), "bf16": bf16,
        "channels_last_convs": changed,
        "warmup_seconds": round(warm_s, 1),
        "graphs": graphs, "graph_breaks": breaks, "recompiles": recompiles,
        "timed_steps": done, "ms_per_step": round(step_s * 1000, 2), "clips_per_s": round(args.batch / step_s, 1),
        "last_losses": [round(float(v), 4) for v in losses] if losses else None,
        "graphs_after_timed": int(counters["stats"].get("unique_graphs", 0)),
    }
    if cuda:
        result["peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        result["host"] = host_breakdown(model, opts, batches)
        print(f"[profile] {name} host: {json.dumps(result['host'])}", flush=True)
        prof_steps = 3
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for i in range(prof_steps):
                step(model, opts, batches[i % len(batches)])
            sync()
        kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
        kernel_us = sum(e.device_time for e in kernels) / prof_steps
        cpu_ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:20]
        result["top_cpu_ops"] = [(e.key[:60], round(e.count / prof_steps),
                                  round(e.self_cpu_time_total / 1000 / prof_steps, 2)) for e in cpu_ops]
        names = collections.Counter(e.name[:80] for e in kernels)
        launches = sum(1 for e in prof.events() if e.device_type.name == "CPU" and e.name in HOST_LAUNCHES)
        graph_state = model.__dict__.get("ttsft_graphs")
        result.update({
            "host_launches_per_step": round(launches / prof_steps),
            "graphs_captured": dict(graph_state.captured) if graph_state is not None else None,
            "graph_failures": dict(graph_state.failed) if graph_state is not None else None,
            "layout_conversions_per_step": round(sum(c for n, c in names.items()
                                                     if "nchwToNhwc" in n or "nhwcToNchw" in n) / prof_steps),
            "cuda_events_per_step": round(len(kernels) / prof_steps),
            "kernel_ms_per_step": round(kernel_us / 1000, 2),
            "gpu_busy": round(kernel_us / 1e6 / step_s, 3),
            "top_kernels": [(n, round(c / prof_steps)) for n, c in names.most_common(15)],
        })
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step(model, opts, batches[0])
            sync()
        torch.cuda.set_sync_debug_mode(0)
        syncs = [str(w.message)[:100] for w in caught if "synchroniz" in str(w.message).lower()]
        result["host_syncs_per_step"] = len(syncs)
        result["sync_examples"] = sorted(set(syncs))[:5]
        torch.cuda.reset_peak_memory_stats()
    del model, opts, opt_g, opt_d
    return result


def attribute(args: argparse.Namespace, batches: list[Any]) -> dict[str, Any]:
    """CUDA kernels of one eager step by part: each top-level module's forward (its ranges' descendants),
    the rest of the forward, each backward and each optimizer step; layout conversions counted apart."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from ttsft_daemon.training.fast.model import FastVitsModel

    torch.manual_seed(0)
    model = FastVitsModel(mos_metric=None, **(TINY if args.tiny else {})).to(args.device).train()
    (opt_g, opt_d), _ = model.configure_optimizers()
    gen = model.model_g
    parts = [("enc_p", gen.enc_p), ("enc_q", gen.enc_q), ("flow", gen.flow), ("dp", gen.dp), ("dec", gen.dec)]
    parts += [("disc", d) for d in model.model_d.discriminators]
    ranges: dict[str, Any] = {}

    def hooks(name: str, module: torch.nn.Module) -> None:
        def pre(*_: Any) -> None:
            ranges[name] = record_function(f"part:{name}")
            ranges[name].__enter__()

        def post(*_: Any) -> None:
            ranges.pop(name).__exit__(None, None, None)

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    for name, module in parts:
        hooks(name, module)
    cuda = args.device == "cuda"
    for b in batches[:2]:
        step(model, (opt_g, opt_d), b)
    if cuda:
        torch.cuda.synchronize()
    state: dict[str, Any] = {}

    def forward() -> None:
        state["g"], state["d"], _ = model._compute_loss(batches[0])

    def backward_g() -> None:
        opt_g.zero_grad()
        state["g"].backward()

    def backward_d() -> None:
        opt_d.zero_grad()
        state["d"].backward()

    def kernels(event: Any) -> list[Any]:
        found = list(event.kernels)
        for child in event.cpu_children:
            found += kernels(child)
        return found

    def summary(ks: list[Any]) -> dict[str, Any]:
        return {"kernels": len(ks), "layout_conversions": sum("nchwToNhwc" in k.name or "nhwcToNchw" in k.name
                                                              for k in ks),
                "kernel_ms": round(sum(k.duration for k in ks) / 1000, 2)}

    out: dict[str, Any] = {}
    for phase, fn in (("forward", forward), ("backward_g", backward_g), ("adamw_g", opt_g.step),
                      ("backward_d", backward_d), ("adamw_d", opt_d.step)):
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            if cuda:
                torch.cuda.synchronize()
        device = [e for e in prof.events() if e.device_type.name == "CUDA"]
        out[phase] = {"kernels": len(device),
                      "layout_conversions": sum("nchwToNhwc" in e.name or "nhwcToNchw" in e.name for e in device),
                      "kernel_ms": round(sum(e.device_time for e in device) / 1000, 2)}
        if phase == "forward":  # the forward's share of each module (their ranges' descendants)
            for event in prof.events():
                if event.name.startswith("part:"):
                    part = summary(kernels(event))
                    entry = out.setdefault(f"forward:{event.name[5:]}", dict.fromkeys(part, 0))
                    for key, value in part.items():
                        entry[key] = round(entry[key] + value, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="eager,bf16,graphs,graphs-bf16")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-seconds", type=float, default=40.0, help="cap on a variant's timed steps")
    p.add_argument("--shapes", type=int, default=6, help="distinct random batches (lengths)")
    p.add_argument("--tiny", action="store_true", help="x_low-sized model, batch 3, 2 steps, on the CPU")
    p.add_argument("--backend", default="inductor", help="torch.compile backend (aot_eager: tracing only)")
    p.add_argument("--attribute", action="store_true", help="kernels of one eager step by module (CUDA)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    import torch

    from ttsft_daemon.training import fast, launcher

    launcher.install_fixes()
    fast.install()
    torch.backends.cuda.matmul.allow_tf32 = True  # as the launcher
    torch.backends.cudnn.allow_tf32 = True
    args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.tiny:
        args.batch, args.steps, args.shapes = 3, 2, 2
    batches = make_batches(args.shapes, args.batch, args.device, args.tiny)
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
                               "torch": torch.__version__, "batch": args.batch, "variants": {}}
    if args.attribute:
        results["attribution"] = attribute(args, batches)
        print(f"[profile] attribution: {json.dumps(results['attribution'])}", flush=True)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1))
    for name in [v for v in args.variants.split(",") if v]:
        print(f"[profile] {name} ...", flush=True)
        try:
            results["variants"][name] = run_variant(name, args, batches)
        except Exception as exc:  # a failing variant is a result too
            results["variants"][name] = {"error": f"{type(exc).__name__}: {str(exc)[:2000]}"}
        print(f"[profile] {name}: {json.dumps(results['variants'][name])}", flush=True)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
