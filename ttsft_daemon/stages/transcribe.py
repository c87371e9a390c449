"""Transcribe: spool/audio clip -> spool/transcribed clip + JSON (transcript, scores, accept/reject decision).

With `transcription.pack_seconds` > 0 a clip is transcribed together with the neighbours of its recording that
are still waiting, in one Whisper pass (see packing.py); the pass's results for the others wait in memory until
their own items come. Each clip stays one item of its own: claims, retries and quarantine are unchanged.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from ttsft_daemon import engine
from ttsft_daemon.core.atomic import link_or_copy
from ttsft_daemon.core.jobs import CLIP_TRANSCRIBED, CLIP_WAITING, JobRecord
from ttsft_daemon.core.spool import Item
from ttsft_daemon.errors import RejectedInput
from ttsft_daemon.pipeline import StageSpec
from ttsft_daemon.stages.base import Output, Result, SpoolStage, StageContext, StageEnv
from ttsft_daemon.text.packing import GAP_SECONDS as PACK_GAP_SECONDS
from ttsft_daemon.text.packing import PackedResults, plan_windows
from ttsft_daemon.text.transcription import Transcript, read_mono, to_whisper_rate

# One per process: the transcribe workers of a daemon share the results of the passes they made.
PACKED = PackedResults()


@dataclass(frozen=True)
class PackedClip:
    transcript: Transcript | None  # None: doubtful in the pass, to be transcribed alone
    why_alone: str
    dnsmos: dict[str, float] | None
    settings: tuple[Any, ...]


@dataclass
class Pending:
    """A pass under way in some worker of this process; `done` is set when its results are in (or it failed)."""

    settings: tuple[Any, ...]
    done: threading.Event = field(default_factory=threading.Event)


class TranscribeStage(SpoolStage):
    def __init__(self, spec: StageSpec, env: StageEnv) -> None:
        super().__init__(spec, env)
        # Whisper and the quality gate: in this process, or the Ray engine's actors (engine.kind).
        self._worker: engine.TranscribeWorker | None = None

    def open(self) -> None:
        self._worker = engine.current().transcriber(self.config, self.spec.limit(self.config))
        self._worker.open()

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def process(self, item: Item, ctx: StageContext) -> Result:
        if self._worker is None:
            self.open()
        assert self._worker is not None
        meta = item.meta()
        samples, sr = read_mono(item.payload)
        packed = self._packed(item, meta, ctx) if self.config.transcription.pack_seconds > 0 else None
        if packed is not None and packed.transcript is not None:
            second = packed.transcript.second_pass
            how = f"packed, second pass: {second}" if second else "packed"
        else:
            how = "alone" if packed is None else f"alone: {packed.why_alone}"
        transcript, report = self._worker.judge(samples, sr, packed.transcript if packed else None,
                                                packed.dnsmos if packed else None, ctx.stop)
        report.details["transcribed"] = how
        cid = meta["clip_id"]
        tmp = ctx.tmp_output(self.target, cid, "wav")
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

        def update(job: JobRecord) -> None:
            if job.clips.get(cid) in (None, *CLIP_WAITING):
                job.set_clip(cid, CLIP_TRANSCRIBED)

        return Result([Output(self.target, cid, tmp, "wav", out_meta)], update,
                      log={"decision": out_meta["decision"], "quality": out_meta["quality"],
                           "reasons": ",".join(report.reasons), "packed": how.startswith("packed")})

    # ---- packing

    def _settings(self) -> tuple[Any, ...]:
        t, q = self.config.transcription, self.config.quality
        return (t.model, t.beam_size, t.language, t.vad_filter, t.pack_seconds, q.dnsmos, q.min_word_probability)

    def _packed(self, item: Item, meta: dict[str, Any], ctx: StageContext) -> PackedClip | None:
        """This clip's result from a packed pass: made now with its waiting neighbours, or by another worker.

        When another worker is already transcribing the pass that holds this clip, this worker does not wait
        idle: it transcribes the next pass of the same recording meanwhile, so two workers never share one pass
        and never sit on one lock.
        """
        job_id = str(meta.get("job_id", ""))
        settings = self._settings()
        while True:
            ctx.check_stop()
            with PACKED.job_lock(job_id):
                found = PACKED.get(item.id)
                if isinstance(found, PackedClip) and found.settings == settings:
                    return found
                busy = found if isinstance(found, Pending) and found.settings == settings else None
                window = self._plan(job_id, settings, None if busy else item)
                if len(window) < 2:
                    if busy is None:
                        return None  # nothing to pack it with: alone, as without packing
                    window = []  # nothing worth a pass to do while waiting
                mine = Pending(settings)
                for member in window:
                    PACKED.put(member.id, mine)
            if window:
                self._run_pass(window, mine, settings, ctx.stop)
            if busy is None:  # this clip's own pass is done
                result = PACKED.get(item.id)
                return result if isinstance(result, PackedClip) else None
            while not busy.done.wait(1.0):
                ctx.check_stop()

    def _run_pass(self, window: list[Item], mine: Pending, settings: tuple[Any, ...],
                  stop: threading.Event | None = None) -> None:
        assert self._worker is not None
        try:
            audio = []
            for member in list(window):
                try:
                    audio.append(to_whisper_rate(*read_mono(member.payload)))
                except RejectedInput:  # gone (another daemon took it) or unreadable: its own item will say so
                    window.remove(member)
                    PACKED.put(member.id, None)
            if not window:
                return
            results = self._worker.packed_pass(audio, stop)
            for member, (text, dnsmos) in zip(window, results, strict=True):
                transcript = text if isinstance(text, Transcript) else None
                why = text if isinstance(text, str) else ""
                PACKED.put(member.id, PackedClip(transcript, why, dnsmos, settings))
        except BaseException:
            for member in window:  # planned again by whoever needs them next (an unreadable clip goes alone)
                if PACKED.get(member.id) is mine:
                    PACKED.put(member.id, None)
            raise
        finally:
            mine.done.set()

    def _plan(self, job_id: str, settings: tuple[Any, ...], holding: Item | None) -> list[Item]:
        """The next pass of this recording: waiting clips (time order) with neither a result nor a pass under way,
        as many as fit; the one holding `holding` when given, else the first."""
        waiting = []
        for other in self.spool.items(self.source):
            is_it = holding is not None and other.id == holding.id
            if not (is_it or other.id.startswith(f"{job_id}-")):
                continue
            found = PACKED.get(other.id)
            if not is_it and isinstance(found, (PackedClip, Pending)) and found.settings == settings:
                continue
            try:
                duration = float(other.meta()["duration"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            waiting.append((other, duration))
        waiting.sort(key=lambda pair: pair[0].id)  # clip ids end in the zero-padded start time
        plan = plan_windows([d for _, d in waiting], self.config.transcription.pack_seconds, PACK_GAP_SECONDS)
        for group in plan:
            members = [waiting[i][0] for i in group]
            if holding is None or any(m.id == holding.id for m in members):
                return members
        return [holding] if holding is not None else []
