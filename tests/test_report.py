"""The report's data side and page, hand review (API and CLI), console progress and notifications: fast, on a
small real state root (tests/report_support.py)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.report_support import JOB, VOICE, PageParser, add_training, make_state, write_wav
from ttsft_daemon.cli import main
from ttsft_daemon.config import NotifyConfig
from ttsft_daemon.console import Progress
from ttsft_daemon.core.spool import read_json
from ttsft_daemon.dataset import Row, add_clip, read_rows
from ttsft_daemon.errors import RejectedInput
from ttsft_daemon.events import VOICE_EXPORTED, notify
from ttsft_daemon.report import gather, report_path, write_report
from ttsft_daemon.report.data import trend
from ttsft_daemon.report.review import ReviewError, list_clips, load_edits, reject, relabel
from ttsft_daemon.training.progress import StepReporter


def _config(tmp_path: Path, root: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"paths": {"root": str(root)}, "logging": {"journal": "off"}}))
    return path


# ------------------------------------------------------------------------------------------------- data


def test_gather_counts_reasons_recommends_and_reads_the_trend(tmp_path: Path) -> None:
    root = tmp_path / "state"
    make_state(root)
    add_training(root, epochs=8, evaluated=((3, 0.25), (6, 0.25), (8, 0.5)))
    data = gather(root, VOICE)
    assert len(data.accepted) == 6 and len(data.rejected) == 3
    assert data.seconds == pytest.approx(sum(1.0 + 0.5 * i for i in range(6)))
    by_reason = {r.reason: (r.clips, r.seconds) for r in data.rejected_by_reason}
    assert by_reason == {"speaking_rate_high": (2, 6.0), "word_cut_at_end": (1, 3.0), "dnsmos_low": (1, 3.0)}
    rec = data.recommendation
    assert rec is not None and rec.evaluation.epoch == 6  # equal WER: the lower mel loss (later epoch) wins
    assert "shared by 2 exports" in rec.why
    assert data.trend.startswith("still improving")
    assert set(data.curves()) == {"generator (loss_g)", "discriminator (loss_d)", "mel (val_mel)"}
    worst = data.to_check(4)
    assert worst[0].quality == min(c.quality or 1 for c in data.accepted)
    assert {r for r in data.rejected_samples()} == {"speaking_rate_high", "word_cut_at_end"}


def test_trend_levels_off_and_reads_the_training_log(tmp_path: Path) -> None:
    flat = {e: {"val_mel": max(1.0, 3.0 - e * 0.5)} for e in range(1, 13)}
    assert trend(flat) == "levelled off since epoch 4 (val_mel within 1% of its best, 1, for 8 epochs)"
    assert trend({1: {"loss_g": 3.0}}).startswith("too early to tell")
    tdir = tmp_path / "state" / "training" / VOICE
    tdir.mkdir(parents=True)
    (tdir / "train.log").write_text(
        "[runner] start\n[ttsft] epoch 1 step 2 train 1.0s validation 0.0s loss_d=3.1 loss_g=40 train_mel=2.5\n"
        "noise\n[ttsft] step 3 epoch 2 batch 1/2 0.5 batches/s eta 2s loss_g=39\n"
        "[ttsft] epoch 2 step 4 train 1.0s validation 0.0s loss_d=3 loss_g=39 train_mel=2\n")
    data = gather(tmp_path / "state", VOICE)
    assert data.epochs == {1: {"loss_d": 3.1, "loss_g": 40.0, "train_mel": 2.5},
                           2: {"loss_d": 3.0, "loss_g": 39.0, "train_mel": 2.0}}
    assert data.recommendation is None and data.accepted == []


def test_report_page_is_self_contained_and_accessible(tmp_path: Path) -> None:
    root = tmp_path / "state"
    make_state(root)
    add_training(root)
    from ttsft_daemon.core.speakers import book

    book(root, VOICE).save_state({"voice": VOICE, "state": "decided", "source": "dominant", "detail": "one voice",
                                  "clusters": [{"seconds": 60.0, "share": 0.92, "clips": ["a"]},
                                               {"seconds": 5.2, "share": 0.08, "clips": ["b"]}]})
    relabel(root, VOICE, f"{JOB}-000000000", "dial 2 now")
    steps: list[tuple[int, int]] = []
    path = write_report(root, VOICE, tmp_path / "config.yaml", progress=lambda _w, d, t: steps.append((d, t)))
    assert path == report_path(root, VOICE) and not list(path.parent.glob(".tmp.*"))
    page = path.read_text(encoding="utf-8")
    parsed = PageParser()
    parsed.feed(page)
    assert parsed.audio_src and all(s.startswith("data:audio/mpeg;base64,") for s in parsed.audio_src)
    assert all(parsed.audio_labels)
    # 2 exports x 2 sentences; 4 lowest-quality clips + 1 more with doubtful words; 2 + 1 rejected by reason
    assert len(parsed.audio_src) == 4 + 5 + 3 and steps[-1] == (12, 12)
    assert all(u.startswith(("data:", "#")) for u in parsed.urls), [u[:40] for u in parsed.urls]
    assert "https:" not in page and "http:" not in page.replace("http://www.w3.org/", "")
    assert parsed.svg_labelled == 6  # 3 histograms + 3 loss curves
    assert parsed.tags["th"] > 10 and parsed.tags.get("caption", 0) >= 5
    for heading in ("Summary", "Exports: listen and compare", "Training", "Clips to check first", "Dataset",
                    "Speakers", "Rejected clips, by reason", "Changed by hand", "speaking_rate_high"):
        assert heading in parsed.headings
    assert f"ttsft-daemon review --config {tmp_path / 'config.yaml'} --voice joe reject {JOB}-" in page
    assert "dial two now" in page and "recommended" in page and "0.08" in page and "decided" in page


# ------------------------------------------------------------------------------------------------- review


def test_list_orders_and_filters(tmp_path: Path) -> None:
    root = tmp_path / "state"
    make_state(root)
    worst = list_clips(root, VOICE)
    assert [c.quality for c in worst] == sorted(c.quality or 0 for c in worst)
    assert all(c.status == "accepted" for c in worst)
    rate = list_clips(root, VOICE, reason="speaking_rate_high")
    assert len(rate) == 2 and all(c.status == "rejected" and c.wav and c.wav.is_file() for c in rate)
    assert list_clips(root, VOICE, speaker="nobody") == []
    assert len(list_clips(root, VOICE, order="name", limit=2)) == 2
    with pytest.raises(ReviewError):
        list_clips(root, VOICE, order="sideways")


def test_reject_is_for_good_and_relabel_sticks(tmp_path: Path) -> None:
    root = tmp_path / "state"
    spool = make_state(root)
    folder = root / "dataset" / VOICE
    victim, fixed = f"{JOB}-000005000", f"{JOB}-000010000"
    metadata = folder / "metadata.csv"
    metadata.write_text("# hand-written note\n" + metadata.read_text())  # kept verbatim by every rewrite
    result = reject(root, VOICE, f"{victim}.wav", "music under the voice")
    assert result.action == "rejected"
    rows = read_rows(folder)
    assert len(rows) == 5 and victim not in {r.clip_filename[:-4] for r in rows}
    assert metadata.read_text().startswith("# hand-written note\n")
    assert not (folder / "wavs" / f"{victim}.wav").exists() and not (folder / "clips" / f"{victim}.json").exists()
    report = read_json(root / "failed" / f"{victim}.wav.error.json") or {}
    assert (report["stage"], report["reason"], report["detail"]) == ("review", "rejected by hand",
                                                                     "music under the voice")
    assert (root / "failed" / f"{victim}.wav").is_file()
    assert reject(root, VOICE, victim).action == "unchanged"
    by_hand = list_clips(root, VOICE, reason="rejected by hand")
    assert [c.clip for c in by_hand] == [victim] and by_hand[0].edited == "rejected"

    assert relabel(root, VOICE, fixed, "Dial 2 | now").action == "relabeled"
    row = next(r for r in read_rows(folder) if r.clip_filename == f"{fixed}.wav")
    assert row.transcript == "Dial two now"
    info = read_json(folder / "clips" / f"{fixed}.json") or {}
    assert info["text"] == "Dial two now" and info["text_before_review"] == "sentence number 2 of the talk"
    edits = load_edits(folder)
    assert set(edits.rejected) == {victim} and edits.relabeled[fixed]["previous"] == "sentence number 2 of the talk"

    # A redo of the recording: the rejected clip stays out, the relabelled one keeps its text.
    wav = write_wav(tmp_path / "redo.wav", 1.5)
    with pytest.raises(RejectedInput, match="rejected by hand"):
        add_clip(spool, VOICE, wav, Row(f"{victim}.wav", "sentence number 1", 1.5, VOICE, 0.8), {"text": "x"})
    rows = [r for r in read_rows(folder) if r.clip_filename != f"{fixed}.wav"]
    (folder / "metadata.csv").write_text("".join(r.line() + "\n" for r in rows))  # as if the row were never made
    assert add_clip(spool, VOICE, wav, Row(f"{fixed}.wav", "sentence number 2", 1.5, VOICE, 0.8), {"text": "y"})
    assert next(r for r in read_rows(folder) if r.clip_filename == f"{fixed}.wav").transcript == "Dial two now"
    assert len(read_rows(folder)) == 5
    with pytest.raises(ReviewError, match="not in the dataset"):
        relabel(root, VOICE, "nope", "text")
    with pytest.raises(ReviewError, match="empty"):
        relabel(root, VOICE, fixed, " | ")


def test_review_and_report_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "state"
    make_state(root)
    config = _config(tmp_path, root)
    assert main(["review", "--config", str(config), "--voice", VOICE, "--worst", "list", ]) == 0
    out = capsys.readouterr().out
    assert out.count("accepted") == 6
    assert main(["review", "--config", str(config), "--voice", VOICE, "--json", "--reason", "dnsmos_low"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["reasons"] for x in lines] == [["word_cut_at_end", "dnsmos_low"]]
    clip = f"{JOB}-000000000"
    assert main(["review", "--config", str(config), "--voice", VOICE, "reject", clip, "--reason", "noisy"]) == 0
    assert main(["review", "--config", str(config), "--voice", VOICE, "relabel", f"{JOB}-000005000", "New text"]) == 0
    assert "relabeled" in capsys.readouterr().out
    assert main(["review", "--config", str(config), "--voice", VOICE, "relabel", "missing", "x"]) == 1
    assert "not in the dataset" in capsys.readouterr().err
    assert main(["report", "--config", str(config), "--voice", VOICE]) == 0
    assert str(report_path(root, VOICE)) in capsys.readouterr().out
    page = report_path(root, VOICE).read_text()
    assert "noisy" in page and "New text" in page
    assert main(["report", "--config", str(config), "--voice", "ghost"]) == 1


# ------------------------------------------------------------------------------------------------- console


def test_progress_draws_a_bar_on_a_terminal_and_lines_elsewhere() -> None:
    tty, plain = io.StringIO(), io.StringIO()
    bar = Progress("report joe", tty, tty=True, min_interval=0)
    lines = Progress("report joe", plain, tty=False, min_interval=0)
    for done in range(1, 4):
        bar.update(done, 3)
        lines.update(done, 3, "players")
    bar.close("done")
    lines.close()
    assert "\r" in tty.getvalue() and "[" + "#" * 30 + "] 3/3" in tty.getvalue() and tty.getvalue().endswith("done\n")
    assert plain.getvalue().splitlines() == [f"report joe: {n}/3 ({n / 3:.0%}) players" for n in range(1, 4)]
    rare = io.StringIO()
    limited = Progress("x", rare, tty=False, min_interval=3600)
    for done in range(1, 11):
        limited.update(done, 10)
    assert rare.getvalue().splitlines() == ["x: 1/10 (10%)", "x: 10/10 (100%)"]  # first, then always the last


# ------------------------------------------------------------------------------------------------- notify


def test_notify_runs_the_command_with_the_event_on_stdin_and_survives_failures(tmp_path: Path) -> None:
    out = tmp_path / "event.json"
    script = f"import sys; open({str(out)!r}, 'w').write(sys.stdin.read())"
    assert notify(NotifyConfig(command=[sys.executable, "-c", script]), VOICE_EXPORTED, voice="joe", wer=0.25)
    event = json.loads(out.read_text())
    assert (event["event"], event["voice"], event["wer"]) == ("voice_exported", "joe", 0.25) and event["time"]
    assert not notify(NotifyConfig(), VOICE_EXPORTED, voice="joe")  # off
    assert not notify(NotifyConfig(command=[sys.executable, "-c", script], events=["disk_nearly_full"]),
                      VOICE_EXPORTED)
    assert not notify(NotifyConfig(command=[sys.executable, "-c", "import sys; sys.exit(3)"]), VOICE_EXPORTED)
    assert not notify(NotifyConfig(command=[str(tmp_path / "missing-program")]), VOICE_EXPORTED)
    assert not notify(NotifyConfig(command=[sys.executable, "-c", "import time; time.sleep(30)"],
                                   timeout_seconds=0.5), VOICE_EXPORTED)


def test_step_reporter_writes_a_bounded_rate_line_with_rate_eta_and_losses() -> None:
    now = [0.0]
    reporter = StepReporter(interval=30.0, clock=lambda: now[0])
    asked: list[int] = []

    def metrics() -> dict[str, float]:
        asked.append(1)
        return {"loss_g": 41.5, "loss_d": 3.25, "train_mel": 2.0, "other": 1.0}

    lines = []
    for batch in range(100):  # one batch every 2 s: a line every 30 s at most
        now[0] = 2.0 * batch
        line = reporter.on_batch(5, batch, 100, 1000 + 2 * batch, metrics)
        if line:
            lines.append(line)
    assert len(lines) == len(asked) == 6
    assert lines[0] == "[ttsft] step 1030 epoch 5 batch 16/100 0.533 batches/s eta 158s loss_g=41.5 loss_d=3.25 " \
                       "train_mel=2"
    now[0] += 100.0
    assert reporter.on_batch(6, 0, None, 2000, metrics) is None  # a new epoch starts its clock again
    now[0] += 40.0
    assert reporter.on_batch(6, 9, None, 2018, metrics) == ("[ttsft] step 2018 epoch 6 batch 10 0.25 batches/s "
                                                             "loss_g=41.5 loss_d=3.25 train_mel=2")


def test_status_shows_audio_minutes_waiting_per_stage(tmp_path: Path) -> None:
    from ttsft_daemon.config import load_config
    from ttsft_daemon.status import collect, render

    root = tmp_path / "state"
    spool = make_state(root, accepted=1, rejected=0)
    for i, seconds in enumerate((90.0, 30.0)):
        wav = write_wav(tmp_path / f"c{i}.wav", 0.1)
        tmp = spool.tmp_payload("audio", f"{JOB}-{i:09d}", "wav")
        tmp.write_bytes(wav.read_bytes())
        spool.commit_item("audio", f"{JOB}-{i:09d}", tmp, "wav", {"duration": seconds, "clip_id": f"{JOB}-{i:09d}"})
    status = collect(load_config(_config(tmp_path, root)))
    assert status["stages"]["audio"] == 2 and status["audio_minutes"]["audio"] == 2.0
    assert status["audio_minutes"]["raw"] == 0.0
    assert "audio        2  (2.0 min of audio waiting)" in render(status)
    assert status["drain_minutes"] == {}  # no daemon, no measured rate
    from ttsft_daemon.core.spool import Layout
    from ttsft_daemon.status import write_daemon_info

    write_daemon_info(Layout(root), {"rates": {"transcribe": 4.0}})  # this process plays the running daemon
    status = collect(load_config(_config(tmp_path, root)))
    assert status["drain_minutes"] == {"audio": 0.5}
    assert "audio        2  (2.0 min of audio waiting, done in about 1 min)" in render(status)
