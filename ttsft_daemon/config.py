"""Typed configuration, validated at load.

Every section is a frozen dataclass; every field carries its documentation and its limits in the
field metadata, which `config.example.yaml` mirrors. Loading collects *all* problems before failing,
so that a user fixes a bad file in one go.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import reprlib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ttsft_daemon.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent

AUDIO_EXTENSIONS = ("mp3", "mp4", "m4a", "wav", "flac", "ogg", "webm", "mkv")


def _f(default: Any, doc: str, **limits: Any) -> Any:
    """A dataclass field with documentation and validation limits (min, max, choices)."""
    meta = {"doc": doc, **limits}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class PathsConfig:
    root: Path = _f(Path("/var/lib/ttsft-daemon"), "state root: inbox/, spool/, dataset/, training/ ...")
    models: Path | None = _f(None, "offline models folder (default: models/ beside the package)")

    @property
    def models_dir(self) -> Path:
        return self.models if self.models is not None else PROJECT_DIR / "models"


@dataclass(frozen=True)
class InboxConfig:
    settle_seconds: float = _f(10.0, "a file is taken once size and mtime are unchanged this long", min=0.0)
    polling: bool = _f(False, "use watchdog's polling observer (network shares: inotify sees nothing)")
    poll_interval_seconds: float = _f(5.0, "polling observer interval", min=0.1)
    rescan_seconds: float = _f(30.0, "full rescan of inbox and spools (the truth; events only wake)", min=0.2)
    default_voice: str = _f("default", "voice name for files at the top level of the inbox")
    extensions: list[str] = _f(list(AUDIO_EXTENSIONS), "file extensions taken from the inbox")
    max_file_mb: float = _f(4096.0, "files larger than this are quarantined", min=0.001)
    max_duration_seconds: float = _f(4 * 3600.0, "recordings longer than this are quarantined", min=1.0)


@dataclass(frozen=True)
class WorkersConfig:
    ingest: int = _f(1, "ingest threads", min=1, max=64)
    separate: int = _f(1, "separation threads (each drives one Spleeter worker process)", min=1, max=16)
    segment: int = _f(1, "segmentation + cleaning threads", min=1, max=64)
    speaker: int = _f(1, "speaker-selection threads (each loads the speaker encoder once)", min=1, max=64)
    transcribe: int = _f(2, "transcription threads (each loads its Whisper model once)", min=1, max=64)
    accept: int = _f(1, "dataset threads", min=1, max=16)


@dataclass(frozen=True)
class DaemonConfig:
    workers: WorkersConfig = field(default_factory=WorkersConfig, metadata={"doc": "threads per stage"})
    max_jobs_in_flight: int = _f(4, "recordings between ingest and segmentation at once", min=1)
    max_attempts: int = _f(3, "tries of a failing item before it is quarantined", min=1, max=100)
    retry_backoff_seconds: float = _f(30.0, "wait before retrying a failed item (doubles each try)", min=0.0)
    heartbeat_timeout_seconds: float = _f(
        600.0, "a worker silent this long stops WATCHDOG=1 (systemd then restarts)", min=1.0
    )
    ffmpeg_timeout_seconds: float = _f(1800.0, "time limit of one ffmpeg/ffprobe call", min=1.0)


@dataclass(frozen=True)
class SeparationConfig:
    enabled: bool = _f(True, "false skips Spleeter for clean recordings")
    python: Path | None = _f(None, "python of the Spleeter environment (default: .venv-spleeter/bin/python)")
    model_dir: Path | None = _f(None, "Spleeter MODEL_PATH (default: <models>/spleeter)")
    chunk_seconds: float = _f(55.0, "separate in chunks of this length (memory stays flat; 55 s with the 2 s "
                              "overlaps fills 5 of Spleeter's 512-frame segments, 60 s needed 6)", min=5.0)
    overlap_seconds: float = _f(2.0, "overlap cross-faded between chunks", min=0.0)
    timeout_seconds: float = _f(3600.0, "time limit for separating one recording", min=10.0)
    start_timeout_seconds: float = _f(300.0, "time limit for the worker to load the model", min=1.0)
    crossfade: str = _f("linear", "how chunk overlaps are blended (linear measured best)",
                        choices=["linear", "equal_power"])
    input_level_dbfs: float | None = _f(-14.0, "level of the non-silent audio fed to Spleeter (quiet input "
                                        "separates worse); null: no gain", min=-60.0, max=0.0)
    engine: str = _f("auto", "onnx: Spleeter's U-Nets in ONNX Runtime (<model_dir>/2stems.onnx, made by "
                     "scripts/install.sh; the same vocals to float rounding for 0.42x TensorFlow's CPU); tf: "
                     "TensorFlow; auto: onnx where that file exists, else tf", choices=["auto", "onnx", "tf"])
    skip_music_free: bool = _f(True, "pass chunks without music through unseparated (speech alone falls silent "
                               "between phrases, music fills the gaps; see music_free_gap_db): a recording "
                               "without music costs no separation")
    music_free_gap_db: float = _f(30.0, "a chunk is music-free when 95 % of its 4 s windows hold a 0.1 s moment "
                                  "this far below their loud part (a noisier recording is separated as before)",
                                  min=10.0, max=80.0)
    remove_residue: bool = _f(True, "run the vocal stem of recordings Spleeter separated through RNNoise, which "
                              "takes the music Spleeter leaves in further down (real speech over real music: "
                              "coverage 31 -> 70 % at 6 dB and 87 -> 93 % at 20 dB, accepted clips' WER and DNSMOS "
                              "better; bench/RESULTS.md §7); music-free recordings are never touched")
    residue_keep: float = _f(0.25, "share of the vocal stem mixed back into RNNoise's output: it bounds the cut "
                             "(0.25: 12 dB) and gives back the soft word edges RNNoise thins. Measured at 6 / 20 dB: "
                             "0 keeps 83 / 95 % of the speech at WER 17 / 5.8 %; 0.25 70 / 93 % at 10 / 2.5 %; 0.4 "
                             "63 / 90 % at 7.0 / 2.5 %", min=0.0, max=0.9)
    residue_skip_gap_db: float | None = _f(45.0, "skip RNNoise for a stem whose pauses (its quietest tenth) already "
                                           "lie this far under its speech: Spleeter took the music out whole, and the "
                                           "step (~0.06 CPU-s per audio second, as much as Spleeter) would have "
                                           "nothing to remove. Measured: real speech over real game music at 20-6 dB "
                                           "30-33 dB, Piper speech over the demo's synthetic bed 60-63 dB; null: "
                                           "never skip", min=10.0, max=120.0)
    residue_library: Path | None = _f(None, "librnnoise.so for remove_residue (default: the one the pyrnnoise "
                                      "package bundles)")
    threads: int = _f(0, "ONNX Runtime / TensorFlow threads of the Spleeter worker (0 = auto: 1 on hosts of up to 4 "
                      "cores, where the other stages' workers hold the other cores; else half the cores)",
                      min=0, max=256)

    @property
    def python_path(self) -> Path:
        return self.python if self.python is not None else PROJECT_DIR / ".venv-spleeter" / "bin" / "python"


@dataclass(frozen=True)
class SegmentationConfig:
    min_clip_seconds: float = _f(1.0, "shortest clip kept (shorter neighbours are merged)", min=0.1)
    max_clip_seconds: float = _f(15.0, "longest clip; longer segments are split again", min=1.0)
    initial_silence_factor: float = _f(0.1, "silence = RMS below factor x speech level (median RMS of speech frames)",
                                       min=0.0001)
    factor_step: float = _f(0.5, "over-long segments are split again with the factor divided by this (shallower "
                            "pauses such as breaths then qualify)", min=0.01, max=0.99)
    max_silence_factor: float = _f(0.5, "the most lenient factor tried on over-long segments before cutting at "
                                   "the quietest point", min=0.0001, max=1.0)
    min_factor: float = _f(0.005, "segment edges extend while RMS stays above min_factor x speech level (soft word "
                           "endings are kept)", min=0.0)
    min_silence_seconds: float = _f(0.2, "shortest silent run that counts as a pause", min=0.01)
    frame_seconds: float = _f(0.02, "RMS frame hop", min=0.001, max=0.5)


@dataclass(frozen=True)
class AudioConfig:
    sample_rate: int = _f(22050, "clip sample rate (Piper: 22050, or 16000)", choices=[16000, 22050])
    target_dbfs: float = _f(-20.0, "loudness normalisation target (RMS dBFS of speech)", min=-60.0, max=-3.0)
    peak_dbfs: float = _f(-1.0, "peak ceiling after normalisation", min=-30.0, max=0.0)
    denoise: bool = _f(False, "spectral-gate denoise of each clip")
    pad_seconds: float = _f(0.1, "silence kept at each end after trimming", min=0.0, max=1.0)
    silence_dbfs: float = _f(-70.0, "a clip whose loudest 10 ms is below this is silent and dropped",
                             min=-120.0, max=-20.0)


@dataclass(frozen=True)
class SpeakerConfig:
    enabled: bool = _f(True, "keep only the target speaker's clips (false: every voice in the recordings is kept)")
    enroll_name: str = _f("enroll", "inbox/<voice>/<enroll_name>*.<ext> is a clean sample of the target speaker "
                          "(10 s or more): it becomes the voice's reference instead of training data")
    same_speaker_short: float = _f(0.80, "a clip of short_seconds or less whose cosine similarity to the target's "
                                   "reference is below this is another speaker's (rejected as other_speaker)",
                                   min=-1.0, max=1.0)
    short_seconds: float = _f(1.5, "the length the short threshold applies to", min=0.1)
    same_speaker_long: float = _f(0.86, "the same for clips of long_seconds or more (longer clips give surer "
                                  "embeddings: both same- and other-speaker similarities grow); in between the "
                                  "threshold runs linearly in log(seconds)", min=-1.0, max=1.0)
    long_seconds: float = _f(6.0, "the length the long threshold applies to", min=0.2)
    enrollment_margin: float = _f(0.04, "against a clean enrollment, clips of Spleeter's vocal stems are judged with "
                                  "thresholds this much lower (measured: stems score 0.03-0.05 lower against the "
                                  "same person's clean voice; bench/speaker_eer.py)", min=0.0, max=0.5)
    min_clip_seconds: float = _f(2.0, "clips shorter than this do not vote when the dominant speaker is chosen",
                                 min=0.0)
    merge: float = _f(0.85, "speaker clusters whose centroids are this similar are one speaker", min=-1.0, max=1.0)
    dominant_share: float = _f(0.6, "without an enrollment, the target is the speaker holding at least this share "
                               "of the voice's speech ...", min=0.0, max=1.0)
    dominant_ratio: float = _f(2.0, "... and at least this many times the runner-up's speech; otherwise the voice "
                               "is ambiguous and its clips wait for an enrollment", min=1.0)
    min_decide_seconds: float = _f(60.0, "speech heard before the dominant speaker is chosen (less: clips wait, "
                                   "unless nothing more of the voice is coming)", min=0.0)
    threads: int = _f(0, "torch threads of the speaker encoder (0 = auto: 1 on hosts of up to 4 cores, where a "
                      "second thread only spins while the other stages hold the cores; else 2)", min=0, max=64)
    change_window_seconds: float = _f(1.6, "window of the speaker-change check inside a clip", min=0.5)
    change_hop_seconds: float = _f(0.2, "hop of that window", min=0.05)
    change_threshold: float = _f(0.72, "the mean embeddings before and after a point of a clip less similar than "
                                 "this mean the voice changes there (split, or rejected as mixed_speakers)",
                                 min=-1.0, max=1.0)
    change_min_side_seconds: float = _f(2.0, "each side of a change holds at least this much audio", min=0.1)
    other_margin: float = _f(0.02, "a clip is another speaker's, even above the threshold, when it is this much more "
                             "similar to another speaker heard in the voice's recordings than to the target "
                             "(a voice close to the target's sits nearer its own cluster)", min=0.0, max=1.0)


@dataclass(frozen=True)
class TranscriptionConfig:
    model: str = _f("tiny.en", "faster-whisper model name (downloaded where online) or path")
    device: str = _f("auto", "auto | cpu | cuda", choices=["auto", "cpu", "cuda"])
    compute_type: str = _f("auto", "CTranslate2 compute type (auto: int8 on CPU, float16 on GPU)")
    beam_size: int = _f(5, "Whisper's beam size. 1 (greedy) costs ~20 % less Whisper CPU; its WER was 0.9 points "
                           "lower on real speech with known text but 0.5 points higher on the pipeline bench's "
                           "dataset (bench/RESULTS.md section 1c), so 5 stays the default", min=1, max=20)
    language: str | None = _f("en", "language code, or null to detect")
    vad_filter: bool = _f(False, "faster-whisper's Silero VAD filter")
    cpu_threads: int = _f(0, "CTranslate2 threads per worker (0 = auto: 1 on hosts of up to 4 cores, where it "
                          "measured fastest, else CTranslate2's default of 4)", min=0)
    pack_seconds: float = _f(28.0, "transcribe neighbouring clips of a recording packed into one Whisper pass of up "
                             "to this many seconds (Whisper pads every pass to 30 s); a clip whose share of the "
                             "pass is doubtful is transcribed alone. 0 = one pass per clip", min=0.0, max=30.0)
    window_passes: bool = _f(True, "decode a packed pass as one 30 s window without timestamp tokens (faster-whisper's "
                             "batched pipeline; word times from its alignment, as before). false: long-form decoding, "
                             "which decodes much of a pass twice (again from its last timestamp): 1.5x the Whisper CPU "
                             "at the same WER (bench/RESULTS.md section 1c). Not with vad_filter")


@dataclass(frozen=True)
class QualityConfig:
    max_no_speech_prob: float = _f(0.6, "reject above this no-speech probability", min=0.0, max=1.0)
    min_avg_logprob: float = _f(-1.0, "reject below this mean token log-probability", max=0.0)
    max_compression_ratio: float = _f(2.4, "reject above (repetitive text = hallucination)", min=1.0)
    max_repeated_ngram: int = _f(3, "reject when a 3-gram repeats more often than this", min=1)
    min_chars_per_second: float = _f(5.0, "speaking-rate floor", min=0.0)
    max_chars_per_second: float = _f(25.0, "speaking-rate ceiling", min=1.0)
    edge_word_seconds: float = _f(0.02, "a word this close to a clip edge counts as cut", min=0.0)
    dnsmos: bool = _f(True, "score clips with DNSMOS (speechmos)")
    min_dnsmos: float = _f(2.5, "reject below this DNSMOS overall score", min=1.0, max=5.0)
    dnsmos_group_margin: float = _f(0.5, "packed clips are DNSMOS-screened together (whole 9 s windows of their "
                                    "joined audio); a clip whose screen scores under min_dnsmos + this margin is "
                                    "scored alone", min=0.0, max=4.0)
    dnsmos_music_rule: bool = _f(False, "a clip under min_dnsmos (but not under min_dnsmos_floor) is judged by "
                                 "DNSMOS's two parts instead: the speech (SIG, min_dnsmos_sig) and the background, "
                                 "where music left in by separation shows (BAK, min_dnsmos_bak). Keeps more of a "
                                 "podcast with a loud music bed (real game music 6 dB under the speech: 32 -> 49 % "
                                 "of the speech) but lets audible music into those clips (accepted DNSMOS 2.79 -> "
                                 "2.66), so off by default; false: OVRL alone (bench/RESULTS.md section 7)")
    min_dnsmos_floor: float = _f(2.2, "with dnsmos_music_rule: clips under this DNSMOS overall score are always "
                                 "rejected", min=1.0, max=5.0)
    min_dnsmos_sig: float = _f(3.1, "with dnsmos_music_rule: the least DNSMOS speech score (SIG) of a clip under "
                               "min_dnsmos", min=1.0, max=5.0)
    min_dnsmos_bak: float = _f(2.3, "with dnsmos_music_rule: the least DNSMOS background score (BAK; low = music "
                               "or noise left in) of a clip under min_dnsmos", min=1.0, max=5.0)
    dnsmos_music_min_word_probability: float = _f(0.8, "with dnsmos_music_rule: a clip under min_dnsmos is only kept "
                                                  "when Whisper's mean word probability is at least this (music "
                                                  "that masks words shows there)", min=0.0, max=1.0)
    max_phonemes: int = _f(400, "reject transcripts with more phonemes (trainer out-of-memory)", min=10)
    min_quality: float = _f(0.5, "reject below this combined 0-1 quality score", min=0.0, max=1.0)
    min_word_probability: float = _f(0.5, "reject below this mean Whisper word probability", min=0.0, max=1.0)
    voiced_threshold_db: float = _f(-35.0, "a 10 ms frame is sound when within this many dB of the clip's loud "
                                    "frames (cut-word check, speaking rate)", min=-80.0, max=-10.0)
    hallucination_phrases: list[str] = _f([], "extra phrases that reject a clip (added to the built-in list)")


@dataclass(frozen=True)
class DatasetConfig:
    speaker: str | None = _f(None, "speaker column (default: the voice name)")


TRAINING_PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "32", "16",
                       "bf16", "64")


@dataclass(frozen=True)
class TrainingConfig:
    enabled: bool = _f(True, "train automatically when the threshold is met")
    min_clips: int = _f(300, "accepted clips of a voice that start training", min=1)
    min_minutes: float = _f(0.0, "and at least this much accepted speech", min=0.0)
    retrain_after_new_clips: int = _f(200, "new clips after a run that resume training", min=1)
    max_epochs: int = _f(1000, "epochs of the first run (resumed runs continue the count)", min=1)
    retrain_epochs: int = _f(100, "more epochs trained when new clips trigger a retrain", min=1)
    max_wait_for_data_minutes: float = _f(
        30.0, "a due training waits while the data stages are busy, at most this long", min=0.0)
    quality: str = _f("medium", "model size", choices=["x_low", "low", "medium", "high"])
    base_checkpoint: Path | None = _f(None, "Piper .ckpt to fine-tune from (null: from scratch)")
    batch_size: int = _f(16, "batch size", min=1)
    checkpoint_every_epochs: int = _f(1, "save a checkpoint every N epochs", min=1)
    stop_grace_seconds: float = _f(60.0, "wait between SIGTERM and SIGKILL when stopping the trainer", min=1.0)
    log_max_mb: float = _f(10.0, "train.log rotates to train.log.1 at this size", min=0.1)
    keep_last: int = _f(2, "newest checkpoints kept", min=1)
    keep_best: int = _f(1, "lowest-loss checkpoints kept", min=0)
    disk_budget_gb: float = _f(10.0, "checkpoint disk budget per voice", min=0.5)
    accelerator: str = _f("auto", "Lightning accelerator", choices=["auto", "cpu", "gpu"])
    devices: str = _f("auto", "Lightning devices per node: auto, a count (-1: all), or GPU indices like 0,1 "
                      "(more than one: DDP, one process each; see docs/scaling-out.md)")
    strategy: str = _f("auto", "Lightning strategy: auto (DDP when more than one device or node) or ddp",
                       choices=["auto", "ddp"])
    num_nodes: int = _f(1, "hosts training together (DDP); more than 1: start the trainer on each host with "
                        "torchrun or srun (docs/scaling-out.md)", min=1, max=4096)
    ddp_backend: str = _f("auto", "DDP process-group backend: auto (nccl on GPUs, gloo on CPUs), nccl, gloo",
                          choices=["auto", "nccl", "gloo"])
    ddp_timeout_minutes: float = _f(60.0, "DDP: how long a rank waits for the others at a barrier or gradient "
                                    "exchange (rank 0 prepares the data cache while the others wait)", min=1.0)
    precision: str = _f(
        "auto", "auto: with training.fast on a CUDA GPU, the decoder and discriminators train in bfloat16 "
        "autocast (the rest, the losses and the optimizers in float32; bench/RESULTS.md section 4), float32 "
        "elsewhere; or a Lightning precision for the whole model (32-true, bf16-mixed, 16-mixed, ...)",
        choices=list(TRAINING_PRECISIONS))
    espeak_voice: str = _f("en-us", "espeak-ng voice of the phonemizer")
    num_workers: int = _f(1, "data loader workers", min=0)
    fast: bool = _f(True, "the project's faster training pieces (GPU alignment search, no host syncs, the "
                    "step's parts as CUDA graphs, fused optimizers, background checkpoints); false runs "
                    "piper.train's own code")
    test_sentences: list[str] = _f(
        [
            "The quick brown fox jumps over the lazy dog.",
            "A new voice was trained from long recordings of one speaker.",
            "Please call me back before five o'clock tomorrow afternoon.",
        ],
        "sentences spoken by each exported voice and scored for intelligibility",
    )


def training_device_errors(t: TrainingConfig) -> list[str]:
    """What is wrong with training.devices / num_nodes / ddp_backend as Lightning would read them."""
    devices = t.devices.strip().replace(" ", "")
    errors: list[str] = []
    if devices in ("auto", "-1") or (devices.isdigit() and int(devices) > 0):
        pass
    elif "," in devices and all(d.isdigit() for d in devices.split(",") if d) and devices.strip(","):
        indices = [d for d in devices.split(",") if d]
        if len(set(indices)) != len(indices):
            errors.append(f"training.devices: got {t.devices!r}, a GPU index appears twice")
        if t.accelerator == "cpu":
            errors.append(f"training.devices: got {t.devices!r}; on the CPU give a process count (e.g. 2), GPU "
                          "indices need training.accelerator gpu or auto")
    else:
        errors.append(f"training.devices: got {t.devices!r}, expected auto, a count such as 2 (-1: all), or GPU "
                      "indices such as 0,1")
    if t.ddp_backend == "nccl" and t.accelerator == "cpu":
        errors.append("training.ddp_backend: nccl runs on GPUs only; use gloo (or auto) with training.accelerator cpu")
    return errors


@dataclass(frozen=True)
class NotifyConfig:
    command: list[str] = _f([], "program (argv list) run on events (voice exported with its WER, file quarantined, "
                            "speaker enrollment needed, disk nearly full) with the event as JSON on stdin; failures "
                            "are logged, never fatal. Example: deploy/notify-example.py. Empty: off")
    events: list[str] = _f([], "events that run the command (empty: all)")
    timeout_seconds: float = _f(10.0, "the command is killed after this long", min=0.1)


@dataclass(frozen=True)
class LoggingConfig:
    level: str = _f("info", "log level", choices=["debug", "info", "warning", "error"])
    format: str = _f("auto", "auto (console on a TTY, JSON otherwise) | console | json",
                     choices=["auto", "console", "json"])
    journal: str = _f("auto", "auto (when the journal socket exists) | on | off", choices=["auto", "on", "off"])


@dataclass(frozen=True)
class ApiConfig:
    enabled: bool = _f(False, "serve the local HTTP API (status, voices, clips, uploads, training) from the daemon")
    listen: str = _f("127.0.0.1:8765", "host:port the API listens on (loopback by default; the systemd unit's "
                     "sandbox allows no network until a drop-in opens it: see the README's API section)")
    token_file: Path | None = _f(None, "file holding the bearer token that write requests need (null: every write "
                                 "is refused with 403)")
    max_upload_mb: float = _f(2048.0, "largest upload accepted; a bigger one is refused with 413", min=0.001)
    client_timeout_seconds: float = _f(30.0, "a client that sends nothing for this long mid-request gets 408",
                                       min=0.1)


@dataclass(frozen=True)
class RayPoolConfig:
    actors: int = _f(0, "actors of this stage on the cluster, each loading its model once (0 = one per node alive "
                     "when the daemon connects)", min=0, max=1024)
    cpus: float = _f(1.0, "CPUs each actor reserves (Ray's logical CPUs)", min=0.0, max=1024.0)
    gpus: float = _f(0.0, "GPUs each actor reserves (a fraction shares one GPU; Whisper and Spleeter use the GPU "
                     "they are given)", min=0.0, max=64.0)


@dataclass(frozen=True)
class RayConfig:
    address: str | None = _f(None, "the Ray cluster to join: its head's host:port, or auto (the cluster that "
                             "`ray start` joined on this host); null starts a private Ray instance on this host")
    num_cpus: int | None = _f(None, "CPUs of the private instance (address null; null: all of this host's)", min=1)
    task_retries: int = _f(3, "times Ray retries an item's task when its actor dies (a worker or node lost), on "
                           "the restarted actor, before the daemon's own retry (daemon.max_attempts) counts it",
                           min=0, max=100)
    actor_restarts: int = _f(10, "times a dead actor is restarted (on another node when its own is gone)",
                             min=0, max=10000)
    models_dir: Path | None = _f(None, "offline models folder on the worker nodes (null: paths.models; when that is "
                                 "null too, models/ beside the package on each node)")
    spleeter_python: Path | None = _f(None, "python of the Spleeter environment on the worker nodes (null: "
                                      "separation.python; when that is null too, .venv-spleeter/ beside the package "
                                      "on each node)")
    separate: RayPoolConfig = field(default_factory=RayPoolConfig, metadata={"doc": "separation actors"})
    speaker: RayPoolConfig = field(default_factory=RayPoolConfig, metadata={"doc": "speaker-embedding actors"})
    transcribe: RayPoolConfig = field(default_factory=RayPoolConfig,
                                      metadata={"doc": "transcription + quality-gate actors"})


@dataclass(frozen=True)
class EngineConfig:
    kind: str = _f("local", "where the heavy work of separation, speaker embedding and transcription runs: local "
                   "(in the daemon) | ray (actor pools on a Ray cluster: pip install 'ttsft-daemon[ray]'); the "
                   "daemon always claims, commits and removes the spool items itself", choices=["local", "ray"])
    ray: RayConfig = field(default_factory=RayConfig, metadata={"doc": "the Ray engine (engine.kind: ray)"})


def parse_listen(listen: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`) of api.listen; ValueError with the reason when it is not one."""
    host, sep, port = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"got {listen!r}, expected host:port such as 127.0.0.1:8765")
    return host, int(port)


