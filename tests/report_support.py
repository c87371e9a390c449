"""A small, real state root for the report and review tests: clips added through the dataset's own writer,
rejects quarantined through the spool's, a training folder in the formats the trainer and evaluation write."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from ttsft_daemon.core.spool import Spool
from ttsft_daemon.dataset import Row, add_clip

VOICE = "joe"
JOB = "0123456789abcdef"


def write_wav(path: Path, seconds: float, freq: float = 220.0, sr: int = 22050) -> Path:
    t = np.arange(int(seconds * sr)) / sr
    tone = 0.2 * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), tone.astype("float32"), sr, subtype="PCM_16")
    return path


def clip_info(cid: str, text: str, seconds: float, quality: float, unsure: float, rate: float,
              reasons: list[str] | None = None) -> dict[str, Any]:
    return {"clip_id": cid, "job_id": JOB, "voice": VOICE, "text": text, "duration": seconds, "quality": quality,
            "decision": "reject" if reasons else "accept", "reasons": reasons or [], "source_name": "talk.mp3",
            "start": float(int(cid.rsplit("-", 1)[1]) / 1000),
            "quality_report": {"details": {"chars_per_second": rate, "unsure_word_share": unsure}}}


def make_state(root: Path, accepted: int = 6, rejected: int = 3) -> Spool:
    spool = Spool(root)
    spool.layout.ensure()
    work = root / "work"
    for i in range(accepted):
        cid = f"{JOB}-{i * 5000:09d}"
        seconds = 1.0 + 0.5 * i
        wav = write_wav(work / f"{cid}.wav", seconds, 200 + 20 * i)
        info = clip_info(cid, f"sentence number {i} of the talk", seconds, 0.9 - 0.07 * i, 0.05 * (i % 3),
                         12.0 + i)
        add_clip(spool, VOICE, wav, Row(f"{cid}.wav", info["text"], seconds, VOICE, info["quality"]), info)
    reasons = [["speaking_rate_high"], ["word_cut_at_end", "dnsmos_low"], ["speaking_rate_high"]]
    for j in range(rejected):
        cid = f"{JOB}-{(100 + j) * 5000:09d}"
        seconds = 2.0 + j
        folder = spool.layout.spool("transcribed")
        wav = write_wav(folder / f"{cid}.wav", seconds, 300 + 30 * j)
        info = clip_info(cid, f"rejected words {j}", seconds, 0.3, 0.4, 30.0, reasons[j % len(reasons)])
        sidecar = folder / f"{cid}.json"
        sidecar.write_text(json.dumps(info))
        spool.quarantine([wav, sidecar], "accept", "quality gate", ", ".join(info["reasons"]),
                         {"item": cid, "voice": VOICE, "job_id": JOB, "source": "talk.mp3"})  # as the daemon
    return spool


def add_training(root: Path, epochs: int = 6, evaluated: tuple[tuple[int, float], ...] = ((3, 0.25), (6, 0.25))
                 ) -> Path:
    """progress.json with `epochs` epochs of falling losses, evaluations.json with spoken test sentences."""
    tdir = root / "training" / VOICE
    tdir.mkdir(parents=True, exist_ok=True)
    records = [{"epoch": e, "step": 2 * e, "losses": {"loss_g": 40.0 - e, "loss_d": 3.0 + 0.01 * e,
                                                       "train_mel": 2.0 / e, "val_mel": 2.5 / e}}
               for e in range(1, epochs + 1)]
    (tdir / "progress.json").write_text(json.dumps({"epoch": epochs, "epochs": records}))
    (tdir / "state.json").write_text(json.dumps({"state": "finished", "voice": VOICE, "epoch": epochs,
                                                 "target_epochs": epochs}))
    entries = []
    for epoch, wer in evaluated:
        sentences = []
        for n in range(2):
            wav = write_wav(tdir / "evaluations" / f"epoch-{epoch:05d}" / f"{n:02d}.wav", 1.2, 180 + 40 * n)
            sentences.append({"text": f"Test sentence {n}.", "wav": str(wav), "seconds": 1.2,
                              "transcript": f"test sentence {n}", "wer": wer})
        entries.append({"epoch": epoch, "step": 2 * epoch, "checkpoint": str(tdir / "gone.ckpt"), "wer": wer,
                        "evaluated": f"2026-01-01T00:00:0{epoch}+00:00", "sentences": sentences})
    (tdir / "evaluations.json").write_text(json.dumps(entries))
    return tdir


class PageParser(HTMLParser):
    """The parts of a report page the tests look at."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[str, int] = {}
        self.audio_src: list[str] = []
        self.audio_labels: list[str] = []
        self.urls: list[str] = []
        self.headings: list[str] = []
        self._in_heading = False
        self.svg_labelled = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == "audio":
            self.audio_src.append(a.get("src") or "")
            self.audio_labels.append(a.get("aria-label") or "")
        if tag == "svg" and a.get("role") == "img" and a.get("aria-labelledby"):
            self.svg_labelled += 1
        for key in ("src", "href", "xlink:href"):
            if a.get(key):
                self.urls.append(a[key] or "")
        self._in_heading = tag in ("h1", "h2", "h3")
        if self._in_heading:
            self.headings.append("")

    def handle_data(self, data: str) -> None:
        if self._in_heading:
            self.headings[-1] += data

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h1", "h2", "h3"):
            self._in_heading = False
