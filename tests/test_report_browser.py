"""One real daemon run (Whisper, Piper training, export, evaluation) gives a voice; while it runs, clips are
rejected and relabelled by hand; then the edits must survive a restart and a redo of the recording, and the
report written after the export must load in a real headless Chromium (Debian's, driven by Playwright) with no
console error, no request leaving the file, playable audio and visible plots. A screenshot is kept in the test's
temporary folder."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_support import check_invariants, log_events, metadata_rows, run_daemon, start_daemon, wait_for
from tests.daemon_support import write_config as write_daemon_config
from ttsft_daemon.core.spool import read_json
from ttsft_daemon.demo.audio import SENTENCES, make_recording, write_media
from ttsft_daemon.report import report_path
from ttsft_daemon.report.review import ReviewError, load_edits, reject, relabel

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VOICE = "default"
FIXED_TEXT = "Corrected by hand: dial 2 for the front desk"


@dataclass
class Voice:
    root: Path
    config: Path
    recordings: list[Path]
    rejected: str
    relabeled: str
    log: Path


@pytest.fixture(scope="module", autouse=True)
def _drop_checkpoints_afterwards(tmp_path_factory: pytest.TempPathFactory) -> Any:
    yield
    for ckpt in tmp_path_factory.getbasetemp().rglob("*.ckpt"):
        ckpt.unlink(missing_ok=True)


def _drop(files: list[Path], inbox: Path) -> None:
    inbox.mkdir(parents=True, exist_ok=True)
    for f in files:
        tmp = inbox / f".{f.name}.part"
        shutil.copyfile(f, tmp)
        tmp.rename(inbox / f.name)


def _edit_while_running(root: Path, proc: Any) -> tuple[str, str]:
    """As soon as two clips are in the dataset (the daemon still accepting, transcribing or training), reject the
    first and relabel the second."""
    assert wait_for(lambda: len(metadata_rows(root)) >= 2 or proc.poll() is not None, 900)
    assert proc.poll() is None, "the daemon ended before two clips were accepted"
    rows = metadata_rows(root)
    victim, fixed = rows[0][0].removesuffix(".wav"), rows[1][0].removesuffix(".wav")
    assert reject(root, VOICE, victim, "a door slams").action == "rejected"
    assert relabel(root, VOICE, fixed, FIXED_TEXT).action == "relabeled"
    return victim, fixed


@pytest.fixture(scope="module")
def voice(tmp_path_factory: pytest.TempPathFactory) -> Voice:
    folder = tmp_path_factory.mktemp("voice")
    root = folder / "state"
    recordings = []
    for i, (texts, music) in enumerate(((SENTENCES[:4], None), (SENTENCES[4:7], -10.0))):
        rec = make_recording(texts, pause_range=(0.7, 1.0), music_db=music, seed=30 + i, sr=22050)
        path = folder / f"talk {i}.{'wav' if i == 0 else 'mp3'}"
        write_media(rec, path, "wav" if i == 0 else "mp3")
        recordings.append(path)
    config = write_daemon_config(
        folder / "config.yaml", root,
        training={"enabled": True, "min_clips": 3, "max_epochs": 2, "quality": "x_low", "batch_size": 4,
                  "num_workers": 0, "accelerator": "cpu", "keep_last": 1, "keep_best": 1,
                  "test_sentences": ["The garden gate was open.", "Call me back at five."]})
    _drop(recordings, root / "inbox")
    log = folder / "daemon.log"
    proc = start_daemon(config, log)
    try:
        victim, fixed = _edit_while_running(root, proc)
        assert proc.wait(1500) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return Voice(root, config, recordings, victim, fixed, log)


def _rows(root: Path) -> dict[str, list[str]]:
    rows = metadata_rows(root)
    names = [r[0] for r in rows]
    assert len(names) == len(set(names)), "duplicated rows"
    return {r[0].removesuffix(".wav"): r for r in rows}


def test_edits_made_while_the_daemon_ran_hold_and_training_used_the_dataset(voice: Voice) -> None:
    root = voice.root
    problems = [p for p in check_invariants(root, len(voice.recordings))["problems"]
                if not p.endswith("/.train.lock")]  # the trainer's lock file is empty by design
    assert not problems, problems
    rows = _rows(root)
    assert voice.rejected not in rows and rows[voice.relabeled][1] == "Corrected by hand: dial two for the front desk"
    report = read_json(root / "failed" / f"{voice.rejected}.wav.error.json") or {}
    assert (report.get("stage"), report.get("reason")) == ("review", "rejected by hand")
    tdir = root / "training" / VOICE
    assert (tdir / f"{VOICE}.onnx").is_file() and (tdir / "evaluations.json").is_file()
    assert any(e.get("event") == "report written" for e in log_events(voice.log))
    page = report_path(root, VOICE).read_text(encoding="utf-8")
    assert voice.rejected in page and "a door slams" in page  # the report shows what was changed by hand

    # a restart changes nothing
    before = metadata_rows(root)
    assert run_daemon(voice.config, voice.log, timeout=600) == 0
    assert metadata_rows(root) == before

    # a redo of the recording of the rejected clip: it stays out, the relabelled clip keeps its text
    job_id = voice.rejected.rsplit("-", 1)[0]
    (root / "checkpoints" / f"{job_id}.json").unlink()
    source = next(p for p in voice.recordings if (read_json(root / "failed" / f"{voice.rejected}.wav.error.json")
                                                  or {}).get("source") in (p.name, None))
    _drop([p for p in voice.recordings if p.name == source.name], root / "inbox")
    assert run_daemon(voice.config, voice.log, timeout=900) == 0
    rows = _rows(root)
    assert voice.rejected not in rows and rows[voice.relabeled][1].startswith("Corrected by hand")
    redone = [read_json(p) or {} for p in (root / "failed").glob("*.error.json")]
    assert sum(1 for r in redone if r.get("item") == voice.rejected and r.get("reason") == "rejected by hand") == 2
    assert set(load_edits(root / "dataset" / VOICE).rejected) == {voice.rejected}
    with pytest.raises(ReviewError):
        relabel(root, VOICE, voice.rejected, "it is gone")


def _open_in_chromium(page_path: Path, screenshot: Path) -> dict[str, Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (scripts/install.sh installs it)")
    errors: list[str] = []
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            page.on("request", lambda r: requests.append(r.url))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url[:80]}"))
            page.goto(page_path.as_uri(), wait_until="load")
            page.wait_for_function(
                "Array.from(document.querySelectorAll('audio')).every(a => a.readyState >= 1 || a.error)",
                timeout=120_000)
            audio = page.eval_on_selector_all(
                "audio", "els => els.map(a => ({ready: a.readyState, duration: a.duration, "
                         "error: a.error ? a.error.code : null, label: a.getAttribute('aria-label')}))")
            plots = page.locator("svg.plot")
            boxes = [plots.nth(i).bounding_box() for i in range(plots.count())]
            visible = [plots.nth(i).is_visible() for i in range(plots.count())]
            headings = page.eval_on_selector_all("h2", "els => els.map(h => h.textContent)")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"errors": errors, "requests": requests, "audio": audio, "boxes": boxes, "visible": visible,
            "headings": headings}


def test_report_loads_in_chromium_offline_with_playable_audio_and_visible_plots(
        voice: Voice, tmp_path_factory: pytest.TempPathFactory) -> None:
    from ttsft_daemon.cli import main

    assert main(["report", "--config", str(voice.config), "--voice", VOICE]) == 0  # the command rewrites it
    page_path = report_path(voice.root, VOICE)
    screenshot = tmp_path_factory.mktemp("artifacts") / "report.png"
    seen = _open_in_chromium(page_path, screenshot)
    assert not seen["errors"], seen["errors"]
    assert all(url == page_path.as_uri() or url.startswith("data:") for url in seen["requests"]), seen["requests"]
    evaluations = json.loads((voice.root / "training" / VOICE / "evaluations.json").read_text())
    assert len(seen["audio"]) >= len(evaluations[-1]["sentences"]) + 3
    for a in seen["audio"]:
        assert a["error"] is None and a["ready"] >= 1 and a["duration"] > 0.2, a
        assert a["label"]
    assert len(seen["boxes"]) >= 5 and all(seen["visible"])  # 3 histograms + the loss curves
    assert all(b is not None and b["width"] > 100 and b["height"] > 50 for b in seen["boxes"])
    assert {"Summary", "Exports: listen and compare", "Training", "Clips to check first", "Dataset",
            "Changed by hand"} <= set(seen["headings"])
    assert screenshot.stat().st_size > 10_000
    print(f"\n[artifact] screenshot {screenshot} ({screenshot.stat().st_size // 1024} KB), page "
          f"{page_path.stat().st_size // 1024} KB, {len(seen['audio'])} players, {len(seen['boxes'])} plots")
