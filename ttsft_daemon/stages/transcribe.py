"""Transcribe: spool/audio clip -> spool/transcribed clip + JSON (transcript, scores, accept/reject decision)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import soundfile as sf

from ..config import Config
from ..quality import QualityGate
from ..spool import Item, Spool
from ..transcription import Transcriber
from .base import Output, Result, SpoolStage, StageContext


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


class TranscribeStage(SpoolStage):
    name = "transcribe"
    source = "audio"
    time_limit = 900.0

    def __init__(self, config: Config, spool: Spool) -> None:
        super().__init__(config, spool)
        self._transcriber: Transcriber | None = None
        self._gate: QualityGate | None = None

    def open(self) -> None:
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # one line per clip is our own log's job
        self._transcriber = Transcriber(self.config.transcription, self.config.paths.models_dir)
        q = self.config.quality
        self._gate = QualityGate(q, espeak_voice=self.config.training.espeak_voice,
                                 min_word_probability=q.min_word_probability,
                                 voiced_threshold_db=q.voiced_threshold_db,
                                 hallucination_phrases=tuple(q.hallucination_phrases))

    def close(self) -> None:
        self._transcriber = None
        self._gate = None

    def process(self, item: Item, ctx: StageContext) -> Result:
        if self._transcriber is None or self._gate is None:
            self.open()
        assert self._transcriber is not None and self._gate is not None
        meta = item.meta()
        transcript = self._transcriber.transcribe(item.payload)
        samples, sr = sf.read(str(item.payload), dtype="float32")
        report = self._gate.assess(transcript, samples, sr)
        cid = meta["clip_id"]
        tmp = ctx.tmp_output("transcribed", cid, "wav")
        link_or_copy(item.payload, tmp)
        out_meta = {
            **meta,
            "text": report.normalized_text,
            "raw_text": transcript.text,
            "language": transcript.language,
            "confidence": round(float(transcript.avg_logprob), 4),
            "quality": round(float(report.score), 4),
            "decision": "accept" if report.accept else "reject",
            "reasons": report.reasons,
            "transcript": transcript.to_dict(),
            "quality_report": report.to_dict(),
        }

        def update(job: dict[str, Any]) -> None:
            clips = job.setdefault("clips", {})
            if clips.get(cid) in (None, "audio"):
                clips[cid] = "transcribed"
            job["transcribed_count"] = sum(1 for s in clips.values() if s != "audio")

        return Result([Output("transcribed", cid, tmp, "wav", out_meta)], update,
                      log={"decision": out_meta["decision"], "quality": out_meta["quality"],
                           "reasons": ",".join(report.reasons)})
