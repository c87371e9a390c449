"""How fast each stage gets through audio, measured by the running daemon (for `status`'s "done in about" line).

Each finished item adds (audio seconds, seconds the worker spent on it); a stage's rate is audio seconds per wall
second with all its workers busy: workers x audio / busy over its last `WINDOW` items. Items without a known
duration (inbox files before ingest probes them) are not counted.
"""

from __future__ import annotations

import threading
from collections import deque

WINDOW = 50


class StageRates:
    def __init__(self, window: int = WINDOW) -> None:
        self._lock = threading.Lock()
        self._window = window
        self._done: dict[str, deque[tuple[float, float]]] = {}

    def record(self, stage: str, audio_seconds: object, busy_seconds: float) -> None:
        if not isinstance(audio_seconds, (int, float)) or isinstance(audio_seconds, bool) or audio_seconds <= 0 \
                or busy_seconds <= 0:
            return
        with self._lock:
            self._done.setdefault(stage, deque(maxlen=self._window)).append((float(audio_seconds), busy_seconds))

    def snapshot(self, workers: dict[str, int]) -> dict[str, float]:
        """stage -> audio seconds per wall second (only stages with measurements)."""
        with self._lock:
            out = {}
            for stage, done in self._done.items():
                busy = sum(b for _, b in done)
                if busy > 0:
                    out[stage] = round(max(1, workers.get(stage, 1)) * sum(a for a, _ in done) / busy, 3)
            return out
