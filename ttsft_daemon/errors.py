"""One error hierarchy for the whole daemon."""

from __future__ import annotations


class TtsftError(Exception):
    """Base of every error the daemon raises on purpose."""


class ConfigError(TtsftError):
    """A configuration file is missing, unreadable or invalid; `problems` lists every issue."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))

    def explain(self) -> str:
        lines = [f"Invalid configuration in {self.source}:"]
        lines += [f"  - {p}" for p in self.problems]
        lines.append("Fix these keys (config.example.yaml documents every key and its default) and retry.")
        return "\n".join(lines)


class RejectedInput(TtsftError):
    """The input can never succeed (not audio, too long, no speech ...): quarantine it, do not retry."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class TransientError(TtsftError):
    """The item may succeed later (disk full, worker process died, time-out): retry with back-off."""


class WorkerDied(TransientError):
    """A model worker process exited or stopped answering."""


class ShuttingDown(TtsftError):
    """Raised inside long work when the daemon is stopping; the item is left for the next start."""


class Deferred(TtsftError):
    """The item cannot be decided yet and waits in its spool (not a failure: no attempt is spent, nothing is
    quarantined); it is looked at again after `retry_seconds`, or sooner when its stage is woken."""

    def __init__(self, reason: str, retry_seconds: float = 30.0) -> None:
        self.reason = reason
        self.retry_seconds = retry_seconds
        super().__init__(reason)
