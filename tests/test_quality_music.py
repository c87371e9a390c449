"""The gate's DNSMOS rules under music (issue 14): OVRL taken apart into speech (SIG) and background (BAK).

The decision table runs on numbers alone; one test scores real speech (Allison Smith's prompts) over real game
music (bench/music_set.py, when fetched) with the real DNSMOS model and checks the verdict explains the decision.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from tests import realspeech as rs
from tests.conftest import missing
from ttsft_daemon.config import QualityConfig, config_from_dict
from ttsft_daemon.errors import ConfigError
from ttsft_daemon.text.quality import QualityGate, dnsmos_decision
from ttsft_daemon.text.transcription import Transcript

CFG = QualityConfig(dnsmos_music_rule=True)  # min_dnsmos 2.5, floor 2.2, SIG 3.1, BAK 2.3, words 0.8 (off by default)
MUSIC_DIR = Path(__file__).resolve().parents[1] / "models" / "music"


def scores(ovrl: float, sig: float, bak: float) -> dict[str, float]:
    return {"ovrl": ovrl, "sig": sig, "bak": bak}


def test_a_clip_at_or_above_min_dnsmos_passes_without_a_verdict() -> None:
    assert dnsmos_decision(scores(CFG.min_dnsmos, 1.0, 1.0), CFG) == ([], [])


@pytest.mark.parametrize(("ovrl", "sig", "bak", "reasons"), [
    (2.40, 3.40, 2.60, []),                                # speech intact, music left in is soft: kept
    (2.40, 3.00, 2.60, ["dnsmos_low"]),                    # the speech itself is degraded
    (2.40, 3.40, 2.10, ["music_residue"]),                 # too much music left in
    (2.30, 2.90, 2.00, ["dnsmos_low", "music_residue"]),   # both
    (2.10, 3.60, 2.90, ["dnsmos_low"]),                    # under the floor, whatever its parts
])
def test_music_rule_judges_speech_and_background_apart(ovrl: float, sig: float, bak: float,
                                                        reasons: list[str]) -> None:
    got, verdict = dnsmos_decision(scores(ovrl, sig, bak), CFG)
    assert got == reasons
    # Every rejection names its signal, its value, the threshold and by how much it missed.
    rejecting = [v for v in verdict if v["short_by"] > 0]
    assert [v["rule"] for v in rejecting] == reasons
    for v in rejecting:
        assert v["short_by"] == pytest.approx(v["threshold"] - v["value"], abs=1e-3)
        assert v["signal"] in ("dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak")
    if ovrl < CFG.min_dnsmos_floor:
        assert verdict == [{"rule": "dnsmos_low", "signal": "dnsmos_ovrl", "value": ovrl,
                            "threshold": CFG.min_dnsmos_floor, "short_by": round(CFG.min_dnsmos_floor - ovrl, 3)}]


def test_a_clip_kept_on_its_parts_needs_whisper_sure_of_its_words() -> None:
    kept, verdict = dnsmos_decision(scores(2.4, 3.4, 2.6), CFG, mean_word_probability=0.95)
    assert kept == [] and verdict[-1]["signal"] == "mean_word_probability" and verdict[-1]["short_by"] < 0
    unsure, verdict = dnsmos_decision(scores(2.4, 3.4, 2.6), CFG, mean_word_probability=0.7)
    assert unsure == ["dnsmos_low"]
    assert verdict[-1] == {"rule": "dnsmos_low", "signal": "mean_word_probability", "value": 0.7,
                           "threshold": CFG.dnsmos_music_min_word_probability, "short_by": 0.1}
    # A clip at or above min_dnsmos does not depend on the words (the confidence rules judge those).
    assert dnsmos_decision(scores(2.6, 3.4, 2.6), CFG, mean_word_probability=0.1) == ([], [])
    # Speech and words both short: one reason, two entries that say why.
    both, verdict = dnsmos_decision(scores(2.4, 3.0, 2.6), CFG, mean_word_probability=0.5)
    assert both == ["dnsmos_low"] and sum(v["short_by"] > 0 for v in verdict) == 2


def test_without_the_music_rule_overall_score_alone_decides() -> None:
    off = dataclasses.replace(CFG, dnsmos_music_rule=False)
    got, verdict = dnsmos_decision(scores(2.4, 3.9, 3.9), off)
    assert got == ["dnsmos_low"]
    assert verdict[0]["signal"] == "dnsmos_ovrl" and verdict[0]["short_by"] == pytest.approx(0.1)
    # Parts that are not numbers (an older scorer) fall back to the overall score as well.
    assert dnsmos_decision({"ovrl": 2.4, "sig": float("nan"), "bak": 3.0}, CFG)[0] == ["dnsmos_low"]


def test_the_floor_may_not_exceed_min_dnsmos() -> None:
    with pytest.raises(ConfigError, match="min_dnsmos_floor"):
        config_from_dict({"paths": {"root": "/tmp/x"}, "quality": {"min_dnsmos": 2.5, "min_dnsmos_floor": 2.8}})
    with pytest.raises(ConfigError, match="min_dnsmos_bak"):
        config_from_dict({"paths": {"root": "/tmp/x"}, "quality": {"min_dnsmos_bak": 0.5}})


@pytest.mark.skipif(not rs.available(), reason=missing("models/speech (scripts/install.sh)"))
@pytest.mark.skipif(not (MUSIC_DIR / ".probe").is_file(),
                    reason="models/music is not fetched (bench/music_set.py fetch)")
def test_real_speech_over_real_music_gets_an_explained_decision() -> None:
    import soundfile as sf

    gate = QualityGate(CFG)
    if gate.dnsmos is None or not gate.dnsmos.usable:
        pytest.skip(missing("DNSMOS (speechmos)"))
    utt = next(u for u in rs.utterances("allison") if 2.0 <= u.seconds <= 4.0)
    pad = np.zeros(int(0.2 * rs.SR), dtype=np.float32)
    speech = np.concatenate([pad, utt.audio, pad])
    music, sr = sf.read(MUSIC_DIR / "muldjord_chaos_god.wav", dtype="float32")
    assert sr == rs.SR
    music = music[30 * sr: 30 * sr + len(speech)]
    rms = float(np.sqrt(np.mean(speech**2)))
    decisions = {}
    for db in (30.0, 0.0):  # music far under the speech, and as loud as the speech
        mix = speech + music * (rms * 10 ** (-db / 20) / float(np.sqrt(np.mean(music**2))))
        words = [{"start": 0.3, "end": len(mix) / sr - 0.3, "word": "hello", "probability": 0.9}]
        t = Transcript.build("hello", "en", 1.0, len(mix) / sr, [{"start": 0.0, "end": len(mix) / sr,
                             "text": "hello", "avg_logprob": -0.2, "no_speech_prob": 0.01,
                             "compression_ratio": 1.0}], words)
        report = gate.assess(t, mix.astype(np.float32), sr)
        d = report.details
        expected, verdict = dnsmos_decision({k: d[f"dnsmos_{k}"] for k in ("ovrl", "sig", "bak")}, gate.cfg)
        music_reasons = [r for r in report.reasons if r in ("dnsmos_low", "music_residue")]
        assert music_reasons == expected
        assert d.get("dnsmos_verdict", []) == verdict
        decisions[db] = (d["dnsmos_ovrl"], d["dnsmos_bak"], music_reasons)
    print(decisions)
    # Loud music lowers the background score, and rejects through the music rules; soft music does not.
    assert decisions[0.0][1] < decisions[30.0][1]
    assert decisions[0.0][2] and not decisions[30.0][2]
