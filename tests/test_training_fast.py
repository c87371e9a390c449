"""The fast training pieces (ttsft_daemon.training.fast) against piper.train's originals, on random inputs.

Exact (torch.equal) where the change only removes syncs or reorders nothing; a stated tolerance where the
arithmetic may round differently. The Triton kernel runs where CUDA and Triton exist (the GPU bench host).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from ttsft_daemon.training import fast, launcher
from ttsft_daemon.training.fast import checkpoint as fast_checkpoint
from ttsft_daemon.training.fast import compiled, flows, graphs, losses, mas, segments, spline, wn
from ttsft_daemon.training.mas import maximum_path_reference

launcher.install_fixes()  # piper's alignment core (fix 1), needed by its models
from piper.train.vits import commons, mel_processing, models, modules, transforms  # noqa: E402
from piper.train.vits import losses as piper_losses  # noqa: E402
from piper.train.vits import monotonic_align as piper_mas  # noqa: E402
from piper.train.vits.dataset import Batch  # noqa: E402
from piper.train.vits.lightning import VitsModel  # noqa: E402

fast.uninstall()  # this module compares against piper's own functions; tests install where they need to


@pytest.fixture
def installed() -> Iterator[None]:
    fast.install()
    try:
        yield
    finally:
        fast.uninstall()


def test_install_replaces_and_uninstall_restores() -> None:
    original = commons.slice_segments
    lines = fast.install()
    try:
        assert len(lines) == 7
        assert commons.slice_segments is segments.slice_segments
        assert modules.WN.forward is wn.wn_forward
        assert piper_mas.maximum_path is mas.maximum_path
        assert modules.piecewise_rational_quadratic_transform is spline.piecewise_rational_quadratic_transform
        assert modules.Flip.forward is flows.flip_forward
    finally:
        fast.uninstall()
    assert commons.slice_segments is original


# ------------------------------------------------------------------------------------------- segments


@pytest.mark.parametrize("seed", range(5))
def test_slice_segments_is_exactly_piper_s_values_and_gradient(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    batch, channels, length, size = 7, 5, 300, 32
    x = torch.randn(batch, channels, length, generator=gen, requires_grad=True)
    starts = torch.randint(-3, length - size + 1, (batch,), generator=gen)
    ours = segments.slice_segments(x, starts, size)
    theirs = commons.slice_segments(x, starts, size)
    assert torch.equal(ours, theirs)
    weight = torch.randn(ours.shape, generator=gen)
    (grad_ours,) = torch.autograd.grad((ours * weight).sum(), x)
    (grad_theirs,) = torch.autograd.grad((theirs * weight).sum(), x)
    assert torch.equal(grad_ours, grad_theirs)


def test_rand_slice_segments_draws_the_same_offsets() -> None:
    x = torch.randn(6, 4, 200)
    lengths = torch.tensor([200, 180, 150, 120, 90, 64])
    torch.manual_seed(7)
    theirs, theirs_ids = commons.rand_slice_segments(x, lengths, 32)
    torch.manual_seed(7)
    ours, ours_ids = segments.rand_slice_segments(x, lengths, 32)
    assert torch.equal(ours_ids, theirs_ids) and torch.equal(ours, theirs)


# ------------------------------------------------------------------------------------------- spline


@pytest.mark.parametrize(("seed", "inverse"), [(0, False), (1, False), (2, False), (3, True)])
def test_spline_matches_piper_s_masked_version(seed: int, inverse: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    shape, bins, bound = (3, 1, 57), 10, 5.0
    inputs = (torch.randn(shape, generator=gen) * 4).requires_grad_()  # about a third outside +-5
    widths = torch.randn(*shape, bins, generator=gen).requires_grad_()
    heights = torch.randn(*shape, bins, generator=gen).requires_grad_()
    derivs = torch.randn(*shape, bins - 1, generator=gen).requires_grad_()
    assert ((inputs.abs() > bound).sum() > 0) and ((inputs.abs() <= bound).sum() > 0)
    args = (inputs, widths, heights, derivs)
    out_t, det_t = transforms.piecewise_rational_quadratic_transform(*args, inverse=inverse, tails="linear",
                                                                     tail_bound=bound)
    out_o, det_o = spline.piecewise_rational_quadratic_transform(*args, inverse=inverse, tails="linear",
                                                                 tail_bound=bound)
    # same arithmetic per element; the masked version runs it on a compacted copy, so allow 1 ulp-ish
    torch.testing.assert_close(out_o, out_t, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(det_o, det_t, rtol=1e-6, atol=1e-6)
    weight = torch.randn(shape, generator=gen)
    grads_t = torch.autograd.grad(((out_t + det_t) * weight).sum(), args)
    grads_o = torch.autograd.grad(((out_o + det_o) * weight).sum(), args)
    for ours, theirs in zip(grads_o, grads_t, strict=True):
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------- losses, flows


def test_discriminator_loss_and_mel_are_exactly_piper_s() -> None:
    gen = torch.Generator().manual_seed(3)
    real = [torch.randn(4, 30 + i, generator=gen) for i in range(6)]
    fake = [torch.randn(4, 30 + i, generator=gen) for i in range(6)]
    ours, ours_r, ours_g = losses.discriminator_loss(real, fake)
    theirs, theirs_r, theirs_g = piper_losses.discriminator_loss(real, fake)
    assert torch.equal(ours, theirs)
    assert [v.item() for v in ours_r] == theirs_r and [v.item() for v in ours_g] == theirs_g
    audio = torch.rand(3, 8192, generator=gen) * 1.8 - 0.9
    ours_mel = losses.mel_spectrogram_torch(audio, 1024, 80, 22050, 256, 1024, 0.0, None)
    theirs_mel = mel_processing.mel_spectrogram_torch(audio, 1024, 80, 22050, 256, 1024, 0.0, None)
    assert torch.equal(ours_mel, theirs_mel)


def test_flip_and_duration_predictor_are_exactly_piper_s() -> None:
    x = torch.randn(3, 2, 11)
    flipped, logdet = modules.Flip()(x)
    ours_flipped, ours_logdet = flows.flip_forward(None, x)
    assert torch.equal(ours_flipped, flipped) and torch.equal(ours_logdet, logdet)

    torch.manual_seed(0)
    sdp = models.StochasticDurationPredictor(16, 16, 3, 0.5, gin_channels=0).train()
    for p in sdp.parameters():  # piper zero-initialises the flows' projections: make them matter
        torch.nn.init.normal_(p, std=0.1)
    x_in, mask = torch.randn(2, 16, 9), torch.ones(2, 1, 9)
    mask[1, :, 6:] = 0
    w = torch.rand(2, 1, 9) * 3 * mask
    torch.manual_seed(5)
    theirs = sdp(x_in, mask, w=w)
    flows.install()
    try:
        torch.manual_seed(5)
        ours = sdp(x_in, mask, w=w)
    finally:
        fast.uninstall()
    assert torch.equal(ours, theirs)


def test_duration_predictor_given_its_noise_is_piper_s() -> None:
    """The compilable branch (`sdp_nll` with the noise drawn up front, as the compiled path calls it) gives
    piper's value for the same noise (eval mode: no dropout draws between)."""
    torch.manual_seed(0)
    sdp = models.StochasticDurationPredictor(16, 16, 3, 0.5, gin_channels=0).eval()
    for p in sdp.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x_in, mask = torch.randn(2, 16, 9), torch.ones(2, 1, 9)
    mask[1, :, 5:] = 0
    w = torch.rand(2, 1, 9) * 3 * mask
    torch.manual_seed(3)
    theirs = sdp(x_in, mask, w=w)
    flows.install()
    try:
        torch.manual_seed(3)
        ours = flows.sdp_nll(sdp, x_in, mask, w, None, torch.randn(2, 2, 9))
    finally:
        fast.uninstall()
    assert torch.equal(ours, theirs)


