"""The clip quality gate: keep only clips whose transcript can be trusted and whose audio is clean speech.

`QualityGate.assess()` measures a clip and its Whisper transcript and returns a `QualityReport`.
Every measured value is in `details`; `reasons` lists the machine-readable codes of the rules that
rejected the clip. Any reason rejects.

Rules (thresholds from `QualityConfig`):

- ``empty_text``: no letter or digit in the transcript.
- ``non_speech_text``: the transcript holds sound-event annotations ("[Music]", "(applause)", "♪").
- ``no_speech``: Whisper's highest segment no-speech probability is above ``max_no_speech_prob``,
  or the audio itself is digital silence (loud frames below -60 dBFS).
- ``hallucination_phrase``: the normalised text contains a well-known Whisper hallucination
  (subtitle credits, "thank you for watching", "please subscribe", "Amara.org" ...), or is nothing
  but a phrase Whisper invents on silence and music ("you", "thank you", "bye" ...).
- ``compression_ratio``: the text compresses too well (repetition loops), per Whisper's segments or
  the whole text.
- ``repeated_ngram``: a word 3-gram occurs more than ``max_repeated_ngram`` times.
- ``low_confidence``: duration-weighted mean token log-probability below ``min_avg_logprob``, or
  mean word probability below ``min_word_probability``.
- ``speaking_rate_low`` / ``speaking_rate_high``: characters of the normalised text (letters,
  digits, spaces) per second of the voiced span, outside [min_chars_per_second, max_chars_per_second].
  Too slow usually means Whisper skipped words; too fast, that it invented them.
- ``word_cut_at_start`` / ``word_cut_at_end``: the first word starts (last word ends) within
  ``edge_word_seconds`` of the clip's edge. Word edges are measured on the audio: a 10 ms frame is
  sound when its RMS is within ``voiced_threshold_db`` of the clip's loud frames (95th percentile)
  and 6 dB above its quiet ones (10th percentile). Whisper's own word times are kept in `details`
  but not used for this: faster-whisper tiny.en dates the first word at 0.0 s even after 100 ms of
  silence, and its last word end lagged a mid-word cut by up to 100 ms (both measured). Any sound
  cut at an edge counts, a drum hit of leftover music as much as a word: both spoil a training clip.
- ``dnsmos_low`` / ``music_residue``: DNSMOS overall (OVRL, P.835) below ``min_dnsmos``. With
  ``dnsmos_music_rule`` (off by default) a clip under ``min_dnsmos`` but at least ``min_dnsmos_floor`` is judged by
  OVRL's two parts instead: ``dnsmos_low`` when the speech itself (SIG) is under ``min_dnsmos_sig``,
  ``music_residue`` when the background (BAK: the music separation left in) is under ``min_dnsmos_bak``; kept
  when both pass and Whisper's mean word probability is at least ``dnsmos_music_min_word_probability``
  (`dnsmos_decision`; ``details["dnsmos_verdict"]`` names each signal, its threshold and by how much it missed
  or passed). Skipped, with a warning in the log and ``details["dnsmos_status"]``, when DNSMOS is off or its
  model cannot run. Clips of one packed pass are screened together, in whole DNSMOS windows over their joined audio
  (`score_groups`); a clip whose screen score is below ``min_dnsmos + dnsmos_group_margin`` is scored alone
  (``details["dnsmos_group"]`` keeps the screen's score).
- ``too_many_phonemes``: more espeak-ng phonemes than ``max_phonemes``, counted with Piper's own
  phonemizer exactly as the trainer does (punctuation and word spaces included).
- ``low_quality_score``: the score below is under ``min_quality``.

Score (0-1), documented here because users tune ``min_quality`` against it::

    confidence    = 0.5 * exp(avg_logprob) + 0.5 * mean_word_probability     (0 without words)
    audio_quality = clip((DNSMOS_OVRL - 1) / 2.5, 0, 1)                     (OVRL 3.5 or better = 1)
    base          = 0.6 * confidence + 0.4 * audio_quality                  (confidence alone without DNSMOS)
    score         = base * (1 - 0.5 * max_no_speech_prob)                   soft penalty: Whisper doubts speech
                         * (1 - 0.5 * share_of_words_below_0.3_probability)  soft penalty: unsure words
                         * 0.9 per clip edge with less than 50 ms of silence   soft penalty: tight edge

The soft penalties never reject on their own; they lower the score (values in ``details["penalties"]``).
"""

