"""The inbox side of the daemon: the bound on recordings in flight, and settled files taken without a rescan."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tests.daemon_support import log_events, start_daemon, wait_for, write_config
from ttsft_daemon.config import config_from_dict
from ttsft_daemon.core.inbox import InboxScanner
from ttsft_daemon.core.spool import Spool
from ttsft_daemon.pipeline import stage as stage_spec
from ttsft_daemon.stages.base import StageEnv
from ttsft_daemon.stages.ingest import IngestStage


def test_ingest_offers_no_more_recordings_than_the_in_flight_bound(tmp_path: Path) -> None:
    cfg = config_from_dict({"paths": {"root": str(tmp_path)}, "inbox": {"settle_seconds": 0},
                            "daemon": {"max_jobs_in_flight": 3}})
    sp = Spool(tmp_path)
    sp.layout.ensure()
    for i in range(10):
        (sp.layout.inbox / f"f{i}.wav").write_bytes(b"x")
    stage = IngestStage(stage_spec("ingest"), StageEnv(cfg, sp, InboxScanner(sp.layout.inbox, cfg.inbox)))
    assert len(stage.candidates()) == 3
    tmp = sp.tmp_payload("raw", "job1", "wav")
    tmp.write_bytes(b"x")
    sp.commit_item("raw", "job1", tmp, "wav", {"job_id": "job1"})
    assert len(stage.candidates()) == 2


def test_a_dropped_file_is_taken_once_settled_without_waiting_for_a_rescan(tmp_path: Path) -> None:
    root = tmp_path / "state"
    cfg = write_config(tmp_path / "c.yaml", root, inbox={"settle_seconds": 1.0, "rescan_seconds": 600})
    (root / "inbox").mkdir(parents=True)
    log = tmp_path / "d.log"
    p = start_daemon(cfg, log, exit_when_idle=False)
    try:
        assert wait_for(lambda: any(e.get("event") == "stage ready" and e.get("stage") == "ingest"
                                    for e in log_events(log)), 120)
        (root / "inbox" / "notes.mp3").write_text("not audio")  # quarantined at ingest: enough to see it taken
        assert wait_for(lambda: list((root / "failed").glob("*.error.json")), 120)
        report = json.loads(next((root / "failed").glob("*.error.json")).read_text())
        assert report["stage"] == "ingest"
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0
