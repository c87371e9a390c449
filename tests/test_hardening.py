"""Issue 21: hostile or unlucky input must neither lose data nor stop the daemon.

Every test runs the real daemon (a process on a real state root). Races are made reliable with the ingest test
hook (`TTSFT_TEST_PAUSE_DIR`, stages/ingest.py): the worker announces an item at a point and waits until the test,
having changed the inbox at exactly that instant, lets it go on.

Recordings here are short silences of distinct lengths: ingest takes them (real ffprobe/ffmpeg), the segment stage
then quarantines them ("no speech found"), so no test spends time on speech models.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from tests.daemon_support import REPO, log_events, run_daemon, start_daemon, wait_for, write_config
from ttsft_daemon.core.inbox import voice_name

SR = 16000


def silence(path: Path, n: int, seconds: float = 1.0) -> bytes:
    """A WAV of silence whose length (and so content) is unique to `n`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros(int(SR * seconds) + 7 * n, dtype=np.int16), SR, subtype="PCM_16")
    return path.read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def item_id(inbox: Path, path: Path) -> str:
    rel = os.path.relpath(path, inbox)
    folder = rel.split("/", 1)[0]
    return f"{voice_name(folder)}--{hashlib.sha256(rel.encode('utf-8', 'surrogateescape')).hexdigest()[:16]}"


def job_shas(root: Path) -> set[str]:
    out = set()
    for p in (root / "checkpoints").glob("*.json"):
        src = json.loads(p.read_text()).get("source") or {}
        if src.get("sha256"):
            out.add(str(src["sha256"]))
    return out


def failed_contents(root: Path) -> set[str]:
    return {sha(p.read_bytes()) for p in (root / "failed").iterdir()
            if p.is_file() and not p.name.endswith(".error.json") and not p.name.startswith(".")}


def reports(root: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((root / "failed").glob("*.error.json"))]


def no_crash(log: Path) -> None:
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
    assert not [e for e in log_events(log) if e.get("event") in ("unexpected error in worker", "worker thread crashed")]


def base_config(tmp: Path, root: Path, **sections: dict[str, Any]) -> Path:
    defaults: dict[str, dict[str, Any]] = {"speaker": {"enabled": False}, "quality": {"dnsmos": False}}
    for k, v in sections.items():
        defaults.setdefault(k, {}).update(v)
    return write_config(tmp / "config.yaml", root, **defaults)


# --------------------------------------------------------------------------------------------- pause hook driver