from __future__ import annotations

import math
import re
import threading
import time
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from ttsft_daemon.config import QualityConfig
from ttsft_daemon.logs import get_logger
from ttsft_daemon.text.textnorm import normalize_for_tts, normalize_for_wer
from ttsft_daemon.text.transcription import Transcript

log = get_logger(__name__)

DNSMOS_RATE = 16000
DNSMOS_WINDOW_SECONDS = 9.01  # DNSMOS scores 9.01 s windows; shorter input is tiled to that length
FRAME_SECONDS = 0.01
SILENT_DBFS = -60.0
TIGHT_EDGE_SECONDS = 0.05
UNSURE_WORD_PROBABILITY = 0.3
NGRAM = 3

# Phrases that Whisper writes on silence, music and noise (it learned them from subtitle files).
# Matched on normalize_for_wer() text, as whole words, anywhere in the transcript.
HALLUCINATION_PHRASES: tuple[str, ...] = (
    "thank you for watching", "thanks for watching", "thank you so much for watching",
    "please subscribe", "like and subscribe", "subscribe to my channel", "subscribe to the channel",
    "subscribe to our channel", "dont forget to subscribe", "hit the bell", "see you in the next video",
    "amara org", "subtitles by", "subtitled by", "subtitles made by", "subtitles created by",
    "captions by", "captioning by", "closed captioning", "transcribed by", "transcription by",
    "translated by", "translation by", "all rights reserved", "www",
    "untertitel im auftrag", "untertitelung des", "untertitel von", "sous titrage", "sous titres",
    "subtítulos realizados por", "subtítulos por", "sottotitoli creati", "sottotitoli a cura",
    "ondertiteling door", "продолжение следует", "редактор субтитров", "ご視聴ありがとうございました",
)
# Whole transcripts that are, alone, Whisper's usual output for a clip without speech.
HALLUCINATION_WHOLE: frozenset[str] = frozenset({
    "you", "thank you", "thank you very much", "thank you so much", "thanks", "thank you thank you",
    "bye", "bye bye", "goodbye", "so", "oh", "uh", "um", "hmm", "mm", "okay", "the end", "music",
    "applause", "silence", "blank audio", "foreign", "i", "a", "ah", "wow", "yeah", "and",
})

_ANNOTATION = re.compile(r"\[[^\]]*\]|\((?:\s*\S+){1,4}\s*\)|\*[^*]+\*|[♪♫♬♩🎵🎶]")
_ESPEAK_LOCK = threading.Lock()  # espeak-ng is one global C state: one caller at a time


@dataclass
class QualityReport:
    accept: bool
    score: float
    reasons: list[str]
    details: dict[str, Any] = field(default_factory=dict)
    normalized_text: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_hallucination_phrase(text: str, extra_phrases: tuple[str, ...] = ()) -> bool:
    """True when the text holds a known Whisper hallucination, or is only a silence/music filler."""
    norm = normalize_for_wer(text)
    if not norm:
        return False
    if norm in HALLUCINATION_WHOLE:
        return True
    padded = f" {norm} "
    extra = tuple(normalize_for_wer(p) for p in extra_phrases)
    return any(phrase and f" {phrase} " in padded for phrase in (*HALLUCINATION_PHRASES, *extra))


def sound_annotations(text: str) -> list[str]:
    """Sound-event annotations in a transcript: "[Music]", "(applause)", "*laughs*", "♪"."""
    return [m.group(0) for m in _ANNOTATION.finditer(text)]


def has_words(text: str) -> bool:
    return any(c.isalnum() for c in text)


