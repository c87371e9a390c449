"""The one small interface every stage implements.

A stage only transforms an input item into outputs: it writes output payloads to temporary names that
`StageContext.tmp_output()` hands out and returns them with their metadata. The item runner (`core/items.py`) owns
claiming, committing, the job record, retries, quarantine and removing the input. Which spool a stage reads and
writes, its time limit and its worker count come from its row in `pipeline.py` (`self.spec`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ttsft_daemon.config import Config
from ttsft_daemon.core.backoff import Backoff
from ttsft_daemon.core.inbox import InboxScanner
from ttsft_daemon.core.jobs import JobRecord
from ttsft_daemon.core.spool import Item, Spool
from ttsft_daemon.errors import ShuttingDown
from ttsft_daemon.pipeline import PIPELINE, StageSpec

JobUpdate = Callable[[JobRecord], None]


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
    # Removes the input once the outputs and the job are committed (default: the runner removes it by path).
    # Ingest sets it: the inbox file is removed only while it is still the file that was read.
    remove_input: Callable[[], object] | None = None


@dataclass(frozen=True)
class StageEnv:
    """What every stage is built with (the same for all rows of the table)."""

    config: Config
    spool: Spool
    scanner: InboxScanner
    backoff: Backoff | None = None  # the daemon's retry state (stages that defer items wake them through it)
    pipeline: tuple[StageSpec, ...] = PIPELINE  # the table this stage is a row of


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
    spec: StageSpec  # its row of the pipeline table: name, source, target, time limit

    @property
    def name(self) -> str: ...

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

    def __init__(self, spec: StageSpec, env: StageEnv) -> None:
        self.spec = spec
        self.env = env
        self.config = env.config
        self.spool = env.spool

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def source(self) -> str:
        return self.spec.source

    @property
    def target(self) -> str:
        return self.spec.target

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def candidates(self) -> list[Item]:
        return self.spool.items(self.source)
