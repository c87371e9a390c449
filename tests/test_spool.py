from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ttsft_daemon.core import atomic as spool_mod
from ttsft_daemon.core.jobs import JobRecord
from ttsft_daemon.core.spool import (
    TMP_PREFIX,
    Spool,
    _create_reservation,
    atomic_write_bytes,
    atomic_write_json,
    tmp_name,
)


@pytest.fixture
def sp(tmp_path: Path) -> Spool:
    s = Spool(tmp_path)
    s.layout.ensure()
    return s


def _commit(sp: Spool, spool: str, item_id: str, data: bytes = b"RIFF....", ext: str = "wav") -> None:
    tmp = sp.tmp_payload(spool, item_id, ext)
    tmp.write_bytes(data)
    sp.commit_item(spool, item_id, tmp, ext, {"job_id": "j1"})


def test_items_are_listed_only_once_committed(sp: Spool) -> None:
    tmp = sp.tmp_payload("audio", "c1", "wav")
    tmp.write_bytes(b"x")
    assert sp.items("audio") == []  # a temporary is invisible
    os.replace(tmp, sp.layout.spool("audio") / "c1.wav")
    assert sp.items("audio") == []  # payload without sidecar: not committed yet
    (sp.layout.spool("audio") / "c1.json").write_text(json.dumps({"payload": "c1.wav"}))
    assert [i.id for i in sp.items("audio")] == ["c1"]


def test_raw_items_keep_their_extension(sp: Spool) -> None:
    _commit(sp, "raw", "abc", b"ID3", "mp3")
    (item,) = sp.items("raw")
    assert item.payload.name == "abc.mp3"
    assert item.meta()["payload"] == "abc.mp3"


def test_remove_item_removes_sidecar_first_and_both(sp: Spool) -> None:
    _commit(sp, "vocals", "j1")
    (item,) = sp.items("vocals")
    sp.remove_item(item)
    assert sp.items("vocals") == [] and not item.payload.exists()


def _hold_claim(root: str, key: str, ready: mp.synchronize.Event, release: mp.synchronize.Event) -> None:
    s = Spool(Path(root))
    c = s.try_claim(key)
    assert c is not None
    ready.set()
    release.wait(30)
    c.release()


def test_claims_exclude_other_processes_and_threads(sp: Spool) -> None:
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_claim, args=(str(sp.layout.root), "k", ready, release))
    p.start()
    try:
        assert ready.wait(30)
        assert sp.try_claim("k") is None  # held by the other process
    finally:
        release.set()
        p.join(30)
    c = sp.try_claim("k")
    assert c is not None
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(sp.try_claim("k")))
    t.start()
    t.join()
    assert got == [None]  # another thread of the same process cannot take it either
    c.release(done=True)
    assert not (sp.layout.locks / "k.lock").exists()


def test_update_job_is_serialised_across_threads(sp: Spool) -> None:
    def bump() -> None:
        for _ in range(25):
            sp.update_job("j", lambda job: setattr(job, "segments_saved", job.segments_saved + 1))

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    job = sp.read_job("j")
    assert job is not None and job.segments_saved == 100


def test_quarantine_moves_files_and_writes_reason(sp: Spool) -> None:
    f = sp.layout.inbox / "bad file.mp3"
    f.write_bytes(b"not audio")
    err = sp.quarantine([f], "ingest", "not a readable media file", "moov atom not found")
    assert not f.exists()
    assert (sp.layout.failed / "bad file.mp3").read_bytes() == b"not audio"
    rep = json.loads(err.read_text())
    assert rep["stage"] == "ingest" and rep["reason"] == "not a readable media file"
    # the same name again does not overwrite the first
    f.write_bytes(b"second")
    sp.quarantine([f], "ingest", "again")
    assert (sp.layout.failed / "bad file.mp3").read_bytes() == b"not audio"
    assert len(list(sp.layout.failed.glob("*.error.json"))) == 2


