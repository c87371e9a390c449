"""Runs piper-tts 1.8.0's trainer with the project's fixes installed in-process.

    python -m ttsft_daemon.training.launcher fit <piper.train fit args> [--ttsft.* options]
    python -m ttsft_daemon.training.launcher export <ckpt> <out.onnx> [--voice V --quality Q --espeak-voice E]
    python -m ttsft_daemon.training.launcher inspect <ckpt>        (prints epoch, step, hyper-parameters as JSON)

Fixes of the wheel's defects (DESIGN.md, "Piper training"), none of which touches site-packages:

1. piper imports a compiled alignment core its wheel lacks: `install_fixes()` registers a module of that name
   whose `maximum_path_c` is the adapter in `mas.py`.
2. piper adds a checkpoint callback on `val_mos`, a metric that needs a model from a hub; offline, Lightning
   then stops after epoch 0. This launcher builds piper's CLI without that callback and with `mos_metric`
   forced off.
3. piper's ONNX export fails with the new exporter of torch >= 2.9; `export` uses the legacy one
   (`dynamo=False`).

Besides, the `fit` command gets what the daemon needs (`--ttsft.*` options, see `TtsftSupervisor`):
checkpoints every N epochs written atomically (temporary name in the same folder, fsync, rename), `last.ckpt`
switched atomically to the newest one, a `progress.json` after each epoch, warm-start paths stripped from
checkpoints and ignored on resume (else resuming re-applies the base weights over the trained ones), and an
optional exit when the parent process dies.

Several processes (Lightning's DDP; docs/scaling-out.md): the same `fit` command line runs in every rank,
whether Lightning starts the other ranks itself (`--trainer.strategy ddp --trainer.devices N`) or `torchrun` /
`srun` start them all. Each rank prints `[ttsft] rank R/W ...`. Only global rank 0 prepares piper's cache
(`RankSafeDataModule`; the others take its config.json after Lightning's set-up barrier, and every rank draws
the same train/validation split), DDP finds unused parameters (piper's generator and discriminator steps each
leave the other's parameters without gradients), `drop_last` is decided on a rank's share of the clips, and
only rank 0 writes checkpoints, last.ckpt, progress.json, the step log and the cache marker; a checkpoint's
"due or skipped" decision is rank 0's, broadcast, so every rank enters Lightning's save barrier together.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import types
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy
from piper.train.__main__ import VitsLightningCLI
from piper.train.vits.dataset import VitsDataModule

from ttsft_daemon.core.spool import atomic_write_bytes, atomic_write_json, fsync_dir, read_json, tmp_name
from ttsft_daemon.training.fast.checkpoint import BackgroundWriter, CheckpointThrottle, snapshot
from ttsft_daemon.training.progress import (
    CACHE_MARKER,
    ProgressFile,
    StepReporter,
    checkpoint_name,
    now_iso,
    point_last_checkpoint,
    selection_loss,
)

MAS_MODULE = "piper.train.vits.monotonic_align.monotonic_align"
ONNX_OPSET = 15
PARENT_POLL_SECONDS = 1.0
PARENT_GONE_GRACE_SECONDS = 30.0
EXIT_PARENT_GONE = 70
WARMSTART_KEYS = ("warmstart_ckpt", "vocoder_warmstart_ckpt")
ITEM_CACHE_BYTES = 512 << 20  # fast mode: loaded clips kept per data-loader process (`CachedItems`)


def install_fixes() -> None:
    """Fix 1: `...monotonic_align.monotonic_align.core.maximum_path_c` resolves to the adapter in mas.py."""
    from ttsft_daemon.training import mas

    package = types.ModuleType(MAS_MODULE)
    package.__path__ = []
    core = types.ModuleType(f"{MAS_MODULE}.core")
    core.maximum_path_c = mas.maximum_path_c  # type: ignore[attr-defined]
    package.core = core  # type: ignore[attr-defined]
    sys.modules[MAS_MODULE] = package
    sys.modules[f"{MAS_MODULE}.core"] = core


# ----------------------------------------------------------------------------------------------- fit


def _scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    values: dict[str, float] = {}
    for name, value in metrics.items():
        try:
            values[name] = round(float(value), 6)
        except (TypeError, ValueError, RuntimeError):
            continue
    return values


def _watch_parent(parent: int) -> None:
    """Stop this trainer when the process that started it is gone (its checkpoints stay consistent)."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)  # Lightning stops after the current batch; before fit, this ends us
    with contextlib.suppress(OSError):  # our output went to the parent: the pipe is likely broken
        print(f"[ttsft] parent {parent} is gone: stopping", file=sys.stderr, flush=True)
    time.sleep(PARENT_GONE_GRACE_SECONDS)
    os._exit(EXIT_PARENT_GONE)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Streams a checkpoint to a temporary name beside its destination, fsyncs, renames, fsyncs the folder.

    (Lightning's own writer goes through a temporary file in $TMPDIR and a move, which is a copy, and so not
    atomic, when $TMPDIR is another file system; it also holds the whole checkpoint in memory first.)
    """

    def __init__(self, background: bool = False) -> None:
        super().__init__()
        self.last_save_seconds = 0.0  # what the save cost the training thread
        self.last_write_seconds = 0.0  # the last background write (snapshot to disk), on the writer thread
        self.background = background  # write on a thread from a host snapshot (fast mode on CUDA)
        self.writer = BackgroundWriter()
        self.on_written: Callable[[Path, float], None] | None = None  # called once the next save is on disk

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        started = time.monotonic()
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        written, self.on_written = self.on_written, None
        if written is None:  # a save the supervisor did not announce: still say who wrote it
            def written(dest: Path, seconds: float) -> None:
                print(f"[ttsft] checkpoint {dest.name} written by pid {os.getpid()}", flush=True)
        if not self.background:
            self._write(checkpoint, dest)
            self.last_save_seconds = time.monotonic() - started
            if written is not None:
                written(dest, self.last_save_seconds)
            return
        self.writer.wait()  # at most one write in flight
        taken = snapshot(checkpoint)
        self.last_save_seconds = time.monotonic() - started

        def work() -> None:
            begun = time.monotonic()
            self._write(taken(), dest)
            self.last_write_seconds = time.monotonic() - begun
            if written is not None:
                written(dest, self.last_save_seconds)

        self.writer.submit(work)

    def wait(self) -> None:
        """Block until the background write (if any) is on disk; re-raise its error."""
        self.writer.wait()

    @staticmethod
    def _write(checkpoint: dict[str, Any], dest: Path) -> None:
        tmp = tmp_name(dest)
        try:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(dest.parent)


def _sync(pl_module: Any) -> None:
    if pl_module.device.type == "cuda":
        torch.cuda.synchronize(pl_module.device)


class StepLog(Callback):
    """Per-step losses and per-epoch timings, one JSON line per epoch (for loss curves and benchmarks).

    Each line: epoch (completed), steps (batches in it), losses {name: [value per batch]} for the names in
    KEYS that the model logs, train_seconds (first batch to validation start), validation_seconds,
    checkpoint_seconds (time spent in trainer.save_checkpoint: what saving cost the training thread),
    wall_seconds (this epoch's start to the next one's, or to the end of training), started (unix time).
    Losses stay on the device until the epoch's end (one read per epoch); timings are read after a device
    sync, four per epoch.
    """

    KEYS = ("loss_g", "loss_d", "train_gen", "train_disc", "train_mel", "train_fm", "train_kl", "train_dur")

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = Path(path)
        self._record: dict[str, Any] | None = None
        self._steps: list[dict[str, torch.Tensor]] = []
        self._checkpoint_seconds = 0.0
        self._started = 0.0
        self._validation_started: float | None = None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        save = trainer.save_checkpoint

        def timed_save(*args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                return save(*args, **kwargs)
            finally:
                self._checkpoint_seconds += time.monotonic() - started

        trainer.save_checkpoint = timed_save

    def add_checkpoint_seconds(self, seconds: float) -> None:
        """Count `seconds` (e.g. waiting for a background write) as checkpoint time of the current epoch."""
        self._checkpoint_seconds += seconds

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        _sync(pl_module)
        self._flush()
        self._started = time.monotonic()
        self._validation_started = None
        self._steps = []
        self._checkpoint_seconds = 0.0
        self._record = {"epoch": trainer.current_epoch + 1, "started": time.time(), "validation_seconds": 0.0}

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        # the fast model keeps every step's losses itself (it logs through Lightning less often)
        metrics = getattr(pl_module, "ttsft_step_metrics", None) or trainer.callback_metrics
        names = [k for k in self.KEYS if isinstance(metrics.get(k), torch.Tensor)]
        if names:  # one copy (a stack) per step
            values = torch.stack([metrics[k].detach().float().reshape(()) for k in names])
            self._steps.append(dict(zip(names, values.unbind(0), strict=True)))
        else:
            self._steps.append({})

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self._record is not None and not trainer.sanity_checking:
            _sync(pl_module)
            self._validation_started = time.monotonic()
            self._record.setdefault("train_seconds", round(self._validation_started - self._started, 4))

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._record is not None and self._validation_started is not None:
            _sync(pl_module)
            self._record["validation_seconds"] += round(time.monotonic() - self._validation_started, 4)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._record is None:
            return
        _sync(pl_module)
        self._record.setdefault("train_seconds", round(time.monotonic() - self._started, 4))
        names = [k for k in self.KEYS if all(k in step for step in self._steps)] if self._steps else []
        values = torch.stack([torch.stack([s[k] for s in self._steps]) for k in names]).cpu().tolist() if names else []
        self._record["steps"] = len(self._steps)
        self._record["losses"] = dict(zip(names, values, strict=True))

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        _sync(pl_module)
        self._flush()

    def _flush(self) -> None:
        if self._record is None or "losses" not in self._record:
            return
        self._record["checkpoint_seconds"] = round(self._checkpoint_seconds, 4)
        self._record["wall_seconds"] = round(time.monotonic() - self._started, 4)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(self._record) + "\n")
        self._record = None


class TtsftSupervisor(Callback):
    """Checkpoints, progress and parent watch for the daemon (configured as `--ttsft.<arg>`).

    Args:
        progress_file: progress.json to rewrite after each epoch (none: no progress file).
        checkpoint_dir: folder of the checkpoints (default: <default_root_dir>/checkpoints).
        every_n_epochs: save a checkpoint every this many epochs, and always after the final epoch.
        quality: quality label stored in the checkpoints (x_low, low, medium, high).
        exit_with_parent: stop training when the process that started this one exits.
        fast: the project's faster training pieces (ttsft_daemon.training.fast); read by `fit_main` before
            the model is built, and here: on CUDA, checkpoints are written in the background.
        checkpoint_share: on CUDA in fast mode, skip a due checkpoint (not the final one) while saving would
            take more than this share of the wall time (0: save whenever due).
        step_lr_schedulers: step piper's learning-rate schedulers after each epoch (piper's manual
            optimisation never steps them, so its configured decay never happens).
        step_log: JSON-lines file of per-step losses and per-epoch timings (see `StepLog`).
        ddp_backend: under DDP, the process-group backend: auto (nccl on CUDA, gloo on CPUs), nccl or gloo.
        ddp_timeout_minutes: under DDP, how long a collective (barrier, gradient reduction) may wait for the
            slowest rank before the run fails.

    Under DDP this callback runs in every rank; only global rank 0 writes (see the module's docstring).
    """

    def __init__(
        self,
        progress_file: str | None = None,
        checkpoint_dir: str | None = None,
        every_n_epochs: int = 1,
        quality: str | None = None,
        exit_with_parent: bool = False,
        fast: bool = False,
        checkpoint_share: float = 0.05,
        step_lr_schedulers: bool = True,
        step_log: str | None = None,
        ddp_backend: str = "auto",
        ddp_timeout_minutes: float = 60.0,
    ) -> None:
        super().__init__()
        if ddp_backend not in ("auto", "nccl", "gloo"):
            raise ValueError(f"ddp_backend: got {ddp_backend!r}, expected auto, nccl or gloo")
        self.ddp_backend = ddp_backend
        self.ddp_timeout_minutes = float(ddp_timeout_minutes)
        self.ddp_line: str | None = None  # what configure_ddp set (None: not DDP)
        self.progress = ProgressFile(Path(progress_file)) if progress_file else None
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.every_n_epochs = max(1, every_n_epochs)
        self.quality = quality
        self.fast = fast
        self.step_lr_schedulers = step_lr_schedulers
        self.step_log = StepLog(step_log) if step_log else None
        self.steps = StepReporter()
        self.throttle = CheckpointThrottle(0.0)
        self._checkpoint_share = checkpoint_share
        self._progress_lock = threading.Lock()  # the background writer records its checkpoints too
        self._epoch_started = 0.0
        self._epoch_cpu_started = 0.0
        self._validation_started = 0.0
        self._validation_seconds = 0.0
        self._metrics: dict[str, float] = {}
        if exit_with_parent:
            threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True, name="parent-watch").start()

    # Lightning hooks ---------------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        world = int(trainer.world_size)
        # one write per line: the ranks share the runner's pipe, and print() writes the newline separately
        sys.stdout.write(f"[ttsft] rank {trainer.global_rank}/{world} (node {trainer.node_rank}, local rank "
                         f"{trainer.local_rank}) on {socket.gethostname()} pid {os.getpid()}, device "
                         f"{trainer.strategy.root_device}\n")
        sys.stdout.flush()
        if trainer.is_global_zero and self.ddp_line:
            print(f"[ttsft] {self.ddp_line}, world size {world} ({trainer.num_nodes} node(s) x "
                  f"{trainer.num_devices} device(s))", flush=True)
        if not trainer.is_global_zero:
            self.step_log = None  # one writer of the step log
        on_gpu = trainer.strategy.root_device.type == "cuda"
        if self.fast and on_gpu:
            io = trainer.strategy.checkpoint_io
            if isinstance(io, AtomicCheckpointIO):
                io.background = True
            self.throttle = CheckpointThrottle(self._checkpoint_share)
        if self.step_log is not None:
            self.step_log.setup(trainer, pl_module, stage)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        cache_dir = getattr(trainer.datamodule, "cache_dir", None)
        if trainer.is_global_zero and cache_dir is not None:  # piper's prepare_data has completed
            atomic_write_bytes(Path(cache_dir) / CACHE_MARKER, now_iso().encode())

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        started = time.monotonic()
        self._wait_for_writer(trainer)  # the final checkpoint is on disk before the trainer exits
        if self.step_log is not None:
            self.step_log.add_checkpoint_seconds(time.monotonic() - started)
            self.step_log.on_train_end(trainer, pl_module)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._wait_for_writer(trainer)

    def _wait_for_writer(self, trainer: Any) -> None:
        io = trainer.strategy.checkpoint_io
        if isinstance(io, AtomicCheckpointIO):
            io.wait()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.step_log is not None:
            self.step_log.on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if trainer.is_global_zero:  # the bounded-rate progress line of a running epoch (progress.StepReporter)
            batches = trainer.num_training_batches
            line = self.steps.on_batch(trainer.current_epoch + 1, batch_idx,
                                       int(batches) if isinstance(batches, int) else None, int(trainer.global_step),
                                       lambda: _scalar_metrics(trainer.callback_metrics))
            if line:
                print(line, flush=True)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self.step_log is not None:
            self.step_log.on_train_epoch_start(trainer, pl_module)
        self._epoch_started = time.monotonic()
        self._epoch_cpu_started = time.process_time()
        self._validation_seconds = 0.0

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self.step_log is not None:
            self.step_log.on_validation_epoch_start(trainer, pl_module)
        self._validation_started = time.monotonic()

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.step_log is not None:
            self.step_log.on_validation_epoch_end(trainer, pl_module)
        if not trainer.sanity_checking:
            self._validation_seconds += time.monotonic() - self._validation_started

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.step_log is not None:
            self.step_log.on_train_epoch_end(trainer, pl_module)
        if self.step_lr_schedulers:
            for config in trainer.lr_scheduler_configs:
                config.scheduler.step()
        completed = trainer.current_epoch + 1
        train_seconds = time.monotonic() - self._epoch_started - self._validation_seconds
        self._metrics = _scalar_metrics(trainer.callback_metrics)
        record = {
            "epoch": completed,
            "step": int(trainer.global_step),
            "train_seconds": round(train_seconds, 3),
            "validation_seconds": round(self._validation_seconds, 3),
            # CPU time of this process (all its threads) for training + validation: with other load on the
            # host, wall time says little, this says what the epoch costs
            "cpu_seconds": round(time.process_time() - self._epoch_cpu_started, 3),
            "checkpoint_seconds": 0.0,
            "losses": self._metrics,
            "finished": now_iso(),
        }
        if trainer.is_global_zero and self.progress is not None:
            with self._progress_lock:
                self.progress.record_epoch(record, int(trainer.max_epochs or -1))
        if self._save_decision(trainer, completed):
            self._save(trainer, completed)
        if trainer.is_global_zero:
            losses = " ".join(f"{k}={v:.4g}" for k, v in sorted(self._metrics.items()))
            print(f"[ttsft] epoch {completed} step {trainer.global_step} train {train_seconds:.1f}s "
                  f"validation {self._validation_seconds:.1f}s {losses}", flush=True)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        hparams = checkpoint.get("hyper_parameters")
        if isinstance(hparams, dict):
            for key in WARMSTART_KEYS:
                if hparams.get(key) is not None:
                    hparams[key] = None
        checkpoint["ttsft"] = {
            "quality": self.quality,
            "voice": getattr(trainer.datamodule, "voice_name", None),
            "piper_config": _piper_config_of(trainer.datamodule),
            "metrics": dict(self._metrics),
            "saved": now_iso(),
        }

    # checkpoints -------------------------------------------------------------------------------
    def _should_save(self, completed: int, max_epochs: int | None, writing: bool = False) -> bool:
        final = max_epochs is not None and max_epochs > 0 and completed >= max_epochs
        due = final or completed % self.every_n_epochs == 0
        if due and writing and not final and self.throttle.share > 0:
            return False  # the previous background write is still running: this one would wait for it
        return due and self.throttle.should_save(final)

    def _save_decision(self, trainer: Any, completed: int) -> bool:
        """`_should_save` as rank 0 decides it: every rank must enter Lightning's save (a barrier) or none."""
        io = trainer.strategy.checkpoint_io
        writing = isinstance(io, AtomicCheckpointIO) and io.background and io.writer.busy()
        decision = self._should_save(completed, trainer.max_epochs, writing)
        if int(trainer.world_size) > 1:
            decision = bool(trainer.strategy.broadcast(decision, 0))
        return decision

    def _save(self, trainer: Any, completed: int) -> None:
        folder = self.checkpoint_dir or Path(trainer.default_root_dir) / "checkpoints"
        path = folder / checkpoint_name(completed - 1, int(trainer.global_step))
        io = trainer.strategy.checkpoint_io
        step = int(trainer.global_step)
        loss = selection_loss(self._metrics)
        started = time.monotonic()

        def written(dest: Path, blocking_seconds: float) -> None:
            """Runs once the file is complete: here, or on the background writer's thread."""
            if getattr(io, "background", False):
                self.throttle.add_cost(float(getattr(io, "last_write_seconds", 0.0)))
            point_last_checkpoint(dest)
            size = dest.stat().st_size
            if self.progress is not None:
                with self._progress_lock:
                    self.progress.record_checkpoint(dest, {
                        "epoch": completed, "step": step, "loss": loss, "bytes": size,
                        "save_seconds": round(blocking_seconds, 3), "saved": now_iso(),
                    })
            print(f"[ttsft] checkpoint {dest.name} ({size / 1e6:.0f} MB, {blocking_seconds:.1f}s"
                  f"{', written in the background' if getattr(io, 'background', False) else ''}) written by pid "
                  f"{os.getpid()}", flush=True)

        if trainer.is_global_zero and isinstance(io, AtomicCheckpointIO):
            io.on_written = written
        trainer.save_checkpoint(path)
        self.throttle.saved(time.monotonic() - started)
        if trainer.is_global_zero and not isinstance(io, AtomicCheckpointIO):
            written(path, float(getattr(io, "last_save_seconds", 0.0)))


def _piper_config_of(datamodule: Any) -> dict[str, Any] | None:
    config = getattr(datamodule, "piper_config", None)
    if config is not None:
        return dict(config.to_dict())
    path = getattr(datamodule, "config_path", None)
    return read_json(Path(path)) if path else None


SPLIT_SEED = 1234  # under DDP every rank draws piper's train/validation split from this seed


def _world_size(module: Any) -> int:
    trainer = getattr(module, "trainer", None)
    return int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1


class RankSafeDataModule(VitsDataModule):  # type: ignore[misc]
    """piper's data module, correct when several processes train together (DDP).

    - Only global rank 0 runs `prepare_data` (the CLI sets `prepare_data_per_node` off: on several nodes the
      training folder is one shared folder, and two nodes writing piper's cache in place would race). piper's
      `setup` needs the config that `prepare_data` builds; the other ranks read the config.json rank 0 wrote
      (Lightning holds every rank at a barrier until rank 0's preparation is over).
    - piper draws the train/validation split from the global random state, which rank 0's preparation may
      have advanced: under DDP the split is drawn from `SPLIT_SEED`, the same on every rank (else a clip could
      be trained on by one rank and validated on by another).
    - piper drops a ragged last batch when the training split is larger than a batch; under DDP each rank
      sees only its share (Lightning's distributed sampler), so the decision is made on that share (else a
      small dataset gives every rank zero batches).
    """

    def setup(self, stage: str) -> None:
        if self.piper_config is None:
            from piper.config import PiperConfig

            written = read_json(Path(self.config_path))
            if written is None:
                raise RuntimeError(f"{self.config_path} is missing: global rank 0 did not prepare the data (on "
                                   "several nodes, the training folder must be one shared folder)")
            self.piper_config = PiperConfig.from_dict(written)
        if _world_size(self) <= 1:
            super().setup(stage)  # single process: piper's split as before (resumed runs keep theirs)
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SPLIT_SEED)
            super().setup(stage)

    item_cache_bytes = 0  # fast mode (fit_main): each loader process keeps up to this much of loaded clips

    def train_dataloader(self) -> Any:
        share = math.ceil(len(self.train_dataset) / _world_size(self))
        drop_last = share > self.batch_size
        if not drop_last:
            logging.getLogger(__name__).warning(
                "each rank's share of the training split (%s clips) is not larger than batch_size (%s): "
                "one short batch per rank and epoch", share, self.batch_size)
        dataset: Any = self.train_dataset
        if self.item_cache_bytes > 0:
            dataset = CachedItems(dataset, self.item_cache_bytes)
        return self._make_dataloader(dataset, shuffle=True, drop_last=drop_last)