def test_duration_predictor_on_padded_text_gives_the_same_nll() -> None:
    """The graphed branch pads the text axis (zeros, outside the mask) to a multiple of TEXT_BUCKET: every
    value inside the mask, and so the nll, is the unpadded one (eval mode: no dropout)."""
    torch.manual_seed(0)
    sdp = models.StochasticDurationPredictor(16, 16, 3, 0.5, gin_channels=0).eval()
    for p in sdp.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x_in, mask = torch.randn(3, 16, 21), torch.ones(3, 1, 21)
    mask[1, :, 13:] = 0
    mask[2, :, 4:] = 0
    w = torch.rand(3, 1, 21) * 3 * mask
    noise = torch.randn(3, 2, 21)
    fast.install()
    try:
        plain = flows.sdp_nll(sdp, x_in, mask, w, None, noise)
        padded, length = graphs.pad_time([x_in, mask, w, noise], graphs.TEXT_BUCKET)
        ours = flows.sdp_nll(sdp, *padded[:3], None, padded[3])
    finally:
        fast.uninstall()
    assert length == 21 and padded[0].shape[-1] == 32 and torch.equal(padded[1][..., 21:], torch.zeros(3, 1, 11))
    torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-5)


def test_graph_parts_from_the_environment() -> None:
    assert graphs.requested_targets("") == graphs.TARGETS  # on by default (CUDA, one process)
    assert graphs.requested_targets("1") == graphs.TARGETS
    assert graphs.requested_targets("off") == ()
    assert graphs.requested_targets("dec, dp") == ("dec", "dp")
    with pytest.raises(ValueError, match="unknown parts"):
        graphs.requested_targets("dec,everything")