@dataclass
class Driver:
    """Answers the ingest hook: `actions[(item, point)]` runs when that item first reaches that point."""

    folder: Path
    actions: dict[tuple[str, str], Any]
    done: list[tuple[str, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)

    def run(self) -> None:
        seen: Counter[tuple[str, str]] = Counter()
        while not self.stop.is_set():
            for marker in self.folder.glob("*.waiting"):
                item, point = marker.name.removesuffix(".waiting").rsplit(".", 1)
                seen[(item, point)] += 1
                action = self.actions.get((item, point)) if seen[(item, point)] == 1 else None
                if action is not None:
                    try:
                        action()
                        self.done.append((item, point))
                    except Exception as exc:  # reported by the test, never a hang
                        self.errors.append(f"{item} {point}: {exc!r}")
                (self.folder / f"{item}.{point}.go").write_text("")
                marker.unlink(missing_ok=True)
            time.sleep(0.005)


def run_with_driver(config: Path, log: Path, pause: Path, actions: dict[tuple[str, str], Any],
                    timeout: float = 400) -> Driver:
    for point in {p for _i, p in actions}:
        (pause / point).write_text("armed")
    driver = Driver(pause, actions)
    thread = threading.Thread(target=driver.run, name="pause-driver", daemon=True)
    thread.start()
    try:
        p = start_daemon(config, log, env={"TTSFT_TEST_PAUSE_DIR": str(pause)})
        try:
            assert p.wait(timeout) == 0, log.read_text()[-3000:]
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    finally:
        driver.stop.set()
        thread.join(10)
    return driver


# --------------------------------------------------------------------------------------------- cases 1 and 2


ITERATIONS = 6  # per variant: 4 variants, one daemon run


def test_swapped_folders_and_replaced_files_are_never_followed_nor_lost(tmp_path: Path) -> None:
    """Case 1: a voice folder swapped for a link to files outside the inbox (before the file is opened, or after it
    was copied) never makes ingest read or remove a file outside. Case 2: a file replaced (renamed over, or
    rewritten in place) while ingest probes its copy is never removed: both contents end up taken."""
    root, outside, pause = tmp_path / "state", tmp_path / "outside", tmp_path / "pause"
    inbox = root / "inbox"
    pause.mkdir()
    cfg = base_config(tmp_path, root, daemon={"max_jobs_in_flight": 50})
    originals: dict[str, str] = {}  # voice -> sha of what was dropped
    replacements: dict[str, str] = {}
    secrets: dict[Path, str] = {}
    actions: dict[tuple[str, str], Any] = {}
    n = 0

    def swap(voice: str) -> None:
        os.rename(inbox / voice, inbox / f".moved-{voice}")
        os.symlink(outside / voice, inbox / voice)

    def rename_over(path: Path, k: int) -> None:
        new = path.with_name(".incoming.wav")
        replacements[path.parent.name] = sha(silence(new, 1000 + k))
        os.replace(new, path)

    def rewrite(path: Path, k: int) -> None:
        data = bytearray(path.read_bytes())
        data[-64:] = bytes(range(1, 65))  # same size, other samples
        with open(path, "r+b") as fh:
            fh.write(data)
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
        replacements[path.parent.name] = sha(bytes(data))

    for variant in ("swap-before-open", "swap-after-probe", "rename-over", "rewrite"):
        for i in range(ITERATIONS):
            n += 1
            voice = f"{variant.replace('-', '_')}_{i}"
            path = inbox / voice / f"take {i}.wav"
            originals[voice] = sha(silence(path, n))
            if variant.startswith("swap"):
                secret = outside / voice / path.name  # same name, outside the inbox: must stay untouched
                secrets[secret] = sha(silence(secret, 500 + n))
                point = "before-open" if variant == "swap-before-open" else "after-probe"
                actions[(item_id(inbox, path), point)] = lambda v=voice: swap(v)
            elif variant == "rename-over":
                actions[(item_id(inbox, path), "after-probe")] = lambda p=path, k=n: rename_over(p, k)
            else:
                actions[(item_id(inbox, path), "after-probe")] = lambda p=path, k=n: rewrite(p, k)

    log = tmp_path / "daemon.log"
    driver = run_with_driver(cfg, log, pause, actions)
    assert not driver.errors
    assert len(driver.done) == len(actions), "every race was staged"
    no_crash(log)

    taken = job_shas(root)
    for secret, digest in secrets.items():  # nothing outside the inbox was read, moved or removed
        assert secret.exists() and sha(secret.read_bytes()) == digest
        assert digest not in taken and digest not in failed_contents(root)
    for voice, digest in originals.items():
        if voice.startswith("swap_before_open"):
            # never opened: still where the swap put it, untouched
            kept = inbox / f".moved-{voice}"
            assert [sha(p.read_bytes()) for p in kept.iterdir()] == [digest]
        elif voice.startswith("swap_after_probe"):
            # copied before the swap: committed, and the original kept (its folder was no longer the inbox's)
            assert digest in taken
            assert [sha(p.read_bytes()) for p in (inbox / f".moved-{voice}").iterdir()] == [digest]
        else:
            # the original and its replacement were both taken; nothing is left in the inbox
            assert digest in taken, voice
            assert replacements[voice] in taken, voice
            assert not list((inbox / voice).iterdir())


# --------------------------------------------------------------------------------------------- cases 3 and 6


def test_same_named_rejects_and_non_utf8_names_are_all_quarantined_with_a_report(tmp_path: Path) -> None:
    """Case 3: thirty voices each dropping a bad `recording.mp3` at once leave thirty reports and thirty files.
    Case 6: a name that is not valid UTF-8 is taken (good file) or quarantined (bad file), and the run ends."""
    root = tmp_path / "state"
    inbox = root / "inbox"
    cfg = base_config(tmp_path, root, daemon={"workers": {"ingest": 4}, "max_jobs_in_flight": 50})
    bad: set[str] = set()
    for i in range(30):
        p = inbox / f"speaker{i:02d}" / "recording.mp3"
        p.parent.mkdir(parents=True)
        data = f"not audio {i}\n".encode() * 50
        p.write_bytes(data)
        bad.add(sha(data))
    good_name = os.fsencode(inbox) + b"/caf\xe9 \xff.wav"
    bad_name = os.fsencode(inbox) + b"/bad \xfe.mp3"
    good = silence(tmp_path / "good.wav", 1)
    os.rename(os.fsencode(tmp_path / "good.wav"), good_name)
    with open(bad_name, "wb") as fh:
        fh.write(b"not audio either" * 40)
    bad.add(sha(b"not audio either" * 40))

    log = tmp_path / "daemon.log"
    assert run_daemon(cfg, log, timeout=400) == 0, log.read_text()[-3000:]
    no_crash(log)
    assert [p for p in inbox.rglob("*") if not p.is_dir()] == []
    ingest_reports = [r for r in reports(root) if r["stage"] == "ingest"]
    assert len(ingest_reports) == 31
    assert bad <= failed_contents(root), "every rejected file sits in failed/ with its content"
    names = [r["files"][0]["name"] for r in ingest_reports]
    assert len(set(names)) == 31
    (escaped,) = [r for r in ingest_reports if "\\x" in r["files"][0]["from"]]
    assert escaped["files"][0]["from"] == "bad \\xfe.mp3"
    assert sha(good) in job_shas(root)
    job = next(json.loads(p.read_text()) for p in (root / "checkpoints").glob("*.json")
               if json.loads(p.read_text()).get("source", {}).get("sha256") == sha(good))
    assert job["source"]["name"] == "caf\\xe9 \\xff.wav"
    assert not [n for n in os.listdir(root / "spool" / "raw")], "no orphan payload"


# --------------------------------------------------------------------------------------------- case 5 and retry


def test_a_recording_dropped_again_after_its_quarantine_is_taken_again_and_retry_puts_files_back(
        tmp_path: Path) -> None:
    root = tmp_path / "state"
    inbox = root / "inbox"
    cfg = base_config(tmp_path, root)
    data = silence(inbox / "quiet.wav", 3)
    (inbox / "notes.mp3").write_text("meeting notes, not audio\n" * 30)
    log = tmp_path / "daemon.log"
    assert run_daemon(cfg, log, timeout=400) == 0
    first = [r for r in reports(root)]
    assert {r["stage"] for r in first} == {"ingest", "segment"}, first

    # the README's advice: drop it again. It is taken again, not refused as a duplicate.
    (inbox / "quiet again.wav").write_bytes(data)
    # and `retry` puts the rejected notes back into the inbox
    out = subprocess.run([sys.executable, "-m", "ttsft_daemon", "retry", "--config", str(cfg), "notes.mp3"],
                         capture_output=True, text=True, cwd=str(REPO), timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (inbox / "notes.mp3").read_text().startswith("meeting notes")
    assert [r["stage"] for r in reports(root)] == ["segment"]
    assert run_daemon(cfg, log, timeout=400) == 0
    no_crash(log)
    after = reports(root)
    assert not [r for r in after if r.get("reason") == "duplicate"], after
    assert Counter(r["stage"] for r in after) == {"segment": 2, "ingest": 1}
    (job,) = [json.loads(p.read_text()) for p in (root / "checkpoints").glob("*.json")]
    assert job["source"]["name"] == "quiet again.wav"
    assert job["retakes"] and job["retakes"][0]["failed"]["reason"] == "no speech found"
    assert [e.get("retake_of") for e in log_events(log) if e.get("event") == "ingest done"][-1]


# --------------------------------------------------------------------------------------------- case 7


METADATA = """# hand-written note: keep me
clip_a.wav|hello there|1,500|alice|0,9000
clip_b.wav|a pipe | in the text|2.000|alice|0.8000
this line is not a row
clip_c.wav|fine|1.250|alice|0.7000
"""


def test_a_hand_edited_metadata_csv_is_read_tolerantly_and_no_line_is_lost(tmp_path: Path) -> None:
    from ttsft_daemon.core.spool import Spool
    from ttsft_daemon.dataset import Row, add_clip, read_rows

    root = tmp_path / "state"
    cfg = base_config(tmp_path, root)
    ds = root / "dataset" / "alice"
    (ds / "wavs").mkdir(parents=True)
    (ds / "metadata.csv").write_text(METADATA)
    out = subprocess.run([sys.executable, "-m", "ttsft_daemon", "status", "--json", "--config", str(cfg)],
                         capture_output=True, text=True, cwd=str(REPO), timeout=120)
    assert out.returncode == 0, out.stderr
    voice = json.loads(out.stdout)["voices"]["alice"]
    assert voice["clips"] == 3 and abs(voice["seconds"] - 4.75) < 1e-6
    assert [r.transcript for r in read_rows(ds)][1] == "a pipe | in the text"

    spool = Spool(root)
    spool.layout.ensure()
    wav = tmp_path / "clip_d.wav"
    silence(wav, 1)
    assert add_clip(spool, "alice", wav, Row("clip_d.wav", "new", 1.0, "ali|ce", 0.5))
    assert not add_clip(spool, "alice", wav, Row("clip_a.wav", "again", 1.0, "alice", 0.5))
    lines = (ds / "metadata.csv").read_text().splitlines()
    assert lines[:5] == METADATA.splitlines(), "every line written by hand is kept as it was"
    assert lines[5] == "clip_d.wav|new|1.000|ali_ce|0.5000"
    bad = write_config(tmp_path / "bad.yaml", root, dataset={"speaker": "a|b"})
    out = subprocess.run([sys.executable, "-m", "ttsft_daemon", "check-config", str(bad)],
                         capture_output=True, text=True, cwd=str(REPO), timeout=120)
    assert out.returncode == 2 and "dataset.speaker" in out.stderr


# --------------------------------------------------------------------------------------------- case 8


def test_leftover_temporaries_of_any_shape_and_stale_locks_are_removed_at_start(tmp_path: Path) -> None:
    root = tmp_path / "state"
    cfg = base_config(tmp_path, root)
    for d in ("work", "locks", "spool/raw", "inbox"):
        (root / d).mkdir(parents=True, exist_ok=True)
    host = __import__("socket").gethostname().replace(".", "_")
    dead = f"{host}.4194301-1.abcd1234"
    # what separation's tempfile.mkstemp(prefix="." + <temporary's stem>) leaves behind after a SIGTERM
    stereo = root / "work" / f"..tmp.{dead}.0123456789abcdef.xyz123.stereo.wav"
    stereo.write_bytes(b"\0" * 4096)
    plain = root / "spool" / "raw" / f".tmp.{dead}.0123456789abcdef.wav"
    plain.write_bytes(b"\0" * 10)
    stale = [root / "locks" / f"{s}-0123456789abcdef.lock" for s in ("separate", "segment", "transcribe")]
    for p in stale:
        p.write_bytes(b"")
    keep = root / "locks" / "job-0123456789abcdef.lock"
    keep.write_bytes(b"")
    # an inbox file a killed daemon had renamed to its private name while removing it: it comes back and is taken
    taking = root / "inbox" / ".tmp.taking.4194301.abcd1234.quiet.wav"
    data = silence(taking, 2)
    log = tmp_path / "daemon.log"
    assert run_daemon(cfg, log, timeout=300) == 0
    assert not stereo.exists() and not plain.exists()
    assert not [p for p in stale if p.exists()]
    assert keep.exists()
    assert sha(data) in job_shas(root) and not list((root / "inbox").iterdir())


# --------------------------------------------------------------------------------------------- cases 9 and 10


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ttsft_daemon", "check-config", str(config)],
                          capture_output=True, text=True, cwd=str(REPO), timeout=120)


@pytest.mark.parametrize(("key", "value"), [
    ("inbox.rescan_seconds", ".inf"), ("inbox.settle_seconds", ".nan"), ("inbox.poll_interval_seconds", "-.inf"),
    ("inbox.rescan_seconds", "1.0e+300"), ("daemon.max_jobs_in_flight", "100000000000000000000000"),
])
def test_non_finite_or_absurd_numbers_are_refused_by_check_config(tmp_path: Path, key: str, value: str) -> None:
    section, name = key.split(".")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"paths:\n  root: {tmp_path}\n{section}:\n  {name}: {value}\n")
    out = _check(cfg)
    assert out.returncode == 2, out.stdout
    assert key in out.stderr and "Traceback" not in out.stderr


