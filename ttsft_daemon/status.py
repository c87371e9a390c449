"""What `ttsft-daemon status` and the daemon's STATUS= line report; read from the files alone, so it works
whether the daemon runs or not."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ttsft_daemon.config import Config
from ttsft_daemon.core.speakers import books_root, public_state
from ttsft_daemon.core.spool import SPOOLS, Layout, Spool, atomic_write_json, read_json
from ttsft_daemon.dataset import summary

DAEMON_FILE = "daemon.json"


def count_inbox(inbox: Path, extensions: list[str]) -> int:
    exts = {e.lower().lstrip(".") for e in extensions}
    n = 0
    try:
        entries = list(os.scandir(inbox))
    except OSError:
        return 0
    for e in entries:
        if e.name.startswith("."):
            continue
        if e.is_dir(follow_symlinks=False):
            try:
                n += sum(1 for s in os.scandir(e.path) if not s.name.startswith(".")
                         and not s.is_dir(follow_symlinks=False) and s.name.rsplit(".", 1)[-1].lower() in exts)
            except OSError:
                continue
        elif e.name.rsplit(".", 1)[-1].lower() in exts:
            n += 1
    return n


def training_state(config: Config, layout: Layout, voice: str, clips: int) -> dict[str, Any]:
    state = read_json(layout.training(voice) / "state.json") or {}
    if not state:
        waiting = clips < config.training.min_clips or not config.training.enabled
        return {"state": "waiting" if waiting else "pending", "epoch": 0, "last_checkpoint": None,
                "min_clips": config.training.min_clips}
    return {
        "state": state.get("state", "unknown"), "epoch": int(state.get("epoch", 0) or 0),
        "last_checkpoint": state.get("last_checkpoint"), "best_checkpoint": state.get("best_checkpoint"),
        "step": state.get("step"), "voice_onnx": state.get("onnx"), "updated": state.get("updated"),
    }


def collect(config: Config) -> dict[str, Any]:
    layout = Layout(config.paths.root)
    spool = Spool(config.paths.root)
    stages: dict[str, int] = {"inbox": count_inbox(layout.inbox, config.inbox.extensions)}
    for s in SPOOLS:
        stages[s] = spool.count(s)
    stages["failed"] = len(list(layout.failed.glob("*.error.json"))) if layout.failed.exists() else 0
    voices: dict[str, Any] = {}
    names = set()
    for top in (layout.datasets, books_root(layout.root)):
        if top.exists():
            names |= {p.name for p in top.iterdir() if p.is_dir() and not p.name.startswith(".")}
    for name in sorted(names):
        clips, seconds = summary(layout.dataset(name)) if layout.dataset(name).is_dir() else (0, 0.0)
        voices[name] = {"clips": clips, "seconds": round(seconds, 2), "hours": round(seconds / 3600, 4),
                        "training": training_state(config, layout, name, clips)}
        speaker = public_state(layout.root, name)
        if speaker is not None:
            voices[name].update(speaker)
    return {"root": str(layout.root), "stages": stages, "voices": voices, "daemon": daemon_info(layout),
            "audio_minutes": waiting_minutes(spool), "drain_minutes": drain_minutes(spool, layout),
            "time": time.time()}


def drain_minutes(spool: Spool, layout: Layout) -> dict[str, float]:
    """Estimated minutes until each spool's waiting audio is processed, from the rates the running daemon measured
    (`rates` in daemon.json: audio seconds its consumer stage processes per wall second); spools without a measured
    rate are left out."""
    info = daemon_info(layout)
    rates = info.get("rates") if info.get("running") else None
    if not isinstance(rates, dict):
        return {}
    from ttsft_daemon.pipeline import consumer_of

    out: dict[str, float] = {}
    for s, minutes in waiting_minutes(spool).items():
        rate = rates.get(consumer_of(s))
        if minutes and isinstance(rate, (int, float)) and rate > 0:
            out[s] = round(minutes / float(rate), 1)
    return out


def waiting_minutes(spool: Spool) -> dict[str, float]:
    """Minutes of audio waiting in each spool (from the items' sidecars; an item without a duration counts 0)."""
    out: dict[str, float] = {}
    for s in SPOOLS:
        seconds = 0.0
        for item in spool.items(s):
            duration = item.meta().get("duration")
            if isinstance(duration, (int, float)) and not isinstance(duration, bool):
                seconds += float(duration)
        out[s] = round(seconds / 60, 2)
    return out


def daemon_info(layout: Layout) -> dict[str, Any]:
    info = read_json(layout.root / DAEMON_FILE) or {}
    pid = info.get("pid")
    running = False
    if isinstance(pid, int):
        try:
            os.kill(pid, 0)
            running = True
        except ProcessLookupError:
            running = False
        except PermissionError:
            running = True
    return {**info, "running": running}


def write_daemon_info(layout: Layout, info: dict[str, Any]) -> None:
    atomic_write_json(layout.root / DAEMON_FILE, {**info, "pid": os.getpid(), "updated": time.time()})


def one_line(status: dict[str, Any]) -> str:
    st = status["stages"]
    parts = [" ".join(f"{k}={v}" for k, v in st.items())]
    for voice, v in status["voices"].items():
        t = v["training"]
        parts.append(f"{voice}: {v['clips']} clips {v['seconds'] / 60:.1f} min, training {t['state']} "
                     f"epoch {t['epoch']}" + (f", speaker {v['speaker_state']}" if v.get("speaker_state") else ""))
    return " | ".join(parts)


def render(status: dict[str, Any]) -> str:
    st = status["stages"]
    d = status["daemon"]
    lines = [f"state root: {status['root']}",
             f"daemon: {'running (pid ' + str(d.get('pid')) + ')' if d.get('running') else 'not running'}"]
    if d.get("running") and d.get("disk_full"):
        lines.append("WARNING: the disk is full (or the state root refuses writes: read-only, permissions, I/O "
                     "errors); items are retried once it can be written again, none is rejected for it")
    lines.append("stages:")
    minutes, drain = status.get("audio_minutes") or {}, status.get("drain_minutes") or {}
    lines += [f"  {k:<12} {v}" + (f"  ({minutes[k]:.1f} min of audio waiting" + (
              f", done in about {max(drain[k], 1.0):.0f} min)" if k in drain else ")") if minutes.get(k) else "")
              for k, v in st.items()]
    lines.append("voices:" if status["voices"] else "voices: none yet")
    for voice, v in status["voices"].items():
        t = v["training"]
        lines.append(f"  {voice}: {v['clips']} clips, {v['seconds'] / 3600:.2f} h of speech")
        lines.append(f"    training: {t['state']}, epoch {t['epoch']}, last checkpoint {t['last_checkpoint'] or '-'}")
        if v.get("speaker_state"):
            lines.append(f"    speaker: {v['speaker_state']} ({v.get('speaker_source')}): {v.get('detail') or ''}")
    return "\n".join(lines)
