"""The daemon as a real process on a real state root: pipeline, exactly-once, kill -9, settling, signals, sd_notify."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import soundfile as sf

from tests.daemon_support import (
    check_invariants,
    done_lines,
    log_events,
    metadata_rows,
    run_daemon,
    start_daemon,
    wait_for,
    write_config,
)
from ttsft_daemon.demo.audio import SENTENCES, make_recording, write_media


@pytest.fixture(scope="session")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Twelve short real recordings (bundled Piper voice, pauses between sentences), mp3 and wav."""
    folder = tmp_path_factory.mktemp("recordings")
    out = []
    for i in range(12):
        texts = [SENTENCES[(2 * i) % len(SENTENCES)], SENTENCES[(2 * i + 1) % len(SENTENCES)]]
        rec = make_recording(texts, pause_range=(0.7, 1.0), music_db=None, seed=i, sr=22050)
        kind = "mp3" if i % 2 else "wav"
        path = folder / f"talk {i:02d}.{kind}"
        write_media(rec, path, kind)
        out.append(path)
    return out


def _drop(files: list[Path], inbox: Path) -> None:
    inbox.mkdir(parents=True, exist_ok=True)
    for f in files:
        tmp = inbox / f".{f.name}.part"
        tmp.write_bytes(f.read_bytes())
        tmp.rename(inbox / f.name)


@pytest.mark.slow
def test_pipeline_builds_a_dataset_and_quarantines_bad_files(tmp_path: Path, recordings: list[Path]) -> None:
    root = tmp_path / "state"
    cfg = write_config(tmp_path / "c.yaml", root)
    _drop(recordings[:2], root / "inbox")
    (root / "inbox" / "not audio.mp3").write_text("this is a text file")
    (root / "inbox" / "notes.txt").write_text("left alone")
    (root / "inbox" / "alice").mkdir()
    _drop(recordings[2:3], root / "inbox" / "alice")
    log = tmp_path / "daemon.log"
    assert run_daemon(cfg, log) == 0, log.read_text()[-3000:]
    assert (root / "inbox" / "notes.txt").exists()  # unsupported extension: left alone
    (root / "inbox" / "notes.txt").unlink()
    result = check_invariants(root, n_inputs=4)
    assert result["problems"] == []
    assert (root / "dataset" / "alice" / "metadata.csv").exists()
    assert len(metadata_rows(root)) >= 4
    err = json.loads(next((root / "failed").glob("not audio.mp3.error.json")).read_text())
    assert err["stage"] == "ingest" and err["reason"] == "not a readable media file"
    status = json.loads(subprocess.run(
        [os.sys.executable, "-m", "ttsft_daemon", "status", "--config", str(cfg), "--json"],
        capture_output=True, text=True, check=True).stdout)
    assert set(status["stages"]) >= {"inbox", "raw", "vocals", "audio", "transcribed", "failed"}
    assert status["voices"]["alice"]["clips"] >= 1
    assert status["voices"]["default"]["training"]["state"] == "waiting"
    # the rates the daemon measured (audio seconds per wall second), which `status` turns into "done in about"
    rates = json.loads((root / "daemon.json").read_text())["rates"]
    assert {"separate", "segment", "speaker", "transcribe"} <= set(rates) and all(r > 0 for r in rates.values())
    events = log_events(log)
    for stage in ("ingest", "separate", "segment", "transcribe", "accept"):
        lines = [e for e in events if e.get("event") == f"{stage} done"]
        assert lines and all("duration_s" in e and e["stage"] == stage for e in lines)


@pytest.mark.slow
def test_exactly_once_with_several_workers_and_two_daemons(tmp_path: Path, recordings: list[Path]) -> None:
    root = tmp_path / "state"
    cfg = write_config(tmp_path / "c.yaml", root, daemon={
        "workers": {"ingest": 2, "separate": 2, "segment": 2, "transcribe": 2, "accept": 2},
        "retry_backoff_seconds": 0.5, "max_jobs_in_flight": 12})
    _drop(recordings, root / "inbox")
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [start_daemon(cfg, log) for log in logs]
    for p in procs:
        assert p.wait(900) == 0
    result = check_invariants(root, n_inputs=len(recordings))
    assert result["problems"] == []
    events = log_events(logs[0]) + log_events(logs[1])
    for stage in ("ingest", "separate", "segment", "transcribe", "accept"):
        items = done_lines(events, stage)
        assert len(items) == len(set(items)), f"{stage} processed an item twice"
    assert len(done_lines(events, "ingest")) == len(recordings)
    # both processes did real work
    assert done_lines(log_events(logs[0]), "transcribe") and done_lines(log_events(logs[1]), "transcribe")


def _fresh_copy(src: Path, k: int, folder: Path) -> Path:
    """The same speech with bytes of its own (the daemon deduplicates identical content by design)."""
    data, sr = sf.read(str(src), dtype="float32")
    out = folder / f"refill {k:03d}.wav"
    sf.write(str(out), data * (1.0 - 0.002 * (k % 100 + 1)), sr, subtype="PCM_16")
    return out