def test_sighup_with_a_hostile_config_is_refused_and_the_daemon_keeps_running(tmp_path: Path) -> None:
    root = tmp_path / "state"
    cfg = base_config(tmp_path, root)
    good = cfg.read_text()
    log = tmp_path / "daemon.log"
    p = start_daemon(cfg, log, exit_when_idle=False)
    hostile = [
        "inbox: " + "[" * 20000 + "]" * 20000 + "\n",  # recursion
        good + "x: &a [1,1,1,1,1,1,1,1,1]\n" + "".join(
            f"x{i}: &a{i} [" + ",".join([f"*a{i - 1}" if i > 1 else "*a"] * 9) + "]\n" for i in range(1, 9)),
        good.replace("settle_seconds: 0.5", "settle_seconds: .nan"),
        "paths: {root: " + "x" * (2 << 20) + "}\n",
        "\xff\xfe not yaml at all: [",
    ]
    try:
        assert wait_for(lambda: any(e.get("event") == "stage ready" for e in log_events(log)), 120)
        for text in hostile:
            cfg.write_text(text)
            before = sum(1 for e in log_events(log) if str(e.get("event", "")).startswith("reload refused"))
            p.send_signal(signal.SIGHUP)
            assert wait_for(lambda b=before: sum(1 for e in log_events(log) if str(e.get("event", "")).startswith(
                "reload refused")) > b, 120), log.read_text()[-2000:]
            assert p.poll() is None
        # still working: a bad drop is quarantined after all those reloads
        cfg.write_text(good)
        (root / "inbox" / "notes.mp3").write_text("not audio\n" * 20)
        assert wait_for(lambda: list((root / "failed").glob("*.error.json")), 120)
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(120) == 0
    no_crash(log)


