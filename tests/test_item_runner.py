"""The item runner and the back-off policy, in-process: claim, commit, retry with back-off, quarantine, a step
recorded before a crash, and waiting (Deferred). Milliseconds each: no daemon, no models."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from ttsft_daemon.config import config_from_dict
from ttsft_daemon.core.backoff import Backoff
from ttsft_daemon.core.inbox import InboxScanner
from ttsft_daemon.core.items import ItemRunner
from ttsft_daemon.core.rates import StageRates
from ttsft_daemon.core.spool import Item, Spool
from ttsft_daemon.errors import Deferred, RejectedInput
from ttsft_daemon.pipeline import DATASET, StageSpec
from ttsft_daemon.stages.base import Output, Result, SpoolStage, StageContext, StageEnv

TABLE = (StageSpec("double", "in", "out", f"{__name__}:ScriptedStage", 5.0),
         StageSpec("sink", "out", DATASET, f"{__name__}:ScriptedStage", 5.0))


class ScriptedStage(SpoolStage):
    """Doubles the payload's bytes into `out`; `script` says what each call does instead (raise, wait)."""

    def __init__(self, spec: StageSpec, env: StageEnv) -> None:
        super().__init__(spec, env)
        self.script: list[BaseException | None] = []
        self.calls = 0

    def process(self, item: Item, ctx: StageContext) -> Result:
        self.calls += 1
        step = self.script.pop(0) if self.script else None
        if step is not None:
            raise step
        tmp = ctx.tmp_output(self.target, item.id, "bin")
        tmp.write_bytes(item.payload.read_bytes() * 2)
        meta = item.meta()
        return Result([Output(self.target, item.id, tmp, "bin", meta)],
                      lambda job: setattr(job, "segments_saved", job.segments_saved + 1))


@pytest.fixture()
def env(tmp_path: Path) -> StageEnv:
    config = config_from_dict({"paths": {"root": str(tmp_path)},
                               "daemon": {"max_attempts": 2, "retry_backoff_seconds": 60}})
    spool = Spool(tmp_path, ("in", "out"))
    spool.layout.ensure()
    return StageEnv(config, spool, InboxScanner(spool.layout.inbox, config.inbox), Backoff(), TABLE)


def _put(spool: Spool, item_id: str, data: bytes = b"ab") -> Item:
    tmp = spool.tmp_payload("in", item_id, "wav")
    tmp.write_bytes(data)
    return spool.commit_item("in", item_id, tmp, "wav", {"job_id": "job1", "clip_id": item_id, "voice": "v"})


def _runner(env: StageEnv, stage: ScriptedStage) -> ItemRunner:
    assert env.backoff is not None
    return ItemRunner(stage, env.config, env.spool, threading.Event(), env.backoff, pipeline=TABLE)


def _stage(env: StageEnv) -> ScriptedStage:
    stage = TABLE[0].build(env)
    assert isinstance(stage, ScriptedStage)
    return stage


def test_success_commits_the_output_records_the_step_and_removes_the_input(env: StageEnv) -> None:
    item = _put(env.spool, "c1")
    assert _runner(env, _stage(env)).run(item)
    (out,) = env.spool.items("out")
    assert out.payload.read_bytes() == b"abab" and not item.exists() and not item.payload.exists()
    job = env.spool.read_job("job1")
    assert job is not None and job.done == {"double-c1": True} and job.segments_saved == 1 and not job.attempts
    assert not list((env.spool.layout.spool("out")).glob(".tmp.*"))


def test_finished_items_measure_the_stage_rate_for_status(env: StageEnv) -> None:
    """Audio seconds per busy second, times the workers: what `status` divides the waiting audio by."""
    rates = StageRates()
    assert env.backoff is not None
    runner = ItemRunner(_stage(env), env.config, env.spool, threading.Event(), env.backoff, pipeline=TABLE,
                        rates=rates)
    for i, seconds in enumerate((3.0, 5.0)):
        tmp = env.spool.tmp_payload("in", f"r{i}", "wav")
        tmp.write_bytes(b"ab")
        assert runner.run(env.spool.commit_item("in", f"r{i}", tmp, "wav", {"job_id": "job1", "duration": seconds}))
    assert runner.run(_put(env.spool, "no-duration"))  # an item without a duration is not counted
    one = rates.snapshot({})["double"]
    assert one > 8.0 / 60  # 8 s of audio in far less than a minute of work
    assert rates.snapshot({"double": 3})["double"] == pytest.approx(3 * one, rel=1e-2)
    assert "sink" not in rates.snapshot({})
    rates.record("sink", None, 1.0)
    rates.record("sink", 2.0, 0.0)
    assert "sink" not in rates.snapshot({})


