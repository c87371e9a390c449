"""piper's Lightning module with a leaner loss step and fused optimizers (`FastVitsModel`).

- No discriminator weight gradients in the generator step. piper runs the multi-period discriminator on
  (real, generated) audio for the generator's losses with the discriminator's parameters requiring grad,
  so the generator's backward also computes the discriminator's weight gradients, which
  `opt_d.zero_grad()` then throws away. Here that forward runs with the discriminator's parameters frozen
  (gradients still flow to the generated audio). Exact: the generator's gradients and both updates are
  the same.
- One discriminator pass over the real audio instead of two. The real audio's discriminator outputs are the
  same in the generator's and the discriminator's part of the step (same weights, same input); piper
  computes them twice. Here the discriminator step's pass is computed first and its feature maps, detached,
  serve the generator's feature-matching loss, as piper's detached ones do. Exact.
- Fused AdamW on CUDA (one kernel for all parameters instead of a loop of multi-tensor launches); within
  float rounding of piper's (foreach) AdamW. On the CPU the optimizers are piper's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from piper.train.vits import losses as piper_losses
from piper.train.vits.lightning import VitsModel
from torch import autocast
from torch.nn import functional as F

from ttsft_daemon.training.fast import segments
from ttsft_daemon.training.fast.losses import discriminator_loss, mel_spectrogram_torch


@contextlib.contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """Parameters of `module` do not require grad inside the block (restored after)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def run_discriminator(model_d: Any, audio: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """Outputs and feature maps of each sub-discriminator of a MultiPeriodDiscriminator on `audio`."""
    outputs: list[torch.Tensor] = []
    fmaps: list[list[torch.Tensor]] = []
    for disc in model_d.discriminators:
        out, fmap = disc(audio)
        outputs.append(out)
        fmaps.append(fmap)
    return outputs, fmaps


def generator_losses(fmap_real: list[list[torch.Tensor]], fmap_fake: list[list[torch.Tensor]],
                     d_fake: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """piper's feature-matching and generator (adversarial) losses, as one function to compile."""
    feature_loss: Any = piper_losses.feature_loss
    generator_loss: Any = piper_losses.generator_loss
    loss_fm: torch.Tensor = feature_loss(fmap_real, fmap_fake)
    loss_gen: torch.Tensor = generator_loss(d_fake)[0]
    return loss_fm, loss_gen


def discriminator_losses(d_real: list[torch.Tensor], d_fake: list[torch.Tensor]) -> torch.Tensor:
    return discriminator_loss(d_real, d_fake)[0]


def kl_loss(z_p: torch.Tensor, logs_q: torch.Tensor, m_p: torch.Tensor, logs_p: torch.Tensor,
            z_mask: torch.Tensor) -> torch.Tensor:
    piper_kl: Any = piper_losses.kl_loss
    loss: torch.Tensor = piper_kl(z_p, logs_q, m_p, logs_p, z_mask)
    return loss


EAGER_LOSSES = {"generator": generator_losses, "discriminator": discriminator_losses, "kl": kl_loss}


class FastVitsModel(VitsModel):  # type: ignore[misc]
    """VitsModel with the loss step and optimizers above; checkpoints are interchangeable with VitsModel's."""

    def on_fit_start(self) -> None:
        super().on_fit_start()  # type: ignore[no-untyped-call]
        if self.device.type != "cuda" or self.__dict__.get("ttsft_compiled"):
            return
        from ttsft_daemon.training.fast import compiled

        self.ttsft_compiled = True
        targets = compiled.requested_targets()
        for line in compiled.compile_hot_modules(self, targets) if targets else []:
            print(f"[ttsft] fast {line}", flush=True)

    def _losses(self) -> dict[str, Any]:
        chosen: dict[str, Any] = self.__dict__.get("ttsft_losses") or EAGER_LOSSES
        return chosen if self.training and torch.is_grad_enabled() else EAGER_LOSSES

    def _compute_loss(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        if self.model_mrd is not None:  # the optional MRD keeps piper's own step
            result: tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]] = super()._compute_loss(batch)  # type: ignore[no-untyped-call]
            return result
        hp: Any = self.hparams
        y_hat, l_length, _attn, ids_slice, _x_mask, z_mask, (_z, z_p, m_p, logs_p, _m_q, logs_q) = self.model_g(
            batch.phoneme_ids, batch.phoneme_lengths, batch.spectrograms, batch.spectrogram_lengths,
            batch.speaker_ids)
        segment_frames = hp.segment_size // hp.hop_length
        with autocast(self.device.type, enabled=False):  # mel in fp32, as piper does
            from piper.train.vits.mel_processing import spec_to_mel_torch

            spec_to_mel: Any = spec_to_mel_torch

            mel = spec_to_mel(batch.spectrograms.float(), hp.filter_length, hp.mel_channels,
                                    hp.sample_rate, hp.mel_fmin, hp.mel_fmax)
            y_mel = segments.slice_segments(mel, ids_slice, segment_frames)
            y_hat_mel = mel_spectrogram_torch(y_hat.squeeze(1).float(), hp.filter_length, hp.mel_channels,
                                              hp.sample_rate, hp.hop_length, hp.win_length, hp.mel_fmin,
                                              hp.mel_fmax)
        y = segments.slice_segments(batch.audios, ids_slice * hp.hop_length, hp.segment_size)
        y_hat = y_hat[..., : y.shape[-1]]

        # the discriminator step's pass over the real audio; its feature maps serve the generator too
        d_real, fmap_real = run_discriminator(self.model_d, y)
        with frozen(self.model_d):
            d_fake_for_g, fmap_fake = run_discriminator(self.model_d, y_hat)

        fns = self._losses()
        with autocast(self.device.type, enabled=False):
            mel_l1 = F.l1_loss(y_mel, y_hat_mel)
            kl = fns["kl"](z_p, logs_q, m_p, logs_p, z_mask)
            loss_dur = torch.sum(l_length.float())
            loss_mel = mel_l1 * hp.c_mel
            loss_kl = kl * hp.c_kl
            loss_fm, loss_gen = fns["generator"](fmap_real, fmap_fake, d_fake_for_g)
            loss_gen_all = loss_gen + loss_fm + loss_mel + loss_dur + loss_kl

        d_fake, _ = run_discriminator(self.model_d, y_hat.detach())
        with autocast(self.device.type, enabled=False):
            loss_disc = fns["discriminator"](d_real, d_fake)

        metrics = {"mel": mel_l1.detach(), "kl": kl.detach(), "dur": loss_dur.detach(), "fm": loss_fm.detach(),
                   "gen": loss_gen.detach(), "disc": loss_disc.detach()}
        return loss_gen_all, loss_disc, metrics

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[Any]]:
        """piper's two AdamW optimizers and exponential schedulers, with the optimizers fused on CUDA."""
        if not all(p.is_cuda for p in self.parameters()):
            result: tuple[list[torch.optim.Optimizer], list[Any]] = super().configure_optimizers()  # type: ignore[no-untyped-call]
            return result
        hp: Any = self.hparams
        disc_params = list(self.model_d.parameters())
        if self.model_mrd is not None:
            disc_params += list(self.model_mrd.parameters())
        opt_g = torch.optim.AdamW(self.model_g.parameters(), lr=hp.learning_rate, betas=hp.betas, eps=hp.eps,
                                  fused=True)
        opt_d = torch.optim.AdamW(disc_params, lr=hp.learning_rate_d, betas=hp.betas_d, eps=hp.eps, fused=True)
        schedulers = [torch.optim.lr_scheduler.ExponentialLR(opt_g, gamma=hp.lr_decay),
                      torch.optim.lr_scheduler.ExponentialLR(opt_d, gamma=hp.lr_decay_d)]
        return [opt_g, opt_d], schedulers
