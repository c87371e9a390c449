"""Retry state of this process, shared by all worker threads: when each item may run again."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

# Consecutive disk-full failures of one item double its wait up to this many times (then it stays there).
DISK_FULL_MAX_DOUBLINGS = 4


@dataclass
class Backoff:
    """In-memory retry state of this process, shared by all worker threads: when each item may run again, the
    attempts of inbox files (they have no job record yet) and each item's run of disk-full failures."""

    def __post_init__(self) -> None:
        self._next: dict[str, float] = {}
        self._inbox_attempts: dict[str, int] = {}
        self._disk_full_streak: dict[str, int] = {}
        self._deferred: set[str] = set()
        self._wakes: dict[str, int] = {}  # prefix -> how many times its deferred items were woken
        self._lock = threading.Lock()

    def ready(self, key: str) -> bool:
        with self._lock:
            return self._next.get(key, 0.0) <= time.monotonic()

    def delay(self, key: str, seconds: float) -> None:
        with self._lock:
            self._next[key] = time.monotonic() + seconds

    def clear(self, key: str) -> None:
        with self._lock:
            self._next.pop(key, None)
            self._disk_full_streak.pop(key, None)
            self._deferred.discard(key)

    def defer(self, key: str, seconds: float, wakes_before: dict[str, int] | None = None) -> bool:
        """`key` waits for something outside it (see errors.Deferred): not work in progress. With `wakes_before`
        (`wakes()` taken before the attempt that deferred), a wake of its stage that came during the attempt
        (what it waited for arrived while it was deciding to wait) leaves it ready at once instead: False."""
        with self._lock:
            if wakes_before is not None and any(key.startswith(prefix) and n != wakes_before.get(prefix, 0)
                                                for prefix, n in self._wakes.items()):
                self._next.pop(key, None)
                self._deferred.discard(key)
                return False
            self._next[key] = time.monotonic() + seconds
            self._deferred.add(key)
            return True

    def wakes(self) -> dict[str, int]:
        with self._lock:
            return dict(self._wakes)

    def is_deferred(self, key: str) -> bool:
        with self._lock:
            return key in self._deferred

    def wake_deferred(self, prefix: str) -> None:
        """What the deferred items of one stage (keys "<stage>-...") waited for may have come: try them at once
        (and count them as pending work again until they run)."""
        with self._lock:
            self._wakes[prefix] = self._wakes.get(prefix, 0) + 1
            for key in [k for k in self._deferred if k.startswith(prefix)]:
                self._next.pop(key, None)
                self._deferred.discard(key)

    def count_inbox_attempt(self, key: str, change: int = 1) -> int:
        with self._lock:
            n = max(0, self._inbox_attempts.get(key, 0) + change)
            self._inbox_attempts[key] = n
            return n

    def forget_inbox_attempts(self, key: str) -> None:
        with self._lock:
            self._inbox_attempts.pop(key, None)

    def disk_full_delay(self, key: str, base: float) -> float:
        """The wait before retrying `key` after one more disk-full failure."""
        with self._lock:
            streak = self._disk_full_streak.get(key, 0)
            self._disk_full_streak[key] = streak + 1
        return float(base * 2 ** min(streak, DISK_FULL_MAX_DOUBLINGS))