def _upstream_recordings(root: Path) -> int:
    """Recordings not yet segmented: in the inbox, spool/raw or spool/vocals."""
    inbox = [p for p in (root / "inbox").glob("*") if p.is_file() and not p.name.startswith(".")]
    return len(inbox) + sum(1 for s in ("raw", "vocals") for p in (root / "spool" / s).glob("*.json"))


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_and_duplicates_nothing(tmp_path: Path, recordings: list[Path]) -> None:
    root = tmp_path / "state"
    cfg = write_config(tmp_path / "c.yaml", root, daemon={"max_attempts": 100, "retry_backoff_seconds": 0.2})
    inputs = list(recordings[:6])
    _drop(inputs, root / "inbox")
    refills = tmp_path / "refills"
    refills.mkdir()
    rng = random.Random(1234)
    log = tmp_path / "daemon.log"
    kills = 0
    for i in range(80):
        # keep work in every stage however fast this machine is, so the kills cannot run out of work to hit
        if _upstream_recordings(root) < 2:
            extra = _fresh_copy(recordings[len(inputs) % len(recordings)], len(inputs), refills)
            inputs.append(extra)
            _drop([extra], root / "inbox")
        p = start_daemon(cfg, log)
        # mostly early kills (start-up, ingest, separation); every fifth run lives long enough for model loads
        time.sleep(rng.uniform(6.0, 12.0) if i % 5 == 4 else rng.uniform(0.5, 4.0))
        if p.poll() is not None:
            continue  # it drained everything before this kill: refill and start again
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        kills += 1
        if kills >= 25:
            break
    assert kills >= 20, f"only {kills} kills in 80 starts"
    assert run_daemon(cfg, log) == 0
    result = check_invariants(root, n_inputs=len(inputs))
    assert result["problems"] == [], result
    assert result["rows"] > 0
    stages_seen = {str(e["event"]).removesuffix(" done") for e in log_events(log)
                   if str(e.get("event", "")).endswith(" done")}
    assert {"ingest", "segment", "transcribe"} <= stages_seen


def test_a_slowly_written_file_is_taken_only_when_complete(tmp_path: Path, recordings: list[Path]) -> None:
    root = tmp_path / "state"
    cfg = write_config(tmp_path / "c.yaml", root, inbox={"settle_seconds": 2.0, "rescan_seconds": 0.2},
                       daemon={"workers": {"separate": 1}})
    data = recordings[0].read_bytes()
    (root / "inbox").mkdir(parents=True)
    log = tmp_path / "daemon.log"
    p = start_daemon(cfg, log, exit_when_idle=False)
    try:
        target = root / "inbox" / "slow.wav"
        with open(target, "wb") as fh:
            chunks = [data[i:i + len(data) // 8 + 1] for i in range(0, len(data), len(data) // 8 + 1)]
            for chunk in chunks:  # ~5 s of writing, pauses shorter than settle_seconds
                fh.write(chunk)
                fh.flush()
                time.sleep(0.6)
                assert target.exists(), "taken while still being written"
        assert wait_for(lambda: not target.exists(), timeout=60)
        jobs = [json.loads(j.read_text()) for j in (root / "checkpoints").glob("*.json")]
        assert len(jobs) == 1
        assert jobs[0]["source"]["sha256"] == hashlib.sha256(data).hexdigest()
        assert jobs[0]["source"]["size"] == len(data)
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(120) == 0


def _notify_socket(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    return sock, path


def _drain(sock: socket.socket, into: list[str], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            into.append(sock.recv(4096).decode())
        except TimeoutError:
            pass


def test_sd_notify_ready_status_watchdog_stopping(tmp_path: Path) -> None:
    root = tmp_path / "state"
    cfg = write_config(tmp_path / "c.yaml", root)
    sock, path = _notify_socket(tmp_path)
    messages: list[str] = []
    try:
        p = start_daemon(cfg, tmp_path / "d.log", exit_when_idle=False,
                         env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
        _drain(sock, messages, 8.0)
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0
        _drain(sock, messages, 0.5)
    finally:
        sock.close()
    text = "\n".join(messages)
    assert "READY=1" in text
    assert "WATCHDOG=1" in text
    assert any(m.startswith("STATUS=") and "raw=0" in m for m in text.splitlines())
    assert "STOPPING=1" in text
    assert text.index("READY=1") < text.index("STOPPING=1")


def test_sighup_with_a_broken_config_keeps_running(tmp_path: Path) -> None:
    root = tmp_path / "state"
    cfg = write_config(tmp_path / "c.yaml", root)
    log = tmp_path / "d.log"
    p = start_daemon(cfg, log, exit_when_idle=False)
    try:
        assert wait_for(lambda: any(e.get("event") == "starting" for e in log_events(log)), 60)
        good = cfg.read_text()
        cfg.write_text(good + "\nbogus_section: {}\n")
        p.send_signal(signal.SIGHUP)
        assert wait_for(lambda: any(e.get("event", "").startswith("reload refused") for e in log_events(log)), 30)
        assert p.poll() is None
        cfg.write_text(good.replace("rescan_seconds: 0.5", "rescan_seconds: 0.7"))
        p.send_signal(signal.SIGHUP)
        assert wait_for(lambda: any(e.get("event") == "reloading configuration" for e in log_events(log)), 30)
        assert p.poll() is None
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0
