"""Issue 8: faults. A full disk (injected, and real on a size-limited tmpfs), a crash at every file operation
(a sweep in the manner of SQLite's crash tests) and a separation worker killed mid-request.

Fault injection lives in ttsft_daemon/core/atomic.py: with TTSFT_FAULT_AT=N the N-th file operation of the process
either raises ENOSPC (TTSFT_FAULT_MODE=enospc) or kills the process on the spot with os._exit(77)
(TTSFT_FAULT_MODE=exit). The daemon runs as a real process throughout.

The crash sweep takes every 6th point by default (a few minutes on 2 cores); TTSFT_SWEEP_STRIDE=1 sweeps every
point (about 70 for its three inputs, ~9 minutes), TTSFT_SWEEP_PARALLEL sets how many trials run at once.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_support import REPO, check_invariants, log_events, wait_for, write_config
from ttsft_daemon.core import atomic as spool_mod
from ttsft_daemon.core.spool import Spool
from ttsft_daemon.demo.audio import SENTENCES, Recording, make_music, make_recording, write_media

SR = 22050
EXIT_INJECTED = 77  # spool.py's os._exit code at an injected crash
# The sweep's stride: 1 sweeps every crash point; CI uses a larger one to stay within a few minutes.
SWEEP_STRIDE = int(os.environ.get("TTSFT_SWEEP_STRIDE", "6"))
SWEEP_PARALLEL = int(os.environ.get("TTSFT_SWEEP_PARALLEL", "2"))
SWEEP_MAX_POINTS = 400


def fast_config(path: Path, root: Path, **sections: dict[str, Any]) -> Path:
    """Separation off, one Whisper worker, no DNSMOS: the smallest real pipeline."""
    base: dict[str, dict[str, Any]] = {
        "inbox": {"settle_seconds": 0.3, "rescan_seconds": 0.3},
        "daemon": {"retry_backoff_seconds": 0.3, "workers": {"transcribe": 1}},
        "quality": {"dnsmos": False},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return write_config(path, root, **base)


def run_daemon_process(config: Path, log: Path, env: dict[str, str] | None = None, timeout: float = 300) -> int:
    """Run `ttsft-daemon run --exit-when-idle` to its end; its exit status (77 when an injected crash struck)."""
    cmd = [sys.executable, "-m", "ttsft_daemon", "run", "--config", str(config), "--exit-when-idle"]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    full_env.pop("NOTIFY_SOCKET", None)  # only a test that listens passes one
    full_env.update(env or {})
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env,
                                cwd=str(REPO))
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


VOICE_FOLDER_PREFIX = "voice-"  # an input in a folder named voice-X is dropped into inbox/X/ (voice X)


def drop(files: list[Path], inbox: Path) -> None:
    """Copy `files` into `inbox` the way a careful uploader does: hidden name, then rename."""
    for f in files:
        voice = f.parent.name.removeprefix(VOICE_FOLDER_PREFIX) if f.parent.name.startswith(VOICE_FOLDER_PREFIX) \
            else ""
        folder = inbox / voice if voice else inbox
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{f.name}.part"
        shutil.copyfile(f, tmp)
        tmp.rename(folder / f.name)


@pytest.fixture(scope="module")
def small_inputs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A one-sentence recording (one accepted clip), a short music clip (one rejected clip), a text 'mp3'."""
    folder = tmp_path_factory.mktemp("fault-inputs")
    speech = folder / "talk.wav"
    rec = make_recording([SENTENCES[0]], pause_range=(0.5, 0.6), music_db=None, seed=1, sr=SR)
    write_media(rec, speech, "wav")
    # The jingle goes to a voice of its own: in the speech's voice, 3 s of it against 3 s of speech would leave
    # speaker selection unable to tell who the target is (the clips would wait for an enrollment, by design).
    (folder / f"{VOICE_FOLDER_PREFIX}jingles").mkdir()
    music = folder / f"{VOICE_FOLDER_PREFIX}jingles" / "jingle.mp3"
    bed = make_music(3.0, SR, seed=2)
    write_media(Recording(speech=bed, music=None, mix=bed, sr=SR, sentences=[], pauses=[]), music, "mp3")
    text = folder / "notes.mp3"
    text.write_text("not audio at all\n")
    return [speech, music, text]


