"""The speaker stage's bookkeeping, fast: config mirrors the calibrated defaults, the per-voice store, enrollment
names, and the status JSON's speaker fields."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ttsft_daemon.audio.speaker import SpeakerParams
from ttsft_daemon.config import SpeakerConfig, config_from_dict
from ttsft_daemon.core.speakers import book, decode, encode, is_enrollment, public_state
from ttsft_daemon.pipeline import stage
from ttsft_daemon.stages.base import StageEnv
from ttsft_daemon.stages.speaker import SpeakerStage
from ttsft_daemon.status import collect


def test_config_defaults_are_the_calibrated_ones(tmp_path: Path) -> None:
    config = config_from_dict({"paths": {"root": str(tmp_path)}})
    from ttsft_daemon.core.inbox import InboxScanner
    from ttsft_daemon.core.spool import Spool

    spool = Spool(tmp_path)
    built = SpeakerStage(stage("speaker"), StageEnv(config, spool, InboxScanner(spool.layout.inbox, config.inbox)))
    assert built.params() == SpeakerParams()
    assert SpeakerConfig().enabled


def test_embeddings_round_trip_and_survive_a_new_book(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=256).astype(np.float32)
    emb /= np.linalg.norm(emb)
    assert decode(encode(3.5, emb)) is not None
    bk = book(tmp_path, "anna")
    bk.add("job-000001000", 3.5, emb)
    again = book(tmp_path, "anna")
    found = again.get("job-000001000")
    assert found is not None and found[0] == 3.5 and np.allclose(found[1], emb)
    assert set(again.all()) == {"job-000001000"} and again.has("job-000001000") and not again.has("x")
    assert decode(b"\x00\x00") is None and decode(np.array([np.nan, 1.0], "<f4").tobytes()) is None


def test_enrollment_names() -> None:
    assert is_enrollment("enroll.wav", "enroll") and is_enrollment("Enroll-2.MP3", "enroll")
    assert not is_enrollment("talk.mp3", "enroll") and not is_enrollment("enroll", "enroll")
    assert not is_enrollment("my-enroll.wav", "enroll")


def test_status_reports_the_speaker_state_of_a_voice_without_a_dataset(tmp_path: Path) -> None:
    config = config_from_dict({"paths": {"root": str(tmp_path)}})
    bk = book(tmp_path, "cleo")
    bk.save_state({"voice": "cleo", "state": "waiting_for_enrollment", "source": "dominant",
                   "detail": "voice cleo: 2 speakers hold 50% and 48% of 2 min; add inbox/cleo/enroll.wav",
                   "clusters": [{"seconds": 60.0, "share": 0.5, "clips": 20}], "chosen": None})
    status = collect(config)
    voice = status["voices"]["cleo"]
    assert voice["clips"] == 0 and voice["speaker_state"] == "waiting_for_enrollment"
    assert "enroll" in voice["detail"] and voice["speakers"][0]["share"] == 0.5
    assert public_state(tmp_path, "nobody") is None