def test_a_held_claim_is_left_alone(env: StageEnv) -> None:
    item = _put(env.spool, "c1")
    claim = env.spool.try_claim("double-c1")
    assert claim is not None
    stage = _stage(env)
    assert not _runner(env, stage).run(item) and stage.calls == 0 and item.exists()
    claim.release()


def test_a_failure_is_retried_after_its_back_off_then_quarantined(env: StageEnv) -> None:
    item = _put(env.spool, "c1")
    stage = _stage(env)
    stage.script = [OSError("flaky disk"), OSError("flaky again")]
    runner = _runner(env, stage)
    assert runner.run(item)  # attempt 1 failed (a retry is work done: the pool rescans)
    assert env.backoff is not None and not env.backoff.ready("double-c1")
    assert not runner.run(item) and stage.calls == 1  # still backing off: not even tried
    env.backoff.clear("double-c1")
    assert runner.run(item)  # attempt 2 failed
    job = env.spool.read_job("job1")
    assert job is not None and job.attempts["double-c1"]["count"] == 2
    assert "flaky again" in job.last_error("double-c1")
    env.backoff.clear("double-c1")
    assert runner.run(item) and stage.calls == 2  # attempt 3 > max_attempts: quarantined without running
    report = json.loads(next(env.spool.layout.failed.glob("*.error.json")).read_text())
    assert report["reason"] == "too many failed attempts" and "flaky again" in report["detail"]
    job = env.spool.read_job("job1")
    assert job is not None and job.clips == {"c1": "rejected"} and not item.exists()


def test_a_rejected_input_is_quarantined_at_once(env: StageEnv) -> None:
    item = _put(env.spool, "c1")
    stage = _stage(env)
    stage.script = [RejectedInput("other_speaker", "similarity 0.31")]
    assert _runner(env, stage).run(item)
    report = json.loads(next(env.spool.layout.failed.glob("*.error.json")).read_text())
    assert (report["stage"], report["reason"], report["detail"]) == ("double", "other_speaker", "similarity 0.31")
    assert sorted(p.name for p in env.spool.layout.failed.iterdir() if not p.name.endswith(".json")) == ["c1.wav"]


def test_a_step_recorded_before_a_crash_is_not_redone(env: StageEnv) -> None:
    item = _put(env.spool, "c1")
    env.spool.update_job("job1", lambda job: job.done.__setitem__("double-c1", True))
    stage = _stage(env)
    assert _runner(env, stage).run(item)
    assert stage.calls == 0 and not item.exists() and env.spool.items("out") == []


def test_a_deferred_item_waits_without_spending_attempts(env: StageEnv) -> None:
    item = _put(env.spool, "c1")
    stage = _stage(env)
    stage.script = [Deferred("target speaker unknown", 60.0)] * 5
    runner = _runner(env, stage)
    assert env.backoff is not None
    for _ in range(5):
        assert not runner.run(item)
        assert env.backoff.is_deferred("double-c1")
        env.backoff.wake_deferred("double-")
        assert not env.backoff.is_deferred("double-c1")
    job = env.spool.read_job("job1")
    assert job is not None and job.attempts["double-c1"]["count"] == 0
    assert item.exists() and not list(env.spool.layout.failed.glob("*.error.json"))
    assert runner.run(item) and env.spool.items("out")  # decided at last: processed normally


class WokenMidCall(Deferred):
    """Deferred, raised after another worker has already woken the stage's waiting items (the speaker stage's
    race: one worker decides the target while another, on stale state, decides its clip must wait)."""


def test_a_wake_during_the_call_that_defers_is_not_lost(env: StageEnv) -> None:
    item = _put(env.spool, "c1")
    stage = _stage(env)
    assert env.backoff is not None
    backoff = env.backoff
    real_process = stage.process

    def process(item: Item, ctx: StageContext) -> Result:
        if stage.calls == 0:
            stage.calls += 1
            backoff.wake_deferred("double-")  # what it waits for arrives while it decides to wait
            raise WokenMidCall("target speaker unknown", 60.0)
        return real_process(item, ctx)

    stage.process = process  # type: ignore[method-assign]
    runner = _runner(env, stage)
    assert runner.run(item)  # not parked for 60 s: tried again at once
    assert not backoff.is_deferred("double-c1") and backoff.ready("double-c1")
    assert runner.run(item) and env.spool.items("out")


def test_back_off_disk_full_delays_double_up_to_a_bound() -> None:
    b = Backoff()
    delays = [b.disk_full_delay("k", 1.0) for _ in range(7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 16.0, 16.0]
    b.clear("k")
    assert b.disk_full_delay("k", 1.0) == 1.0
