"""Quality gate rules on constructed transcripts and real Piper speech (DNSMOS tests are slow)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from ttsft_daemon.config import QualityConfig
from ttsft_daemon.demo import audio as demo_audio
from ttsft_daemon.text.quality import (
    QualityGate,
    QualityReport,
    is_hallucination_phrase,
    max_ngram_count,
    measure_voicing,
    sound_annotations,
)
from ttsft_daemon.text.textnorm import normalize_for_wer
from ttsft_daemon.text.transcription import Transcript, to_whisper_rate

SENTENCE = "The quick brown fox jumps over the lazy dog."
PAD_SECONDS = 0.15
NO_DNSMOS = QualityConfig(dnsmos=False)


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, int]:
    """One Piper sentence, trimmed by demo_audio, with PAD_SECONDS of silence on each side."""
    (audio,), sr = demo_audio.speak([SENTENCE])
    pad = np.zeros(int(PAD_SECONDS * sr), dtype=np.float32)
    return np.concatenate([pad, audio, pad]), sr


@pytest.fixture(scope="module")
def gate() -> QualityGate:
    return QualityGate(NO_DNSMOS)


def make_transcript(text: str, duration: float, *, avg_logprob: float = -0.3, no_speech_prob: float = 0.01,
                    compression_ratio: float = 1.1, probability: float = 0.9) -> Transcript:
    """A transcript whose words are spread evenly over the clip between the pads."""
    tokens = text.split()
    span = duration - 2 * PAD_SECONDS
    step = span / max(len(tokens), 1)
    words = [{"start": round(PAD_SECONDS + i * step, 3), "end": round(PAD_SECONDS + (i + 1) * step, 3),
              "word": w, "probability": probability} for i, w in enumerate(tokens)]
    segments = [{"start": 0.0, "end": duration, "text": text, "avg_logprob": avg_logprob,
                 "no_speech_prob": no_speech_prob, "compression_ratio": compression_ratio}] if text else []
    return Transcript.build(text, "en", 1.0, duration, segments, words)


def assess(gate: QualityGate, speech: tuple[np.ndarray, int], text: str = SENTENCE,
           **kwargs: Any) -> QualityReport:
    audio, sr = speech
    return gate.assess(make_transcript(text, len(audio) / sr, **kwargs), audio, sr)


# ------------------------------------------------------------------------------------ clean clip


def test_clean_clip_is_accepted_with_its_measurements(gate: QualityGate, speech: tuple[np.ndarray, int]) -> None:
    report = assess(gate, speech)
    assert report.accept, report.reasons
    assert report.reasons == []
    assert 0.5 <= report.score <= 1.0
    assert report.normalized_text == SENTENCE
    d = report.details
    assert d["lead_silence"] == pytest.approx(PAD_SECONDS, abs=0.03)
    assert d["trail_silence"] == pytest.approx(PAD_SECONDS, abs=0.03)
    assert 10 < d["chars_per_second"] < 25
    assert d["dnsmos_status"] == "disabled"
    assert d["phoneme_count"] > 30


def test_report_is_json_serialisable(gate: QualityGate, speech: tuple[np.ndarray, int]) -> None:
    report = assess(gate, speech)
    loaded = json.loads(json.dumps(report.to_dict()))
    assert loaded["accept"] is True and loaded["score"] == report.score
    assert loaded["details"]["penalties"] == report.details["penalties"]


def test_score_follows_the_documented_formula(gate: QualityGate, speech: tuple[np.ndarray, int]) -> None:
    report = assess(gate, speech, avg_logprob=-0.3, probability=0.9, no_speech_prob=0.01)
    confidence = 0.5 * math.exp(-0.3) + 0.5 * 0.9
    # no DNSMOS: base = confidence; penalties: no-speech doubt only (no unsure words, edges of 150 ms)
    assert report.score == pytest.approx(confidence * (1 - 0.5 * 0.01), abs=1e-3)
    worse = assess(gate, speech, avg_logprob=-0.8, probability=0.6)
    assert worse.score < report.score


def test_int16_and_stereo_samples_give_the_same_decision(gate: QualityGate,
                                                         speech: tuple[np.ndarray, int]) -> None:
    audio, sr = speech
    t = make_transcript(SENTENCE, len(audio) / sr)
    as_int16 = (audio * 32767).astype(np.int16)
    stereo = np.stack([audio, audio], axis=1)
    for samples in (as_int16, stereo):
        report = gate.assess(t, samples, sr)
        assert report.accept and report.reasons == []


# ----------------------------------------------------------------------------- no speech, no text


@pytest.mark.parametrize("text", ["", "...", " - "])
def test_empty_text_is_rejected(gate: QualityGate, speech: tuple[np.ndarray, int], text: str) -> None:
    report = assess(gate, speech, text=text)
    assert not report.accept
    assert "empty_text" in report.reasons


@pytest.mark.parametrize("text", ["[Music]", "♪ ♪ ♪", "(upbeat music)", "*laughs*", "[BLANK_AUDIO]",
                                  "Hello there [laughs] how are you?"])
def test_sound_annotations_are_rejected(gate: QualityGate, speech: tuple[np.ndarray, int], text: str) -> None:
    report = assess(gate, speech, text=text)
    assert not report.accept
    assert "non_speech_text" in report.reasons
    assert report.details["annotations"] == sound_annotations(text) != []


def test_high_no_speech_probability_is_rejected(gate: QualityGate, speech: tuple[np.ndarray, int]) -> None:
    assert "no_speech" in assess(gate, speech, no_speech_prob=0.9).reasons
    assert "no_speech" not in assess(gate, speech, no_speech_prob=0.5).reasons


def test_digital_silence_is_no_speech_whatever_the_transcript(gate: QualityGate) -> None:
    sr = 22050
    silence = np.zeros(3 * sr, dtype=np.float32)
    report = gate.assess(make_transcript(SENTENCE, 3.0), silence, sr)
    assert not report.accept
    assert "no_speech" in report.reasons


# ------------------------------------------------------------------------------- hallucinations


@pytest.mark.parametrize("text", [
    "Thank you for watching!", "Thanks for watching.", "Please subscribe to my channel.",
    "Subtitles by the Amara.org community", "Transcribed by ESO, translated by —", "You", "Thank you.",
    "Bye.", "So we went home and - thanks for watching!",
])
def test_known_hallucinations_are_recognised(text: str) -> None:
    assert is_hallucination_phrase(text)


@pytest.mark.parametrize("text", [
    "Thank you for listening and have a wonderful day.", "I said thank you to her.",
    "We were watching the subtitles closely.", "You should come with us.", "",
])
def test_ordinary_sentences_are_not_hallucinations(text: str) -> None:
    assert not is_hallucination_phrase(text)


def test_extra_hallucination_phrases_can_be_configured(speech: tuple[np.ndarray, int]) -> None:
    assert is_hallucination_phrase("Visit our sponsor today", extra_phrases=("our sponsor",))
    custom = QualityGate(NO_DNSMOS, hallucination_phrases=("lazy dog",))
    assert "hallucination_phrase" in assess(custom, speech).reasons


def test_hallucination_phrase_is_rejected(gate: QualityGate, speech: tuple[np.ndarray, int]) -> None:
    report = assess(gate, speech, text="Thank you for watching, and please subscribe.")
    assert not report.accept
    assert "hallucination_phrase" in report.reasons


def test_whisper_compression_ratio_is_rejected(gate: QualityGate, speech: tuple[np.ndarray, int]) -> None:
    assert "compression_ratio" in assess(gate, speech, compression_ratio=2.8).reasons


def test_repetition_loop_is_rejected(gate: QualityGate, speech: tuple[np.ndarray, int]) -> None:
    loop = "the fox jumps over the dog " * 6
    report = assess(gate, speech, text=loop)
    assert not report.accept
    assert {"compression_ratio", "repeated_ngram"} <= set(report.reasons)


def test_repeated_ngram_limit(gate: QualityGate, speech: tuple[np.ndarray, int]) -> None:
    assert max_ngram_count(normalize_for_wer("one two three " * 4).split()) == 4
    assert "repeated_ngram" in assess(gate, speech, text="one two three " * 4).reasons
    assert "repeated_ngram" not in assess(gate, speech, text="one two three " * 3).reasons


# ---------------------------------------------------------------------------------- confidence


def test_low_average_log_probability_is_rejected(gate: QualityGate, speech: tuple[np.ndarray, int]) -> None:
    report = assess(gate, speech, avg_logprob=-1.3)
    assert not report.accept
    assert "low_confidence" in report.reasons


def test_low_word_probability_is_rejected(gate: QualityGate, speech: tuple[np.ndarray, int]) -> None:
    report = assess(gate, speech, probability=0.3)
    assert "low_confidence" in report.reasons
    lenient = QualityGate(NO_DNSMOS, min_word_probability=0.2)
    assert "low_confidence" not in assess(lenient, speech, probability=0.3).reasons


def test_score_below_min_quality_is_rejected(speech: tuple[np.ndarray, int]) -> None:
    strict = QualityGate(dataclasses.replace(NO_DNSMOS, min_quality=0.99))
    report = assess(strict, speech)
    assert not report.accept
    assert report.reasons == ["low_quality_score"]


# ------------------------------------------------------------------------------- rate and edges


def test_speaking_rate_out_of_range_is_rejected(gate: QualityGate, speech: tuple[np.ndarray, int]) -> None:
    slow = assess(gate, speech, text="Fox.")
    assert "speaking_rate_low" in slow.reasons
    fast = assess(gate, speech, text=" ".join([SENTENCE] * 3))
    assert "speaking_rate_high" in fast.reasons


def _loudest_frame_between(audio: np.ndarray, sr: int, lo: float, hi: float) -> int:
    """Sample index of the loudest 10 ms frame between fractions lo and hi of the clip: inside a word."""
    frame = int(0.01 * sr)
    start, stop = int(lo * len(audio)) // frame, int(hi * len(audio)) // frame
    rms = [np.sqrt(np.mean(audio[i * frame : (i + 1) * frame] ** 2)) for i in range(start, stop)]
    return (start + int(np.argmax(rms))) * frame + frame // 2


def test_word_cut_at_either_edge_is_flagged(gate: QualityGate) -> None:
    (audio,), sr = demo_audio.speak([SENTENCE])
    pad = np.zeros(int(PAD_SECONDS * sr), dtype=np.float32)
    cut = _loudest_frame_between(audio, sr, 0.4, 0.6)
    cut_end = np.concatenate([pad, audio[:cut]])
    cut_start = np.concatenate([audio[cut:], pad])
    text_head, text_tail = "The quick brown fox", "jumps over the lazy dog."
    end_report = gate.assess(make_transcript(text_head, len(cut_end) / sr), cut_end, sr)
    start_report = gate.assess(make_transcript(text_tail, len(cut_start) / sr), cut_start, sr)
    assert "word_cut_at_end" in end_report.reasons and "word_cut_at_start" not in end_report.reasons
    assert "word_cut_at_start" in start_report.reasons and "word_cut_at_end" not in start_report.reasons
    assert not end_report.accept and not start_report.accept


def test_voicing_ignores_a_steady_noise_floor() -> None:
    sr = 16000
    rng = np.random.default_rng(0)
    noise = 0.01 * rng.standard_normal(3 * sr)
    tone = np.zeros(3 * sr)
    tone[sr : 2 * sr] = 0.3 * np.sin(2 * np.pi * 220 * np.arange(sr) / sr)
    v = measure_voicing((noise + tone).astype(np.float32), sr)
    assert v.onset == pytest.approx(1.0, abs=0.02)
    assert v.trail_silence == pytest.approx(1.0, abs=0.02)


# ------------------------------------------------------------------------------------ phonemes


def test_phonemes_are_counted_like_piper(gate: QualityGate, speech: tuple[np.ndarray, int]) -> None:
    from piper import PiperVoice

    voice = PiperVoice.load(str(demo_audio.default_voice_path()))
    report = assess(gate, speech)
    expected = sum(len(s) for s in voice.phonemize(report.normalized_text))
    assert report.details["phoneme_count"] == expected


def test_too_many_phonemes_is_rejected(speech: tuple[np.ndarray, int]) -> None:
    tight = QualityGate(dataclasses.replace(NO_DNSMOS, max_phonemes=20))
    report = assess(tight, speech)
    assert "too_many_phonemes" in report.reasons
    assert report.details["phoneme_count"] > 20


# -------------------------------------------------------------------------------------- DNSMOS


def test_unusable_dnsmos_is_reported_and_skipped(tmp_path: Path, speech: tuple[np.ndarray, int]) -> None:
    with capture_logs() as logs:
        degraded = QualityGate(QualityConfig(dnsmos=True), dnsmos_model_dir=tmp_path)
    assert degraded.dnsmos_status.startswith("unusable")
    assert any(e["log_level"] == "warning" and "DNSMOS" in e["event"] for e in logs)
    report = assess(degraded, speech)
    assert report.accept, report.reasons
    assert report.details["dnsmos_status"].startswith("unusable")
    assert "dnsmos_ovrl" not in report.details


@pytest.fixture(scope="module")
def dnsmos_gate() -> QualityGate:
    return QualityGate(QualityConfig())


@pytest.mark.slow
def test_dnsmos_scores_clean_speech_above_noise(dnsmos_gate: QualityGate, speech: tuple[np.ndarray, int]) -> None:
    assert dnsmos_gate.dnsmos_status == "ok"
    clean = assess(dnsmos_gate, speech)
    assert clean.accept, clean.reasons
    assert clean.details["dnsmos_ovrl"] >= QualityConfig().min_dnsmos
    audio, sr = speech
    rng = np.random.default_rng(1)
    noisy = (audio + 0.2 * rng.standard_normal(len(audio))).clip(-1, 1).astype(np.float32)
    report = dnsmos_gate.assess(make_transcript(SENTENCE, len(audio) / sr), noisy, sr)
    assert "dnsmos_low" in report.reasons
    assert report.details["dnsmos_ovrl"] < clean.details["dnsmos_ovrl"] - 1.0
    assert report.score < clean.score


@pytest.mark.slow
def test_dnsmos_handles_long_and_short_clips(dnsmos_gate: QualityGate, speech: tuple[np.ndarray, int]) -> None:
    audio, sr = speech
    long_clip = np.concatenate([audio] * 5)  # ~15 s: two DNSMOS windows
    short_clip = audio[: int(0.5 * sr)]
    for clip in (long_clip, short_clip):
        report = dnsmos_gate.assess(make_transcript(SENTENCE, len(clip) / sr), clip, sr)
        assert report.details["dnsmos_status"] == "ok"
        assert 1.0 <= report.details["dnsmos_ovrl"] <= 5.0


@pytest.mark.slow
def test_group_dnsmos_is_used_for_clean_groups_and_a_noisy_clip_cannot_hide_in_one(
    dnsmos_gate: QualityGate, speech: tuple[np.ndarray, int]
) -> None:
    audio, sr = speech
    rng = np.random.default_rng(1)
    noisy = (audio + 0.2 * rng.standard_normal(len(audio))).clip(-1, 1).astype(np.float32)
    clean_group = dnsmos_gate.score_groups([to_whisper_rate(audio, sr)] * 2)
    assert clean_group[0] is not None and clean_group[0]["group_clips"] == 2
    report = dnsmos_gate.assess(make_transcript(SENTENCE, len(audio) / sr), audio, sr, group_dnsmos=clean_group[0])
    assert report.accept and report.details["dnsmos_ovrl"] == round(clean_group[0]["ovrl"], 3)  # no run of its own
    mixed = dnsmos_gate.score_groups([to_whisper_rate(audio, sr), to_whisper_rate(noisy, sr)])
    assert mixed[1] is not None
    judged = [dnsmos_gate.assess(make_transcript(SENTENCE, len(clip) / sr), clip, sr, group_dnsmos=group)
              for clip, group in zip((audio, noisy), mixed, strict=True)]
    print("group", mixed[1]["ovrl"], "alone", [r.details["dnsmos_ovrl"] for r in judged])
    assert "dnsmos_low" in judged[1].reasons
    assert judged[0].accept
    assert dnsmos_gate.score_groups([to_whisper_rate(audio, sr)]) == [None]  # alone in its group: scored alone
    for where in range(4):  # one noisy clip among three clean ones, anywhere in a pass of two DNSMOS windows
        clips = [noisy if i == where else audio for i in range(4)]
        screens = dnsmos_gate.score_groups([to_whisper_rate(c, sr) for c in clips])
        assert all(g is not None and g["group_windows"] == 2 for g in screens)
        bad = dnsmos_gate.assess(make_transcript(SENTENCE, len(noisy) / sr), noisy, sr, group_dnsmos=screens[where])
        assert "dnsmos_low" in bad.reasons, (where, screens[where])


@pytest.mark.slow
def test_gates_of_one_process_share_one_dnsmos_scorer(dnsmos_gate: QualityGate) -> None:
    other = QualityGate(QualityConfig())
    assert other.dnsmos is dnsmos_gate.dnsmos  # one copy of the sessions (~0.2 GB each) for all transcribe workers
