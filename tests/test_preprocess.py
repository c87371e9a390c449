"""`ttsft-daemon preprocess`: files -> dataset one-shot, originals untouched, summary by reason."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ttsft_daemon.demo.audio import SENTENCES, make_recording, write_media

CLI = [sys.executable, "-m", "ttsft_daemon"]


@pytest.mark.slow
def test_preprocess_a_folder(tmp_path: Path) -> None:
    src = tmp_path / "recordings"
    src.mkdir()
    for i, kind in enumerate(("wav", "mp3")):
        rec = make_recording(SENTENCES[3 * i:3 * i + 3], music_db=None, seed=i, sr=22050)
        write_media(rec, src / f"part {i}.{kind}", kind)
    (src / "broken.mp3").write_bytes(b"\x00" * 1000)
    (src / "readme.txt").write_text("not audio, not taken")
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in src.iterdir()}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"separation": {"enabled": False}, "logging": {"format": "json"}}))
    out = tmp_path / "out"
    res = subprocess.run([*CLI, "preprocess", "--input", str(src), "--output", str(out), "--config", str(cfg),
                          "--voice", "narrator"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = (out / "dataset" / "narrator" / "metadata.csv").read_text().splitlines()
    assert len(rows) >= 4
    assert all(len(r.split("|")) == 5 and r.split("|")[3] == "narrator" for r in rows)
    assert "dataset/narrator: " in res.stdout and "clips kept" in res.stdout
    assert "ingest: not a readable media file" in res.stdout
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in src.iterdir()}
    assert after == before  # the originals are never modified or removed


def test_preprocess_reports_a_missing_input(tmp_path: Path) -> None:
    res = subprocess.run([*CLI, "preprocess", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert res.returncode == 1
    assert "input not found" in res.stderr and "Traceback" not in res.stderr


def test_train_without_a_dataset_says_so(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"paths": {"root": str(tmp_path / "state")}}))
    res = subprocess.run([*CLI, "train", "--config", str(cfg)], capture_output=True, text=True)
    assert res.returncode == 1
    assert "no dataset yet" in res.stdout