class CachedItems(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """A dataset whose items stay in memory after their first load, up to `max_bytes` of tensors (in each
    loader worker: piper's workers are persistent, so from the second epoch on a clip costs no file reads).

    piper loads three files per clip (`torch.load`), ~100 ms for a batch of 32 on one worker: each epoch's
    first batch waits that long with the GPU idle (5 batches an epoch on the bench's 10 minutes of speech).
    Items are returned as loaded; the collate function copies them into the batch (nothing writes to them).
    """

    def __init__(self, base: Any, max_bytes: int) -> None:
        self.base = base
        self.max_bytes = max_bytes
        self.items: dict[int, Any] = {}
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Any:
        item = self.items.get(index)
        if item is None:
            item = self.base[index]
            size = _tensor_bytes(item)
            if self.bytes + size <= self.max_bytes:
                self.items[index] = item
                self.bytes += size
        return item


def _tensor_bytes(item: Any) -> int:
    values = [getattr(item, f.name) for f in dataclasses.fields(item)] if dataclasses.is_dataclass(item) else [item]
    return sum(v.numel() * v.element_size() for v in values if isinstance(v, torch.Tensor))


def configure_ddp(strategy: Any, backend: str, timeout_minutes: float) -> str | None:
    """Set what piper's training needs on a DDP strategy (None when `strategy` is not DDP), before fit.

    find_unused_parameters: piper's manual step runs the generator's backward (the discriminator's parameters
    get no gradient in the fast path) and then the discriminator's (the generator's get none); without it DDP
    waits for those gradients and fails at the next step. The process-group backend (auto: nccl on CUDA,
    gloo on CPUs) and the time limit of collectives (rank 0 prepares piper's cache while the other ranks wait
    at a barrier: a large dataset's first preparation takes long) are set from the `--ttsft.ddp_*` options.
    Returns a line describing the settings.
    """
    if not isinstance(strategy, DDPStrategy):
        return None
    if getattr(strategy, "_start_method", "popen") != "popen":
        raise ValueError("only the popen start method of DDP runs this trainer (strategy ddp, not "
                         "ddp_spawn/ddp_fork/ddp_notebook)")
    strategy._ddp_kwargs["find_unused_parameters"] = True
    if backend != "auto":
        strategy._process_group_backend = backend
    strategy._timeout = timedelta(minutes=timeout_minutes)
    return f"ddp: find_unused_parameters, backend {backend}, collective timeout {timeout_minutes:g} min"


class TtsftLightningCLI(VitsLightningCLI):  # type: ignore[misc]
    """piper's CLI plus the `--ttsft.*` supervisor, MOS off, warm start ignored on resume, atomic saves."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        super().add_arguments_to_parser(parser)  # type: ignore[no-untyped-call]
        parser.add_lightning_class_args(TtsftSupervisor, "ttsft")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        config["model.mos_metric"] = None
        if config.get("ckpt_path"):
            # The checkpoint's hyper-parameters replaced the command line's; a warm-start path among them would
            # copy the base weights over the resumed ones in on_fit_start.
            for key in WARMSTART_KEYS:
                config[f"model.{key}"] = None

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        self.trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        self.datamodule.prepare_data_per_node = False  # global rank 0 prepares (see RankSafeDataModule)
        callbacks: list[Any] = getattr(self.trainer, "callbacks", [])
        supervisor = next((c for c in callbacks if isinstance(c, TtsftSupervisor)), None)
        if supervisor is not None:
            supervisor.ddp_line = configure_ddp(self.trainer.strategy, supervisor.ddp_backend,
                                                supervisor.ddp_timeout_minutes)


def fast_requested(args: Sequence[str]) -> bool:
    """Whether a fit command line asks for the fast path (`--ttsft.fast true` or `--ttsft.fast=true`)."""
    value = None
    for index, arg in enumerate(args):
        if arg == "--ttsft.fast" and index + 1 < len(args):
            value = args[index + 1]
        elif arg.startswith("--ttsft.fast="):
            value = arg.split("=", 1)[1]
    return value is not None and value.strip().lower() in ("true", "1", "yes", "on")


def resolve_precision(args: Sequence[str], fast: bool) -> tuple[list[str], bool]:
    """`--trainer.precision auto` (training.precision's default) as Lightning gets it: 32-true, with the fast
    path's bf16 decoder and discriminators requested when `fast` (FastVitsModel applies it on CUDA only).
    Returns the arguments and whether mixed precision is requested; other values pass through."""
    out = list(args)
    mixed = False
    for index, arg in enumerate(out):
        if arg == "--trainer.precision" and index + 1 < len(out) and out[index + 1].strip().lower() == "auto":
            out[index + 1] = "32-true"
            mixed = fast
        elif arg.startswith("--trainer.precision=") and arg.split("=", 1)[1].strip().lower() == "auto":
            out[index] = "--trainer.precision=32-true"
            mixed = fast
    return out, mixed


def fit_main(args: Sequence[str] | None = None) -> int:
    """piper.train's `fit` with the fixes; `args` None parses sys.argv (as DDP's re-launched ranks do)."""
    install_fixes()
    from piper.train.vits.lightning import VitsModel

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    logging.basicConfig(level=logging.INFO)
    model_class: type[Any] = VitsModel
    given = list(sys.argv[1:] if args is None else args)
    fast = fast_requested(given)
    given, mixed = resolve_precision(given, fast)
    if fast:
        from ttsft_daemon.training import fast as fast_pieces
        from ttsft_daemon.training.fast.model import FastVitsModel

        for line in fast_pieces.install():
            print(f"[ttsft] fast {line}", flush=True)
        FastVitsModel.ttsft_mixed_precision = mixed
        RankSafeDataModule.item_cache_bytes = ITEM_CACHE_BYTES
        model_class = FastVitsModel
    TtsftLightningCLI(
        model_class,
        RankSafeDataModule,
        trainer_defaults={
            "max_epochs": -1,
            "enable_checkpointing": False,  # TtsftSupervisor saves; Lightning's default callback would too
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
        },
        save_config_kwargs={"overwrite": True},
        args=given,
    )
    return 0


# ----------------------------------------------------------------------------------------------- export


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's dict, memory-mapped where the file format allows (tensors are then read lazily)."""
    try:
        ckpt: dict[str, Any] = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return ckpt


def inspect_checkpoint(path: Path) -> dict[str, Any]:
    """Epoch (0-based, as stored), global step, JSON-able hyper-parameters and the ttsft metadata."""
    ckpt = load_checkpoint(path)
    hparams = {k: v for k, v in dict(ckpt.get("hyper_parameters") or {}).items() if _is_json_value(v)}
    meta = ckpt.get("ttsft") or {}
    return {
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
        "hyper_parameters": hparams,
        "ttsft": {k: v for k, v in meta.items() if k != "piper_config"},
    }


def _is_json_value(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def voice_config(ckpt: Mapping[str, Any], *, voice: str, quality: str | None, espeak_voice: str) -> dict[str, Any]:
    """The `.onnx.json` Piper needs: the config the trainer's data module wrote, plus quality and dataset.

    Checkpoints made by this launcher carry that config; for others it is rebuilt as the data module builds
    it (espeak phonemes, piper's default phoneme id map).
    """
    meta = dict(ckpt.get("ttsft") or {})
    config = meta.get("piper_config")
    hparams = dict(ckpt.get("hyper_parameters") or {})
    if not config:
        from piper.config import PhonemeType, PiperConfig
        from piper.phoneme_ids import DEFAULT_PHONEME_ID_MAP

        config = PiperConfig(
            num_symbols=int(hparams.get("num_symbols", 256)),
            num_speakers=int(hparams.get("num_speakers", 1)),
            sample_rate=int(hparams.get("sample_rate", 22050)),
            espeak_voice=espeak_voice,
            phoneme_id_map=DEFAULT_PHONEME_ID_MAP,
            phoneme_type=PhonemeType.ESPEAK,
            piper_version="1.5.0",  # what piper.train's data module writes
        ).to_dict()
    from ttsft_daemon.training.sizes import quality_of

    config = json.loads(json.dumps(config))
    config.setdefault("audio", {})["quality"] = quality or meta.get("quality") or quality_of(hparams) or "medium"
    config["dataset"] = voice
    epoch = ckpt.get("epoch")
    config["ttsft"] = {
        "epoch": None if epoch is None else int(epoch) + 1,
        "step": ckpt.get("global_step"),
        "exported": now_iso(),
    }
    return dict(config)


def export_onnx(checkpoint: Path, out_onnx: Path, *, voice: str, quality: str | None, espeak_voice: str) -> None:
    """Write `out_onnx` and `out_onnx.json` (each atomically) from a training checkpoint."""
    from piper.train.vits.lightning import VitsModel

    ckpt = load_checkpoint(checkpoint)
    config = voice_config(ckpt, voice=voice, quality=quality, espeak_voice=espeak_voice)
    config["ttsft"]["checkpoint"] = str(checkpoint.resolve())
    del ckpt

    model = VitsModel.load_from_checkpoint(checkpoint, map_location="cpu", mos_metric=None)
    generator = model.model_g
    generator.eval()
    with torch.no_grad():
        generator.dec.remove_weight_norm()  # type: ignore[no-untyped-call]
    inference = InferenceGraph(generator)

    torch.manual_seed(1234)
    phonemes = torch.randint(low=0, high=int(generator.n_vocab), size=(1, 50), dtype=torch.long)
    lengths = torch.LongTensor([phonemes.size(1)])
    scales = torch.FloatTensor([0.667, 1.0, 0.8])
    speaker = torch.LongTensor([0]) if int(generator.n_speakers) > 1 else None

    out_onnx.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(out_onnx)
    try:
        torch.onnx.export(
            inference,
            (phonemes, lengths, scales, speaker),
            str(tmp),
            opset_version=ONNX_OPSET,
            input_names=["input", "input_lengths", "scales", "sid"],
            output_names=["output"],
            dynamic_axes={
                "input": {0: "batch_size", 1: "phonemes"},
                "input_lengths": {0: "batch_size"},
                "output": {0: "batch_size", 2: "time"},
            },
            dynamo=False,  # fix 3: the dynamo exporter of torch >= 2.9 fails on this model
        )
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out_onnx)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(out_onnx.parent)
    atomic_write_json(Path(f"{out_onnx}.json"), config)


class InferenceGraph(torch.nn.Module):
    """The generator's inference as the graph piper runs: (phoneme ids, lengths, scales, speaker) -> audio."""

    def __init__(self, generator: Any) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, text: Any, text_lengths: Any, scales: Any, sid: Any = None) -> Any:
        noise, length, noise_w = scales[0], scales[1], scales[2]
        audio = self.generator.infer(
            text, text_lengths, noise_scale=noise, length_scale=length, noise_scale_w=noise_w, sid=sid
        )[0]
        return audio.unsqueeze(1)


# ----------------------------------------------------------------------------------------------- main


def _export_main(args: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="launcher export", allow_abbrev=False)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("output", type=Path, help="the .onnx file; its config goes to <output>.json")
    parser.add_argument("--voice", default=None, help="dataset name in the config (default: the file's stem)")
    parser.add_argument("--quality", default=None, choices=["x_low", "low", "medium", "high"])
    parser.add_argument("--espeak-voice", default="en-us", help="for checkpoints that do not carry their config")
    ns = parser.parse_args(list(args))
    export_onnx(ns.checkpoint, ns.output, voice=ns.voice or ns.output.stem, quality=ns.quality,
                espeak_voice=ns.espeak_voice)
    print(f"[ttsft] exported {ns.output}", flush=True)
    return 0


def _inspect_main(args: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="launcher inspect", allow_abbrev=False)
    parser.add_argument("checkpoint", type=Path)
    ns = parser.parse_args(list(args))
    print(json.dumps(inspect_checkpoint(ns.checkpoint)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["export"]:
        return _export_main(args[1:])
    if args[:1] == ["inspect"]:
        return _inspect_main(args[1:])
    return fit_main(None if argv is None else args)


if __name__ == "__main__":
    sys.exit(main())
