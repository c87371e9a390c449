"""Shared pieces of the CPU benchmarks: machine description, realistic inputs, the daemon as a process, its logs,
process-tree memory sampling and atomic result files.

Inputs are Piper speech (the bundled voice) with random pauses over a synthetic music bed, encoded as mp3: the
sentences are synthesised once and cached under bench/out/ (git-ignored), then shuffled into recordings of any
length, so every input has different content (the daemon recognises a file dropped twice by its sha256).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import soxr
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests import daemon_support  # noqa: E402  (the one launcher of real daemon processes)
from ttsft_daemon.demo import audio as demo_audio  # noqa: E402

OUT = REPO / "bench" / "out"
RESULTS = REPO / "bench" / "results"
MIX_RATE = 44100
PAUSE_RANGE = (0.6, 1.2)
LEAD_SECONDS = 0.5


# ------------------------------------------------------------------------------------------------ the machine


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _meminfo_gib(key: str) -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return round(int(line.split()[1]) / 1024**2, 1)
    return 0.0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                          check=False)
    return proc.stdout.strip()


def machine() -> dict[str, Any]:
    """Cores, memory, load: printed and stored with every result."""
    return {
        "cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)), "cpu_model": _cpu_model(),
        "mem_total_gib": _meminfo_gib("MemTotal"), "mem_available_gib": _meminfo_gib("MemAvailable"),
        "load_average_1_5_15": load_average(), "python": platform.python_version(), "commit": _git_commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    write_text_atomically(path, json.dumps(payload, indent=2) + "\n")


def write_text_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ------------------------------------------------------------------------------------------------ inputs


def sentence_bank(cache: Path = OUT / "cache") -> list[np.ndarray]:
    """Every demo sentence spoken by the bundled Piper voice, at MIX_RATE (synthesised once, then cached)."""
    path = cache / "sentences_44k.npz"
    if path.exists():
        with np.load(path) as data:
            return [data[f"s{i}"] for i in range(len(data.files))]
    spoken, rate = demo_audio.speak(demo_audio.SENTENCES)
    bank = [soxr.resample(s, rate, MIX_RATE).astype(np.float32) for s in spoken]
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / ".sentences.part.npz"
    np.savez(tmp, **{f"s{i}": s for i, s in enumerate(bank)})
    os.replace(tmp, path)
    return bank


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def make_talk(bank: list[np.ndarray], seconds: float, seed: int, music_db: float | None = -12.0
              ) -> demo_audio.Recording:
    """A recording of about `seconds`: the bank's sentences in seeded random order, pauses, a music bed."""
    rng = np.random.default_rng(seed)
    lead = np.zeros(int(LEAD_SECONDS * MIX_RATE), dtype=np.float32)
    parts, sentences, pauses = [lead], [], []
    cursor = len(lead)
    target = seconds * MIX_RATE - len(lead)
    while cursor < target:
        for index in rng.permutation(len(bank)):
            if cursor >= target:
                break
            if len(parts) > 1:
                gap = np.zeros(int(rng.uniform(*PAUSE_RANGE) * MIX_RATE), dtype=np.float32)
                pauses.append((cursor / MIX_RATE, (cursor + len(gap)) / MIX_RATE))
                parts.append(gap)
                cursor += len(gap)
            speech = bank[int(index)]
            sentences.append((cursor / MIX_RATE, (cursor + len(speech)) / MIX_RATE,
                              demo_audio.SENTENCES[int(index)]))
            parts.append(speech)
            cursor += len(speech)
    parts.append(lead)
    voice = np.concatenate(parts)
    music: np.ndarray | None = None
    mix = voice.copy()
    if music_db is not None:
        bed = demo_audio.make_music(len(voice) / MIX_RATE, MIX_RATE, seed=seed)[: len(voice)]
        music = (bed * (_rms(np.concatenate(bank)) * 10 ** (music_db / 20) / max(_rms(bed), 1e-12))).astype(
            np.float32)
        mix = voice + music
    gain = min(1.0, 0.99 / max(float(np.max(np.abs(mix))), 1e-12))
    return demo_audio.Recording(voice * gain, None if music is None else music * gain, mix * gain, MIX_RATE,
                                sentences, pauses)


def talk_file(folder: Path, seconds: float, seed: int, kind: str = "mp3", music: bool = True) -> Path:
    """An input recording (cached by length, seed and music) with its ground truth beside it as .truth.json;
    `music` False: the same talk without the music bed."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"talk_{seconds:g}s_seed{seed}{'' if music else '_nomusic'}.{kind}"
    if not path.exists():
        rec = make_talk(sentence_bank(), seconds, seed, -12.0 if music else None)
        demo_audio.write_ground_truth(rec, path.with_suffix(".truth.json"))
        demo_audio.write_media(rec, path, kind)
    return path


def media_seconds(path: Path) -> float:
    proc = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                           str(path)], capture_output=True, text=True, check=True, timeout=120)
    return float(proc.stdout.strip())


# ------------------------------------------------------------------------------------------------ the daemon


def write_config(path: Path, root: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """A daemon config: JSON logs on stderr, training off, `sections` merged over that."""
    cfg: dict[str, Any] = {
        "paths": {"root": str(root)},
        "training": {"enabled": False},
        "logging": {"format": "json", "journal": "off"},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def daemon_command(config: Path, exit_when_idle: bool) -> list[str]:
    return daemon_support.daemon_command(config, exit_when_idle)


def start_daemon(config: Path, log: Path, exit_when_idle: bool) -> subprocess.Popen[bytes]:
    return daemon_support.start_daemon(config, log, exit_when_idle)


@dataclass
class ProcessRun:
    """Wall time and CPU time (user + system, the process and every descendant it waited for) of one command."""

    rc: int
    wall_s: float
    cpu_s: float


@contextlib.contextmanager
def measured() -> Iterator[dict[str, float]]:
    """Wall and children's CPU time of whatever runs (and is waited for) inside the block."""
    out: dict[str, float] = {}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.monotonic()
    yield out
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out["wall_s"] = time.monotonic() - began
    out["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_measured(cmd: list[str], log: Path, timeout: float, env: dict[str, str] | None = None,
                 sampler: TreeSampler | None = None) -> ProcessRun:
    with measured() as m, open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=daemon_support.daemon_env(env), cwd=str(REPO))
        if sampler is not None:
            sampler.watch(proc.pid)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = -9
        finally:
            if sampler is not None:
                sampler.stop()
    return ProcessRun(rc, round(m["wall_s"], 2), round(m["cpu_s"], 1))


