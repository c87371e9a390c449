"""The pipeline, declared once.

Every other part reads this table: the daemon starts one worker pool per row (sized by
`daemon.workers.<row.name>`), a committed output wakes the row that consumes its spool, the consumer of a spool is the
stage whose claim guards its items, the spool folders are the rows' targets, `status` counts them, and "is data work
still pending" looks at them. Adding a stage is one module under `stages/` plus one row here (ARCHITECTURE.md shows
the speaker stage as the example).

This module imports nothing of the package at run time, so the low-level modules (the spool) can read it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ttsft_daemon.config import Config
    from ttsft_daemon.stages.base import Stage, StageEnv

INBOX = "inbox"  # what the first stage reads: user files, not a spool
DATASET = "dataset"  # what the last stage writes: dataset/<voice>/, not a spool
TRAIN = "train"  # what an accepted clip wakes: the training scheduler (not a pool of stage workers)


@dataclass(frozen=True)
class StageSpec:
    """One row: a stage reads `source`, writes `target`; `factory` is "module:Class" (imported when a pool starts,
    so listing the table never loads a model). `time_limit` is how long one item may take before the health check
    calls the worker stuck; a callable computes it from the config."""

    name: str
    source: str
    target: str
    factory: str
    time_limit: float | Callable[[Config], float] = 300.0

    def limit(self, config: Config) -> float:
        return self.time_limit(config) if callable(self.time_limit) else float(self.time_limit)

    def build(self, env: StageEnv) -> Stage:
        module, _, cls = self.factory.partition(":")
        stage: Stage = getattr(importlib.import_module(module), cls)(self, env)
        return stage


def _ingest_limit(c: Config) -> float:
    return c.daemon.ffmpeg_timeout_seconds + 600


def _separate_limit(c: Config) -> float:
    return c.separation.timeout_seconds + c.daemon.ffmpeg_timeout_seconds


PIPELINE: tuple[StageSpec, ...] = (
    StageSpec("ingest", INBOX, "raw", "ttsft_daemon.stages.ingest:IngestStage", _ingest_limit),
    StageSpec("separate", "raw", "vocals", "ttsft_daemon.stages.separate:SeparateStage", _separate_limit),
    StageSpec("segment", "vocals", "clips", "ttsft_daemon.stages.segment:SegmentStage", 3600.0),
    StageSpec("speaker", "clips", "audio", "ttsft_daemon.stages.speaker:SpeakerStage", 900.0),
    StageSpec("transcribe", "audio", "transcribed", "ttsft_daemon.stages.transcribe:TranscribeStage", 900.0),
    StageSpec("accept", "transcribed", DATASET, "ttsft_daemon.stages.accept:AcceptStage", 300.0),
)

STAGES: tuple[str, ...] = tuple(s.name for s in PIPELINE)
# The spool folders, in pipeline order: every stage's target except the dataset.
SPOOLS: tuple[str, ...] = tuple(s.target for s in PIPELINE if s.target != DATASET)


def stage(name: str, table: tuple[StageSpec, ...] = PIPELINE) -> StageSpec:
    for spec in table:
        if spec.name == name:
            return spec
    raise KeyError(name)


def consumer_of(spool: str, table: tuple[StageSpec, ...] = PIPELINE) -> str:
    """The stage that reads `spool` (its claim key "<stage>-<item id>" guards the spool's items); TRAIN for the
    dataset."""
    for spec in table:
        if spec.source == spool:
            return spec.name
    return TRAIN


def downstream(name: str, table: tuple[StageSpec, ...] = PIPELINE) -> str:
    """The stage woken when `name` commits an output."""
    return consumer_of(stage(name, table).target, table)


def recording_spools(table: tuple[StageSpec, ...] = PIPELINE) -> tuple[str, ...]:
    """The spools that hold whole recordings (bounded by `daemon.max_jobs_in_flight`): from the first stage's
    target up to the spool the segment stage cuts into clips."""
    spools = spools_of(table)
    try:
        last = spools.index(stage("segment", table).source)
    except (KeyError, ValueError):
        return spools[:1]
    return spools[: last + 1]


def spools_of(table: tuple[StageSpec, ...]) -> tuple[str, ...]:
    return tuple(s.target for s in table if s.target != DATASET)
