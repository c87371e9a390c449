"""Progress of long one-shot commands (`report`, `train`): a bar redrawn in place on a terminal, plain lines (at
a bounded rate, and always the last one) when the output goes to a file or a pipe."""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR = 30


class Progress:
    def __init__(self, label: str, stream: TextIO | None = None, tty: bool | None = None,
                 min_interval: float | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.min_interval = min_interval if min_interval is not None else (0.1 if self.tty else 10.0)
        self._last = float("-inf")
        self._drawn = False

    def update(self, done: int, total: int, detail: str = "") -> None:
        now = time.monotonic()
        final = total > 0 and done >= total
        if not final and now - self._last < self.min_interval:
            return
        self._last = now
        share = min(max(done / total, 0.0), 1.0) if total > 0 else 0.0
        count = f"{done}/{total}" if total > 0 else str(done)
        if self.tty:
            filled = int(BAR * share)
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (BAR - filled)}] {count} {detail}\x1b[K")
            self._drawn = True
        else:
            self.stream.write(f"{self.label}: {count}" + (f" ({share:.0%})" if total > 0 else "")
                              + (f" {detail}" if detail else "") + "\n")
        self.stream.flush()

    def step(self, what: str, done: int, total: int) -> None:
        """update() in the (what, done, total) form of the report's progress callback."""
        self.update(done, total, what)

    def close(self, message: str = "") -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
        if message:
            self.stream.write(message + "\n")
        self.stream.flush()