# --------------------------------------------------------------------------------------------- crash sweep


@dataclass
class Trial:
    point: int
    died: bool
    problems: list[str]
    recovery_exit: int | None = None
    log_tail: str = ""


def crash_trial(base: Path, point: int, inputs: list[Path]) -> Trial:
    """Fresh state; the daemon dies at its `point`-th file operation; a normal restart must finish the work."""
    trial_dir = base / f"point-{point:03d}"
    root = trial_dir / "state"
    drop(inputs, root / "inbox")
    config = fast_config(trial_dir / "c.yaml", root, daemon={"max_attempts": 5})
    log = trial_dir / "daemon.log"
    code = run_daemon_process(config, log, env={"TTSFT_FAULT_MODE": "exit", "TTSFT_FAULT_AT": str(point)})
    if code == 0:
        return Trial(point, died=False, problems=check_invariants(root, len(inputs))["problems"])
    if code != EXIT_INJECTED:
        return Trial(point, died=True, problems=[f"the faulty run exited {code}"], log_tail=_tail(log))
    recovery = run_daemon_process(config, log)
    problems = check_invariants(root, len(inputs))["problems"]
    if recovery != 0:
        problems.append(f"the restart exited {recovery}")
    if "Traceback" in log.read_text(errors="replace"):
        problems.append("traceback in the log")
    trial = Trial(point, died=True, problems=problems, recovery_exit=recovery)
    if problems:
        trial.log_tail = _tail(log)
    else:
        shutil.rmtree(trial_dir)  # keep the disk use of a long sweep small; failures are kept for a post-mortem
    return trial


def _tail(log: Path, lines: int = 25) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def sweep(base: Path, inputs: list[Path], stride: int, parallel: int) -> list[Trial]:
    """Crash at points 1, 1+stride, ... until a run with the fault armed finishes without dying."""
    trials: list[Trial] = []
    points = iter(range(1, SWEEP_MAX_POINTS, stride))
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        while True:
            batch = list(itertools.islice(points, parallel))
            if not batch:
                break
            done = list(pool.map(lambda p: crash_trial(base, p, inputs), batch))
            trials += done
            if any(not t.died for t in done):
                break
    return trials


@pytest.mark.slow
def test_crash_at_every_file_operation_loses_and_duplicates_nothing(tmp_path: Path,
                                                                    small_inputs: list[Path]) -> None:
    trials = sweep(tmp_path, small_inputs, SWEEP_STRIDE, SWEEP_PARALLEL)
    crashed = [t for t in trials if t.died]
    completed = [t for t in trials if not t.died]
    bad = [t for t in trials if t.problems]
    summary = f"{len(crashed)} crash points swept (stride {SWEEP_STRIDE}); first clean run at " \
              f"{completed[0].point if completed else None}"
    print(summary)
    assert completed, f"the sweep never reached the end of the work: {summary}"
    assert len(crashed) >= 10, summary
    assert not bad, "\n\n".join(f"crash at file operation {t.point}: {t.problems}\n{t.log_tail}" for t in bad[:3])


# --------------------------------------------------------------------------------------------- spool probes
# The spool's own part of crash safety, probed directly and quickly: an interrupted quarantine or removal must
# leave either the input (redone later) or a complete result once the next start has repaired it, and a long file
# name must not break a quarantine.


