"""What the read endpoints answer, from the state files alone (like `status`): voices, one voice, its clips (the
dataset's rows and the clips quarantined in failed/), the file behind a clip, and the Prometheus metrics."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from collections import Counter
from pathlib import Path
from typing import Any

from ttsft_daemon.config import Config
from ttsft_daemon.core.inbox import voice_name
from ttsft_daemon.core.spool import Layout, read_json
from ttsft_daemon.dataset import read_rows
from ttsft_daemon.status import collect, training_state
from ttsft_daemon.training.scheduler import REQUEST_FILE

_VOICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_CLIP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,199}$")
WHOLE_RECORDING_STAGES = ("ingest", "separate", "segment")  # a reject there is a recording, not a clip
ORDERS = ("worst", "best", "name")
REPORT_FILE = "report.html"


def valid_voice(voice: str) -> bool:
    """A voice name as the inbox makes them (letters, digits, - and _): nothing that can name another folder."""
    return bool(_VOICE_RE.match(voice)) and voice_name(voice) == voice


def valid_clip(clip: str) -> bool:
    return bool(_CLIP_RE.match(clip)) and ".." not in clip


def known_voices(layout: Layout) -> list[str]:
    names: set[str] = set()
    for top in (layout.datasets, layout.trainings):
        try:
            names |= {e.name for e in os.scandir(top) if e.is_dir(follow_symlinks=False) and valid_voice(e.name)}
        except OSError:
            continue
    return sorted(names)


def voice_summary(config: Config, layout: Layout, voice: str) -> dict[str, Any]:
    rows = read_rows(layout.dataset(voice))
    seconds = sum(r.duration for r in rows)
    return {"voice": voice, "clips": len(rows), "seconds": round(seconds, 2), "hours": round(seconds / 3600, 4),
            "training": training_state(config, layout, voice, len(rows))}


def voices(config: Config) -> dict[str, Any]:
    layout = Layout(config.paths.root)
    return {"voices": [voice_summary(config, layout, v) for v in known_voices(layout)]}


def voice_detail(config: Config, voice: str) -> dict[str, Any] | None:
    layout = Layout(config.paths.root)
    if voice not in known_voices(layout):
        return None
    out = voice_summary(config, layout, voice)
    rows = read_rows(layout.dataset(voice))
    speakers: dict[str, dict[str, Any]] = {}
    for r in rows:
        s = speakers.setdefault(r.speaker, {"clips": 0, "seconds": 0.0})
        s["clips"] += 1
        s["seconds"] = round(s["seconds"] + r.duration, 3)
    rejects = [e for e in _failed_entries(layout) if _entry_voice(e) == voice]
    tdir = layout.training(voice)
    progress = read_json(tdir / "progress.json") or {}
    out.update({
        "dataset": {"path": str(layout.dataset(voice)), "clips": len(rows), "seconds": out["seconds"],
                    "hours": out["hours"]},
        "speakers": speakers,
        "rejected": {"total": len(rejects), "by_reason": dict(Counter(str(e.get("reason")) for e in rejects))},
        "progress": {k: progress.get(k) for k in ("epoch", "step", "max_epochs", "losses", "updated")
                     if k in progress},
        "exports": exports(tdir),
        "report": f"/voices/{voice}/report" if (tdir / REPORT_FILE).is_file() else None,
        "train_requested": (tdir / REQUEST_FILE).exists(),
    })
    return out


def exports(tdir: Path) -> list[dict[str, Any]]:
    """The exported voices of a training folder, each with its latest word error rate (evaluations.json)."""
    evaluations: list[Any] = []
    try:
        data = json.loads((tdir / "evaluations.json").read_text(encoding="utf-8"))
        evaluations = data if isinstance(data, list) else []
    except (OSError, ValueError):
        pass
    out = []
    try:
        onnx_files = sorted(p for p in tdir.iterdir() if p.name.endswith(".onnx") and p.is_file())
    except OSError:
        return []
    for onnx in onnx_files:
        evals = [e for e in evaluations if isinstance(e, dict) and Path(str(e.get("onnx", ""))).name == onnx.name]
        latest = evals[-1] if evals else {}
        st = onnx.stat()
        out.append({"onnx": onnx.name, "config": f"{onnx.name}.json" if Path(f"{onnx}.json").exists() else None,
                    "bytes": st.st_size, "modified": st.st_mtime, "epoch": latest.get("epoch"),
                    "wer": latest.get("wer"), "evaluated": latest.get("evaluated")})
    return out


# ------------------------------------------------------------------------------------------------ clips
def _failed_entries(layout: Layout) -> list[dict[str, Any]]:
    out = []
    try:
        names = sorted(e.name for e in os.scandir(layout.failed) if e.name.endswith(".error.json"))
    except OSError:
        return []
    for name in names:
        entry = read_json(layout.failed / name)
        if entry is not None:
            entry["_error_file"] = name
            out.append(entry)
    return out


def _entry_voice(entry: dict[str, Any]) -> str | None:
    voice = entry.get("voice")
    if isinstance(voice, str) and voice:
        return voice
    item = str(entry.get("item") or "")
    return item.split("--", 1)[0] if "--" in item else None


def _files(entry: dict[str, Any]) -> list[str]:
    files = entry.get("files")
    return [str(f.get("name")) for f in files if isinstance(f, dict) and f.get("name")] if isinstance(files, list) \
        else []


def _rejected_clips(layout: Layout, voice: str) -> list[dict[str, Any]]:
    out = []
    for e in _failed_entries(layout):
        if _entry_voice(e) != voice or e.get("stage") in WHOLE_RECORDING_STAGES:
            continue
        files = _files(e)
        wav = next((f for f in files if f.endswith(".wav")), None)
        if wav is None:
            continue
        side = next((f for f in files if f.endswith(".json")), None)
        meta = (read_json(layout.failed / side) or {}) if side else {}
        quality = meta.get("quality")
        out.append({"clip": wav.removesuffix(".wav"), "status": "rejected", "stage": e.get("stage"),
                    "reason": e.get("reason"), "detail": e.get("detail"),
                    "transcript": meta.get("text"), "duration": _duration(meta),
                    "quality": float(quality) if isinstance(quality, (int, float)) else None,
                    "source": e.get("source"), "time": e.get("time"), "_file": wav})
    return out


def _duration(meta: dict[str, Any]) -> float | None:
    for key in ("duration", "seconds"):
        if isinstance(meta.get(key), (int, float)):
            return round(float(meta[key]), 3)
    start, end = meta.get("start"), meta.get("end")
    if isinstance(start, (int, float)) and isinstance(end, (int, float)):
        return round(float(end) - float(start), 3)
    return None


def _accepted_clips(layout: Layout, voice: str) -> list[dict[str, Any]]:
    return [{"clip": Path(r.clip_filename).stem, "status": "accepted", "transcript": r.transcript,
             "duration": r.duration, "speaker": r.speaker, "quality": r.quality, "reason": None,
             "_file": r.clip_filename} for r in read_rows(layout.dataset(voice))]


def clips(config: Config, voice: str, order: str, reason: str | None, status: str, offset: int,
          limit: int) -> dict[str, Any] | None:
    layout = Layout(config.paths.root)
    if voice not in known_voices(layout) and not any(_entry_voice(e) == voice for e in _failed_entries(layout)):
        return None
    items: list[dict[str, Any]] = []
    if status in ("all", "accepted") and reason is None:
        items += _accepted_clips(layout, voice)
    rejected = _rejected_clips(layout, voice) if status in ("all", "rejected") else []
    reasons = dict(Counter(str(c["reason"]) for c in rejected))
    items += [c for c in rejected if reason is None or c["reason"] == reason]
    if order == "name":
        items.sort(key=lambda c: c["clip"])
    else:
        items.sort(key=lambda c: (c["quality"] if c["quality"] is not None else -1.0, c["clip"]),
                   reverse=order == "best")
    page = items[offset:offset + limit]
    for c in page:
        c.pop("_file", None)
        c["audio"] = f"/voices/{voice}/clips/{c['clip']}/audio"
        if c["status"] == "accepted":
            info = read_json(layout.dataset(voice) / "clips" / f"{c['clip']}.json") or {}
            c["source"] = info.get("source_name") or info.get("source")
            c["start"], c["end"] = info.get("start"), info.get("end")
    following = offset + limit if offset + limit < len(items) else None
    return {"voice": voice, "total": len(items), "offset": offset, "limit": limit, "order": order,
            "reasons": reasons, "clips": page, "next_offset": following}


def clip_file(config: Config, voice: str, clip: str) -> Path | None:
    """The WAV of `clip` (in the dataset, else in failed/), only if it is a regular file inside its folder."""
    layout = Layout(config.paths.root)
    for c in _accepted_clips(layout, voice):
        if c["clip"] == clip:
            return _regular(layout.dataset(voice) / "wavs", c["_file"])
    for c in _rejected_clips(layout, voice):
        if c["clip"] == clip:
            return _regular(layout.failed, c["_file"])
    return None


def _regular(folder: Path, name: str) -> Path | None:
    if "/" in name or name.startswith("."):
        return None
    path = folder / name
    try:
        st = path.lstat()
    except OSError:
        return None
    return path if stat.S_ISREG(st.st_mode) else None


def report_file(config: Config, voice: str) -> Path | None:
    layout = Layout(config.paths.root)
    return _regular(layout.training(voice), REPORT_FILE) if valid_voice(voice) else None


# ------------------------------------------------------------------------------------------------ metrics
def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Metrics:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, doc: str, samples: list[tuple[dict[str, Any], float]]) -> None:
        self.lines += [f"# HELP {name} {doc}", f"# TYPE {name} {kind}"]
        for labels, value in samples:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{text}}} {value:g}" if text else f"{name} {value:g}")


def metrics(config: Config, api_counters: dict[str, int]) -> str:
    """The Prometheus text exposition (version 0.0.4) of the state root."""
    layout = Layout(config.paths.root)
    status = collect(config)
    m = _Metrics()
    m.family("ttsft_daemon_running", "gauge", "1 while the daemon process that owns the state root runs.",
             [({}, 1.0 if status["daemon"].get("running") else 0.0)])
    m.family("ttsft_items", "gauge", "Items waiting in each stage's folder (failed: quarantined in all).",
             [({"stage": k}, float(v)) for k, v in status["stages"].items()])
    recordings = 0
    processed = 0.0
    try:
        job_files = [e.path for e in os.scandir(layout.checkpoints) if e.name.endswith(".json")]
    except OSError:
        job_files = []
    for path in job_files:
        job = read_json(Path(path)) or {}
        if isinstance(job.get("duration"), (int, float)):
            recordings += 1
            processed += float(job["duration"])
    m.family("ttsft_processed_recordings", "gauge", "Recordings ingested (jobs with a known duration).",
             [({}, float(recordings))])
    m.family("ttsft_processed_seconds", "gauge", "Seconds of recordings ingested.", [({}, round(processed, 3))])
    vs = status["voices"]
    m.family("ttsft_dataset_clips", "gauge", "Accepted clips in each voice's dataset.",
             [({"voice": v}, float(d["clips"])) for v, d in vs.items()])
    m.family("ttsft_dataset_seconds", "gauge", "Seconds of accepted speech in each voice's dataset.",
             [({"voice": v}, float(d["seconds"])) for v, d in vs.items()])
    rejects = Counter((str(e.get("stage")), str(e.get("reason"))) for e in _failed_entries(layout))
    m.family("ttsft_rejects", "gauge", "Quarantined items in failed/, by stage and reason.",
             [({"stage": s, "reason": r}, float(n)) for (s, r), n in sorted(rejects.items())])
    epochs, steps, losses, states, wers = [], [], [], [], []
    for v in known_voices(layout):
        t = training_state(config, layout, v, int(vs.get(v, {}).get("clips", 0)))
        progress = read_json(layout.training(v) / "progress.json") or {}
        epochs.append(({"voice": v}, float(progress.get("epoch") or t.get("epoch") or 0)))
        step = progress.get("step") or t.get("step")
        if isinstance(step, int):
            steps.append(({"voice": v}, float(step)))
        for name, value in sorted((progress.get("losses") or {}).items()):
            if isinstance(value, (int, float)):
                losses.append(({"voice": v, "loss": name}, float(value)))
        states.append(({"voice": v, "state": t.get("state")}, 1.0))
        done = [e for e in exports(layout.training(v)) if isinstance(e.get("wer"), (int, float))]
        if done:
            wers.append(({"voice": v, "onnx": done[-1]["onnx"]}, float(done[-1]["wer"])))
    m.family("ttsft_training_epoch", "gauge", "Completed training epochs of each voice.", epochs)
    m.family("ttsft_training_step", "gauge", "Training steps of each voice.", steps)
    m.family("ttsft_training_loss", "gauge", "Latest epoch's losses of each voice's training.", losses)
    m.family("ttsft_training_state", "gauge", "Training state of each voice (1 for its current state).", states)
    m.family("ttsft_voice_wer", "gauge", "Word error rate of the exported voice's test sentences.", wers)
    disks = []
    for what, folder in (("root", layout.root), ("inbox", layout.inbox)):
        try:
            usage = shutil.disk_usage(folder)
        except OSError:
            continue
        disks.append((what, usage))
    m.family("ttsft_disk_free_bytes", "gauge", "Free bytes on the file system of the state root and of the inbox.",
             [({"path": what}, float(u.free)) for what, u in disks])
    m.family("ttsft_disk_total_bytes", "gauge", "Size of those file systems.",
             [({"path": what}, float(u.total)) for what, u in disks])
    m.family("ttsft_api_requests_total", "counter", "API write requests served by this process, by outcome.",
             [({"outcome": k}, float(v)) for k, v in sorted(api_counters.items())])
    return "\n".join(m.lines) + "\n"
