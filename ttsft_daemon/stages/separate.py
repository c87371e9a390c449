"""Separate: spool/raw original -> spool/vocals/<job_id>.wav (Spleeter vocal stem, or plain decode when disabled)."""

from __future__ import annotations

from typing import Any

from ttsft_daemon import engine
from ttsft_daemon.core.jobs import JobRecord
from ttsft_daemon.core.spool import Item
from ttsft_daemon.pipeline import StageSpec
from ttsft_daemon.stages.base import Output, Result, SpoolStage, StageContext, StageEnv


class SeparateStage(SpoolStage):
    def __init__(self, spec: StageSpec, env: StageEnv) -> None:
        super().__init__(spec, env)
        self._worker: engine.SeparateWorker | None = None

    def open(self) -> None:
        # The Spleeter worker process here, or the separation actors of the Ray engine (engine.kind).
        self._worker = engine.current().separator(self.config, self.spec.limit(self.config))
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
        job_id = meta["job_id"]
        tmp = ctx.tmp_output(self.target, job_id, "wav")
        try:
            info = self._worker.separate(item.payload, tmp, self.spool.layout.work, ctx.stop)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        separated = bool(info["separated"])
        out_meta = {**meta, "separated": separated}
        log: dict[str, Any] = {"spleeter": separated}
        if separated and info.get("chunks") is not None:
            # chunks passed through unseparated because no music was found in them (separation.skip_music_free)
            out_meta["separation_chunks"] = log["chunks"] = info["chunks"]
            out_meta["music_free_chunks"] = log["music_free_chunks"] = info.get("music_free_chunks") or 0
        if separated:  # the music Spleeter left in taken further down (separation.remove_residue)
            out_meta["residue_removed"] = log["residue_removed"] = bool(info.get("residue_removed"))
            if info.get("residue_pause_gap_db") is not None:  # how far under the speech the pauses lay (dB)
                out_meta["residue_pause_gap_db"] = log["residue_pause_gap_db"] = info["residue_pause_gap_db"]

        def update(job: JobRecord) -> None:
            job.separated, job.spleeter = True, separated

        return Result([Output(self.target, job_id, tmp, "wav", out_meta)], update, log=log)