def interrupted_quarantine_problems(base: Path) -> list[str]:
    """Quarantine an inbox file and a spool item with ENOSPC injected at each file operation, then redo."""
    problems: list[str] = []
    for at in range(1, 5):
        sp = Spool(base / f"quarantine-{at}")
        sp.layout.ensure()
        clip = sp.layout.spool("transcribed") / "c1.wav"
        clip.write_bytes(b"RIFF")
        sidecar = sp.layout.spool("transcribed") / "c1.json"
        sidecar.write_text('{"payload": "c1.wav", "clip_id": "c1"}')
        files, extra = [clip, sidecar], {"item": "c1", "job_id": "j1"}
        spool_mod.set_fault(at, "enospc")
        try:
            sp.quarantine(files, "accept", "quality gate", "test", extra)
        except OSError:
            pass
        finally:
            spool_mod.set_fault(0)
        if [i.id for i in sp.items("transcribed")] == ["c1"]:
            sp.quarantine(files, "accept", "quality gate", "test", extra)  # the redo of the interrupted step
        sp.cleanup_temporaries()
        reports = list(sp.layout.failed.glob("*.error.json"))
        left = sorted(os.listdir(sp.layout.spool("transcribed")))
        if len(reports) != 1 or left or not (sp.layout.failed / "c1.wav").exists():
            problems.append(f"fault at operation {at}: reports {[r.name for r in reports]}, left in spool {left}")
    return problems


def interrupted_inbox_quarantine_problems(base: Path) -> list[str]:
    """Quarantine a dropped file with ENOSPC injected at each file operation, redo while it is still in the inbox,
    restart: one complete report, the file beside it, no pending marker."""
    problems: list[str] = []
    for at in range(1, 5):
        sp = Spool(base / f"inbox-quarantine-{at}")
        sp.layout.ensure()
        bad = sp.layout.inbox / "bad.mp3"
        bad.write_text("not audio")
        args = ([bad], "ingest", "not a readable media file", "test", {"item": "default--1"})
        spool_mod.set_fault(at, "enospc")
        try:
            sp.quarantine(*args)
        except OSError:
            pass
        finally:
            spool_mod.set_fault(0)
        if bad.exists():
            sp.quarantine(*args)
        sp.cleanup_temporaries()
        reports = [json.loads(r.read_text()) for r in sp.layout.failed.glob("*.error.json")]
        markers = [n for n in os.listdir(sp.layout.failed) if n.startswith(".pending")]
        if len(reports) != 1 or not reports[0].get("complete") or markers:
            problems.append(f"fault at operation {at}: reports {reports}, markers {markers}")
    return problems


def interrupted_removal_problems(base: Path) -> list[str]:
    """Remove a committed item with ENOSPC injected at each of its removals; a restart's cleanup must finish it."""
    problems: list[str] = []
    for at in (1, 2):
        sp = Spool(base / f"removal-{at}")
        sp.layout.ensure()
        tmp = sp.tmp_payload("audio", "c1", "wav")
        tmp.write_bytes(b"RIFF")
        item = sp.commit_item("audio", "c1", tmp, "wav", {"clip_id": "c1"})
        spool_mod.set_fault(at, "enospc")
        try:
            sp.remove_item(item)
        except OSError:
            pass
        finally:
            spool_mod.set_fault(0)
        if sp.items("audio"):
            continue  # nothing removed: the step is redone
        sp.cleanup_temporaries()
        left = sorted(os.listdir(sp.layout.spool("audio")))
        if left:
            problems.append(f"fault at removal {at}: {left} stay in spool/audio forever")
    return problems


def long_name_problems(base: Path) -> list[str]:
    sp = Spool(base / "long-name")
    sp.layout.ensure()
    bad = sp.layout.inbox / ("x" * 251 + ".mp3")
    bad.write_text("not audio")
    try:
        sp.quarantine([bad], "ingest", "not a readable media file", "test", {"item": "default--1"})
    except OSError as exc:
        return [f"a 255-byte name cannot be quarantined: {exc.strerror}"]
    return [] if len(list(sp.layout.failed.glob("*.error.json"))) == 1 else ["no error file"]


def test_an_interrupted_quarantine_leaves_the_input_or_its_report(tmp_path: Path) -> None:
    assert interrupted_quarantine_problems(tmp_path) == []


def test_an_interrupted_quarantine_of_a_dropped_file_is_completed_by_the_restart(tmp_path: Path) -> None:
    assert interrupted_inbox_quarantine_problems(tmp_path) == []