def test_quarantine_never_follows_a_symlink(sp: Spool, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    link = sp.layout.inbox / "evil.mp3"
    link.symlink_to(secret)
    err = sp.quarantine([link], "ingest", "symbolic link")
    assert secret.read_text() == "private"
    assert not link.is_symlink()
    assert json.loads(err.read_text())["files"][0]["symlink_to"] == str(secret)
    assert not (sp.layout.failed / "evil.mp3").exists()


def test_cleanup_removes_temporaries_of_dead_processes_only(sp: Spool) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    live = subprocess.Popen(["sleep", "60"])
    try:
        live_start = spool_mod._start_time(live.pid)
        host = spool_mod._HOST
        folder = sp.layout.spool("audio")
        stale = folder / f"{TMP_PREFIX}{host}.{dead_pid}-123.abcd.c1.wav"
        reused = folder / f"{TMP_PREFIX}{host}.{live.pid}-1.abcd.c4.wav"  # a live pid, but another process
        running = folder / f"{TMP_PREFIX}{host}.{live.pid}-{live_start}.abcd.c5.wav"
        mine = tmp_name(folder / "c2.wav")
        other_host = folder / f"{TMP_PREFIX}otherhost.{dead_pid}-1.abcd.c3.wav"
        at_root = sp.layout.root / f"{TMP_PREFIX}{host}.{dead_pid}-123.abcd.daemon.json"
        for f in (stale, reused, running, mine, other_host, at_root):
            f.write_bytes(b"x")
        assert sp.cleanup_temporaries() == 3
        assert not stale.exists() and not reused.exists() and not at_root.exists()
        assert running.exists() and mine.exists() and other_host.exists()
    finally:
        live.kill()
        live.wait()


def test_atomic_write_never_leaves_a_partial_file(sp: Spool) -> None:
    dest = sp.layout.root / "x.json"
    atomic_write_bytes(dest, b"old")
    spool_mod.set_fault(1, "enospc")
    try:
        with pytest.raises(OSError):
            atomic_write_bytes(dest, b"new")
    finally:
        spool_mod.set_fault(0)
    assert dest.read_bytes() == b"old"
    assert [p.name for p in sp.layout.root.iterdir() if p.name.startswith(TMP_PREFIX)] == []


def test_a_job_is_finished_by_whichever_update_comes_last() -> None:
    # A segment step redone after a failed job write (full disk) can be recorded after its clips were accepted.
    job = JobRecord("j", clips={"a": "accepted", "b": "rejected"}, segmented=False)
    job.finish_if_complete()
    assert not job.manifest_created
    job.segmented = True
    job.finish_if_complete()
    assert job.manifest_created
    waiting = JobRecord("w", clips={"a": "accepted", "b": "transcribed"}, segmented=True)
    waiting.finish_if_complete()
    assert not waiting.manifest_created


def test_a_job_record_of_the_previous_release_loads_and_keeps_unknown_keys(sp: Spool) -> None:
    old = {"job_id": "0123456789abcdef", "ingested": True, "separated": True, "segmented": True, "segments_saved": 2,
           "transcribed_count": 1, "accepted_count": 0, "rejected_count": 0, "manifest_created": False,
           "clips": {"0123456789abcdef-000000000": "audio", "0123456789abcdef-000004000": "transcribed"},
           "attempts": {"transcribe-x": {"count": 1, "last_error": "boom"}}, "done": {"segment-y": True},
           "training": {"epoch": 0, "last_checkpoint": None}, "created": 1.0, "updated": 2.0, "voice": "anna",
           "source": {"name": "a.mp3"}, "duration": 12.5, "spleeter": True, "a_future_key": [1, 2]}
    atomic_write_json(sp.job_path("0123456789abcdef"), old)
    job = sp.read_job("0123456789abcdef")
    assert job is not None and job.schema == 1 and job.voice == "anna" and job.last_error("transcribe-x") == "boom"
    sp.update_job(job.job_id, lambda j: j.set_clip("0123456789abcdef-000000000", "accepted"))
    saved = json.loads(sp.job_path(job.job_id).read_text())
    assert saved["schema"] == 2 and saved["a_future_key"] == [1, 2] and saved["accepted_count"] == 1
    assert {k for k in old if k != "updated"} <= set(saved)


def test_a_reservation_left_by_a_crashed_quarantine_is_cleared_at_start(sp: Spool, tmp_path: Path) -> None:
    """A real process dies at the quarantine's first write, after reserving the name: the restart clears the
    reservation (its owner is dead), finishes nothing it need not, and the name is usable again."""
    f = sp.layout.spool("raw") / "talk.mp3"
    f.write_bytes(b"x")
    script = (
        "import sys; from pathlib import Path; from ttsft_daemon.core import atomic;"
        "from ttsft_daemon.core.spool import Spool;"
        "sp = Spool(Path(sys.argv[1])); atomic.set_fault(1);"
        "sp.quarantine([sp.layout.spool('raw') / 'talk.mp3'], 'ingest', 'bad', extra={'item': 'i1'})"
    )
    code = subprocess.run([sys.executable, "-c", script, str(sp.layout.root)], cwd=Path(__file__).parent.parent,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}).returncode
    assert code == 77
    left = sorted(p.name for p in sp.layout.failed.iterdir())
    assert ".talk.mp3.reserved" in left, left
    assert json.loads((sp.layout.failed / ".talk.mp3.reserved").read_text())["owner"]
    # one of a live process (this one) stays; an untagged one stays only while young
    alive = sp.layout.failed / ".other.mp3.reserved"
    assert _create_reservation(alive) and not _create_reservation(alive)
    empty = sp.layout.failed / ".empty.mp3.reserved"
    empty.write_bytes(b"")
    sp.cleanup_temporaries()
    left = sorted(p.name for p in sp.layout.failed.iterdir())
    assert left == [".empty.mp3.reserved", ".other.mp3.reserved"], left
    os.utime(empty, (0, 0))
    sp.cleanup_temporaries()
    assert sorted(p.name for p in sp.layout.failed.iterdir()) == [".other.mp3.reserved"]
    err = sp.quarantine([f], "ingest", "bad", extra={"item": "i1"})
    assert err.name == "talk.mp3.error.json" and (sp.layout.failed / "talk.mp3").read_bytes() == b"x"
