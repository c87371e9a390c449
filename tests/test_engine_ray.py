"""The Ray engine (engine.kind: ray) end to end: a real Ray cluster of two nodes on this host, the real daemon, real
Spleeter, speaker encoder and Whisper in the cluster's actors.

- the dataset is the local engine's, exactly (same clips, same audio bytes, same transcripts and scores);
- a Ray worker process killed in the middle of a separation and of a transcription: Ray restarts the actor and
  retries the call, and the dataset is still exactly the local one (nothing lost, nothing doubled);
- the daemon killed in the middle of the run: its actors end with it, and the restarted daemon finishes the job
  with the same dataset;
- a packed Whisper pass (the transcription's remote unit when clips are packed) gives on an actor exactly what it
  gives in the daemon.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import missing
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

pytestmark = pytest.mark.slow

ACTOR_CLASSES = ("SeparateActor", "SpeakerActor", "TranscribeActor")


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A head node and a second node (each its own raylet with 2 logical CPUs) on this host; its address."""
    try:
        from ray.cluster_utils import Cluster
    except ImportError:
        pytest.skip(missing("ray (pip install 'ttsft-daemon[ray]'; scripts/install.sh installs it)"))
    c = Cluster(initialize_head=True, connect=False,
                head_node_args={"num_cpus": 2, "include_dashboard": False, "resources": {"head_node": 1}})
    try:
        c.add_node(num_cpus=2, resources={"second_node": 1})
        c.wait_for_nodes()
        yield str(c.address)
    finally:
        c.shutdown()


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """23 s of the bundled Piper voice over music (six sentences), as mp3."""
    path = tmp_path_factory.mktemp("ray-input") / "talk.mp3"
    rec = make_recording(SENTENCES[:6], pause_range=(0.6, 1.0), music_db=-14.0, seed=5, sr=44100)
    write_media(rec, path, "mp3")
    return path


def _setup(base: Path, recording: Path, address: str | None) -> tuple[Path, Path]:
    root = base / "state"
    engine: dict[str, Any] = {"kind": "local"}
    if address is not None:
        pool = {"cpus": 0.5}  # one actor per stage per node: 1.5 of each node's 2 CPUs
        engine = {"kind": "ray", "ray": {"address": address, "separate": pool, "speaker": pool, "transcribe": pool}}
    # pack_seconds 0: which clips share a packed pass depends on when they arrive, so only unpacked transcription
    # gives the same transcripts on every run, whatever the engine (the packed pass itself is compared below).
    cfg = write_config(base / "c.yaml", root, separation={"enabled": True}, transcription={"pack_seconds": 0},
                       engine=engine)
    (root / "inbox").mkdir(parents=True)
    (root / "inbox" / recording.name).write_bytes(recording.read_bytes())
    return root, cfg


def _dataset(root: Path) -> dict[str, Any]:
    """Everything the dataset holds: rows, the bytes of every clip, and what was rejected."""
    return {
        "rows": sorted("|".join(row) for row in metadata_rows(root)),
        "wavs": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.glob("dataset/*/wavs/*.wav")},
        "rejected": sorted(p.name for p in (root / "failed").glob("*.error.json")),
    }


