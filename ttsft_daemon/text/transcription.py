"""faster-whisper transcription of clips, with the per-segment and per-word evidence the quality gate needs.

One `Transcriber` loads its Whisper model once and then transcribes many clips. Whisper's own
"no speech" filter is turned off (`no_speech_threshold=None`) so that every segment it decodes
reaches the quality gate together with its `no_speech_prob`: the gate, not the decoder, decides,
and the clip's JSON shows what Whisper heard even on a rejected clip.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from ttsft_daemon.config import TranscriptionConfig
from ttsft_daemon.core import cpu
from ttsft_daemon.errors import ConfigError, RejectedInput
from ttsft_daemon.logs import get_logger
from ttsft_daemon.text import packing

log = get_logger(__name__)

WHISPER_SAMPLE_RATE = 16000


@dataclass
class Transcript:
    """What Whisper heard in one clip.

    `segments`: dicts with start, end, text, avg_logprob, no_speech_prob, compression_ratio.
    `words`: dicts with start, end, word, probability. The aggregates cover all segments:
    `avg_logprob` is weighted by segment duration; with no segment at all, avg_logprob is 0.0,
    max_no_speech_prob is 1.0 and max_compression_ratio 0.0 (the text is empty).
    """

    text: str
    language: str
    language_probability: float
    duration: float
    segments: list[dict[str, Any]] = field(default_factory=list)
    words: list[dict[str, Any]] = field(default_factory=list)
    avg_logprob: float = 0.0
    max_no_speech_prob: float = 1.0
    max_compression_ratio: float = 0.0
    # From a packed pass's second try: why the first pass doubted the clip ("" otherwise).
    second_pass: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Transcript:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    @classmethod
    def build(cls, text: str, language: str, language_probability: float, duration: float,
              segments: list[dict[str, Any]], words: list[dict[str, Any]]) -> Transcript:
        """A Transcript whose aggregates are computed from `segments`."""
        if not segments:
            return cls(text.strip(), language, language_probability, duration, [], words)
        weights = [max(float(s["end"]) - float(s["start"]), 0.01) for s in segments]
        avg = sum(w * float(s["avg_logprob"]) for w, s in zip(weights, segments, strict=True)) / sum(weights)
        return cls(
            text=text.strip(), language=language, language_probability=language_probability,
            duration=duration, segments=segments, words=words, avg_logprob=avg,
            max_no_speech_prob=max(float(s["no_speech_prob"]) for s in segments),
            max_compression_ratio=max(float(s["compression_ratio"]) for s in segments),
        )


def resolve_model(name_or_path: str, models_dir: Path) -> str:
    """An existing path as is; a name with a local copy under models_dir/whisper/<name>/; else the name."""
    given = Path(name_or_path).expanduser()
    if given.exists():
        return str(given)
    local = Path(models_dir) / "whisper" / name_or_path
    if (local / "model.bin").is_file():
        return str(local)
    return name_or_path


def cuda_available() -> bool:
    """Whether CTranslate2 sees a CUDA device."""
    import ctranslate2

    try:
        return int(ctranslate2.get_cuda_device_count()) > 0
    except (RuntimeError, OSError):
        return False


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    return "cuda" if cuda_available() else "cpu"


def pick_compute_type(compute_type: str, device: str) -> str:
    if compute_type != "auto":
        return compute_type
    return "float16" if device == "cuda" else "int8"


def pick_cpu_threads(configured: int) -> int:
    """CTranslate2 threads per worker: as configured, or with 0 one thread on a small host (there one thread per
    worker, the workers running side by side, transcribed 1.7x faster than CTranslate2's default of 4 threads:
    `bench/transcribe_cost.py`), else CTranslate2's default (core/cpu.py)."""
    return cpu.pool_threads(configured, big_host=0)


def _round(value: float, places: int = 4) -> float:
    return round(float(value), places) if math.isfinite(value) else float(value)


