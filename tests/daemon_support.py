"""Helpers for tests that run the real daemon as a process on a real state root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import soundfile as sf
import yaml

from ttsft_daemon.core.jobs import CLIP_SPLIT
from ttsft_daemon.pipeline import SPOOLS

REPO = Path(__file__).resolve().parents[1]


def write_config(path: Path, root: Path, **sections: dict[str, Any]) -> Path:
    cfg: dict[str, Any] = {
        "paths": {"root": str(root)},
        "inbox": {"settle_seconds": 0.5, "rescan_seconds": 0.5},
        "separation": {"enabled": False},
        "training": {"enabled": False},
        "daemon": {"retry_backoff_seconds": 0.5},
        "logging": {"format": "json", "journal": "off"},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(cfg))
    return path


def daemon_command(config: Path, exit_when_idle: bool = True) -> list[str]:
    """The one way tests and benchmarks start a real daemon process (this interpreter, the package in REPO)."""
    return [sys.executable, "-m", "ttsft_daemon", "run", "--config", str(config),
            *(["--exit-when-idle"] if exit_when_idle else [])]


def daemon_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """Unbuffered output; no inherited NOTIFY_SOCKET (a test's daemon must not talk to the session's systemd)
    unless `env` gives one."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    if env is None or "NOTIFY_SOCKET" not in env:
        full_env.pop("NOTIFY_SOCKET", None)
    return full_env


def start_daemon(config: Path, log: Path, exit_when_idle: bool = True,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        return subprocess.Popen(daemon_command(config, exit_when_idle), stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=daemon_env(env), cwd=str(REPO))


def run_daemon(config: Path, log: Path, timeout: float = 600) -> int:
    p = start_daemon(config, log)
    try:
        return p.wait(timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def log_events(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def metadata_rows(root: Path) -> list[list[str]]:
    rows = []
    for csv in sorted((root / "dataset").glob("*/metadata.csv")):
        rows += [line.split("|") for line in csv.read_text().splitlines()]
    return rows


def check_invariants(root: Path, n_inputs: int) -> dict[str, Any]:
    """The invariants every test of crashes and concurrency checks once the daemon has finished."""
    problems: list[str] = []
    # nothing left in flight
    for spool in SPOOLS:
        left = [p.name for p in (root / "spool" / spool).iterdir()]
        if left:
            problems.append(f"spool/{spool} not empty: {left[:5]}")
    inbox_left = [p.name for p in (root / "inbox").rglob("*") if not p.is_dir()]
    if inbox_left:
        problems.append(f"inbox not empty: {inbox_left}")
    # no partial or zero-length file outside temporary names (lock files are empty by design)
    for p in root.rglob("*"):
        if p.is_file() and "locks" not in p.relative_to(root).parts:
            if p.name.startswith(".tmp."):
                problems.append(f"leftover temporary {p}")
            elif p.stat().st_size == 0 and not p.name.endswith(".lock"):  # lock files are empty by design
                problems.append(f"zero-length file {p}")
            elif p.suffix == ".json":
                try:
                    json.loads(p.read_text())
                except ValueError:
                    problems.append(f"corrupt JSON {p}")
            elif p.suffix == ".wav" and "failed" not in p.relative_to(root).parts:
                try:
                    sf.info(str(p))
                except Exception as exc:
                    problems.append(f"unreadable WAV {p}: {exc}")
    rows = metadata_rows(root)
    names = [r[0] for r in rows]
    if len(names) != len(set(names)):
        problems.append("duplicate dataset rows")
    for r in rows:
        if len(r) != 5:
            problems.append(f"malformed row {r}")
    wavs = {p.name for p in (root / "dataset").glob("*/wavs/*.wav")}
    orphans = [n for n in names if n not in wavs]
    if orphans:
        problems.append(f"rows without WAV: {orphans[:5]}")
    # every input ended up as one job; every clip of every job is in exactly one of dataset / failed
    jobs = [json.loads(p.read_text()) for p in (root / "checkpoints").glob("*.json")]
    failed_inputs = [json.loads(p.read_text()) for p in (root / "failed").glob("*.error.json")]
    failed_clip_ids = {str(e.get("item")) for e in failed_inputs}
    whole_failures = [e for e in failed_inputs if e.get("stage") in ("ingest", "separate", "segment")]
    if len(jobs) + sum(1 for e in whole_failures if not e.get("job_id")) != n_inputs:
        problems.append(f"{len(jobs)} jobs + {len(whole_failures)} failed inputs for {n_inputs} inputs")
    row_ids = {n.removesuffix(".wav") for n in names}
    for job in jobs:
        for cid, state in job.get("clips", {}).items():
            if state == CLIP_SPLIT:  # cut at a change of speaker: its parts are clips of their own
                continue
            in_ds, in_failed = cid in row_ids, cid in failed_clip_ids
            if in_ds == in_failed:
                problems.append(f"clip {cid} ({state}) in dataset={in_ds} failed={in_failed}")
            if (state == "accepted") != in_ds:
                problems.append(f"job says clip {cid} is {state}, dataset has it: {in_ds}")
        if not job.get("failed") and not job.get("manifest_created"):
            problems.append(f"job {job['job_id']} not finished: {job}")
    return {"problems": problems, "rows": len(rows), "jobs": len(jobs), "failed": len(failed_inputs)}


def wait_for(predicate: Any, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def done_lines(events: Iterable[dict[str, Any]], stage: str) -> list[str]:
    return [str(e.get("item")) for e in events if e.get("event") == f"{stage} done"]
