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
- That pass takes the real and the (detached) generated audio as one batch of 2b: the sub-discriminators
  treat each item on its own (no batch statistics), so the outputs are the two passes' (within float
  rounding of a larger convolution), with half the kernel launches in its forward and backward.
- On CUDA while training (`enable_cuda_parts`, from `on_fit_start`): the step's parts as CUDA graphs
  (fast/graphs.py, the batch padded to a few lengths) and, with training.precision auto, the decoder and
  discriminators in bf16 autocast (the decoder's last convolution, the mel features, every loss and the
  optimizers in float32). Validation and export run the eager float32 modules.
- `training_step` logs the losses through Lightning every LOG_EVERY steps (and on each epoch's last batch)
  and keeps every step's on the device for the launcher's step log.
- Fused AdamW on CUDA (one kernel for all parameters instead of a loop of multi-tensor launches); within
  float rounding of piper's (foreach) AdamW. On the CPU the optimizers are piper's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from piper.train.vits import losses as piper_losses
from piper.train.vits.lightning import VitsModel
from torch import autocast
from torch.nn import functional as F

from ttsft_daemon.training.fast import segments
from ttsft_daemon.training.fast.graphs import FRAME_BUCKET, TEXT_BUCKET, StepGraphs, pad_time
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


def run_frozen_discriminator(model_d: Any, audio: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """`run_discriminator` with the discriminator's parameters frozen: gradients reach `audio` only."""
    with frozen(model_d):
        return run_discriminator(model_d, audio)


class GraphedForward:
    """A generator module's forward while its model trains with gradients: graphed and/or under the
    autocast dtype (`StepGraphs.run`, part `target`); piper's forward otherwise (validation, export,
    speaker-conditioned models, the flows' reverse direction)."""

    def __init__(self, module: torch.nn.Module, target: str, graphs: StepGraphs, mixed: bool) -> None:
        self.module = module
        self.target = target
        self.eager = type(module).forward.__get__(module)
        self.graphs = graphs
        self.mixed = mixed

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if any(v is not None and v is not False for v in kwargs.values()) \
                or not all(isinstance(a, torch.Tensor) for a in args) \
                or not (self.module.training and torch.is_grad_enabled()):
            return self.eager(*args, **kwargs)
        return self.graphs.run(self.target, self.eager, args, self.module, self.mixed)


class Float32Forward:
    """A module's forward outside autocast, on float32 input (the decoder's last convolution: the audio
    the mel loss and the discriminators see keeps float32 precision)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.eager = type(module).forward.__get__(module)

    def __call__(self, x: torch.Tensor) -> Any:
        with autocast(x.device.type, enabled=False):
            return self.eager(x.float())


def bucketed(batch: Any) -> Any:
    """The batch with its phonemes zero-padded to a multiple of TEXT_BUCKET and its spectrograms to a
    multiple of FRAME_BUCKET frames (the lengths unchanged: the padding is outside every mask)."""
    (ids,), _ = pad_time([batch.phoneme_ids], TEXT_BUCKET)
    (spec,), _ = pad_time([batch.spectrograms], FRAME_BUCKET)
    return dataclasses.replace(batch, phoneme_ids=ids, spectrograms=spec)


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


LOG_EVERY = 25  # steps between Lightning logs of the training losses (FastVitsModel.training_step)
EAGER_LOSSES = {"generator": generator_losses, "discriminator": discriminator_losses, "kl": kl_loss}


class FastVitsModel(VitsModel):  # type: ignore[misc]
    """VitsModel with the loss step and optimizers above; checkpoints are interchangeable with VitsModel's."""

    ttsft_mixed_precision = False  # bf16 decoder and discriminators on CUDA (the launcher sets it: precision auto)

    def on_fit_start(self) -> None:
        super().on_fit_start()  # type: ignore[no-untyped-call]
        if self.device.type != "cuda" or self.__dict__.get("ttsft_compiled"):
            return
        from ttsft_daemon.training.fast import compiled, graphs

        self.ttsft_compiled = True
        targets = compiled.requested_targets()
        for line in compiled.compile_hot_modules(self, targets) if targets else []:
            print(f"[ttsft] fast {line}", flush=True)
        trainer = self.__dict__.get("_trainer")
        world = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
        # graphs: one process only (DDP's gradient hooks are not graphed), and not over compiled modules
        graphed = graphs.requested_targets() if world == 1 and not targets else ()
        dtype = torch.bfloat16 if type(self).ttsft_mixed_precision else None
        if graphed or dtype is not None:
            print(f"[ttsft] fast {self.enable_cuda_parts(graphed, dtype)}", flush=True)
        # What exists now (Lightning, piper, the model) lives for the whole run: out of the garbage
        # collector's reach, its full collections stop walking it (a trainer process of its own).
        gc.collect()
        gc.freeze()

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """piper's step (generator update, then discriminator update) with Lightning's logging thinned out:
        the losses are kept on the device for the step log every step (`ttsft_step_metrics`, read by the
        launcher's StepLog) and logged through Lightning on every LOG_EVERY-th and on the epoch's last batch
        (so the epoch's metrics are the last step's, as before; a running epoch's progress line is at most
        LOG_EVERY steps old). Lightning's logging cost ~0.4 ms per value and step (8 values)."""
        if self.model_mrd is not None:
            super().training_step(batch, batch_idx)  # type: ignore[no-untyped-call]
            return
        optimizers: Any = self.optimizers()
        opt_g, opt_d = optimizers
        loss_g, loss_d, metrics = self._compute_loss(batch)
        opt_g.zero_grad()
        self.manual_backward(loss_g)
        opt_g.step()
        opt_d.zero_grad()
        self.manual_backward(loss_d)
        opt_d.step()
        values = {"loss_g": loss_g.detach(), **{f"train_{name}": value for name, value in metrics.items()},
                  "loss_d": loss_d.detach()}
        self.ttsft_step_metrics = values
        batches = self.trainer.num_training_batches
        if batch_idx % LOG_EVERY == 0 or (isinstance(batches, int) and batch_idx + 1 >= batches):
            self.log_dict(values, batch_size=self.batch_size)

    def _losses(self) -> dict[str, Any]:
        chosen: dict[str, Any] = self.__dict__.get("ttsft_losses") or EAGER_LOSSES
        return chosen if self.training and torch.is_grad_enabled() else EAGER_LOSSES

    def _compute_loss(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        if self.model_mrd is not None:  # the optional MRD keeps piper's own step
            result: tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]] = super()._compute_loss(batch)  # type: ignore[no-untyped-call]
            return result
        hp: Any = self.hparams
        graphs = self._step_graphs()
        if graphs is not None and any(graphs.wants(t) for t in ("enc_p", "enc_q", "flow", "dp")):
            batch = bucketed(batch)  # a few lengths, a graph each
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

        # The discriminator step's pass over real and generated audio as one batch (its feature maps of the
        # real half, detached, serve the generator's feature-matching loss), then the generator step's pass
        # over the generated audio with the discriminator frozen.
        d_real, d_fake, fmap_real = self._discriminate_both(y, y_hat.detach())
        d_fake_for_g, fmap_fake = self._discriminate_generated(y_hat)

        fns = self._losses()
        with autocast(self.device.type, enabled=False):
            mel_l1 = F.l1_loss(y_mel, y_hat_mel)
            kl = fns["kl"](z_p, logs_q, m_p, logs_p, z_mask)
            loss_dur = torch.sum(l_length.float())
            loss_mel = mel_l1 * hp.c_mel
            loss_kl = kl * hp.c_kl
            loss_fm, loss_gen = fns["generator"](fmap_real, fmap_fake, d_fake_for_g)
            loss_gen_all = loss_gen + loss_fm + loss_mel + loss_dur + loss_kl
            loss_disc = fns["discriminator"](d_real, d_fake)

        metrics = {"mel": mel_l1.detach(), "kl": kl.detach(), "dur": loss_dur.detach(), "fm": loss_fm.detach(),
                   "gen": loss_gen.detach(), "disc": loss_disc.detach()}
        return loss_gen_all, loss_disc, metrics

    # the discriminator passes: graphed and/or in bf16 on CUDA while training (`enable_cuda_parts`)
    def _step_graphs(self) -> StepGraphs | None:
        graphs: StepGraphs | None = self.__dict__.get("ttsft_graphs")
        return graphs if graphs is not None and self.training and torch.is_grad_enabled() else None

    def _discriminate_both(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[
            list[torch.Tensor], list[torch.Tensor], list[list[torch.Tensor]]]:
        """Outputs for real, outputs for fake, feature maps for real (detached), from one pass over both."""
        batch = real.size(0)
        both = torch.cat([real, fake.to(real.dtype)], 0)
        graphs = self._step_graphs()
        if graphs is None:
            outputs, fmaps = run_discriminator(self.model_d, both)
        else:
            outputs, fmaps = graphs.run("disc_train", functools.partial(run_discriminator, self.model_d), (both,),
                                        self.model_d)
        return ([o[:batch] for o in outputs], [o[batch:] for o in outputs],
                [[f[:batch].detach() for f in fmap] for fmap in fmaps])

    def _discriminate_generated(self, fake: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        graphs = self._step_graphs()
        if graphs is None:
            return run_frozen_discriminator(self.model_d, fake)
        result: tuple[list[torch.Tensor], list[list[torch.Tensor]]] = graphs.run(
            "disc_gen", functools.partial(run_frozen_discriminator, self.model_d), (fake,), None)
        return result

    def enable_cuda_parts(self, targets: Sequence[str], dtype: torch.dtype | None) -> str:
        """Graph `targets` (graphs.TARGETS) and run the decoder and discriminators under `dtype` autocast
        (None: float32) while training; returns a description."""
        graphs = StepGraphs(targets, dtype)
        self.ttsft_graphs = graphs
        gen = self.model_g
        dec = gen.dec
        for name, module in (("enc_p", gen.enc_p), ("enc_q", gen.enc_q), ("flow", gen.flow), ("dec", dec)):
            module.forward = GraphedForward(module, name, graphs, mixed=name == "dec")  # type: ignore[method-assign]
        if dtype is not None:  # the audio itself in float32: the last convolution outside autocast
            dec.conv_post.forward = Float32Forward(dec.conv_post)  # type: ignore[method-assign,assignment]
        if hasattr(self.model_g.dp, "post_flows"):  # the stochastic duration predictor (flows.sdp_forward)
            self.model_g.dp.__dict__["ttsft_graphs"] = graphs
        parts = ", ".join(targets) if targets else "none"
        return f"cuda: graphed parts {parts}; decoder and discriminators in {dtype or 'float32'}"

    def disable_cuda_parts(self) -> None:
        """Back to the eager float32 step (for comparisons in one process)."""
        self.__dict__.pop("ttsft_graphs", None)
        gen = self.model_g
        for module in (gen.enc_p, gen.enc_q, gen.flow, gen.dec, gen.dec.conv_post):
            module.__dict__.pop("forward", None)
        self.model_g.dp.__dict__.pop("ttsft_graphs", None)

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