def _actor_processes() -> dict[int, str]:
    """pid -> process title of this host's Ray actor processes of the engine ("ray::TranscribeActor.judge" while
    it runs a call, "ray::TranscribeActor" when idle)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            title = (proc / "cmdline").read_bytes().split(b"\0")[0].decode("utf-8", "replace").strip()
        except OSError:
            continue
        if title.startswith("ray::") and title[5:].split(".")[0] in ACTOR_CLASSES:
            found[int(proc.name)] = title
    return found


def _kill_when_busy(method: str, daemon: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGKILL the actor process that is running `method` ("TranscribeActor.judge"), as soon as one does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and daemon.poll() is None:
        for pid, title in _actor_processes().items():
            if title == f"ray::{method}":
                os.kill(pid, signal.SIGKILL)
                return pid
        time.sleep(0.02)
    raise AssertionError(f"no actor ran {method} while the daemon worked")


@pytest.fixture(scope="module")
def local_dataset(tmp_path_factory: pytest.TempPathFactory, recording: Path) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("local-engine")
    root, cfg = _setup(base, recording, None)
    log = base / "daemon.log"
    assert run_daemon(cfg, log, timeout=900) == 0, log.read_text()[-3000:]
    assert check_invariants(root, n_inputs=1)["problems"] == []
    dataset = _dataset(root)
    assert len(dataset["rows"]) >= 4, dataset
    return dataset


def _no_actors_left() -> None:
    """The actors of a finished (or killed) daemon end with its Ray job."""
    assert wait_for(lambda: not _actor_processes(), timeout=120, interval=0.5), _actor_processes()


def test_ray_engine_gives_the_local_engines_dataset(tmp_path: Path, cluster: str, recording: Path,
                                                    local_dataset: dict[str, Any]) -> None:
    _no_actors_left()
    root, cfg = _setup(tmp_path, recording, cluster)
    log = tmp_path / "daemon.log"
    assert run_daemon(cfg, log, timeout=900) == 0, log.read_text()[-3000:]
    assert check_invariants(root, n_inputs=1)["problems"] == []
    assert _dataset(root) == local_dataset
    events = log_events(log)
    ready = [e for e in events if e.get("event") == "ray actor ready"]
    assert {e["stage"] for e in ready} == {"separate", "speaker", "transcribe"}
    assert len({e["node"] for e in ready}) == 2, "the actors should be spread over both nodes"
    # The models ran in the actors only: the daemon itself loaded none.
    assert not [e for e in events if e.get("event") in ("whisper model loaded", "spleeter worker ready")]
    _no_actors_left()


def test_killing_ray_workers_mid_call_loses_and_doubles_nothing(tmp_path: Path, cluster: str, recording: Path,
                                                                 local_dataset: dict[str, Any]) -> None:
    _no_actors_left()
    root, cfg = _setup(tmp_path, recording, cluster)
    log = tmp_path / "daemon.log"
    daemon = start_daemon(cfg, log)
    try:
        killed = [_kill_when_busy("SeparateActor.separate", daemon, timeout=600),
                  _kill_when_busy("TranscribeActor.judge", daemon, timeout=600)]
        assert daemon.wait(900) == 0, log.read_text()[-3000:]
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert not any(pid in _actor_processes() for pid in killed)
    assert check_invariants(root, n_inputs=1)["problems"] == []
    assert _dataset(root) == local_dataset
    events = log_events(log)
    for stage in ("separate", "speaker", "transcribe", "accept"):
        items = done_lines(events, stage)
        assert items and len(items) == len(set(items)), f"{stage} committed an item twice"
    # Ray itself retried both calls on the restarted actors: the daemon saw no failure.
    assert not [e for e in events if e.get("event") == "failed, will retry"]
    _no_actors_left()


def test_the_daemon_killed_mid_run_finishes_after_a_restart(tmp_path: Path, cluster: str, recording: Path,
                                                             local_dataset: dict[str, Any]) -> None:
    _no_actors_left()
    root, cfg = _setup(tmp_path, recording, cluster)
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    daemon = start_daemon(cfg, first)
    try:
        assert wait_for(lambda: bool(done_lines(log_events(first), "transcribe")) or daemon.poll() is not None,
                        timeout=600, interval=0.05)
        assert daemon.poll() is None, "the daemon finished before it could be killed"
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert len(metadata_rows(root)) < len(local_dataset["rows"]), "killed too late to test anything"
    _no_actors_left()  # the dead daemon's actors ended with its Ray job
    assert run_daemon(cfg, second, timeout=900) == 0, second.read_text()[-3000:]
    assert check_invariants(root, n_inputs=1)["problems"] == []
    assert _dataset(root) == local_dataset
    events = log_events(first) + log_events(second)
    for stage in ("ingest", "separate", "speaker", "transcribe", "accept"):
        items = done_lines(events, stage)
        assert len(items) == len(set(items)), f"{stage} committed an item twice"
    _no_actors_left()


PACKED_PASS = """
import sys
from ttsft_daemon.config import config_from_dict
from ttsft_daemon.demo.audio import SENTENCES, make_recording
from ttsft_daemon.engine.local import LocalTranscriber
from ttsft_daemon.engine.ray_engine import RayEngine
from ttsft_daemon.text.transcription import Transcript, to_whisper_rate

config = config_from_dict({"separation": {"enabled": False}, "speaker": {"enabled": False}, "engine": {
    "kind": "ray", "ray": {"address": sys.argv[1], "transcribe": {"actors": 1, "cpus": 0.5}}}})
clips = [to_whisper_rate(make_recording([text], music_db=None, seed=i, sr=22050).mix, 22050)
         for i, text in enumerate(SENTENCES[:3])]
local = LocalTranscriber(config).packed_pass(clips)
engine = RayEngine(config)
try:
    remote_worker = engine.transcriber(config, 600.0)
    remote_worker.open()
    remote = remote_worker.packed_pass(clips)
finally:
    engine.close()
assert sum(isinstance(t, Transcript) for t, _ in local) >= 2, local
print("SAME" if remote == local else f"DIFFERENT\\n{local}\\n{remote}")
"""


def test_a_packed_pass_on_an_actor_equals_the_local_one(cluster: str) -> None:
    _no_actors_left()
    proc = subprocess.run([sys.executable, "-c", PACKED_PASS, cluster], capture_output=True, text=True,
                          timeout=600, cwd=str(Path(__file__).resolve().parents[1]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "SAME", proc.stdout[-3000:]
    _no_actors_left()