def text_compression_ratio(text: str) -> float:
    """Whisper's measure: UTF-8 length over zlib-compressed length."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def max_ngram_count(words: list[str], n: int = NGRAM) -> int:
    if len(words) < n:
        return 0
    counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return max(counts.values())


# ---------------------------------------------------------------------------------------- audio


@dataclass(frozen=True)
class Voicing:
    """Where sound is in a clip (times in seconds; onset/offset None when nothing is loud enough)."""

    duration: float
    loud_dbfs: float
    quiet_dbfs: float
    threshold_dbfs: float
    onset: float | None
    offset: float | None

    @property
    def silent(self) -> bool:
        return self.loud_dbfs < SILENT_DBFS

    @property
    def lead_silence(self) -> float | None:
        return self.onset

    @property
    def trail_silence(self) -> float | None:
        return None if self.offset is None else max(0.0, self.duration - self.offset)

    @property
    def span(self) -> float:
        return 0.0 if self.onset is None or self.offset is None else self.offset - self.onset


def _dbfs(rms: float) -> float:
    return 20.0 * math.log10(max(rms, 1e-10))


def measure_voicing(samples: np.ndarray, sr: int, threshold_db: float = -35.0) -> Voicing:
    """Frame RMS in 10 ms frames; sound = within threshold_db of the loud frames, 6 dB over the quiet ones."""
    duration = len(samples) / sr if sr else 0.0
    frame = max(1, int(sr * FRAME_SECONDS))
    n_frames = len(samples) // frame
    if n_frames == 0:
        return Voicing(duration, -200.0, -200.0, 0.0, None, None)
    frames = samples[: n_frames * frame].reshape(n_frames, frame).astype(np.float64)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    loud, quiet = float(np.percentile(rms, 95)), float(np.percentile(rms, 10))
    threshold = max(loud * 10 ** (threshold_db / 20), quiet * 2.0, 10 ** (SILENT_DBFS / 20))
    sounding = np.flatnonzero(rms >= threshold)
    onset = float(sounding[0] * frame / sr) if len(sounding) else None
    offset = float(min((sounding[-1] + 1) * frame, len(samples)) / sr) if len(sounding) else None
    if len(samples) - n_frames * frame and offset is not None and sounding[-1] == n_frames - 1:
        offset = duration  # the short tail after the last whole frame belongs to that frame's sound
    return Voicing(duration, _dbfs(loud), _dbfs(quiet), _dbfs(threshold), onset, offset)


def to_mono_float(samples: np.ndarray) -> np.ndarray:
    audio = np.asarray(samples)
    if audio.dtype.kind in "iu":
        audio = audio.astype(np.float32) / float(np.iinfo(audio.dtype).max)
    audio = audio.astype(np.float32)
    return audio.mean(axis=1) if audio.ndim > 1 else audio


# ---------------------------------------------------------------------------------------- models


class DnsmosScorer:
    """DNSMOS P.835 (SIG, BAK, OVRL) with the ONNX model the speechmos package ships, loaded once.

    DNSMOS rates 9.01 s windows. A clip is cut into equal pieces of at most one window, each piece repeated to
    exactly one window (as DNSMOS' own scripts repeat short input), and all pieces go through the model in one
    call; the piece scores are averaged, weighted by length. The model's raw outputs are mapped to MOS with
    DNSMOS' published polynomials (non-personalised). Only the P.835 model runs: speechmos' call also runs the
    P.808 model on a librosa mel spectrogram, 10 % of the time for a score no rule used. `status` is "ok" or
    says why DNSMOS is unusable.
    """

    def __init__(self, model_dir: Path | None = None) -> None:
        """`model_dir` holds sig_bak_ovr.onnx (default: the one speechmos ships)."""
        self.status = "ok"
        self._session: Any = None
        try:
            import onnxruntime as ort
            import speechmos

            folder = model_dir or Path(speechmos.__file__).resolve().parent / "dnsmos_models"
            options = ort.SessionOptions()
            # One thread per scorer (onnxruntime's default is one per core): the transcribe workers score side
            # by side, next to Whisper and Spleeter; alone, one thread also cost 7% less CPU per window than two.
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            self._session = ort.InferenceSession(str(folder / "sig_bak_ovr.onnx"), options,
                                                 providers=["CPUExecutionProvider"])
            self._input = self._session.get_inputs()[0].name
            self.score(0.01 * np.random.default_rng(0).standard_normal(DNSMOS_RATE).astype(np.float32))
        except Exception as exc:  # any failure of an optional scorer only disables it
            self._session = None
            self.status = f"unusable: {type(exc).__name__}: {exc}"

    @property
    def usable(self) -> bool:
        return self._session is not None

    def score(self, audio16k: np.ndarray) -> dict[str, float]:
        """{ovrl, sig, bak} of mono float audio at 16 kHz."""
        audio = np.clip(np.asarray(audio16k, dtype=np.float32), -1.0, 1.0)
        window = int(DNSMOS_WINDOW_SECONDS * DNSMOS_RATE)
        pieces = np.array_split(audio, max(1, math.ceil(len(audio) / window)))
        # Exactly one window each: DNSMOS' scripts double short input until it passes 9.01 s and then slide
        # over all of it in 1 s hops (a 9 s clip would become 18 s and 9 model runs).
        batch = np.stack([np.resize(piece, window) for piece in pieces]).astype(np.float32)
        raw = np.asarray(self._session.run(None, {self._input: batch})[0], dtype=np.float64)
        weights = np.array([len(piece) for piece in pieces], dtype=np.float64) / max(len(audio), 1)
        return {key: float(np.dot(weights, np.polyval(DNSMOS_POLYFIT[key], raw[:, column])))
                for column, key in enumerate(("sig", "bak", "ovrl"))}


# DNSMOS P.835's mapping of the model's raw outputs (columns sig, bak, ovrl) to MOS, non-personalised.
DNSMOS_POLYFIT = {"sig": (-0.08397278, 1.22083953, 0.0052439), "bak": (-0.13166888, 1.60915514, -0.39604546),
                  "ovrl": (-0.06766283, 1.11546468, 0.04602535)}

_SHARED_DNSMOS: dict[str, DnsmosScorer] = {}
_SHARED_DNSMOS_LOCK = threading.Lock()


def shared_dnsmos(model_dir: Path | None = None) -> DnsmosScorer:
    """One scorer per process and model folder, used by every transcribe worker's gate: onnxruntime sessions may
    run from several threads at once, and a scorer of each worker's own cost ~0.18 GB more per worker."""
    key = str(model_dir or "")
    with _SHARED_DNSMOS_LOCK:
        scorer = _SHARED_DNSMOS.get(key)
        if scorer is None:
            scorer = _SHARED_DNSMOS[key] = DnsmosScorer(model_dir)
        return scorer


class PhonemeCounter:
    """Counts phonemes with Piper's espeak-ng phonemizer, as piper.train does for its dataset."""

    def __init__(self, voice: str) -> None:
        self.voice = voice
        self.status = "ok"
        self._phonemizer: Any = None
        try:
            from piper.phonemize_espeak import EspeakPhonemizer

            with _ESPEAK_LOCK:
                self._phonemizer = EspeakPhonemizer()
                self._phonemizer.phonemize(voice, "test")
        except Exception as exc:  # an unusable phonemizer only disables the check
            self._phonemizer = None
            self.status = f"unusable: {type(exc).__name__}: {exc}"

    @property
    def usable(self) -> bool:
        return self._phonemizer is not None

    def count(self, text: str) -> int:
        with _ESPEAK_LOCK:
            sentences: list[list[str]] = self._phonemizer.phonemize(self.voice, text)
        return sum(len(s) for s in sentences)


# ------------------------------------------------------------------------------------------ gate


class QualityGate:
    """Scores clips; loads DNSMOS and the phonemizer once. One gate per worker thread."""

    def __init__(self, cfg: QualityConfig, espeak_voice: str = "en-us", *,
                 min_word_probability: float = 0.5, voiced_threshold_db: float = -35.0,
                 hallucination_phrases: tuple[str, ...] = (), dnsmos_model_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.min_word_probability = min_word_probability
        self.voiced_threshold_db = voiced_threshold_db
        self.extra_phrases = hallucination_phrases
        self.dnsmos: DnsmosScorer | None = None
        if cfg.dnsmos:
            self.dnsmos = shared_dnsmos(dnsmos_model_dir)
            if not self.dnsmos.usable:
                log.warning("DNSMOS check skipped: model unusable", status=self.dnsmos.status)
        self.phonemes = PhonemeCounter(espeak_voice)
        if not self.phonemes.usable:
            log.warning("phoneme count check skipped: phonemizer unusable", status=self.phonemes.status)

    @property
    def dnsmos_status(self) -> str:
        return "disabled" if self.dnsmos is None else self.dnsmos.status

    def assess(self, t: Transcript, samples: np.ndarray, sr: int,
               group_dnsmos: dict[str, float] | None = None) -> QualityReport:
        """Judge one clip; `group_dnsmos` is its group's score from `score_groups()`, used when clearly good."""
        audio = to_mono_float(samples)
        voicing = measure_voicing(audio, sr, self.voiced_threshold_db)
        tts_text = normalize_for_tts(t.text, t.language or "en")
        wer_text = normalize_for_wer(t.text, t.language or "en")
        details: dict[str, Any] = {"duration": round(voicing.duration, 3)}
        reasons: list[str] = []
        reasons += self._text_rules(t, wer_text, details)
        reasons += self._confidence_rules(t, details)
        reasons += self._audio_rules(t, voicing, wer_text, details)
        reasons += self._dnsmos_rule(audio, sr, voicing, details, group_dnsmos)
        reasons += self._phoneme_rule(tts_text, details)
        score = self._score(t, voicing, details)
        if score < self.cfg.min_quality:
            reasons.append("low_quality_score")
        reasons = list(dict.fromkeys(reasons))
        return QualityReport(not reasons, score, reasons, details, tts_text)

    # ---- rules; each returns its reason codes and records what it measured

    def _text_rules(self, t: Transcript, wer_text: str, details: dict[str, Any]) -> list[str]:
        cfg = self.cfg
        annotations = sound_annotations(t.text)
        words = wer_text.split()
        ratio = max(t.max_compression_ratio, text_compression_ratio(t.text))
        ngram = max_ngram_count(words)
        hallucination = is_hallucination_phrase(t.text, self.extra_phrases)
        details.update(text_chars=len(wer_text), word_count=len(words), annotations=annotations,
                       compression_ratio=round(ratio, 4), max_ngram_count=ngram,
                       hallucination_phrase=hallucination, max_no_speech_prob=t.max_no_speech_prob)
        reasons: list[str] = []
        if not has_words(t.text):
            reasons.append("empty_text")
        if annotations:
            reasons.append("non_speech_text")
        if t.max_no_speech_prob > cfg.max_no_speech_prob:
            reasons.append("no_speech")
        if hallucination:
            reasons.append("hallucination_phrase")
        if ratio > cfg.max_compression_ratio:
            reasons.append("compression_ratio")
        if ngram > cfg.max_repeated_ngram:
            reasons.append("repeated_ngram")
        return reasons

    def _confidence_rules(self, t: Transcript, details: dict[str, Any]) -> list[str]:
        probabilities = [float(w["probability"]) for w in t.words]
        mean_probability = float(np.mean(probabilities)) if probabilities else 0.0
        unsure = sum(p < UNSURE_WORD_PROBABILITY for p in probabilities) / len(probabilities) \
            if probabilities else 1.0
        details.update(avg_logprob=round(t.avg_logprob, 4), mean_word_probability=round(mean_probability, 4),
                       unsure_word_share=round(unsure, 4))
        if not has_words(t.text):
            return []
        low = t.avg_logprob < self.cfg.min_avg_logprob or mean_probability < self.min_word_probability
        return ["low_confidence"] if low else []

    def _audio_rules(self, t: Transcript, v: Voicing, wer_text: str, details: dict[str, Any]) -> list[str]:
        cfg = self.cfg
        rate = len(wer_text) / v.span if v.span >= 0.1 else None
        details.update(
            loud_dbfs=round(v.loud_dbfs, 2), quiet_dbfs=round(v.quiet_dbfs, 2),
            voiced_threshold_dbfs=round(v.threshold_dbfs, 2), voiced_span=round(v.span, 3),
            lead_silence=_maybe_round(v.lead_silence), trail_silence=_maybe_round(v.trail_silence),
            whisper_first_word_start=t.words[0]["start"] if t.words else None,
            whisper_last_word_end=t.words[-1]["end"] if t.words else None,
            chars_per_second=_maybe_round(rate, 2),
        )
        reasons: list[str] = []
        if v.silent:
            reasons.append("no_speech")
        if not has_words(t.text) or v.onset is None:
            return reasons
        if rate is not None and rate < cfg.min_chars_per_second:
            reasons.append("speaking_rate_low")
        if rate is not None and rate > cfg.max_chars_per_second:
            reasons.append("speaking_rate_high")
        if (v.lead_silence or 0.0) < cfg.edge_word_seconds:
            reasons.append("word_cut_at_start")
        if (v.trail_silence or 0.0) < cfg.edge_word_seconds:
            reasons.append("word_cut_at_end")
        return reasons

    def score_groups(self, clips16k: list[np.ndarray]) -> list[dict[str, float] | None]:
        """A DNSMOS screen for the clips of one packed pass (mono float at 16 kHz), far cheaper than scoring each.

        Their audio, joined end to end, is scored in consecutive whole 9.01 s windows (the last one ends at the
        end and may overlap the one before), one model run each; a clip gets the mean of the windows it
        overlaps, weighted by the overlap. Scored alone, a 3 s clip costs a whole window, as DNSMOS repeats
        short input. None: a single clip, or DNSMOS off or failed (the clip is then scored alone).

        The screen's score is only taken by `assess()` when it is at least ``min_dnsmos + dnsmos_group_margin``;
        below that the clip is scored alone, so a bad clip cannot hide behind good neighbours once it pulls its
        windows near the threshold.
        """
        results: list[dict[str, float] | None] = [None] * len(clips16k)
        if self.dnsmos is None or not self.dnsmos.usable or len(clips16k) < 2:
            return results
        joined = np.concatenate(clips16k)
        window = int(DNSMOS_WINDOW_SECONDS * DNSMOS_RATE)
        starts = list(range(0, max(len(joined) - window, 0) + 1, window))
        if starts[-1] + window < len(joined):
            starts.append(len(joined) - window)
        try:
            scored = [(a, min(a + window, len(joined)), self.dnsmos.score(joined[a : a + window])) for a in starts]
        except Exception as exc:  # the clips are then scored alone
            log.warning("DNSMOS failed on a packed pass", error=f"{type(exc).__name__}: {exc}")
            return results
        offset = 0
        for i, clip in enumerate(clips16k):
            lo, hi = offset, offset + len(clip)
            offset = hi
            weights = [(max(0, min(hi, b) - max(lo, a)), scores) for a, b, scores in scored]
            total = sum(w for w, _ in weights)
            if total <= 0:
                continue
            mean = {k: sum(w * sc[k] for w, sc in weights) / total for k in ("ovrl", "sig", "bak")}
            results[i] = {**mean, "group_clips": float(len(clips16k)), "group_windows": float(len(scored)),
                          "group_seconds": round(len(joined) / DNSMOS_RATE, 2)}
        return results

    def _dnsmos_rule(self, audio: np.ndarray, sr: int, v: Voicing, details: dict[str, Any],
                     group: dict[str, float] | None = None) -> list[str]:
        details["dnsmos_status"] = self.dnsmos_status
        if self.dnsmos is None or not self.dnsmos.usable:
            return []
        if v.silent or len(audio) == 0:
            details["dnsmos_status"] = "skipped: silent clip"
            return []
        if group is not None:
            details["dnsmos_group"] = {k: round(float(x), 3) for k, x in group.items()}
            if math.isfinite(group["ovrl"]) and group["ovrl"] >= self.cfg.min_dnsmos + self.cfg.dnsmos_group_margin:
                details.update({f"dnsmos_{k}": round(group[k], 3) for k in ("ovrl", "sig", "bak")})
                return []
        audio16k = audio if sr == DNSMOS_RATE else soxr.resample(audio, sr, DNSMOS_RATE)
        started = time.monotonic()
        try:
            scores = self.dnsmos.score(audio16k)
        except Exception as exc:  # a scorer failure on one clip must not stop the stage
            log.warning("DNSMOS failed on a clip; check skipped", error=f"{type(exc).__name__}: {exc}")
            details["dnsmos_status"] = f"failed: {type(exc).__name__}: {exc}"
            return []
        details["dnsmos_seconds"] = round(time.monotonic() - started, 3)
        details.update({f"dnsmos_{k}": round(s, 3) for k, s in scores.items()})
        if not math.isfinite(scores["ovrl"]):
            details["dnsmos_status"] = "failed: not a number"
            return []
        reasons, verdict = dnsmos_decision(scores, self.cfg, details.get("mean_word_probability"))
        if verdict:
            details["dnsmos_verdict"] = verdict
        return reasons

    def _phoneme_rule(self, tts_text: str, details: dict[str, Any]) -> list[str]:
        details["phonemes_status"] = self.phonemes.status
        if not self.phonemes.usable or not tts_text:
            details["phoneme_count"] = 0
            return []
        count = self.phonemes.count(tts_text)
        details["phoneme_count"] = count
        return ["too_many_phonemes"] if count > self.cfg.max_phonemes else []

    # ---- score

    def _score(self, t: Transcript, v: Voicing, details: dict[str, Any]) -> float:
        if has_words(t.text) and t.words:
            confidence = 0.5 * math.exp(min(t.avg_logprob, 0.0)) + 0.5 * details["mean_word_probability"]
        else:
            confidence = 0.0
        ovrl = details.get("dnsmos_ovrl")
        audio_quality = None if ovrl is None else min(max((float(ovrl) - 1.0) / 2.5, 0.0), 1.0)
        base = confidence if audio_quality is None else 0.6 * confidence + 0.4 * audio_quality
        tight = sum(1 for gap in (v.lead_silence, v.trail_silence) if gap is not None and gap < TIGHT_EDGE_SECONDS)
        penalties = {
            "no_speech_doubt": 1.0 - 0.5 * min(max(t.max_no_speech_prob, 0.0), 1.0),
            "unsure_words": 1.0 - 0.5 * details["unsure_word_share"],
            "tight_edges": 0.9**tight,
        }
        score = base * math.prod(penalties.values())
        details.update(confidence=round(confidence, 4), audio_quality=_maybe_round(audio_quality),
                       penalties={k: round(p, 4) for k, p in penalties.items()})
        return round(min(max(float(score), 0.0), 1.0), 4)


def dnsmos_decision(scores: dict[str, float], cfg: QualityConfig,
                    mean_word_probability: float | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """The DNSMOS rules on one clip's own scores: (reason codes, what decided and by how much).

    A clip at or above ``min_dnsmos`` (OVRL) passes. Below it, without ``dnsmos_music_rule``, it is
    ``dnsmos_low``. With the rule, OVRL is taken apart into the two things it mixes: SIG, the speech itself, and
    BAK, the background, where music that separation left in shows. A clip at least ``min_dnsmos_floor`` whose
    speech is intact (SIG >= ``min_dnsmos_sig``) and whose background is quiet enough (BAK >=
    ``min_dnsmos_bak``) is kept, if Whisper was sure of its words (`mean_word_probability` at least
    ``dnsmos_music_min_word_probability``: music that masks words shows there); otherwise ``dnsmos_low`` (OVRL
    under the floor, SIG or the word probability short) and/or ``music_residue`` (BAK short). Each entry of the
    verdict names the signal, its value, the threshold and the shortfall (``short_by`` > 0 rejected; <= 0 the
    margin by which it passed).
    """
    ovrl, sig, bak = float(scores["ovrl"]), float(scores.get("sig", math.nan)), float(scores.get("bak", math.nan))
    if ovrl >= cfg.min_dnsmos:
        return [], []

    def entry(rule: str, signal: str, value: float, threshold: float) -> dict[str, Any]:
        return {"rule": rule, "signal": signal, "value": round(value, 3), "threshold": threshold,
                "short_by": round(threshold - value, 3)}

    if not cfg.dnsmos_music_rule or not (math.isfinite(sig) and math.isfinite(bak)):
        return ["dnsmos_low"], [entry("dnsmos_low", "dnsmos_ovrl", ovrl, cfg.min_dnsmos)]
    if ovrl < cfg.min_dnsmos_floor:
        return ["dnsmos_low"], [entry("dnsmos_low", "dnsmos_ovrl", ovrl, cfg.min_dnsmos_floor)]
    verdict = [entry("dnsmos_low", "dnsmos_sig", sig, cfg.min_dnsmos_sig),
               entry("music_residue", "dnsmos_bak", bak, cfg.min_dnsmos_bak)]
    if mean_word_probability is not None:
        verdict.append(entry("dnsmos_low", "mean_word_probability", float(mean_word_probability),
                             cfg.dnsmos_music_min_word_probability))
    reasons = list(dict.fromkeys(v["rule"] for v in verdict if v["short_by"] > 0))
    return reasons, verdict


def _maybe_round(value: float | None, places: int = 4) -> float | None:
    return None if value is None else round(float(value), places)