@dataclass(frozen=True)
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig, metadata={"doc": "where things live"})
    inbox: InboxConfig = field(default_factory=InboxConfig, metadata={"doc": "the watched inbox"})
    daemon: DaemonConfig = field(default_factory=DaemonConfig, metadata={"doc": "workers and retries"})
    separation: SeparationConfig = field(default_factory=SeparationConfig, metadata={"doc": "Spleeter"})
    segmentation: SegmentationConfig = field(
        default_factory=SegmentationConfig, metadata={"doc": "recursive silence segmentation"}
    )
    audio: AudioConfig = field(default_factory=AudioConfig, metadata={"doc": "per-clip cleaning"})
    speaker: SpeakerConfig = field(default_factory=SpeakerConfig, metadata={"doc": "target speaker selection"})
    transcription: TranscriptionConfig = field(
        default_factory=TranscriptionConfig, metadata={"doc": "faster-whisper"}
    )
    quality: QualityConfig = field(default_factory=QualityConfig, metadata={"doc": "clip quality gate"})
    dataset: DatasetConfig = field(default_factory=DatasetConfig, metadata={"doc": "Piper dataset"})
    training: TrainingConfig = field(default_factory=TrainingConfig, metadata={"doc": "Piper training"})
    logging: LoggingConfig = field(default_factory=LoggingConfig, metadata={"doc": "logs"})
    notify: NotifyConfig = field(default_factory=NotifyConfig, metadata={"doc": "notifications"})
    api: ApiConfig = field(default_factory=ApiConfig, metadata={"doc": "local HTTP API"})
    engine: EngineConfig = field(default_factory=EngineConfig,
                                 metadata={"doc": "where the data stages' heavy work runs"})
    source: Path | None = field(default=None, compare=False, metadata={"internal": True})


