"""Speaker selection through the real daemon, on real human speech (tests/realspeech.py: Asterisk's voice prompts
from Debian's packages, several speakers) and the bundled Piper voice: real Spleeter, Resemblyzer, Whisper.

Purity and recall are measured from the dataset: each accepted clip's position in its recording (its info file in
dataset/<voice>/clips/) against the known turns of the conversation. Recall counts the target's seconds the quality
gate accepts with speaker selection off (same input, same run of the gate), so a clip the gate rejects anyway is not
counted as lost to speaker selection.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from tests import realspeech as rs
from tests.daemon_support import check_invariants, log_events, run_daemon, write_config
from ttsft_daemon.demo.audio import write_media
from ttsft_daemon.demo.sample_data import sample_sentences

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not rs.available(), reason="missing dependency: models/speech (scripts/install.sh)")]

FAST = {"transcription": {"beam_size": 1}, "inbox": {"settle_seconds": 0.2, "rescan_seconds": 0.5}}


def _joe(count: int, offset: int = 0) -> list[rs.Utterance]:
    return rs.piper_utterances(sample_sentences(200)[offset:offset + count])


def _interview(target: list[rs.Utterance], others: list[list[rs.Utterance]], music_db: float | None, seed: int,
               n_turns: int, answers: tuple[int, int] = (3, 5), questions: tuple[int, int] = (1, 1)
               ) -> rs.Conversation:
    return rs.make_interview(target, others, music_db, n_turns=n_turns, answer_utterances=answers,
                             question_utterances=questions, seed=seed, sr=22050)


def _accepted(root: Path, voice: str) -> list[dict[str, Any]]:
    folder = root / "dataset" / voice / "clips"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.exists() else []


def _seconds_by_speaker(clips: list[dict[str, Any]], conv: rs.Conversation) -> dict[str, float]:
    return conv.seconds_by_speaker([(float(c["start"]), float(c["end"])) for c in clips])


def _run(tmp: Path, name: str, drops: dict[str, rs.Conversation], music: bool, **sections: dict[str, Any]) -> Path:
    root = tmp / name
    for voice, conv in drops.items():
        folder = root / "inbox" / voice
        folder.mkdir(parents=True, exist_ok=True)
        write_media(conv.recording, folder / f"{voice}-talk.mp3", "mp3")  # type: ignore[arg-type]
    cfg = write_config(tmp / f"{name}.yaml", root, **{**FAST, "separation": {"enabled": music}, **sections})
    assert run_daemon(cfg, tmp / f"{name}.log", timeout=1200) == 0, (tmp / f"{name}.log").read_text()[-3000:]
    return root


def _status(root: Path, cfg_dir: Path) -> dict[str, Any]:
    import subprocess
    import sys

    cfg = write_config(cfg_dir / "status.yaml", root)
    out = subprocess.run([sys.executable, "-m", "ttsft_daemon", "status", "--config", str(cfg), "--json"],
                         capture_output=True, text=True, timeout=120, check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("speaker")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_interview_over_music_keeps_the_dominant_speaker_only(work: Path) -> None:
    """The target answers, three other people (two of them not English, one synthetic) ask, over a music bed."""
    others = [rs.utterances("june")[:20], rs.utterances("carlo")[:20], _joe(12, 40)]
    conv = _interview(list(rs.utterances("allison")[:80]), others, -8.0, seed=3, n_turns=12)
    with_sel = _run(work, "interview", {"ann": conv}, music=True)
    without = _run(work, "interview-off", {"ann": conv}, music=True, speaker={"enabled": False})
    kept = _seconds_by_speaker(_accepted(with_sel, "ann"), conv)
    gate_only = _seconds_by_speaker(_accepted(without, "ann"), conv)
    total = sum(kept.values())
    other_share = (total - kept.get("allison", 0.0)) / total
    recall = kept.get("allison", 0.0) / gate_only["allison"]
    print(f"interview: kept {kept}, gate only {gate_only}, other share {other_share:.3f}, recall {recall:.3f}")
    assert other_share <= 0.02, kept
    assert recall >= 0.90, (kept, gate_only)
    reasons = [json.loads(p.read_text())["reason"] for p in (with_sel / "failed").glob("*.error.json")]
    assert "other_speaker" in reasons
    state = json.loads((with_sel / "speakers" / "ann" / "state.json").read_text())
    assert state["state"] == "decided" and state["source"] == "dominant"
    assert check_invariants(with_sel, 1)["problems"] == []
    rows = (with_sel / "dataset" / "ann" / "metadata.csv").read_text().splitlines()
    assert rows and all(r.split("|")[3] == "ann" for r in rows)


def test_an_enrollment_picks_a_speaker_who_is_not_dominant(work: Path) -> None:
    """The Piper voice asks two sentences at a time, Allison answers at length: enrolled, the Piper voice is kept."""
    joe = _joe(30)
    conv = _interview(list(rs.utterances("allison")[100:160]), [joe], None, seed=5, n_turns=10, questions=(2, 2))
    root = work / "enrolled"
    (root / "inbox" / "bob").mkdir(parents=True)
    sample = np.concatenate([u.audio for u in _joe(4, 60)])
    sf.write(str(root / "inbox" / "bob" / "enroll.wav"), sample, rs.SR)
    _run(work, "enrolled", {"bob": conv}, music=False)
    kept = _seconds_by_speaker(_accepted(root, "bob"), conv)
    print(f"enrolled: kept {kept}, spoken joe {conv.seconds_of('joe_piper'):.1f} s")
    assert kept.get("allison", 0.0) <= 0.02 * sum(kept.values()), kept
    assert kept.get("joe_piper", 0.0) >= 0.6 * conv.seconds_of("joe_piper"), kept
    assert not (root / "inbox" / "bob" / "enroll.wav").exists()
    assert (root / "speakers" / "bob" / "enroll" / "enroll.wav").exists()
    state = json.loads((root / "speakers" / "bob" / "state.json").read_text())
    assert state["source"] == "enrollment"


def test_a_50_50_conversation_waits_then_an_enrollment_resolves_it(work: Path) -> None:
    conv = _interview(list(rs.utterances("allison")[160:220]), [_joe(40, 20)], None, seed=7, n_turns=8,
                      answers=(3, 3), questions=(3, 3))
    root = _run(work, "fifty", {"cleo": conv}, music=False)
    waiting = list((root / "spool" / "clips").glob("*.json"))
    assert waiting, "the clips wait in spool/clips"
    assert not (root / "dataset" / "cleo" / "metadata.csv").exists()
    assert not [p for p in (root / "failed").glob("*.error.json")
                if json.loads(p.read_text())["reason"] in ("other_speaker", "mixed_speakers")]
    status = _status(root, work)
    voice = status["voices"]["cleo"]
    assert voice["speaker_state"] == "waiting_for_enrollment" and "enroll" in voice["detail"]
    assert status["stages"]["clips"] == len(waiting)
    events = log_events(work / "fifty.log")
    assert any(e.get("event") == "speaker state" and e.get("state") == "waiting_for_enrollment" for e in events)
    # The user answers: an enrollment of Allison; a restart decides the waiting clips without redoing anything.
    sf.write(str(root / "inbox" / "cleo" / "enroll.wav"),
             np.concatenate([u.audio for u in rs.utterances("allison")[284:292]]), rs.SR)
    cfg = write_config(work / "fifty2.yaml", root, **{**FAST})
    assert run_daemon(cfg, work / "fifty2.log", timeout=1200) == 0
    events = log_events(work / "fifty2.log")
    assert not [e for e in events if e.get("event") in ("segment done", "separate done", "ingest done")]
    kept = _seconds_by_speaker(_accepted(root, "cleo"), conv)
    print(f"fifty: kept {kept}")
    assert kept.get("allison", 0.0) > 0 and kept.get("joe_piper", 0.0) <= 0.02 * sum(kept.values()), kept
    assert not list((root / "spool" / "clips").glob("*.json"))
    assert check_invariants(root, 1)["problems"] == []


def test_two_voice_folders_keep_their_own_targets(work: Path) -> None:
    allison = list(rs.utterances("allison")[220:284])
    joe = _joe(60, 60)
    conv_a = _interview(allison[:40], [joe[:10]], None, seed=11, n_turns=8)
    conv_b = _interview(joe[10:], [allison[40:]], None, seed=12, n_turns=8)
    root = _run(work, "two", {"anna": conv_a, "ben": conv_b}, music=False)
    kept_a = _seconds_by_speaker(_accepted(root, "anna"), conv_a)
    kept_b = _seconds_by_speaker(_accepted(root, "ben"), conv_b)
    print(f"two voices: anna {kept_a}, ben {kept_b}")
    assert kept_a.get("joe_piper", 0.0) <= 0.02 * sum(kept_a.values()) and kept_a.get("allison", 0.0) > 0
    assert kept_b.get("allison", 0.0) <= 0.02 * sum(kept_b.values()) and kept_b.get("joe_piper", 0.0) > 0