def test_an_interrupted_removal_leaves_nothing_behind_after_a_restart(tmp_path: Path) -> None:
    assert interrupted_removal_problems(tmp_path) == []


def test_a_bad_file_with_a_255_byte_name_can_be_quarantined(tmp_path: Path) -> None:
    assert long_name_problems(tmp_path) == []


# --------------------------------------------------------------------------------------------- disk full


@dataclass
class EnospcRun:
    point: int
    exit_code: int
    problems: list[str]
    hit: str  # the operation the injected ENOSPC hit ("" when the run never reached it)
    stage: str  # the stage that reported it as disk full ("" for the daemon's own status file)


def enospc_run(base: Path, point: int, inputs: list[Path], backoff: float = 0.3,
               notify: str | None = None) -> EnospcRun:
    trial_dir = base / f"enospc-{point:03d}"
    root = trial_dir / "state"
    drop(inputs, root / "inbox")
    config = fast_config(trial_dir / "c.yaml", root, daemon={"retry_backoff_seconds": backoff})
    log = trial_dir / "daemon.log"
    env = {"TTSFT_FAULT_MODE": "enospc", "TTSFT_FAULT_AT": str(point)}
    if notify:
        env["NOTIFY_SOCKET"] = notify
    code = run_daemon_process(config, log, env=env)
    events = log_events(log)
    injected = [e for e in events if "injected: no space left" in str(e.get("error", ""))]
    hit = str(injected[0]["error"]).rsplit("(", 1)[-1].rstrip(")") if injected else ""
    if hit.startswith("remove "):
        # unlink never fails for want of space; an injected failure there leaves a half-removed item, which
        # the next start cleans up: check the state after that restart
        code = code or run_daemon_process(config, log)
    problems = check_invariants(root, len(inputs))["problems"]
    stage = str(injected[0].get("stage", "")) if injected else ""
    if injected and injected[0]["event"] not in ("disk full; will retry", "cannot publish status"):
        problems.append(f"reported as {injected[0]['event']!r}")
    if "Traceback" in log.read_text(errors="replace"):
        problems.append("traceback in the log")
    info = json.loads((root / "daemon.json").read_text())
    if info.get("disk_full"):
        problems.append("daemon.json still says disk_full after the run")
    return EnospcRun(point, code, problems, hit, stage)


@pytest.mark.slow
def test_injected_disk_full_in_every_stage_is_retried_and_corrupts_nothing(tmp_path: Path,
                                                                           small_inputs: list[Path]) -> None:
    """ENOSPC at file operation 1, 4, 7 ... of a one-recording run: each stage's block of writes is at least
    four operations long, so every stage's outputs are hit at least once."""
    talk = small_inputs[:1]
    runs: list[EnospcRun] = []
    with ThreadPoolExecutor(max_workers=SWEEP_PARALLEL) as pool:
        points = iter(range(1, SWEEP_MAX_POINTS, 3))
        while True:
            done = list(pool.map(lambda p: enospc_run(tmp_path, p, talk), list(itertools.islice(points, 2))))
            runs += done
            if any(not r.hit for r in done):
                break  # the run ended before its N-th file operation: every point is covered
    assert all(r.exit_code == 0 for r in runs), [(r.point, r.exit_code) for r in runs]
    problems = [f"ENOSPC at operation {r.point} ({r.hit}): {p}" for r in runs for p in r.problems]
    assert problems == []
    stages_hit = {r.stage for r in runs if r.stage}
    assert stages_hit >= {"ingest", "separate", "segment", "transcribe", "accept"}, [(r.point, r.hit) for r in runs]


def _notify_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    return sock


