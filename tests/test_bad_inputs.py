"""Issue 8: every bad input ends in failed/ with a clear reason or is skipped with one log line, and the good files
of the same run are processed. One real daemon run (separation off, real Whisper) serves the whole corpus of
tests/badinputs.py; each case is then asserted on its own.

As root the daemon could read a file whatever its mode, so the corpus daemon runs as root *without* the
capabilities that bypass file permissions (setpriv), which makes the unreadable-file case real.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests import badinputs as bi
from tests.daemon_support import (
    REPO,
    check_invariants,
    daemon_command,
    daemon_env,
    log_events,
    metadata_rows,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow

DROPPED_CAPS = "-dac_override,-dac_read_search"
OLD_ATIME_NS = 1_000_000_000_000  # 1970-01-01 00:16:40


# --------------------------------------------------------------------------------------------- helpers


def unprivileged_prefix(scratch: Path) -> tuple[list[str], str]:
    """A command prefix under which the daemon cannot read a mode-000 file, or ([], why that is impossible)."""
    if os.geteuid() != 0:
        return [], ""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return [], "running as root without setpriv: root reads any file, so no file is unreadable to the daemon"
    probe = scratch / "mode-000.probe"
    probe.write_text("secret")
    probe.chmod(0)
    prefix = [setpriv, "--bounding-set", DROPPED_CAPS, "--"]
    try:
        blocked = subprocess.run([*prefix, "cat", str(probe)], capture_output=True, timeout=30).returncode != 0
        works = subprocess.run([*prefix, sys.executable, "-c", "import ttsft_daemon.daemon.service"],
                               capture_output=True, timeout=120, cwd=str(REPO)).returncode == 0
    finally:
        probe.unlink()
    if not (blocked and works):
        return [], "cannot drop CAP_DAC_OVERRIDE here (setpriv failed): root reads any file"
    return prefix, ""


def atime_is_updated(scratch: Path) -> bool:
    """Whether reading a file with an old access time updates it here (relatime/strictatime, not noatime)."""
    control = scratch / "atime.control"
    control.write_bytes(b"x" * 100)
    os.utime(control, (1_000_000, control.stat().st_mtime))
    control.read_bytes()
    return control.stat().st_atime > 1_000_000


def file_facts(path: Path) -> tuple[str, int, float]:
    """(sha256, mtime, atime as it was before this function read the file)."""
    st = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mtime_ns, st.st_atime


def inbox_entries(inbox: Path) -> set[str]:
    """Every entry left under the inbox (files, folders, links), as paths relative to it."""
    out: set[str] = set()
    for dirpath, dirs, files in os.walk(inbox):
        for name in [*dirs, *files]:
            out.add(os.path.relpath(os.path.join(dirpath, name), inbox))
    return out


@dataclass
class CorpusRun:
    root: Path
    cases: list[bi.Case]
    exit_code: int
    log_text: str
    events: list[dict[str, Any]]
    status: dict[str, Any]
    inbox_left: set[str]
    errors: dict[str, dict[str, Any]]  # failed/<name>.error.json -> content
    failed_entries: set[str]
    jobs: dict[str, dict[str, Any]]  # source rel -> job record
    rows: list[list[str]]
    invariants: dict[str, Any]
    unreadable_skip: str = ""
    link_target_before: tuple[str, int, float] = ("", 0, 0.0)
    link_target_after: tuple[str, int, float] = ("", 0, 0.0)
    atime_checked: bool = False
    slow_upload_sha: str = ""
    slow_upload_taken_early: list[str] = field(default_factory=list)
    deleted_during_copy: bool = False

    def job(self, case: bi.Case) -> dict[str, Any]:
        assert case.rel in self.jobs, f"no job for {case.rel!r}; jobs: {sorted(self.jobs)}"
        return self.jobs[case.rel]

    def error_for_input(self, case: bi.Case) -> dict[str, Any]:
        """The error file of a whole input: named after it (inbox stage) or naming it as its source."""
        matches = [e for e in self.errors.values() if not _is_clip(e) and _about_input(e, case.basename)]
        assert len(matches) == 1, f"{len(matches)} error files for {case.rel!r}"
        return matches[0]

    def clip_errors(self, job_id: str) -> list[dict[str, Any]]:
        return [e for e in self.errors.values() if e.get("job_id") == job_id and _is_clip(e)]

    def events_naming(self, rel: str) -> list[dict[str, Any]]:
        path = str(self.root / "inbox" / rel)
        return [e for e in self.events if e.get("path") == path]


def _about_input(error: dict[str, Any], basename: str) -> bool:
    """An ingest report names the dropped file it moved; later stages name the recording as their source."""
    if error.get("stage") == "ingest":
        return any(f.get("from") == basename for f in error.get("files", []))
    return error.get("source") == basename


def _is_clip(error: dict[str, Any]) -> bool:
    return "-" in str(error.get("item", "")) and error.get("stage") in ("speaker", "transcribe", "accept")


def _start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=daemon_env(),
                                cwd=str(REPO))


def _status_json(config: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "ttsft_daemon", "status", "--config", str(config), "--json"],
                         capture_output=True, text=True, check=True, timeout=120, cwd=str(REPO)).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def _watch_slow_upload(path: Path, writer: threading.Thread, into: list[str]) -> threading.Thread:
    """Record any moment the file disappears from the inbox while its writer still writes."""
    def watch() -> None:
        while writer.is_alive():
            if not os.path.lexists(path):
                into.append(f"gone at {time.monotonic():.2f}")
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, name="slow-upload-watch", daemon=True)
    thread.start()
    return thread


def _count_expected_inputs(cases: list[bi.Case]) -> int:
    kinds = (bi.Outcome.PROCESSED, bi.Outcome.FAILED, bi.Outcome.CLIPS_REJECTED, bi.Outcome.DUPLICATE)
    return sum(1 for c in cases if c.outcome in kinds)


def _set_aside_expected_leftovers(root: Path, cases: list[bi.Case], aside: Path) -> None:
    """Move what is rightly left behind (ignored entries, the quarantined zero-byte file) out of the state root,
    so that check_invariants() sees only what must be clean."""
    aside.mkdir(exist_ok=True)
    for case in cases:
        if case.outcome in (bi.Outcome.IGNORED, bi.Outcome.LEFT):
            entry = root / "inbox" / case.rel
            if os.path.lexists(entry):
                shutil.move(str(entry), str(aside / case.name))
    empty = root / "failed" / "empty.mp3"
    if empty.exists() and empty.stat().st_size == 0:
        empty.rename(aside / "empty.mp3")


# --------------------------------------------------------------------------------------------- the run


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> CorpusRun:
    base = tmp_path_factory.mktemp("corpus")
    root = base / "state"
    inbox = root / "inbox"
    prefix, unreadable_skip = unprivileged_prefix(base)
    cases = [c for c in bi.CASES if not (c.needs == "unprivileged" and unreadable_skip)]
    material = bi.Material(bi.SpeechBank(), base / "outside")
    bi.build_corpus(inbox, material, cases)
    slow_bytes = bi.slow_upload_bytes(material.bank)
    target = bi.link_target(material)
    sha, mtime_ns, _ = file_facts(target)
    os.utime(target, ns=(OLD_ATIME_NS, mtime_ns))  # an old access time: any read renews it (unless noatime)
    target_before = (sha, mtime_ns, OLD_ATIME_NS / 1e9)
    atime_checked = atime_is_updated(base)

    config = write_config(base / "c.yaml", root, **bi.corpus_config())
    log = base / "daemon.log"
    cmd = [*prefix, *daemon_command(config)]
    proc = _start(cmd, log)
    taken_early: list[str] = []
    try:
        watch = bi.delete_when_copied(inbox / "vanishing.wav", inbox, root / "spool" / "raw", timeout=600)
        assert wait_for(lambda: any(e.get("event") == "stage ready" and e.get("stage") == "ingest"
                                    for e in log_events(log)), timeout=120), log.read_text()[-3000:]
        writer = bi.write_slowly(inbox / "slow upload.wav", slow_bytes, pieces=10, pause=0.5)
        guard = _watch_slow_upload(inbox / "slow upload.wav", writer, taken_early)
        exit_code = proc.wait(timeout=900)
        writer.join(10)
        guard.join(10)
        watch.thread.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    failed = root / "failed"
    errors = {p.name: json.loads(p.read_text()) for p in failed.glob("*.error.json")}
    jobs = {j["source"]["rel"]: j for j in (json.loads(p.read_text()) for p in (root / "checkpoints").glob("*.json"))}
    run = CorpusRun(
        root=root, cases=cases, exit_code=exit_code, log_text=log.read_text(errors="replace"),
        events=log_events(log), status=_status_json(config), inbox_left=inbox_entries(inbox), errors=errors,
        failed_entries=set(os.listdir(failed)), jobs=jobs, rows=metadata_rows(root), invariants={},
        unreadable_skip=unreadable_skip, link_target_before=target_before, link_target_after=file_facts(target),
        atime_checked=atime_checked, slow_upload_sha=hashlib.sha256(slow_bytes).hexdigest(),
        slow_upload_taken_early=taken_early, deleted_during_copy=watch.deleted_during_copy.is_set(),
    )
    _set_aside_expected_leftovers(root, cases, base / "aside")
    run.invariants = check_invariants(root, n_inputs=_count_expected_inputs(cases))
    return run


# --------------------------------------------------------------------------------------------- per case


@pytest.mark.parametrize("case", bi.CASES, ids=[c.name for c in bi.CASES])
def test_bad_input_case(corpus: CorpusRun, case: bi.Case) -> None:
    if case.needs == "unprivileged" and corpus.unreadable_skip:
        pytest.skip(corpus.unreadable_skip)
    check = {
        bi.Outcome.PROCESSED: _check_processed,
        bi.Outcome.FAILED: _check_failed,
        bi.Outcome.CLIPS_REJECTED: _check_clips_rejected,
        bi.Outcome.DUPLICATE: _check_failed,
        bi.Outcome.IGNORED: _check_ignored,
        bi.Outcome.LEFT: _check_left,
        bi.Outcome.ABANDONED: _check_abandoned,
    }[case.outcome]
    check(corpus, case)
    extra = _EXTRA_CHECKS.get(case.name)
    if extra is not None:
        extra(corpus, case)


def _check_processed(run: CorpusRun, case: bi.Case) -> None:
    job = run.job(case)
    assert case.rel not in run.inbox_left
    assert job["manifest_created"] and not job.get("failed")
    assert job["voice"] == case.voice
    accepted = [cid for cid, state in job["clips"].items() if state == "accepted"]
    assert accepted, f"{case.rel!r}: no clip accepted: {job['clips']}"
    csv = (run.root / "dataset" / case.voice / "metadata.csv").read_text().splitlines()
    in_dataset = {line.split("|")[0].removesuffix(".wav") for line in csv}
    assert set(accepted) <= in_dataset
    ingested = [e for e in run.events if e.get("event") == "ingest done" and e.get("job_id") == job["job_id"]]
    assert len(ingested) == 1, "taken more than once"


def _check_failed(run: CorpusRun, case: bi.Case) -> None:
    error = run.error_for_input(case)
    assert error["stage"] == case.stage
    assert error["reason"] == case.reason
    assert str(error["detail"]).strip(), "an error file must say what is wrong"
    assert case.rel not in run.inbox_left
    assert error["complete"] is True
    if case.stage == "ingest":
        # the input itself sits beside its error file (a link is recorded, not kept)
        (moved,) = error["files"]
        assert moved["from"] == case.basename
        if "symlink_to" not in moved:
            assert moved["name"] in run.failed_entries
    else:
        assert error.get("source") == case.basename and error.get("job_id")
        assert run.job(case).get("failed") == {"stage": case.stage, "reason": case.reason}


def _check_clips_rejected(run: CorpusRun, case: bi.Case) -> None:
    job = run.job(case)
    assert job["clips"] and set(job["clips"].values()) == {"rejected"}, job["clips"]
    assert job["manifest_created"], "a job whose last clip was rejected is finished too"
    errors = run.clip_errors(job["job_id"])
    assert sorted(e["item"] for e in errors) == sorted(job["clips"])
    for e in errors:  # music or noise is nobody's voice: the speaker stage may reject it before the gate
        assert e["reason"] in ("quality gate", "other_speaker") and e["detail"], e
        assert e["source"] == case.basename
    assert not any(r[0].startswith(job["job_id"]) for r in run.rows)


def _check_ignored(run: CorpusRun, case: bi.Case) -> None:
    rel = case.rel.rstrip("/")
    assert rel in run.inbox_left, "an ignored entry stays where the user put it"
    lines = [e for e in run.events_naming(rel) if e.get("event") == "ignored inbox entry"]
    assert len(lines) == 1, f"{len(lines)} log lines for {rel!r}"
    assert case.reason in lines[0]["reason"]
    assert not any(case.basename in json.dumps(e, ensure_ascii=False) for e in run.errors.values())


def _check_left(run: CorpusRun, case: bi.Case) -> None:
    assert case.rel in run.inbox_left
    assert not run.events_naming(case.rel)
    assert not any(case.basename in json.dumps(e, ensure_ascii=False) for e in run.errors.values())


def _check_abandoned(run: CorpusRun, case: bi.Case) -> None:
    assert run.deleted_during_copy, "the test deleted the file too late: it was no longer being copied"
    assert case.rel not in run.inbox_left and case.rel not in run.jobs
    assert not any(case.basename in json.dumps(e, ensure_ascii=False) for e in run.errors.values())
    lines = [e for e in run.events_naming(case.rel) if "removed while it was being taken" in str(e.get("event"))]
    assert len(lines) == 1
    assert not [n for n in os.listdir(run.root / "spool" / "raw") if "incoming" in n], "its partial copy was kept"


# --------------------------------------------------------------------------------------------- case specifics


def _symlink_target_untouched(run: CorpusRun, case: bi.Case) -> None:
    error = run.error_for_input(case)
    assert error["files"][0]["symlink_to"].endswith("private.wav")
    sha_before, mtime_before, atime_before = run.link_target_before
    sha_after, mtime_after, atime_after = run.link_target_after
    assert sha_before and (sha_after, mtime_after) == (sha_before, mtime_before), "the link target was modified"
    if run.atime_checked:  # this filesystem renews an old access time on every read: the daemon never read it
        assert atime_after == atime_before
    assert not any(j["source"]["sha256"] == sha_before for j in run.jobs.values()), "the target was ingested"


def _link_loop_recorded(run: CorpusRun, case: bi.Case) -> None:
    assert run.error_for_input(case)["files"][0]["symlink_to"] == case.basename


def _hour_detail(run: CorpusRun, case: bi.Case) -> None:
    assert "3600 s" in run.error_for_input(case)["detail"]


def _size_detail(run: CorpusRun, case: bi.Case) -> None:
    error = run.error_for_input(case)
    assert "2048 MB" in error["detail"] and "inbox.max_file_mb" in error["detail"]
    st = (run.root / "failed" / error["files"][0]["name"]).stat()
    assert st.st_size == 2 * 1024**3 and st.st_blocks * 512 < 1 << 20, "moved, not copied"


def _duplicate_names_first(run: CorpusRun, case: bi.Case) -> None:
    assert "dup first.wav" in run.error_for_input(case)["detail"]


def _unreadable_kept_intact(run: CorpusRun, case: bi.Case) -> None:
    moved = run.root / "failed" / run.error_for_input(case)["files"][0]["name"]
    assert stat.S_IMODE(moved.stat().st_mode) == 0
    assert moved.stat().st_size > 1000


def _slow_upload_taken_whole(run: CorpusRun, case: bi.Case) -> None:
    assert run.slow_upload_taken_early == [], "taken while still being written"
    assert run.job(case)["source"]["sha256"] == run.slow_upload_sha


def _fifo_moved(run: CorpusRun, case: bi.Case) -> None:
    assert stat.S_ISFIFO((run.root / "failed" / run.error_for_input(case)["files"][0]["name"]).lstat().st_mode)


def _long_name_shortened(run: CorpusRun, case: bi.Case) -> None:
    name = run.error_for_input(case)["files"][0]["name"]
    assert len(name.encode()) + len(".error.json") <= 255 and name.endswith(".mp3")
    assert (run.root / "failed" / name).read_text().startswith("not audio")


_EXTRA_CHECKS = {
    "symlink-outside": _symlink_target_untouched,
    "symlink-loop": _link_loop_recorded,
    "hour-over-limit": _hour_detail,
    "over-size-limit": _size_detail,
    "duplicate-second": _duplicate_names_first,
    "unreadable": _unreadable_kept_intact,
    "slow-upload": _slow_upload_taken_whole,
    "fifo": _fifo_moved,
    "bad-file-named-255-bytes": _long_name_shortened,
}


# --------------------------------------------------------------------------------------------- the whole run


def test_corpus_has_enough_cases() -> None:
    assert len(bi.CASES) >= 25
    assert len({c.name for c in bi.CASES}) == len(bi.CASES)
    assert len({c.rel for c in bi.CASES}) == len(bi.CASES)


def test_daemon_finished_without_a_traceback_or_an_error(corpus: CorpusRun) -> None:
    assert corpus.exit_code == 0, corpus.log_text[-3000:]
    assert "Traceback" not in corpus.log_text
    assert not [e for e in corpus.events if "exception" in e or "traceback" in e]
    errors = [e for e in corpus.events if e.get("level") in ("error", "critical")]
    assert errors == [], errors[:3]
    assert all(line.startswith("{") for line in corpus.log_text.splitlines() if line.strip()), \
        "every log line is one JSON object (a name with a newline must not split a line)"


def test_status_counts_every_quarantined_input(corpus: CorpusRun) -> None:
    stages = corpus.status["stages"]
    expected_inputs = sum(1 for c in corpus.cases if c.outcome in (bi.Outcome.FAILED, bi.Outcome.DUPLICATE))
    rejected_clips = sum(1 for e in corpus.errors.values() if _is_clip(e))
    assert stages["failed"] == len(corpus.errors) == expected_inputs + rejected_clips
    assert rejected_clips >= 3
    assert {k: stages[k] for k in ("inbox", "raw", "vocals", "clips", "audio", "transcribed")} == \
        {"inbox": 0, "raw": 0, "vocals": 0, "clips": 0, "audio": 0, "transcribed": 0}
    voices = corpus.status["voices"]
    processed = Counter(c.voice for c in corpus.cases if c.outcome is bi.Outcome.PROCESSED)
    for voice, n in processed.items():
        assert voices[voice]["clips"] >= n


def test_state_is_consistent_after_the_corpus(corpus: CorpusRun) -> None:
    assert corpus.invariants["problems"] == []
    assert corpus.invariants["jobs"] == len(corpus.jobs)


# --------------------------------------------------------------------------------------------- long recordings


def test_an_hour_long_recording_within_the_limit_is_processed(tmp_path: Path) -> None:
    """Probe, copy, decode and segment an hour (3.6 s of speech, then silence) with flat memory; one clip."""
    root = tmp_path / "state"
    inbox = root / "inbox"
    inbox.mkdir(parents=True)
    speech = tmp_path / "speech.wav"
    bi.SpeechBank().write(speech, "wav")
    bi.ffmpeg("-i", str(speech), "-f", "lavfi", "-t", "3600", "-i", "anullsrc=r=22050:cl=mono",
              "-filter_complex", "[0:a][1:a]concat=n=2:v=0:a=1", "-c:a", "libmp3lame", "-b:a", "32k",
              str(tmp_path / ".hour.mp3"))
    (tmp_path / ".hour.mp3").rename(inbox / "lecture.mp3")
    config = write_config(tmp_path / "c.yaml", root, inbox={"settle_seconds": 0.5, "rescan_seconds": 0.5,
                                                           "max_duration_seconds": 4000.0},
                          daemon={"workers": {"transcribe": 1}}, quality={"dnsmos": False})
    log = tmp_path / "daemon.log"
    proc = _start(daemon_command(config), log)
    try:
        assert proc.wait(600) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    (job,) = [json.loads(p.read_text()) for p in (root / "checkpoints").glob("*.json")]
    assert job["duration"] > 3600 and job["manifest_created"]
    assert list(job["clips"].values()) == ["accepted"]
    assert check_invariants(root, n_inputs=1)["problems"] == []
    assert "Traceback" not in log.read_text()
