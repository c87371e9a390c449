"""Accept: spool/transcribed clip -> dataset/<voice>/ (accepted) or failed/ with the gate's reasons (rejected)."""

from __future__ import annotations

import soundfile as sf

from ttsft_daemon.core.jobs import CLIP_ACCEPTED, JobRecord
from ttsft_daemon.core.spool import Item
from ttsft_daemon.dataset import Row, add_clip
from ttsft_daemon.errors import RejectedInput
from ttsft_daemon.stages.base import Result, SpoolStage, StageContext


class AcceptStage(SpoolStage):
    def process(self, item: Item, ctx: StageContext) -> Result:
        meta = item.meta()
        if meta.get("decision") != "accept":
            reasons = meta.get("reasons") or ["no decision recorded"]
            raise RejectedInput("quality gate", ", ".join(reasons) + f" (quality {meta.get('quality')})")
        self._validate_wav(item)
        voice, cid = meta["voice"], meta["clip_id"]
        row = Row(f"{cid}.wav", str(meta["text"]), float(meta["duration"]),
                  self.config.dataset.speaker or voice, float(meta.get("quality", 0.0)))
        added = add_clip(self.spool, voice, item.payload, row, info=meta)

        def update(job: JobRecord) -> None:
            job.set_clip(cid, CLIP_ACCEPTED)

        return Result([], update, log={"added": added, "seconds": row.duration})

    def _validate_wav(self, item: Item) -> None:
        info = sf.info(str(item.payload))
        want = self.config.audio.sample_rate
        if info.channels != 1 or info.samplerate != want or info.subtype != "PCM_16":
            raise RejectedInput("invalid clip WAV", f"{info.channels} ch, {info.samplerate} Hz, {info.subtype}; "
                                f"the dataset needs 1 ch, {want} Hz, PCM_16")
