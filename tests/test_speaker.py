"""Speaker embeddings and decisions on real human speech (tests/realspeech.py; no mocks)."""

from __future__ import annotations

import importlib.util
import time
import zlib
from collections.abc import Iterator

import numpy as np
import pytest

from tests import realspeech as rs
from tests.conftest import missing
from ttsft_daemon.audio import speaker as sp

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("resemblyzer") is None, reason=missing("resemblyzer")),
    pytest.mark.skipif(not rs.available(), reason=missing("models/speech (python tests/realspeech.py fetch)")),
]

P = sp.SpeakerParams()


@pytest.fixture(scope="module")
def enc() -> Iterator[sp.SpeakerEncoder]:
    yield sp.SpeakerEncoder(threads=1)


def joined(speaker: str, seconds: float, skip: int = 0) -> np.ndarray:
    """`seconds` of one speaker's utterances joined with 0.3 s pauses, starting at utterance `skip`."""
    parts: list[np.ndarray] = []
    total = 0.0
    for u in rs.utterances(speaker)[skip:]:
        parts += [u.audio, np.zeros(int(0.3 * rs.SR), dtype=np.float32)]
        total += u.seconds + 0.3
        if total >= seconds:
            break
    return np.concatenate(parts)[: int(seconds * rs.SR)]


def test_embedding_is_unit_256(enc: sp.SpeakerEncoder) -> None:
    e = enc.embed(joined("allison", 3.0), rs.SR)
    assert e.shape == (256,) and e.dtype == np.float32
    assert abs(float(np.linalg.norm(e)) - 1.0) < 1e-4
    # any rate and stereo input: 8 kHz stereo gives the same vector as 16 kHz mono of the same audio
    x = joined("carlo", 3.0)
    import soxr

    x8 = soxr.resample(x, rs.SR, 8000).astype(np.float32)
    assert sp.cosine(enc.embed(np.stack([x8, x8], axis=1), 8000), enc.embed(x, rs.SR)) > 0.97


def test_same_above_and_different_below_threshold(enc: sp.SpeakerEncoder) -> None:
    refs = {s: enc.embed(joined(s, 8.0), rs.SR) for s in ("allison", "june", "carlo", "menardi")}
    for s, ref in refs.items():
        other_clip = enc.embed(joined(s, 4.0, skip=60), rs.SR)  # other utterances of the same person
        sim, same = sp.match(other_clip, ref, float(P.threshold_for(4.0)))
        assert same, (s, sim)
        for t, ref2 in refs.items():
            if t != s:
                sim2, same2 = sp.match(other_clip, ref2, float(P.threshold_for(4.0)))
                assert not same2, (s, t, sim2)


def test_find_change_at_speaker_switch(enc: sp.SpeakerEncoder) -> None:
    a = joined("allison", 5.0, skip=10)
    b = joined("carlo", 5.0, skip=10)
    clip = np.concatenate([a, b])
    windows = enc.embed_windows(clip, rs.SR, P.window_s, P.hop_s)
    assert windows and windows[0][0] == 0.0 and windows[-1][1] <= len(clip) / rs.SR + 1e-6
    t = sp.find_change(windows, P.change_threshold, P.min_side_s)
    assert t is not None and abs(t - len(a) / rs.SR) <= 0.5, t
    # one speaker: no change
    one = joined("allison", 10.0, skip=30)
    assert sp.find_change(enc.embed_windows(one, rs.SR, P.window_s, P.hop_s), P.change_threshold) is None


def _clip_embeddings(enc: sp.SpeakerEncoder, speaker: str, seconds: float, skip: int = 0) -> list[
        tuple[np.ndarray, float]]:
    """A voice's clips as the daemon has them: embeddings of 2-6 s pieces of the speaker's speech."""
    rng = np.random.default_rng(zlib.crc32(speaker.encode()))
    out: list[tuple[np.ndarray, float]] = []
    total = 0.0
    pos = skip
    utts = rs.utterances(speaker)
    while total < seconds:
        n = int(rng.integers(1, 3))
        piece = np.concatenate([u.audio for u in utts[pos % len(utts) : pos % len(utts) + n]])
        pos += n
        out.append((enc.embed(piece, rs.SR), len(piece) / rs.SR))
        total += len(piece) / rs.SR
    return out


def test_choose_target_dominant_ambiguous_and_too_little(enc: sp.SpeakerEncoder) -> None:
    target = _clip_embeddings(enc, "allison", 90.0)
    others = _clip_embeddings(enc, "carlo", 12.0) + _clip_embeddings(enc, "june", 10.0)
    d = sp.choose_target(target + others, P)
    assert d.state == "decided", d.detail
    assert d.centroid is not None
    assert sp.match(enc.embed(joined("allison", 6.0, skip=100), rs.SR), d.centroid, float(P.threshold_for(6.0)))[1]
    assert not sp.match(enc.embed(joined("carlo", 6.0, skip=100), rs.SR), d.centroid, float(P.threshold_for(6.0)))[1]
    top = d.clusters[0]
    assert sum(1 for i in top.members if i >= len(target)) == 0, "another speaker's clip joined the target"
    assert top.share > 0.7 and "speakers hold" in d.detail

    half = _clip_embeddings(enc, "allison", 40.0) + _clip_embeddings(enc, "menardi", 40.0)
    amb = sp.choose_target(half, P)
    assert amb.state == "ambiguous", amb.detail
    assert len(amb.clusters) >= 2 and 0.3 < amb.clusters[0].share < 0.7
    print(amb.detail)

    few = sp.choose_target(_clip_embeddings(enc, "allison", 8.0), P)
    assert few.state == "too_little_speech", few.detail
    assert sp.choose_target([], P).state == "too_little_speech"