# ------------------------------------------------------------------------------------------------ logs


def log_events(log: Path) -> list[dict[str, Any]]:
    events = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                events.append(json.loads(line))
    return events


def event_time(event: dict[str, Any]) -> float:
    """Unix time of a log event (structlog's ISO timestamp)."""
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


@dataclass
class StageTimes:
    items: int = 0
    busy_s: float = 0.0  # sum of per-item durations (threads of one stage overlap)
    first_start: float = float("inf")
    last_done: float = 0.0
    max_item_s: float = 0.0

    def add(self, done_at: float, duration: float) -> None:
        self.items += 1
        self.busy_s += duration
        self.first_start = min(self.first_start, done_at - duration)
        self.last_done = max(self.last_done, done_at)
        self.max_item_s = max(self.max_item_s, duration)

    def to_dict(self, t0: float) -> dict[str, Any]:
        if not self.items:
            return {"items": 0}
        return {"items": self.items, "busy_s": round(self.busy_s, 1), "max_item_s": round(self.max_item_s, 2),
                "start_s": round(self.first_start - t0, 1), "end_s": round(self.last_done - t0, 1)}


def stage_times(events: Iterable[dict[str, Any]]) -> dict[str, StageTimes]:
    """Per stage, from the "<stage> done" lines (each carries duration_s)."""
    out: dict[str, StageTimes] = {}
    for e in events:
        name = str(e.get("event", ""))
        if name.endswith(" done") and "duration_s" in e:
            out.setdefault(name[: -len(" done")], StageTimes()).add(event_time(e), float(e["duration_s"]))
    return out


# ------------------------------------------------------------------------------------------------ memory


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return out


def process_tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += _children(p)
    return tree


def _status_kb(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0])
    return out


def _pss_kb(pid: int) -> int:
    """Proportional set size: shared pages split among their sharers, so a tree's sum counts each page once (a
    child between fork and exec shares the parent's pages: its RSS would count them twice)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def _command_name(pid: int) -> str:
    """A short name for a process of the tree: the daemon, the Spleeter worker, ffmpeg ..."""
    try:
        argv = [Path(a.decode(errors="replace")).name for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if a]
    except OSError:
        return "?"
    for known in ("spleeter_worker.py", "ttsft-daemon", "spleeter", "ffmpeg", "ffprobe"):
        if known in argv[:3]:
            return known
    return argv[0] if argv else "?"


@dataclass
class TreeSampler:
    """Polls /proc for a process and its descendants: the peak of their summed PSS (sampled; also the summed RSS,
    which over-counts pages shared after a fork) and each process's own peak (VmHWM, exact, last value read while
    it lived)."""

    interval: float = 0.2
    peak_sum_kb: int = 0
    peak_at_s: float = 0.0
    peak_rss_sum_kb: int = 0
    samples: int = 0
    process_peaks_kb: dict[int, tuple[str, int]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _began: float = 0.0

    def watch(self, pid: int) -> None:
        self._began = time.monotonic()
        self._thread = threading.Thread(target=self._loop, args=(pid,), daemon=True, name="tree-sampler")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self, pid: int) -> None:
        while not self._stop.is_set():
            self.sample(pid)
            self._stop.wait(self.interval)

    def sample(self, pid: int) -> None:
        total = rss_total = 0
        for p in process_tree(pid):
            st = _status_kb(p)
            if not st:
                continue
            rss_total += st.get("VmRSS", 0)
            total += _pss_kb(p)
            name = _command_name(p)
            if name == "?":  # between fork and exec, or gone: keep the name seen before
                name = self.process_peaks_kb.get(p, ("?", 0))[0]
            self.process_peaks_kb[p] = (name, st.get("VmHWM", 0))
        self.samples += 1
        self.peak_rss_sum_kb = max(self.peak_rss_sum_kb, rss_total)
        if total > self.peak_sum_kb:
            self.peak_sum_kb, self.peak_at_s = total, time.monotonic() - self._began

    def summary(self) -> dict[str, Any]:
        by_name: dict[str, float] = {}
        for name, kb in self.process_peaks_kb.values():
            by_name[name] = max(by_name.get(name, 0.0), kb / 1024)
        return {"tree_peak_pss_mb": round(self.peak_sum_kb / 1024, 1), "tree_peak_at_s": round(self.peak_at_s, 1),
                "tree_peak_rss_sum_mb": round(self.peak_rss_sum_kb / 1024, 1),
                "samples": self.samples, "processes": len(self.process_peaks_kb),
                "largest_peak_by_command_mb": {k: round(v, 1) for k, v in sorted(by_name.items(),
                                                                                 key=lambda kv: -kv[1])}}
