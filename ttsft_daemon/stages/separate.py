"""Separate: spool/raw original -> spool/vocals/<job_id>.wav (Spleeter vocal stem, or plain decode when disabled)."""

from __future__ import annotations

from ttsft_daemon.audio.separation import SeparatorProcess, decode_and_separate
from ttsft_daemon.core.jobs import JobRecord
from ttsft_daemon.core.spool import Item
from ttsft_daemon.pipeline import StageSpec
from ttsft_daemon.stages.base import Output, Result, SpoolStage, StageContext, StageEnv


class SeparateStage(SpoolStage):
    def __init__(self, spec: StageSpec, env: StageEnv) -> None:
        super().__init__(spec, env)
        self._separator: SeparatorProcess | None = None

    def open(self) -> None:
        sep = self.config.separation
        if sep.enabled:
            self._separator = SeparatorProcess(
                python=sep.python_path,
                model_dir=sep.model_dir or self.config.paths.models_dir / "spleeter",
                chunk_seconds=sep.chunk_seconds,
                overlap_seconds=sep.overlap_seconds,
                timeout=sep.timeout_seconds,
                start_timeout=sep.start_timeout_seconds,
                crossfade=sep.crossfade,
                level_dbfs=sep.input_level_dbfs,
            )
            self._separator.start()

    def close(self) -> None:
        if self._separator is not None:
            self._separator.close()
            self._separator = None

    def process(self, item: Item, ctx: StageContext) -> Result:
        meta = item.meta()
        job_id = meta["job_id"]
        tmp = ctx.tmp_output(self.target, job_id, "wav")
        try:
            decode_and_separate(self._separator, item.payload, tmp, self.spool.layout.work,
                                self.config.daemon.ffmpeg_timeout_seconds)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        separated = self._separator is not None
        out_meta = {**meta, "separated": separated}

        def update(job: JobRecord) -> None:
            job.separated, job.spleeter = True, separated

        return Result([Output(self.target, job_id, tmp, "wav", out_meta)], update, log={"spleeter": separated})
