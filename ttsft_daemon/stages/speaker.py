"""Speaker: spool/clips clip -> spool/audio clip (same audio, with its speaker embedding and decision), or
failed/ as another speaker's. Placeholder until the speaker library lands: passes clips through."""

from __future__ import annotations

import os
from pathlib import Path

from ttsft_daemon.core.spool import Item
from ttsft_daemon.stages.base import Output, Result, SpoolStage, StageContext


def link_or_copy(src: Path, dst: Path) -> None:
    import shutil

    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


class SpeakerStage(SpoolStage):
    def process(self, item: Item, ctx: StageContext) -> Result:
        meta = item.meta()
        cid = meta["clip_id"]
        tmp = ctx.tmp_output(self.target, cid, "wav")
        link_or_copy(item.payload, tmp)
        return Result([Output(self.target, cid, tmp, "wav", meta)], None, log={})
