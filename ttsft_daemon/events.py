"""Notifications: `notify.command` (an argv list) run once per event with the event as one JSON object on stdin.

Events: `voice_exported` (voice, epoch, wer, onnx, report), `file_quarantined` (stage, reason, item, voice),
`speaker_enrollment_needed` (voice, why), `disk_nearly_full` (path, free_bytes). Every event carries `event`,
`time` (ISO 8601) and `host`. The command's failure (missing program, non-zero exit, time-out) is logged and never
raised: a notification is a courtesy, never a reason to stop the work.
"""

from __future__ import annotations

import json
import socket
import subprocess
from typing import Any

from ttsft_daemon.config import NotifyConfig
from ttsft_daemon.logs import get_logger
from ttsft_daemon.training.progress import now_iso

log = get_logger(__name__)

VOICE_EXPORTED = "voice_exported"
FILE_QUARANTINED = "file_quarantined"
SPEAKER_ENROLLMENT_NEEDED = "speaker_enrollment_needed"
DISK_NEARLY_FULL = "disk_nearly_full"
EVENTS = (VOICE_EXPORTED, FILE_QUARANTINED, SPEAKER_ENROLLMENT_NEEDED, DISK_NEARLY_FULL)


def event_payload(event: str, **fields: Any) -> dict[str, Any]:
    return {"event": event, "time": now_iso(), "host": socket.gethostname(), **fields}


def notify(cfg: NotifyConfig, event: str, **fields: Any) -> bool:
    """Run the configured command for `event`; True when it ran and exited 0 (False when off or it failed)."""
    if not cfg.command or (cfg.events and event not in cfg.events):
        return False
    payload = json.dumps(event_payload(event, **fields), default=str, ensure_ascii=False).encode("utf-8")
    try:
        done = subprocess.run(list(cfg.command), input=payload, capture_output=True, timeout=cfg.timeout_seconds,
                              check=False)
    except subprocess.TimeoutExpired:
        log.warning("notify command timed out", notify_event=event, command=cfg.command[0],
                    timeout_s=cfg.timeout_seconds)
        return False
    except OSError as exc:
        log.warning("notify command cannot run", notify_event=event, command=cfg.command[0],
                    error=f"{type(exc).__name__}: {exc}")
        return False
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        log.warning("notify command failed", notify_event=event, command=cfg.command[0], status=done.returncode,
                    stderr=" | ".join(tail))
        return False
    log.info("notified", notify_event=event, command=cfg.command[0])
    return True