# --------------------------------------------------------------------------------------------- case 11


def test_copies_in_progress_are_not_taken_early(tmp_path: Path) -> None:
    """A `*.part` name is left alone until the copier renames it; a WAV written half-way and paused longer than
    settle_seconds is held, not taken, and taken whole once complete; a WAV cut short long ago is quarantined as
    truncated."""
    root = tmp_path / "state"
    inbox = root / "inbox"
    cfg = base_config(tmp_path, root)
    full = silence(tmp_path / "whole.wav", 9, seconds=4.0)
    (inbox).mkdir(parents=True, exist_ok=True)
    part = inbox / "copying.wav.part"
    other = silence(tmp_path / "other.wav", 13, seconds=4.0)
    part.write_bytes(other[: len(other) // 3])
    slow = inbox / "slow.wav"
    slow.write_bytes(full[: len(full) // 10])
    cut = silence(tmp_path / "cut.wav", 11, seconds=4.0)
    (inbox / "cut long ago.wav").write_bytes(cut[: len(cut) // 4])
    os.utime(inbox / "cut long ago.wav", (time.time() - 3600, time.time() - 3600))
    log = tmp_path / "daemon.log"
    p = start_daemon(cfg, log, exit_when_idle=False)
    try:
        assert wait_for(lambda: any("looks incomplete" in str(e.get("why", "")) for e in log_events(log)), 120)
        assert part.exists() and slow.exists()
        with open(slow, "ab") as fh:  # the copier goes on
            fh.write(full[len(full) // 10:])
        part.write_bytes(other)
        part.rename(inbox / "copied.wav")
        assert wait_for(lambda: not list(inbox.iterdir()), 120), list(inbox.iterdir())
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(120) == 0
    no_crash(log)
    ingested = [e for e in log_events(log) if e.get("event") == "ingest done"]
    assert len(ingested) == 2, ingested  # slow.wav once, copied.wav once
    assert {sha(full), sha(other)} <= job_shas(root)
    (trunc,) = [r for r in reports(root) if r.get("reason") == "truncated recording"]
    assert trunc["files"][0]["from"] == "cut long ago.wav"


# --------------------------------------------------------------------------------------------- case 4


def test_a_state_root_refusing_writes_for_a_while_is_waited_out_not_blamed_on_the_input(tmp_path: Path) -> None:
    """spool/raw refusing writes (EACCES) for longer than max_attempts back-offs: the recording is retried without
    spending attempts, status says so, and it goes on once the folder is writable again."""
    from tests.test_bad_inputs import unprivileged_prefix
    from ttsft_daemon.core.spool import Spool

    prefix, why = unprivileged_prefix(tmp_path)
    if os.geteuid() == 0 and not prefix:
        pytest.skip(why)
    root = tmp_path / "state"
    cfg = base_config(tmp_path, root, daemon={"retry_backoff_seconds": 0.2})
    Spool(root).layout.ensure()
    raw = root / "spool" / "raw"
    silence(root / "inbox" / "quiet.wav", 4)
    raw.chmod(0o555)
    log = tmp_path / "daemon.log"
    with open(log, "ab") as fh:
        p = subprocess.Popen([*prefix, sys.executable, "-m", "ttsft_daemon", "run", "--config", str(cfg),
                              "--exit-when-idle"], stdout=fh, stderr=subprocess.STDOUT, cwd=str(REPO),
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        refused = "state root refuses writes; will retry"
        assert wait_for(lambda: sum(e.get("event") == refused for e in log_events(log)) >= 5, 120), \
            log.read_text()[-2000:]
        out = subprocess.run([sys.executable, "-m", "ttsft_daemon", "status", "--config", str(cfg)],
                             capture_output=True, text=True, cwd=str(REPO), timeout=120)
        assert "refuses writes" in out.stdout, out.stdout
        assert not list((root / "failed").glob("*.error.json"))
        raw.chmod(0o755)
        assert p.wait(300) == 0
    finally:
        raw.chmod(0o755)
        if p.poll() is None:
            p.kill()
            p.wait()
    no_crash(log)
    (report,) = reports(root)
    assert (report["stage"], report["reason"]) == ("segment", "no speech found"), report
