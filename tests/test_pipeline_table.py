"""The pipeline table is the one place that says what runs: a copy of it with a toy stage runs items through that
stage (daemon pools, wake-ups, consumer locks, spool folders, 'work pending') without any other module knowing it."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from ttsft_daemon.config import config_from_dict
from ttsft_daemon.core.spool import Item
from ttsft_daemon.daemon.service import Daemon
from ttsft_daemon.pipeline import DATASET, PIPELINE, SPOOLS, StageSpec, consumer_of, downstream, recording_spools
from ttsft_daemon.pipeline import stage as stage_spec
from ttsft_daemon.stages.base import Output, Result, SpoolStage, StageContext

SEEN: list[str] = []
SEEN_LOCK = threading.Lock()


class LoudnessStage(SpoolStage):
    """A toy stage: measures the original's peak and passes the original on, with the peak in its sidecar."""

    def process(self, item: Item, ctx: StageContext) -> Result:
        meta = item.meta()
        samples, _ = sf.read(str(item.payload), dtype="float32")
        tmp = ctx.tmp_output(self.target, item.id, "wav")
        tmp.write_bytes(item.payload.read_bytes())
        return Result([Output(self.target, item.id, tmp, "wav", {**meta, "peak": float(np.abs(samples).max())})])


class SinkStage(SpoolStage):
    """A toy last stage: records what reached it in a file of its own."""

    def process(self, item: Item, ctx: StageContext) -> Result:
        meta = item.meta()
        out = self.spool.layout.root / "sink.jsonl"
        with SEEN_LOCK:
            SEEN.append(item.id)
            with open(out, "a") as fh:
                fh.write(json.dumps({"id": item.id, "peak": meta["peak"]}) + "\n")
        return Result()


def test_the_table_derives_the_spools_and_the_wakeup_chain() -> None:
    assert tuple(s.target for s in PIPELINE[:-1]) == SPOOLS
    assert [downstream(s.name) for s in PIPELINE] == [s.name for s in PIPELINE[1:]] + ["train"]
    assert consumer_of("clips") == "speaker" and consumer_of("audio") == "transcribe"
    assert recording_spools() == ("raw", "vocals")
    assert stage_spec("speaker").source == stage_spec("segment").target


def test_a_toy_stage_added_to_a_copy_of_the_table_runs_items(tmp_path: Path) -> None:
    table = (
        stage_spec("ingest"),
        StageSpec("loudness", "raw", "measured", f"{__name__}:LoudnessStage", 60.0),
        StageSpec("sink", "measured", DATASET, f"{__name__}:SinkStage", 60.0),
    )
    config = config_from_dict({"paths": {"root": str(tmp_path / "state")},
                                "inbox": {"settle_seconds": 0, "rescan_seconds": 0.5},
                                "training": {"enabled": False}, "logging": {"journal": "off"}})
    inbox = tmp_path / "state" / "inbox"
    inbox.mkdir(parents=True)
    for i, amp in enumerate((0.1, 0.5)):
        t = np.arange(16000) / 16000
        sf.write(str(inbox / f"tone{i}.wav"), (amp * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    daemon = Daemon(config, exit_when_idle=True, pipeline=table)
    assert daemon.run() == 0
    rows = [json.loads(line) for line in (tmp_path / "state" / "sink.jsonl").read_text().splitlines()]
    assert sorted(round(r["peak"], 2) for r in rows) == [0.1, 0.5]
    assert len({r["id"] for r in rows}) == 2  # each recording exactly once
    spool = tmp_path / "state" / "spool"
    assert (spool / "measured").is_dir() and not list((spool / "measured").iterdir())
    assert not (spool / "clips").exists()  # only the table's spools exist
    assert not list(inbox.iterdir())


class CrashingStage(SpoolStage):
    """A stage whose worker loop itself fails (a bug outside any item)."""

    def candidates(self) -> list[Item]:
        raise RuntimeError("a bug in the worker loop")


def test_a_crashed_worker_thread_makes_the_daemon_unhealthy(tmp_path: Path) -> None:
    """A crashed worker keeps its heartbeat, which goes stale: WATCHDOG=1 is withheld and systemd restarts us."""
    table = (StageSpec("crashing", "things", DATASET, f"{__name__}:CrashingStage", 60.0),)
    config = config_from_dict({"paths": {"root": str(tmp_path / "state")},
                               "daemon": {"heartbeat_timeout_seconds": 1.0}, "training": {"enabled": False},
                               "logging": {"journal": "off"}})
    daemon = Daemon(config, pipeline=table)
    daemon.spool.layout.ensure()
    daemon.start_workers()
    try:
        pool = daemon.pools["crashing"]
        pool.join(10)
        assert not any(t.is_alive() for t in pool.threads)
        deadline = time.monotonic() + 10
        while "ttsft-crashing-0" not in daemon.health.stale() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "ttsft-crashing-0" in daemon.health.stale()
    finally:
        daemon.stop_workers(timeout=30)