class Transcriber:
    """Loads the Whisper model once; `transcribe()` many clips (safe to call from one thread at a time)."""

    def __init__(self, cfg: TranscriptionConfig, models_dir: Path) -> None:
        import tqdm
        from faster_whisper import WhisperModel

        # faster-whisper makes a (disabled) tqdm bar per call; tqdm would then start a process-wide
        # monitor thread that polls forever for nothing.
        tqdm.tqdm.monitor_interval = 0

        self.cfg = cfg
        self.model_path = resolve_model(cfg.model, models_dir)
        self.device = pick_device(cfg.device)
        self.compute_type = pick_compute_type(cfg.compute_type, self.device)
        started = time.monotonic()
        try:
            self.model = WhisperModel(self.model_path, device=self.device, compute_type=self.compute_type,
                                      cpu_threads=pick_cpu_threads(cfg.cpu_threads))
        except Exception as exc:  # faster-whisper, CTranslate2 and the hub client raise many kinds
            where = f"{self.device}/{self.compute_type}"
            problem = _load_problem(cfg, self.model_path, models_dir, where, exc)
            raise ConfigError("transcription.model", [problem]) from exc
        self.load_seconds = time.monotonic() - started
        self._window_pipeline: Any = None
        if cfg.window_passes and not cfg.vad_filter:
            from faster_whisper import BatchedInferencePipeline

            self._window_pipeline = BatchedInferencePipeline(self.model)
        log.info("whisper model loaded", model=self.model_path, device=self.device,
                 compute_type=self.compute_type, seconds=round(self.load_seconds, 3))

    def transcribe(self, wav: Path) -> Transcript:
        """Transcribe one audio file (any rate or channel count soundfile reads)."""
        return self.transcribe_array(*read_mono(wav))

    def transcribe_array(self, samples: np.ndarray, sr: int) -> Transcript:
        """Transcribe mono float samples at rate `sr` (resampled to Whisper's 16 kHz here)."""
        audio = to_whisper_rate(samples, sr)
        decoded, language, language_probability = self._decode(audio)
        segments = [_segment_dict(seg, seg["text"]) for seg in decoded]
        words = [_word_dict(w) for seg in decoded for w in seg["words"]]
        text = " ".join(s["text"] for s in segments if s["text"])
        return Transcript.build(text, language, language_probability,
                                _round(len(audio) / WHISPER_SAMPLE_RATE, 3), segments, words)

    def transcribe_packed(self, clips: list[np.ndarray], min_word_probability: float) -> list[Transcript | str]:
        """Transcribe clips (mono float32 at 16 kHz) in one pass, joined with silent gaps (see packing.py).

        Returns, per clip, its Transcript, or why its share of the pass is doubtful (it must be transcribed alone).
        Clips the pass doubts go through a second pass together, with wider gaps, when there are two or more of
        them (in groups that fit `pack_seconds`); a clip that pass settles carries the first doubt in
        `second_pass`. Segment values that Whisper gives per pass (avg_logprob, no_speech_prob) are those of the
        segments the clip's words came from (with `window_passes`, the one segment of the whole pass: the clip's
        own evidence is then its words' probabilities); compression_ratio is measured on the clip's own text.
        """
        results = self._one_pass(clips, min_word_probability, packing.GAP_SECONDS)
        doubtful = [i for i, r in enumerate(results) if isinstance(r, str)]
        if len(doubtful) < 2:
            return results
        groups = packing.plan_windows([len(clips[i]) / WHISPER_SAMPLE_RATE for i in doubtful],
                                      self.cfg.pack_seconds or 28.0, packing.RETRY_GAP_SECONDS)
        for group in groups:
            if len(group) < 2:
                continue
            members = [doubtful[g] for g in group]
            again = self._one_pass([clips[i] for i in members], min_word_probability, packing.RETRY_GAP_SECONDS)
            for i, result in zip(members, again, strict=True):
                first = str(results[i])
                if isinstance(result, Transcript):
                    result.second_pass = first
                    results[i] = result
                else:
                    results[i] = f"{first}; in a second pass: {result}"
        return results

    def _one_pass(self, clips: list[np.ndarray], min_word_probability: float, gap_seconds: float
                  ) -> list[Transcript | str]:
        durations = [len(c) / WHISPER_SAMPLE_RATE for c in clips]
        spans = packing.layout(durations, gap_seconds)
        gap = np.zeros(int(gap_seconds * WHISPER_SAMPLE_RATE), dtype=np.float32)
        joined = np.concatenate([part for c in clips for part in (gap, c)][1:]) if clips else gap
        decoded, language, language_probability = self._decode(joined, one_window=True)
        shares = packing.split_words(spans, [seg["words"] for seg in decoded], min_word_probability, gap_seconds)
        results: list[Transcript | str] = []
        for share, duration in zip(shares, durations, strict=True):
            if share.doubtful:
                results.append(share.doubtful)
                continue
            segments = []
            for si, indices in share.segments.items():
                text = "".join(share.words[i]["word"] for i in indices).strip()
                seg = {**decoded[si], "start": share.words[indices[0]]["start"],
                       "end": share.words[indices[-1]]["end"],
                       "compression_ratio": packing.compression_ratio(text)}
                segments.append(_segment_dict(seg, text))
            text = " ".join(s["text"] for s in segments if s["text"])
            results.append(Transcript.build(text, language, language_probability, _round(duration, 3), segments,
                                            [_word_dict(w) for w in share.words]))
        return results

    def _decode(self, audio: np.ndarray, one_window: bool = False) -> tuple[list[dict[str, Any]], str, float]:
        """Whisper's segments as dicts with their words (word strings raw, with their leading space).

        `one_window` (a packed pass, at most 30 s) with `window_passes`: one segment for the whole window, decoded
        without timestamp tokens. Long-form decoding cuts a window into timestamped segments and, where the last
        segment of the window is unfinished, decodes again from its start: on the pipeline bench's passes that
        cost a third more CPU (bench/RESULTS.md). The word times come from the same cross-attention alignment.
        """
        cfg = self.cfg
        if one_window and self._window_pipeline is not None and len(audio) <= 30 * WHISPER_SAMPLE_RATE:
            segments_iter, info = self._window_pipeline.transcribe(
                audio, language=cfg.language, beam_size=cfg.beam_size, word_timestamps=True, vad_filter=False,
                clip_timestamps=[{"start": 0.0, "end": len(audio) / WHISPER_SAMPLE_RATE}], batch_size=1,
                no_speech_threshold=None, condition_on_previous_text=False,
            )
        else:
            segments_iter, info = self.model.transcribe(
                audio, language=cfg.language, beam_size=cfg.beam_size, word_timestamps=True,
                vad_filter=cfg.vad_filter, no_speech_threshold=None, condition_on_previous_text=False,
            )
        decoded = [{
            "start": seg.start, "end": seg.end, "text": seg.text.strip(), "avg_logprob": seg.avg_logprob,
            "no_speech_prob": seg.no_speech_prob, "compression_ratio": seg.compression_ratio,
            "words": [{"start": w.start, "end": w.end, "word": w.word, "probability": w.probability}
                      for w in seg.words or []],
        } for seg in segments_iter]
        return decoded, str(info.language), _round(info.language_probability)