@pytest.mark.parametrize("conditioned", [False, True])
def test_wn_without_the_host_tensor_is_piper_s(conditioned: bool) -> None:
    torch.manual_seed(1)
    stack = modules.WN(8, 5, 1, 4, gin_channels=6 if conditioned else 0)
    x = torch.randn(3, 8, 40, requires_grad=True)
    mask = (torch.arange(40) < torch.tensor([40, 31, 17])[:, None]).float().unsqueeze(1)
    g = torch.randn(3, 6, 1) if conditioned else None
    theirs = stack(x, mask, g=g)
    (grad_theirs,) = torch.autograd.grad(theirs.square().sum(), x)
    wn.install()
    try:
        ours = stack(x, mask, g=g)
        (grad_ours,) = torch.autograd.grad(ours.square().sum(), x)
    finally:
        fast.uninstall()
    assert torch.equal(ours, theirs)  # the values are piper's bit for bit
    # the gradient goes through autograd's tanh/sigmoid formulas instead of TorchScript's: float rounding
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------- torch.compile


def test_compile_targets_from_the_environment() -> None:
    assert compiled.requested_targets("") == ()  # off by default: it did not pay on the H200 profile
    assert compiled.requested_targets("0") == ()
    assert compiled.requested_targets("1") == compiled.TARGETS
    assert compiled.requested_targets("dec, loss") == ("dec", "loss")
    with pytest.raises(ValueError, match="unknown targets"):
        compiled.requested_targets("dec,everything")


def test_compiled_modules_give_the_eager_step() -> None:
    """The compile wiring (decoder, discriminators, losses) through dynamo with the aot_eager backend (the
    tracing and autograd split without generated code, which the CPU CI cannot afford): the same losses and
    gradients within 1e-5; outside training the eager modules run."""
    from ttsft_daemon.training.fast.model import FastVitsModel

    batch = _batch(2)
    fast.install()
    try:
        torch.manual_seed(0)
        model = FastVitsModel(**X_LOW).train()
        eager, g_eager, d_eager, _ = _step(model, batch)
        lines = compiled.compile_hot_modules(model, ("dec", "disc", "loss"), backend="aot_eager")
        assert len(lines) == 3
        assert isinstance(model.model_g.dec.__dict__["forward"], compiled.TrainingOnly)
        ours, g_ours, d_ours, _ = _step(model, batch)
        with torch.no_grad():
            model.eval()
            assert model._losses() is not model.__dict__["ttsft_losses"]  # eager outside training
            model.train()
        compiled.uncompile(model)
        assert "forward" not in model.model_g.dec.__dict__ and "ttsft_losses" not in model.__dict__
    finally:
        fast.uninstall()
        torch._dynamo.reset()
        from tqdm import tqdm  # dynamo's progress bars start tqdm's monitor thread: stop it

        if tqdm.monitor is not None:
            tqdm.monitor.exit()
            tqdm.monitor.join()
    np.testing.assert_allclose(ours, eager, rtol=1e-5)
    for name in g_eager:
        torch.testing.assert_close(g_ours[name], g_eager[name], rtol=1e-5, atol=1e-7, msg=name)
    for name in d_eager:
        torch.testing.assert_close(d_ours[name], d_eager[name], rtol=1e-5, atol=1e-7, msg=name)