# --------------------------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             Path: "a path", type(None): "null"}
    if tp in names:
        return names[tp]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str, base: Path, errors: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], key, base, errors)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            errors.append(f"{key}: got {_show(value)}, expected {_type_name(tp)}")
            return None
        return [_convert(v, item_tp, f"{key}[{i}]", base, errors) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if abs(value) < 1e308 else math.inf
            if math.isfinite(number):
                return number
            errors.append(f"{key}: got {_show(value)}, expected a finite number")
            return None
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif tp is Path and isinstance(value, str) and value.strip():
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else (base / p)
    errors.append(f"{key}: got {_show(value)}, expected {_type_name(tp)}")
    return None


def _show(value: Any) -> str:
    """`repr(value)`, bounded: a YAML alias bomb or a huge list in a bad key must not blow up the message."""
    return _REPR.repr(value)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 3, 6, 6, 80, 80
# No setting is sensibly larger: beyond it a number only breaks the run (a timer of 1e300 s overflows).
NUMBER_CEILING = 1e9
MAX_CONFIG_BYTES = 1 << 20
MAX_YAML_DEPTH = 20
MAX_YAML_ALIASES = 100


def _check_limits(value: Any, meta: Mapping[str, Any], key: str, errors: list[str]) -> None:
    if value is None:
        return
    if "choices" in meta and value not in meta["choices"]:
        allowed = ", ".join(str(c) for c in meta["choices"])
        errors.append(f"{key}: got {_show(value)}, allowed: {allowed}")
    if "min" in meta and isinstance(value, (int, float)) and value < meta["min"]:
        errors.append(f"{key}: got {_show(value)}, must be at least {meta['min']}")
    ceiling = meta.get("max", NUMBER_CEILING)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > ceiling:
        errors.append(f"{key}: got {_show(value)}, must be at most {ceiling:g}")


def _build(cls: type[Any], raw: Any, prefix: str, base: Path, errors: list[str]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.append(f"{prefix or 'config'}: got {_show(raw)}, expected a mapping of keys")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)" if close else ""
            valid = ", ".join(fields)
            errors.append(f"{full}: unknown key{hint}; valid keys here: {valid}")
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(typing.cast(type[Any], tp), value, full, base, errors)
            continue
        n_before = len(errors)
        converted = _convert(value, tp, full, base, errors)
        if len(errors) == n_before:
            _check_limits(converted, fields[key].metadata, full, errors)
            kwargs[key] = converted
    return cls(**kwargs)


def _cross_checks(cfg: Config, errors: list[str]) -> None:
    seg = cfg.segmentation
    if seg.min_clip_seconds * 2 > seg.max_clip_seconds:
        errors.append(
            f"segmentation.max_clip_seconds: got {seg.max_clip_seconds}, must be at least twice "
            f"segmentation.min_clip_seconds ({seg.min_clip_seconds})"
        )
    if seg.min_factor >= seg.initial_silence_factor:
        errors.append("segmentation.min_factor: must be below segmentation.initial_silence_factor")
    if seg.max_silence_factor < seg.initial_silence_factor:
        errors.append("segmentation.max_silence_factor: must be at least segmentation.initial_silence_factor")
    q = cfg.quality
    if q.min_chars_per_second >= q.max_chars_per_second:
        errors.append("quality.min_chars_per_second: must be below quality.max_chars_per_second")
    if q.min_dnsmos_floor > q.min_dnsmos:
        errors.append(f"quality.min_dnsmos_floor: got {q.min_dnsmos_floor}, must be at most quality.min_dnsmos "
                      f"({q.min_dnsmos})")
    bad_ext = [e for e in cfg.inbox.extensions if e.lower().lstrip(".") not in AUDIO_EXTENSIONS]
    if bad_ext:
        errors.append(f"inbox.extensions: unsupported {bad_ext}, allowed: {', '.join(AUDIO_EXTENSIONS)}")
    if not cfg.inbox.default_voice or not _is_safe_name(cfg.inbox.default_voice):
        errors.append(f"inbox.default_voice: got {cfg.inbox.default_voice!r}, use letters, digits, - and _")
    speaker = cfg.dataset.speaker
    if speaker is not None and (not speaker.strip() or any(c in speaker for c in "|\r\n")):
        errors.append(f"dataset.speaker: got {_show(speaker)}, must not be empty nor contain '|' or a line break "
                      "(metadata.csv is pipe-separated)")
    if cfg.separation.overlap_seconds * 2 >= cfg.separation.chunk_seconds:
        errors.append("separation.overlap_seconds: must be less than half of separation.chunk_seconds")
    try:
        parse_listen(cfg.api.listen)
    except ValueError as exc:
        errors.append(f"api.listen: {exc}")
    errors.extend(training_device_errors(cfg.training))


def _is_safe_name(name: str) -> bool:
    return all(c.isalnum() or c in "-_" for c in name) and not name.startswith("-")


def config_from_dict(raw: Any, base: Path | None = None, source: Path | None = None) -> Config:
    """Build a validated Config; raises ConfigError listing every problem."""
    errors: list[str] = []
    cfg: Config = _build(Config, raw, "", base or Path.cwd(), errors)
    if not errors:
        _cross_checks(cfg, errors)
    if errors:
        raise ConfigError(str(source) if source else "<config>", errors)
    return dataclasses.replace(cfg, source=source)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Load and validate a YAML config file. Relative paths resolve against the file's folder."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(p), [f"file not found: {p} (copy config.example.yaml and edit it)"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(p), [f"cannot read {p}: {exc}"]) from None
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(str(p), [f"the file is {len(text)} characters long, more than a config needs "
                                   f"({MAX_CONFIG_BYTES}): is it the right file?"])
    try:
        _check_yaml_shape(text, str(p))
        raw = yaml.safe_load(text)
    except (RecursionError, MemoryError):
        raise ConfigError(str(p), ["the YAML is nested too deeply or expands too much to be a config"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(p), [f"YAML syntax error at {where}{problem}"]) from None
    return config_from_dict(raw, base=p.resolve().parent, source=p.resolve())


def _check_yaml_shape(text: str, source: str) -> None:
    """Refuse YAML a config never needs before building it: deep nesting (the loader recurses) and many aliases
    (an alias bomb expands in memory). Reads the event stream, which needs no recursion."""
    depth = aliases = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise ConfigError(source, [f"the YAML is nested more than {MAX_YAML_DEPTH} levels deep; a config "
                                           "needs three"])
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                raise ConfigError(source, [f"the YAML uses more than {MAX_YAML_ALIASES} aliases (*name); write the "
                                           "values out"])


def iter_fields(cls: type[Any] = Config, prefix: str = "") -> typing.Iterator[tuple[str, Any, str]]:
    """(dotted key, default, doc) for every leaf key: used to check the example config is complete."""
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            yield from iter_fields(typing.cast(type[Any], tp), key)
        else:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            yield key, default, f.metadata.get("doc", "")
