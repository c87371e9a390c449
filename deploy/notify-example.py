#!/usr/bin/env python3
"""Example `notify.command` for ttsft-daemon: reads one event (JSON) on stdin and passes it on.

    notify:
      command: ["/usr/bin/python3", "/opt/ttsft-daemon/deploy/notify-example.py"]

With NOTIFY_WEBHOOK_URL set (in the unit's environment: `systemctl edit ttsft-daemon`, then
`Environment=NOTIFY_WEBHOOK_URL=https://chat.example/hooks/...`), it posts {"text": "..."} there (Slack, Mattermost,
Rocket.Chat and Discord-style webhooks accept that shape; Discord wants "content": set NOTIFY_WEBHOOK_KEY=content).
Otherwise, on a desktop session, it calls `notify-send`; else it prints the line to stderr (the daemon logs it).
Note: the packaged unit's sandbox allows no network; a webhook needs a drop-in that allows it. Exit non-zero on
failure: the daemon logs the failure and carries on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request


def describe(event: dict[str, object]) -> str:
    kind = event.get("event")
    voice = event.get("voice", "?")
    if kind == "voice_exported":
        wer = event.get("wer")
        rate = f"{float(wer):.0%}" if isinstance(wer, (int, float)) else "?"
        return f"ttsft: voice {voice} exported at epoch {event.get('epoch')}, WER {rate}. Report: {event.get('report')}"
    if kind == "file_quarantined":
        return f"ttsft: {event.get('item')} quarantined at {event.get('stage')}: {event.get('reason')}"
    if kind == "speaker_enrollment_needed":
        return f"ttsft: voice {voice} needs an enrollment sample ({event.get('why', '')})"
    if kind == "disk_nearly_full":
        return f"ttsft: disk nearly full at {event.get('path')} ({event.get('free_bytes')} bytes free)"
    return f"ttsft: {kind}: {json.dumps(event)}"


def main() -> int:
    event = json.load(sys.stdin)
    text = describe(event)
    url = os.environ.get("NOTIFY_WEBHOOK_URL")
    if url:
        body = json.dumps({os.environ.get("NOTIFY_WEBHOOK_KEY", "text"): text}).encode()
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=8) as response:
            return 0 if 200 <= response.status < 300 else 1
    if shutil.which("notify-send") and (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return subprocess.call(["notify-send", "ttsft-daemon", text])
    print(text, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