def _segment_dict(seg: dict[str, Any], text: str) -> dict[str, Any]:
    return {"start": _round(seg["start"], 3), "end": _round(seg["end"], 3), "text": text,
            "avg_logprob": _round(seg["avg_logprob"]), "no_speech_prob": _round(seg["no_speech_prob"]),
            "compression_ratio": _round(seg["compression_ratio"])}


def _word_dict(w: dict[str, Any]) -> dict[str, Any]:
    return {"start": _round(w["start"], 3), "end": _round(w["end"], 3), "word": str(w["word"]).strip(),
            "probability": _round(w["probability"])}


def _load_problem(cfg: TranscriptionConfig, resolved: str, models_dir: Path, where: str, exc: Exception) -> str:
    problem = f"cannot load Whisper model {cfg.model!r} (resolved to {resolved!r}) on {where}: {exc}. "
    if "/" in cfg.model or Path(cfg.model).expanduser().exists():
        return problem + "Give the folder of a CTranslate2 Whisper model (it holds model.bin)"
    return problem + (f"Put a CTranslate2 Whisper model under {Path(models_dir) / 'whisper' / cfg.model}, "
                      "give a model folder's path, or use a model name that faster-whisper can download "
                      "on a host with network access")


def read_mono(path: Path) -> tuple[np.ndarray, int]:
    """An audio file as mono float32 samples and its rate; RejectedInput when it cannot be decoded. A file the
    filesystem refuses to open (permissions, I/O error) raises its OSError: the state root's fault, retried."""
    with open(path, "rb"):
        pass
    try:
        samples, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise RejectedInput("unreadable clip", f"{path}: {exc}") from exc
    return samples.mean(axis=1), int(sr)


def to_whisper_rate(samples: np.ndarray, sr: int) -> np.ndarray:
    """Mono float32 at 16 kHz."""
    mono = np.asarray(samples, dtype=np.float32)
    if mono.ndim > 1:
        mono = mono.mean(axis=1)
    if sr != WHISPER_SAMPLE_RATE and len(mono):
        mono = soxr.resample(mono, sr, WHISPER_SAMPLE_RATE)
    return np.ascontiguousarray(mono, dtype=np.float32)
