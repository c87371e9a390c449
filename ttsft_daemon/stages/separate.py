"""Separate: spool/raw original -> spool/vocals/<job_id>.wav (Spleeter vocal stem, or plain decode when disabled)."""

from __future__ import annotations

from typing import Any

from ..config import Config
from ..separation import SeparatorProcess, decode_and_separate
from ..spool import Item, Spool
from .base import Output, Result, SpoolStage, StageContext


class SeparateStage(SpoolStage):
    name = "separate"
    source = "raw"

    def __init__(self, config: Config, spool: Spool) -> None:
        super().__init__(config, spool)
        self.time_limit = config.separation.timeout_seconds + config.daemon.ffmpeg_timeout_seconds
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
        tmp = ctx.tmp_output("vocals", job_id, "wav")
        try:
            decode_and_separate(self._separator, item.payload, tmp, self.spool.layout.work,
                                self.config.daemon.ffmpeg_timeout_seconds)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        separated = self._separator is not None
        out_meta = {**meta, "separated": separated}

        def update(job: dict[str, Any]) -> None:
            job.update(separated=True, spleeter=separated)

        return Result([Output("vocals", job_id, tmp, "wav", out_meta)], update, log={"spleeter": separated})
