"""The one small interface every stage implements.

A stage only transforms an input item into outputs: it writes output payloads to temporary names that
`StageContext.tmp_output()` hands out and returns them with their metadata. The runner (`runner.py`) owns
claiming, committing, the job record, retries, quarantine and removing the input.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..config import Config
from ..errors import ShuttingDown
from ..spool import Item, Spool

JobUpdate = Callable[[dict[str, Any]], None]


def finish_if_complete(job: dict[str, Any]) -> None:
    """Mark the job finished once it is segmented and every clip is accepted or rejected. Called by every update
    that can be the last: a segment step redone after a failed job write (a full disk) may be recorded after its
    clips were already accepted."""
    clips = job.get("clips", {})
    if job.get("segmented") and all(s in ("accepted", "rejected") for s in clips.values()):
        job["manifest_created"] = True


@dataclass
class Output:
    spool: str
    item_id: str
    payload_tmp: Path
    ext: str
    meta: dict[str, Any]


@dataclass
class Result:
    outputs: list[Output] = field(default_factory=list)
    job_update: JobUpdate | None = None
    log: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    config: Config
    spool: Spool
    stop: threading.Event

    def tmp_output(self, spool: str, item_id: str, ext: str) -> Path:
        return self.spool.tmp_payload(spool, item_id, ext)

    def check_stop(self) -> None:
        if self.stop.is_set():
            raise ShuttingDown("stopping")


class Stage(Protocol):
    name: str
    source: str  # the spool it consumes ("inbox" for ingest)
    time_limit: float  # seconds one item may take before the watchdog considers the worker stuck

    def open(self) -> None:
        """Load models once; called in the worker thread before the first item."""

    def candidates(self) -> list[Item]:
        """Items this stage could work on now (committed, not claimed yet)."""

    def process(self, item: Item, ctx: StageContext) -> Result:
        """Transform one claimed item; raise RejectedInput to quarantine it, TransientError to retry."""

    def close(self) -> None:
        """Release models and worker processes."""


class SpoolStage:
    """Defaults shared by the stages that read a spool: no model to load, candidates = the source's items."""

    name = ""
    source = ""
    time_limit = 300.0

    def __init__(self, config: Config, spool: Spool) -> None:
        self.config = config
        self.spool = spool

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def candidates(self) -> list[Item]:
        return self.spool.items(self.source)
