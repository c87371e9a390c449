"""Losses and mel features without host reads (replace `lightning.discriminator_loss` and
`lightning.mel_spectrogram_torch`).

piper's `discriminator_loss` calls `.item()` on every per-discriminator loss (12 syncs a step) for lists
nobody reads; here they stay tensors. piper's `mel_spectrogram_torch` first compares the audio's min and max
with +-1 to print a warning (2 syncs a call); here that check is left out and the rest is the same
computation (same window, padding, STFT, mel basis, log), so the result is identical.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from librosa.filters import mel as librosa_mel_fn

from ttsft_daemon.training.fast.patching import replace

_mel_bases: dict[tuple[int, int, int, float, float | None, str, str], torch.Tensor] = {}
_windows: dict[tuple[int, str, str], torch.Tensor] = {}


def discriminator_loss(
    disc_real_outputs: Sequence[torch.Tensor], disc_generated_outputs: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Least-squares GAN loss of the discriminators: sum of mean((1 - real)^2) + mean(fake^2)."""
    loss: torch.Tensor | None = None
    real_losses: list[torch.Tensor] = []
    fake_losses: list[torch.Tensor] = []
    for real, fake in zip(disc_real_outputs, disc_generated_outputs, strict=True):
        real_loss = torch.mean((1 - real.float()) ** 2)
        fake_loss = torch.mean(fake.float() ** 2)
        term = real_loss + fake_loss  # summed in piper's order, so the total is the same float
        loss = term if loss is None else loss + term
        real_losses.append(real_loss.detach())
        fake_losses.append(fake_loss.detach())
    assert loss is not None, "no discriminator outputs"
    return loss, real_losses, fake_losses


def mel_spectrogram_torch(
    y: torch.Tensor, n_fft: int, num_mels: int, sampling_rate: int, hop_size: int, win_size: int,
    fmin: float, fmax: float | None, center: bool = False,
) -> torch.Tensor:
    """Log-mel spectrogram of `y` [b, samples] as piper computes it, without the range check."""
    where = (str(y.dtype), str(y.device))
    basis_key = (sampling_rate, n_fft, num_mels, float(fmin), fmax, *where)
    if basis_key not in _mel_bases:
        basis = librosa_mel_fn(sr=sampling_rate, n_fft=n_fft, n_mels=num_mels, fmin=fmin, fmax=fmax)
        _mel_bases[basis_key] = torch.from_numpy(basis).type_as(y)
    window_key = (win_size, *where)
    if window_key not in _windows:
        _windows[window_key] = torch.hann_window(win_size).type_as(y)
    pad = int((n_fft - hop_size) / 2)
    y = torch.nn.functional.pad(y.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.view_as_real(torch.stft(
        y, n_fft, hop_length=hop_size, win_length=win_size, window=_windows[window_key], center=center,
        pad_mode="reflect", normalized=False, onesided=True, return_complex=True,
    ))
    spec = torch.sqrt(spec.pow(2).sum(-1) + 1e-6)
    spec = torch.matmul(_mel_bases[basis_key], spec)
    return torch.log(torch.clamp(spec, min=1e-5))


def install() -> str:
    from piper.train.vits import lightning

    replace(lightning, "discriminator_loss", discriminator_loss)
    replace(lightning, "mel_spectrogram_torch", mel_spectrogram_torch)
    return "losses: no .item() in the discriminator loss, no range check in the mel features"
