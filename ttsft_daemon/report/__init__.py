"""The per-voice report (`training/<voice>/report.html`) and hand review of clips.

    gather(root, voice)        -> ReportData         (report/data.py: the state files, no rendering)
    render(data)               -> HTML               (report/render.py, plots.py, audio.py)
    write_report(root, voice)  -> the page's path    (written atomically)
    review.list_clips / reject / relabel             (report/review.py: the Python API of `ttsft-daemon review`)
"""

from __future__ import annotations

from pathlib import Path

from ttsft_daemon.core.atomic import atomic_write_bytes
from ttsft_daemon.logs import get_logger
from ttsft_daemon.report.data import ReportData, gather
from ttsft_daemon.report.render import Progress, render

__all__ = ["REPORT_FILE", "ReportData", "gather", "render", "report_path", "write_report", "write_report_quietly"]

REPORT_FILE = "report.html"
log = get_logger(__name__)


def report_path(root: Path, voice: str) -> Path:
    return root / "training" / voice / REPORT_FILE


def write_report(root: Path, voice: str, config_path: Path | None = None, progress: Progress | None = None) -> Path:
    """Gather, render and atomically (re)write `training/<voice>/report.html`; returns its path."""
    data = gather(root, voice, config_path)
    page = render(data, progress)
    path = report_path(root, voice)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, page.encode("utf-8"))
    return path


def write_report_quietly(root: Path, voice: str, config_path: Path | None = None) -> Path | None:
    """write_report for the daemon: a failure is logged, never raised (the report is a view, not the work)."""
    try:
        path = write_report(root, voice, config_path)
    except Exception as exc:
        log.error("report not written", stage="train", voice=voice, error=f"{type(exc).__name__}: {exc}")
        return None
    log.info("report written", stage="train", voice=voice, report=str(path))
    return path