# ------------------------------------------------------------------------------------------- alignment


def _alignment_batch(seed: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    batch, frames, text = int(rng.integers(1, 9)), int(rng.integers(20, 400)), int(rng.integers(3, 120))
    t_ys = rng.integers(max(2, frames // 2), frames + 1, size=batch).astype(np.int32)
    t_xs = np.minimum(rng.integers(1, text + 1, size=batch), t_ys).astype(np.int32)
    mask = np.zeros((batch, frames, text), np.float32)
    for i in range(batch):
        mask[i, : t_ys[i], : t_xs[i]] = 1
    value = (rng.normal(size=mask.shape) * 4).astype(np.float32) * mask
    return torch.from_numpy(value).to(device), torch.from_numpy(mask).to(device), t_ys, t_xs


def test_alignment_on_the_cpu_is_piper_s_path(installed: None) -> None:
    for seed in range(4):
        value, mask, t_ys, t_xs = _alignment_batch(seed)
        got = piper_mas.maximum_path(value, mask)
        assert np.array_equal(got.numpy().astype(np.int32), maximum_path_reference(value.numpy(), t_ys, t_xs))


@pytest.mark.skipif(not mas.triton_available(), reason="needs CUDA and Triton (the GPU bench host runs it)")
def test_triton_alignment_kernel_equals_the_reference() -> None:
    for seed in range(30):
        value, mask, t_ys, t_xs = _alignment_batch(seed, "cuda")
        got = mas.maximum_path_triton(value, mask)
        assert got.is_cuda and got.dtype == value.dtype
        assert np.array_equal(got.cpu().numpy().astype(np.int32),
                              maximum_path_reference(value.cpu().numpy(), t_ys, t_xs)), seed


# ------------------------------------------------------------------------------------------- model step

X_LOW = {"resblock": "2", "resblock_kernel_sizes": (3, 5, 7), "resblock_dilation_sizes": ((1, 2), (2, 6), (3, 12)),
         "upsample_rates": (8, 8, 4), "upsample_initial_channel": 32, "upsample_kernel_sizes": (16, 16, 8),
         "inter_channels": 32, "hidden_channels": 32, "filter_channels": 64, "n_layers": 2,
         "segment_size": 1024, "mos_metric": None, "num_symbols": 40}


def _batch(seed: int) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    frames = torch.tensor([30, 26, 21])
    phonemes = torch.tensor([11, 9, 7])
    spec = torch.rand(3, 513, 30, generator=gen) * (torch.arange(30) < frames[:, None, None])
    audio = (torch.rand(3, 1, 30 * 256, generator=gen) - 0.5) * (torch.arange(30 * 256) < frames[:, None, None] * 256)
    ids = torch.randint(1, 40, (3, 11), generator=gen) * (torch.arange(11) < phonemes[:, None])
    return Batch(phoneme_ids=ids, phoneme_lengths=phonemes, spectrograms=spec, spectrogram_lengths=frames,
                 audios=audio, audio_lengths=frames * 256)


def _step(model: Any, batch: Batch) -> tuple[list[float], dict[str, torch.Tensor], dict[str, torch.Tensor], bool]:
    """piper's training step without the optimizers: losses, generator grads, discriminator grads."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(11)
    loss_g, loss_d, _ = model._compute_loss(batch)
    loss_g.backward()
    grads_g = {n: p.grad.clone() for n, p in model.model_g.named_parameters() if p.grad is not None}
    d_grads_from_g = any(p.grad is not None for p in model.model_d.parameters())
    model.model_d.zero_grad(set_to_none=True)
    loss_d.backward()
    grads_d = {n: p.grad.clone() for n, p in model.model_d.named_parameters() if p.grad is not None}
    return [loss_g.item(), loss_d.item()], grads_g, grads_d, d_grads_from_g


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA (the GPU bench host runs it)"))])
def test_fast_model_step_gives_piper_s_losses_and_gradients(device: str) -> None:
    """Same losses and gradients (fp32 rounding: 1e-4 relative on the CPU; 1e-3 on CUDA, whose convolution
    algorithms may differ between the two runs); the discriminator gets no gradient from the generator loss."""
    from ttsft_daemon.training.fast.model import FastVitsModel

    torch.backends.cudnn.allow_tf32 = False
    tolerance = 1e-4 if device == "cpu" else 1e-3
    torch.manual_seed(0)
    piper_model = VitsModel(**X_LOW).train().to(device)
    batch = Batch(**{k: v.to(device) for k, v in vars(_batch(1)).items() if v is not None})
    theirs, g_theirs, d_theirs, d_from_g_theirs = _step(piper_model, batch)
    fast.install()
    try:
        fast_model = FastVitsModel(**X_LOW).train().to(device)
        fast_model.load_state_dict(copy.deepcopy(piper_model.state_dict()))
        ours, g_ours, d_ours, d_from_g_ours = _step(fast_model, batch)
    finally:
        fast.uninstall()
    assert d_from_g_theirs and not d_from_g_ours  # piper computes discriminator grads it throws away
    np.testing.assert_allclose(ours, theirs, rtol=tolerance / 10)
    assert g_ours.keys() == g_theirs.keys() and d_ours.keys() == d_theirs.keys()
    for name in g_theirs:
        torch.testing.assert_close(g_ours[name], g_theirs[name], rtol=tolerance, atol=1e-6, msg=name)
    for name in d_theirs:
        torch.testing.assert_close(d_ours[name], d_theirs[name], rtol=tolerance, atol=1e-6, msg=name)


def test_cuda_parts_wiring_keeps_the_step_on_the_cpu() -> None:
    """`enable_cuda_parts` with no graphs and no bf16 routes the decoder and both discriminator passes
    through StepGraphs' eager path: the same losses and gradients; `disable_cuda_parts` takes it out."""
    from ttsft_daemon.training.fast.model import FastVitsModel, GraphedForward

    batch = _batch(3)
    fast.install()
    try:
        torch.manual_seed(0)
        model = FastVitsModel(**X_LOW).train()
        eager, g_eager, d_eager, _ = _step(model, batch)
        model.enable_cuda_parts((), None)
        assert isinstance(model.model_g.dec.__dict__["forward"], GraphedForward)
        ours, g_ours, d_ours, d_from_g = _step(model, batch)
        model.disable_cuda_parts()
        assert "forward" not in model.model_g.dec.__dict__ and "ttsft_graphs" not in model.__dict__
    finally:
        fast.uninstall()
    assert not d_from_g
    np.testing.assert_allclose(ours, eager, rtol=1e-6)
    for name in g_eager:
        torch.testing.assert_close(g_ours[name], g_eager[name], rtol=1e-6, atol=1e-8, msg=name)
    for name in d_eager:
        torch.testing.assert_close(d_ours[name], d_eager[name], rtol=1e-6, atol=1e-8, msg=name)


def test_padded_batch_gives_the_same_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """While the variable-length parts are graphed, the batch is padded to a multiple of 16 phonemes and 32
    frames (`bucketed`): outside every mask, so the step's losses and gradients are the unpadded step's
    (checked on the CPU, where the parts run eagerly, with the random draws whose shape the padding changes
    made zero: dropout off, the posterior's and the duration predictor's noise zero)."""
    from ttsft_daemon.training.fast.model import FastVitsModel

    _zero_noise(monkeypatch)
    batch = _batch(2)
    fast.install()
    try:
        torch.manual_seed(0)
        model = FastVitsModel(**X_LOW).train()
        _no_dropout(model)
        plain, g_plain, d_plain, _ = _step(model, batch)
        model.enable_cuda_parts(graphs.TARGETS, None)
        padded = model_module().bucketed(batch)
        assert padded.phoneme_ids.shape[1] == 16 and padded.spectrograms.shape[2] == 32
        ours, g_ours, d_ours, _ = _step(model, batch)  # bucketed inside, parts eager on the CPU
        model.disable_cuda_parts()
    finally:
        fast.uninstall()
    np.testing.assert_allclose(ours, plain, rtol=1e-5)
    for name in g_plain:
        torch.testing.assert_close(g_ours[name], g_plain[name], rtol=1e-4, atol=1e-6, msg=name)
    for name in d_plain:
        torch.testing.assert_close(d_ours[name], d_plain[name], rtol=1e-4, atol=1e-6, msg=name)


def model_module() -> Any:
    from ttsft_daemon.training.fast import model

    return model


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the GPU bench host runs it)")


@CUDA
def test_graphed_call_replays_the_function_and_its_gradients() -> None:
    """A GraphedCall on new inputs gives the eager values and gradients (inputs' and parameters')."""
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Conv1d(4, 8, 3, padding=1), torch.nn.Tanh(),
                                torch.nn.Conv1d(8, 2, 3, padding=1)).cuda()
    params = list(layer.parameters())

    def fn(x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        hidden = layer(x)
        return hidden * scale, [hidden.sum(1), scale * 2]

    x0 = torch.randn(3, 4, 16, device="cuda", requires_grad=True)
    call = graphs.GraphedCall(fn, (x0, torch.ones(3, 1, 1, device="cuda")), layer, None)
    for seed in range(3):
        gen = torch.Generator(device="cuda").manual_seed(seed)
        x = torch.randn(3, 4, 16, device="cuda", generator=gen, requires_grad=True)
        scale = torch.rand(3, 1, 1, device="cuda", generator=gen)
        weight = torch.randn(3, 2, 16, device="cuda", generator=gen)
        grads = []
        for run in (fn, call):
            layer.zero_grad(set_to_none=True)
            out, (summed, doubled) = run(x, scale)
            ((out * weight).sum() + summed.pow(2).sum()).backward()
            grads.append((out.detach().clone(), summed.detach().clone(), doubled.clone(), x.grad.clone(),
                          [p.grad.clone() for p in params]))
            x.grad = None
        (o1, s1, d1, gx1, gp1), (o2, s2, d2, gx2, gp2) = grads
        for a, b in [(o1, o2), (s1, s2), (d1, d2), (gx1, gx2), *zip(gp1, gp2, strict=True)]:
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def _no_dropout(model: Any) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _zero_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """The posterior's and the duration predictor's noise made zero: their shapes change with the padding."""
    monkeypatch.setattr(torch, "randn_like", lambda t, **kw: torch.zeros_like(t, **kw))
    monkeypatch.setattr(torch, "randn", lambda *size, **kw: torch.zeros(*size, **kw))


@CUDA
def test_graphed_step_gives_the_eager_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """The graphed parts (both discriminator passes, decoder, duration predictor, text and posterior
    encoders, flows) over several steps and lengths, captured after an eager step and between replays: the
    eager step's losses and gradients (dropout off and the noise zero: a graph's draws differ)."""
    from ttsft_daemon.training.fast.model import FastVitsModel

    _zero_noise(monkeypatch)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    fast.install()
    try:
        torch.manual_seed(0)
        model = FastVitsModel(**X_LOW).train().cuda()
        _no_dropout(model)
        _step(model, _cuda_batch(3))  # an eager step first: its gradient accumulators stay around
        model.enable_cuda_parts(graphs.TARGETS, None)
        state = model.__dict__["ttsft_graphs"]
        for seed in (0, 1, 0, 2, 5):
            batch = _cuda_batch(seed)
            ours, g_ours, d_ours, _ = _step(model, batch)
            with graphs.no_graphs(model):
                eager, g_eager, d_eager, _ = _step(model, batch)
            np.testing.assert_allclose(ours, eager, rtol=1e-4)
            for name in g_eager:
                torch.testing.assert_close(g_ours[name], g_eager[name], rtol=1e-3, atol=1e-5, msg=name)
            for name in d_eager:
                torch.testing.assert_close(d_ours[name], d_eager[name], rtol=1e-3, atol=1e-5, msg=name)
        assert not state.failed, state.failed
        assert state.captured["disc_train"] == 1 and state.captured["dec"] == 1
        assert state.captured["dp"] == 2 and state.captured["enc_p"] == 2 and state.captured["enc_q"] == 2
    finally:
        fast.uninstall()
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = True


@CUDA
def test_bf16_parts_stay_close_to_float32() -> None:
    """bf16 decoder and discriminators (graphed), after an eager float32 step: losses within 10 % of the
    float32 step's (a random tiny model's first step: a sanity bound; the bench holds the loss curve to
    plain piper's spread), gradients finite."""
    from ttsft_daemon.training.fast.model import FastVitsModel

    fast.install()
    try:
        torch.manual_seed(0)
        model = FastVitsModel(**X_LOW).train().cuda()
        _no_dropout(model)
        batch = _cuda_batch(1)
        eager, _, _, _ = _step(model, batch)
        model.enable_cuda_parts(graphs.TARGETS, torch.bfloat16)
        ours, g_ours, d_ours, _ = _step(model, batch)
        assert not model.__dict__["ttsft_graphs"].failed
    finally:
        fast.uninstall()
    np.testing.assert_allclose(ours, eager, rtol=0.1)  # on the H200: loss_g 132.4 against 139.9 (5.4 %)
    assert all(torch.isfinite(g).all() for g in [*g_ours.values(), *d_ours.values()])


def _cuda_batch(seed: int) -> Batch:
    """Like `_batch`, with the text and spectrogram lengths varying by seed (other graph buckets), on CUDA."""
    gen = torch.Generator().manual_seed(seed)
    longest_frames = 30 + 10 * (seed % 2)  # 32 or 64 frames once padded
    frames = torch.tensor([longest_frames, 26, 21])
    longest = 11 + 7 * (seed % 3)  # 16 or 32 phonemes once padded
    phonemes = torch.tensor([longest, 9, 7])
    t = longest_frames
    spec = torch.rand(3, 513, t, generator=gen) * (torch.arange(t) < frames[:, None, None])
    audio = (torch.rand(3, 1, t * 256, generator=gen) - 0.5) * (torch.arange(t * 256) < frames[:, None, None] * 256)
    ids = torch.randint(1, 40, (3, longest), generator=gen) * (torch.arange(longest) < phonemes[:, None])
    return Batch(phoneme_ids=ids.cuda(), phoneme_lengths=phonemes.cuda(), spectrograms=spec.cuda(),
                 spectrogram_lengths=frames.cuda(), audios=audio.cuda(), audio_lengths=(frames * 256).cuda())


# ------------------------------------------------------------------------------------------- checkpoints, launcher


def test_host_snapshot_owns_its_tensors() -> None:
    weights = torch.arange(6.0)
    checkpoint = {"state_dict": {"w": weights}, "loops": [1, (weights, "x")], "epoch": 3}
    snapshot = fast_checkpoint.host_snapshot(checkpoint)
    weights += 100  # the optimizer keeps stepping after the snapshot
    assert torch.equal(snapshot["state_dict"]["w"], torch.arange(6.0))
    assert torch.equal(snapshot["loops"][1][0], torch.arange(6.0)) and snapshot["epoch"] == 3


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_snapshot_is_taken_when_asked_and_given_on_the_host(device: str) -> None:
    """`snapshot` copies now (on CUDA: a clone on the device) and gives host tensors later (the writer's
    thread), unaffected by the optimizer's later in-place steps."""
    weights = torch.arange(6.0, device=device)
    checkpoint = {"state_dict": {"w": weights}, "loops": [1, (weights, "x")], "epoch": 3}
    taken = fast_checkpoint.snapshot(checkpoint)
    weights += 100
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(taken()))
    thread.start()
    thread.join()
    host = result[0]
    assert host["state_dict"]["w"].device.type == "cpu" and torch.equal(host["state_dict"]["w"], torch.arange(6.0))
    assert torch.equal(host["loops"][1][0], torch.arange(6.0)) and host["epoch"] == 3


def test_checkpoint_throttle_keeps_saving_under_its_share() -> None:
    now = [0.0]
    throttle = fast_checkpoint.CheckpointThrottle(0.05, clock=lambda: now[0])
    assert throttle.should_save(final=False)  # the first one
    throttle.saved(0.5)  # cost 0.5 s: the next after 10 s
    now[0] = 9.0
    assert not throttle.should_save(final=False)
    assert throttle.should_save(final=True)
    now[0] = 10.5
    assert throttle.should_save(final=False)
    throttle.saved(0.1)
    throttle.add_cost(0.9)  # its background write: 1 s in all, so the next after 20 s
    now[0] = 30.0
    assert not throttle.should_save(final=False)
    now[0] = 30.6
    assert throttle.should_save(final=False)
    assert fast_checkpoint.CheckpointThrottle(0.0).should_save(final=False)


def test_a_due_checkpoint_waits_for_the_running_write() -> None:
    supervisor = launcher.TtsftSupervisor(every_n_epochs=1)
    supervisor.throttle = fast_checkpoint.CheckpointThrottle(0.05)
    assert not supervisor._should_save(3, 10, writing=True)  # skipped: the previous write still runs
    assert supervisor._should_save(10, 10, writing=True)  # the final one always
    assert supervisor._should_save(3, 10, writing=False)


def test_background_writer_reports_errors_on_wait() -> None:
    writer = fast_checkpoint.BackgroundWriter()
    done: list[int] = []
    writer.submit(lambda: done.append(1))
    writer.wait()
    assert done == [1]

    def fail() -> None:
        raise OSError("disk full")

    writer.submit(fail)
    with pytest.raises(OSError, match="disk full"):
        writer.wait()


def test_cached_items_load_each_clip_once_up_to_the_budget() -> None:
    from piper.train.vits.dataset import UtteranceTensors

    loads: list[int] = []

    class Clips(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return 4

        def __getitem__(self, index: int) -> Any:
            loads.append(index)
            return UtteranceTensors(phoneme_ids=torch.arange(10), audio_norm=torch.zeros(100),
                                    spectrogram=torch.zeros(5, 10), speaker_id=None, text=None)

    item_bytes = 10 * 8 + 100 * 4 + 50 * 4
    cached = launcher.CachedItems(Clips(), max_bytes=2 * item_bytes)
    first = [cached[i] for i in range(4)]
    again = [cached[i] for i in range(4)]
    assert len(cached) == 4 and loads == [0, 1, 2, 3, 2, 3]  # two fit the budget
    assert again[0] is first[0] and again[1] is first[1] and torch.equal(again[3].spectrogram, first[3].spectrogram)


def test_fast_flag_parsing() -> None:
    assert launcher.fast_requested(["--data.x", "1", "--ttsft.fast", "true"])
    assert launcher.fast_requested(["--ttsft.fast=True"])
    assert not launcher.fast_requested(["--ttsft.fast", "false"])
    assert not launcher.fast_requested([])


def test_precision_auto_resolves_to_float32_with_the_fast_bf16_parts() -> None:
    args = ["fit", "--trainer.precision", "auto", "--ttsft.fast", "true"]
    assert launcher.resolve_precision(args, fast=True) == (["fit", "--trainer.precision", "32-true", "--ttsft.fast",
                                                            "true"], True)
    assert launcher.resolve_precision(["--trainer.precision=auto"], fast=False) == (
        ["--trainer.precision=32-true"], False)  # piper's own code: float32
    assert launcher.resolve_precision(["--trainer.precision", "bf16-mixed"], fast=True) == (
        ["--trainer.precision", "bf16-mixed"], False)  # an explicit Lightning precision passes through


def test_supervisor_steps_the_learning_rate_schedulers(tmp_path: Any) -> None:
    """piper's manual optimisation never steps its schedulers; the supervisor does, once per epoch."""
    import lightning as L

    class Tiny(L.LightningModule):  # manual optimisation and two schedulers, like piper's module
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.a, self.b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)

        def training_step(self, batch: Any, batch_idx: int) -> None:
            for opt, layer in zip(self.optimizers(), (self.a, self.b), strict=True):
                opt.zero_grad()
                self.manual_backward(layer(batch[0]).pow(2).mean())
                opt.step()

        def configure_optimizers(self) -> Any:
            opts = [torch.optim.AdamW(self.a.parameters(), lr=1.0), torch.optim.AdamW(self.b.parameters(), lr=1.0)]
            return opts, [torch.optim.lr_scheduler.ExponentialLR(opts[0], 0.5),
                          torch.optim.lr_scheduler.ExponentialLR(opts[1], 0.25)]

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=2)
    model = Tiny()
    supervisor = launcher.TtsftSupervisor(every_n_epochs=100, step_log=str(tmp_path / "steps.jsonl"))
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[supervisor],
                        default_root_dir=tmp_path)
    trainer.fit(model, data)
    lrs = [opt.param_groups[0]["lr"] for opt in trainer.optimizers]
    assert lrs == pytest.approx([0.5**3, 0.25**3])
    lines = (tmp_path / "steps.jsonl").read_text().splitlines()
    assert len(lines) == 3