def test_other_speakers_reject_a_close_voice_and_keep_the_target(enc: sp.SpeakerEncoder) -> None:
    """A clip nearer another speaker heard in the voice than the target is that speaker's, even above the
    threshold; the target's own clips never are (and a single-speaker voice has no other speakers)."""
    target = _clip_embeddings(enc, "allison", 90.0)
    june = _clip_embeddings(enc, "june", 30.0)
    d = sp.choose_target(target + june, P)
    assert d.state == "decided" and d.centroid is not None, d.detail
    others = sp.other_speakers(target + june, d.centroid, P)
    assert others, "June's clips should form a speaker of their own"

    def kept(clips: list[tuple[np.ndarray, float]]) -> tuple[int, int]:
        by_threshold = both = 0
        for e, s in clips:
            sim = sp.cosine(e, d.centroid)
            if sim >= float(P.threshold_for(s)):
                by_threshold += 1
                both += sp.nearest_other(e, others) < sim + P.other_margin
        return by_threshold, both

    new_june = _clip_embeddings(enc, "june", 40.0, skip=40)
    new_allison = _clip_embeddings(enc, "allison", 60.0, skip=100)
    june_threshold, june_both = kept(new_june)
    allison_threshold, allison_both = kept(new_allison)
    print(f"june kept: {june_threshold} by the threshold, {june_both} by both rules, of {len(new_june)}; "
          f"allison: {allison_threshold} / {allison_both} of {len(new_allison)}")
    assert june_both == 0
    assert allison_both == allison_threshold >= 0.9 * len(new_allison)
    assert sp.other_speakers(target, sp.centroid(np.stack([e for e, _ in target])), P) == []


def test_clustering_scales_to_10k_planted_clusters() -> None:
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((5, 256))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    truth = rng.choice(5, size=10_000, p=[0.7, 0.1, 0.1, 0.05, 0.05])
    x = centers[truth] + rng.standard_normal((10_000, 256)) * 0.025  # ~0.93 to its centre, ~0.86 to each other
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    secs = rng.uniform(2.0, 8.0, size=10_000)
    t0 = time.perf_counter()
    d = sp.choose_target(list(zip(x, secs, strict=True)), P)
    elapsed = time.perf_counter() - t0
    print(f"choose_target on 10,000 clips: {elapsed:.2f} s")
    assert len(d.clusters) == 5
    for c in d.clusters:
        assert len({int(truth[i]) for i in c.members}) == 1
    assert d.state == "decided" and {int(truth[i]) for i in d.clusters[0].members} == {0}


def test_same_vectors_as_resemblyzer_voice_encoder(enc: sp.SpeakerEncoder) -> None:
    """Our front end and network give Resemblyzer's own embed_utterance() result on the same (unprocessed) audio."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # resemblyzer imports scipy.ndimage.morphology
        from resemblyzer import VoiceEncoder

    theirs = VoiceEncoder("cpu", verbose=False)
    for u in rs.utterances("june")[:3]:
        ours = enc._embed_wave(u.audio)
        assert sp.cosine(ours, theirs.embed_utterance(u.audio)) > 0.9999


def test_interview_target_selection_by_turns(enc: sp.SpeakerEncoder) -> None:
    """An interview (allison answers; carlo, june and diane ask), no music: each turn is one clip. The dominant
    speaker is decided, and judging every clip against the decided centroid keeps other speakers' seconds
    <= 2% of the accepted seconds with >= 90% of the target's seconds."""
    conv = rs.make_interview(rs.utterances("allison"), [rs.utterances(s) for s in ("carlo", "june", "diane")],
                             music_db=None, n_turns=10, seed=3)
    rec = conv.recording
    clips = [(enc.embed(rec.mix[int(t.start * rec.sr) : int(t.end * rec.sr)], rec.sr), t.end - t.start)
             for t in conv.turns]
    d = sp.choose_target(clips, P)
    assert d.state == "decided" and d.centroid is not None, d.detail
    accepted_target = accepted_other = 0.0
    for (emb, secs), turn in zip(clips, conv.turns, strict=True):
        if sp.match(emb, d.centroid, float(P.threshold_for(secs)))[1]:
            if turn.speaker == "allison":
                accepted_target += secs
            else:
                accepted_other += secs
    assert accepted_other <= 0.02 * (accepted_target + accepted_other), (accepted_other, accepted_target)
    assert accepted_target >= 0.9 * conv.seconds_of("allison"), (accepted_target, conv.seconds_of("allison"))
