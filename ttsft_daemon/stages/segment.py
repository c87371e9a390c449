"""Segment: spool/vocals/<job_id>.wav -> clean clips spool/clips/<job_id>-<start_ms>.wav (16-bit mono)."""

from __future__ import annotations

import soundfile as sf

from ttsft_daemon.audio.cleaning import clean_clip, write_wav_pcm16
from ttsft_daemon.audio.segmentation import find_segments, rms_envelope_from_file
from ttsft_daemon.core.jobs import JobRecord
from ttsft_daemon.core.spool import Item
from ttsft_daemon.errors import RejectedInput
from ttsft_daemon.stages.base import Output, Result, SpoolStage, StageContext


def clip_id(job_id: str, start_s: float) -> str:
    return f"{job_id}-{round(start_s * 1000):09d}"


class SegmentStage(SpoolStage):
    def process(self, item: Item, ctx: StageContext) -> Result:
        meta = item.meta()
        job_id, voice = meta["job_id"], meta["voice"]
        seg_cfg, audio_cfg = self.config.segmentation, self.config.audio
        env, frame_s = rms_envelope_from_file(item.payload, seg_cfg.frame_seconds)
        segments = find_segments(env, frame_s, seg_cfg)
        outputs: list[Output] = []
        try:
            with sf.SoundFile(str(item.payload)) as f:
                sr = f.samplerate
                for start, end in segments:
                    ctx.check_stop()
                    f.seek(int(start * sr))
                    samples = f.read(int((end - start) * sr), dtype="float32", always_2d=True).mean(axis=1)
                    clip = clean_clip(samples, sr, audio_cfg, seg_cfg, silence_dbfs=audio_cfg.silence_dbfs)
                    if clip is None:
                        continue
                    cid = clip_id(job_id, start)
                    tmp = ctx.tmp_output(self.target, cid, "wav")
                    write_wav_pcm16(tmp, clip, audio_cfg.sample_rate)
                    outputs.append(Output(self.target, cid, tmp, "wav", {
                        "job_id": job_id, "voice": voice, "clip_id": cid, "source_name": meta.get("source_name"),
                        "start": round(start, 3), "end": round(end, 3),
                        "duration": round(len(clip) / audio_cfg.sample_rate, 3),
                        "sample_rate": audio_cfg.sample_rate,
                    }))
        except BaseException:
            for o in outputs:
                o.payload_tmp.unlink(missing_ok=True)
            raise
        if not outputs:
            raise RejectedInput("no speech found", "segmentation found no voiced segment of usable length")
        ids = [o.item_id for o in outputs]

        def update(job: JobRecord) -> None:
            for cid in ids:
                job.clips.setdefault(cid, self.target)
            job.segmented, job.segments_saved = True, len(ids)
            job.recount()

        speech_s = sum(o.meta["duration"] for o in outputs)
        return Result(outputs, update, log={"clips": len(ids), "speech_s": round(speech_s, 1)})