@pytest.mark.slow
def test_status_reports_an_injected_disk_full_while_it_lasts(tmp_path: Path, small_inputs: list[Path]) -> None:
    """One ENOSPC on an item, then a 6 s back-off: the STATUS= line and daemon.json say so meanwhile."""
    sock_path = tmp_path / "notify.sock"
    sock = _notify_socket(sock_path)
    messages: list[str] = []
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                messages.append(sock.recv(4096).decode())

    listener = threading.Thread(target=listen, name="notify-listener")
    listener.start()
    try:
        for point in range(2, 8):  # the first operations are the ingest commits and the first status write
            run = enospc_run(tmp_path, point, small_inputs[:1], backoff=6.0, notify=str(sock_path))
            if run.stage:
                break
        assert run.stage, "the injected ENOSPC never hit an item"
    finally:
        stop.set()
        listener.join()
        sock.close()
    assert run.problems == []
    statuses = [m for m in "\n".join(messages).splitlines() if m.startswith("STATUS=")]
    assert any("DISK FULL" in m for m in statuses), statuses
    assert "DISK FULL" not in statuses[-1]


@contextlib.contextmanager
def size_limited_tmpfs(path: Path, size_mb: int) -> Iterator[str]:
    """Mount a tmpfs of `size_mb` at `path`; yields "" when mounted, else why it cannot be."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        yield "mounting a size-limited tmpfs needs root"
        return
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(path)],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        yield f"mount -t tmpfs is not permitted here: {proc.stderr.strip() or proc.returncode}"
        return
    try:
        yield ""
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, timeout=60).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=60)


def fill_up(folder: Path, leave_bytes: int) -> Path:
    """A file taking all free space of `folder`'s filesystem but `leave_bytes`."""
    filler = folder / "filler.bin"
    st = os.statvfs(folder)
    size = st.f_bavail * st.f_frsize - leave_bytes
    with open(filler, "wb") as fh:
        os.posix_fallocate(fh.fileno(), 0, size)
    return filler


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "leave_kb"), [("ingest", 96), ("separate", 200)])
def test_a_real_full_disk_is_reported_and_the_run_completes_once_space_is_back(
        tmp_path: Path, small_inputs: list[Path], stage: str, leave_kb: int) -> None:
    """The state root on a 32 MB tmpfs filled up but `leave_kb`: 96 kB stops the ingest copy (160 kB), 200 kB lets
    it through but stops the decode of the voice (320 kB, written by ffmpeg)."""
    mount = tmp_path / "small-disk"
    with size_limited_tmpfs(mount, size_mb=32) as why_not:
        if why_not:
            pytest.skip(why_not)
        root = mount / "state"
        drop(small_inputs[:1], root / "inbox")
        config = fast_config(tmp_path / "c.yaml", root)
        filler = fill_up(mount, leave_bytes=leave_kb * 1024)  # room for job and status files, not for audio
        log = tmp_path / "daemon.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "ttsft_daemon", "run", "--config", str(config),
                                     "--exit-when-idle"], stdout=fh, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=str(REPO),
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            assert wait_for(lambda: any(e.get("event") == "disk full; will retry" for e in log_events(log)), 120)
            assert wait_for(lambda: _status_of(config)["daemon"].get("disk_full") is True, 60), _status_of(config)
            status = _status_of(config)
            waiting_in = {"ingest": "inbox", "separate": "raw"}[stage]
            assert status["daemon"]["running"] and status["stages"][waiting_in] == 1, status["stages"]
            text = subprocess.run([sys.executable, "-m", "ttsft_daemon", "status", "--config", str(config)],
                                  capture_output=True, text=True, check=True, cwd=str(REPO)).stdout
            assert "disk is full" in text
            assert proc.poll() is None, "the daemon must wait for space, not exit"
            def full_retries() -> int:
                return sum(1 for e in log_events(log) if e.get("event") == "disk full; will retry")

            assert wait_for(lambda: full_retries() >= 2, 120), "retried once, then never again"
            filler.unlink()
            assert proc.wait(300) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        events = log_events(log)
        assert {e.get("stage") for e in events if e.get("event") == "disk full; will retry"} == {stage}
        assert not [e for e in events if e.get("event") == "rejected"], "a full disk is not the input's fault"
        assert "Traceback" not in log.read_text()
        result = check_invariants(root, n_inputs=1)
        assert result["problems"] == [] and result["rows"] == 1
        assert json.loads((root / "daemon.json").read_text())["disk_full"] is False


