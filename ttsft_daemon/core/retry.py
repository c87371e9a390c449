"""`ttsft-daemon retry`: put quarantined recordings back into the inbox, to be taken again.

A recording rejected by ingest (its original sits in failed/ as it was dropped) or by the separation (the original
copy from spool/raw/, with its sidecar) goes back to `inbox/<voice>/<its name>`; the daemon then takes it as a new
drop, and a job that ended in quarantine starts over (stages/ingest.py). The file is moved first and its report
removed last, so an interruption leaves either the quarantine as it was or the file in the inbox (and a report
that the next retry tidies). Clips and intermediate files (vocal stems) cannot be retried this way: their
recording is dropped again instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ttsft_daemon.config import Config
from ttsft_daemon.core.spool import Spool, display_name, fsync_dir, read_json, remove

# Stages whose quarantined first file is the user's recording.
RETRYABLE = {"ingest": "the file as dropped", "separate": "the original recording"}


@dataclass
class Outcome:
    report: str
    retried: bool
    message: str


def quarantined(spool: Spool) -> list[tuple[Path, dict[str, Any]]]:
    failed = spool.layout.failed
    if not failed.is_dir():
        return []
    out = []
    for p in sorted(failed.glob("*.error.json")):
        report = read_json(p)
        if report is not None and report.get("complete"):
            out.append((p, report))
    return out


def _matches(path: Path, report: dict[str, Any], wanted: str) -> bool:
    names = {path.name, path.name.removesuffix(".error.json"), str(report.get("item") or ""),
             str(report.get("job_id") or ""), str(report.get("source") or "")}
    names |= {str(e.get("from", "")) for e in report.get("files", [])}
    return wanted in names - {""}


def retry(config: Config, wanted: list[str]) -> list[Outcome]:
    """Retry the quarantined recordings named in `wanted` (a report name, item, job id or file name), or every
    retryable one when `wanted` is empty."""
    spool = Spool(config.paths.root)
    reports = quarantined(spool)
    out: list[Outcome] = []
    if wanted:
        for name in wanted:
            hits = [(p, r) for p, r in reports if _matches(p, r, name)]
            if not hits:
                out.append(Outcome(name, False, "no complete quarantine report matches this name"))
            out += [_retry_one(spool, config, p, r) for p, r in hits]
    else:
        out = [_retry_one(spool, config, p, r) for p, r in reports if r.get("stage") in RETRYABLE]
    return out


def _retry_one(spool: Spool, config: Config, path: Path, report: dict[str, Any]) -> Outcome:
    stage = str(report.get("stage"))
    files = report.get("files") or []
    if stage not in RETRYABLE:
        return Outcome(path.name, False, f"quarantined by the {stage} stage (a clip or an intermediate file): drop "
                       "the original recording into the inbox again instead")
    if not files or "symlink_to" in files[0] or "not_moved" in files[0]:
        return Outcome(path.name, False, "nothing was kept (a link, or a file left where it was)")
    kept = spool.layout.failed / str(files[0]["name"])
    voice = str(report.get("voice") or str(report.get("item") or "").rsplit("--", 1)[0] or
                config.inbox.default_voice)
    name = str(report.get("source") or files[0]["from"]) if stage != "ingest" else str(files[0]["from"])
    folder = spool.layout.inbox if voice == config.inbox.default_voice else spool.layout.inbox / voice
    if not kept.exists():
        remove(path)  # retried before an interruption: the file went back already
        return Outcome(path.name, False, "its file is no longer in failed/ (already retried?); report removed")
    folder.mkdir(parents=True, exist_ok=True)
    dest = _move_no_replace(kept, folder, os.path.basename(display_name(name)) or kept.name)
    for extra in files[1:]:  # the sidecar of a spool item: its facts are taken again from the file
        remove(spool.layout.failed / str(extra["name"]))
    remove(path)
    fsync_dir(spool.layout.failed)
    return Outcome(path.name, True, f"back in the inbox as {os.path.relpath(dest, spool.layout.root)}")


def _move_no_replace(src: Path, folder: Path, name: str) -> Path:
    """Rename `src` into `folder` as `name`, or `name` with a number when that is taken (never replacing a file)."""
    stem, dot, ext = name.rpartition(".")
    for n in range(1000):
        dest = folder / (name if n == 0 else (f"{stem} ({n}).{ext}" if dot else f"{name} ({n})"))
        try:
            os.link(src, dest, follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError:  # another filesystem, or no hard links: copy then remove
            if os.path.lexists(dest):
                continue
            import shutil

            shutil.copy2(src, dest)
        src.unlink()
        fsync_dir(folder)
        return dest
    raise FileExistsError(f"no free name for {name} in {folder}")