def _status_of(config: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "ttsft_daemon", "status", "--config", str(config), "--json"],
                         capture_output=True, text=True, check=True, timeout=120, cwd=str(REPO)).stdout
    status: dict[str, Any] = json.loads(out)
    return status


# --------------------------------------------------------------------------------------------- worker crash


class WorkerKiller:
    """SIGKILLs the daemon's Spleeter worker whenever it serves a separation request (a decoded input is in
    work/ and the worker has said it is ready), until disarmed."""

    def __init__(self, log: Path, workdir: Path) -> None:
        self.log = log
        self.workdir = workdir
        self.killed: list[int] = []
        self.armed = threading.Event()
        self.armed.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spleeter-killer", daemon=True)
        self._thread.start()

    def _ready_pids(self) -> list[int]:
        return [int(e["pid"]) for e in log_events(self.log) if e.get("event") == "spleeter worker ready"]

    def _request_in_flight(self) -> bool:
        try:
            return any(n.endswith(".stereo.wav") for n in os.listdir(self.workdir))
        except FileNotFoundError:
            return False

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            if not self.armed.is_set() or not self._request_in_flight():
                continue
            time.sleep(0.3)  # the decode is done; the worker has the request
            for pid in self._ready_pids():
                if pid not in self.killed and self._request_in_flight():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                        self.killed.append(pid)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.mark.slow
def test_a_killed_separation_worker_is_retried_then_quarantined_and_the_daemon_stays_up(
        tmp_path: Path, small_inputs: list[Path]) -> None:
    root = tmp_path / "state"
    # skip_music_free off: a chunk found music-free is answered in half a second, before the killer can act.
    config = fast_config(tmp_path / "c.yaml", root,
                         separation={"enabled": True, "chunk_seconds": 30.0, "skip_music_free": False},
                         daemon={"max_attempts": 2, "retry_backoff_seconds": 0.5})
    log = tmp_path / "daemon.log"
    (root / "work").mkdir(parents=True)
    killer = WorkerKiller(log, root / "work")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "ttsft_daemon", "run", "--config", str(config)], stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(REPO), env=env)
    try:
        drop(small_inputs[:1], root / "inbox")
        assert wait_for(lambda: any(e.get("event") == "rejected" for e in log_events(log)), 600), \
            log.read_text()[-3000:]
        killer.armed.clear()
        assert proc.poll() is None, "the daemon must survive its worker's deaths"
        # still up and able to separate: a new worker serves the next recording
        second = tmp_path / "second.wav"
        rec = make_recording([SENTENCES[4]], pause_range=(0.5, 0.6), music_db=None, seed=9, sr=SR)
        write_media(rec, second, "wav")
        drop([second], root / "inbox")
        assert wait_for(lambda: any(e.get("event") == "accept done" for e in log_events(log)), 600), \
            log.read_text()[-3000:]
    finally:
        killer.stop()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    events = log_events(log)
    retries = [e for e in events if e.get("event") == "failed, will retry" and e.get("stage") == "separate"]
    assert len(retries) == 2, [e.get("error") for e in retries]
    assert all("WorkerDied" in e["error"] and "Spleeter worker" in e["error"] for e in retries)
    assert retries[1]["retry_in_s"] > retries[0]["retry_in_s"], "back-off grows"
    assert len(killer.killed) >= 2
    (error,) = [json.loads(p.read_text()) for p in (root / "failed").glob("*.error.json")]
    assert error["stage"] == "separate" and error["reason"] == "too many failed attempts"
    assert "Spleeter worker" in error["detail"] and error["source"] == "talk.wav"
    jobs = {j["source"]["name"]: j for j in (json.loads(p.read_text()) for p in (root / "checkpoints").glob("*.json"))}
    assert jobs["talk.wav"]["failed"] == {"stage": "separate", "reason": "too many failed attempts"}
    assert jobs["second.wav"]["spleeter"] is True and jobs["second.wav"]["manifest_created"]
    assert [e.get("pid") for e in events if e.get("event") == "starting"] == [proc.pid], "one daemon process"
    assert proc.returncode == 0
