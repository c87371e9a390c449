"""Peak memory of the Spleeter worker against input length: chunked separation must stay flat.

Separates 1, 10 and 30 minutes of Piper speech over music (one minute of it, repeated) with the
configured chunking, each in a fresh worker process, plus unchunked 1- and 5-minute cases for
comparison. The peak is the worker's VmHWM (peak resident set) read from /proc after the request.
Prints a table and writes bench/results/separation_memory.json (atomically).

    .venv/bin/python bench/separation_memory.py [--minutes 1,10,30] [--chunk-seconds 60] ...

Requirement: 30 minutes may need no more than ~1.3x the peak of 1 minute.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ttsft_daemon.audio.separation import SeparatorProcess  # noqa: E402
from ttsft_daemon.config import SeparationConfig  # noqa: E402
from ttsft_daemon.demo import audio as demo_audio  # noqa: E402

SR = 44100
RESULTS = REPO / "bench" / "results" / "separation_memory.json"
ALLOWED_GROWTH = 1.3


@dataclass
class Case:
    minutes: float
    chunked: bool
    chunk_seconds: float
    overlap_seconds: float
    rss_after_load_mb: float
    peak_rss_mb: float
    elapsed_s: float
    chunks: int

    @property
    def realtime_factor(self) -> float:
        return self.minutes * 60 / self.elapsed_s


def proc_status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def one_minute_of_speech_over_music() -> np.ndarray:
    rec = demo_audio.make_recording(demo_audio.SENTENCES[:16], music_db=-6.0, seed=0, sr=SR)
    if rec.duration < 60:
        raise RuntimeError(f"the demo recording is only {rec.duration:.1f} s long")
    return rec.mix[: 60 * SR]


def write_repeated(path: Path, minute: np.ndarray, minutes: float) -> None:
    """`minutes` of stereo 16-bit audio, one minute at a time (the bench itself stays small)."""
    pcm = np.clip(np.rint(minute * 32767), -32768, 32767).astype("<i2")
    stereo = np.repeat(pcm[:, None], 2, axis=1).tobytes()
    whole, part = divmod(round(minutes * 60 * SR), len(pcm))
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(2)
        writer.setsampwidth(2)
        writer.setframerate(SR)
        for _ in range(whole):
            writer.writeframes(stereo)
        writer.writeframes(stereo[: part * 4])


def measure(args: argparse.Namespace, src: Path, dst: Path, minutes: float, chunked: bool) -> Case:
    chunk = args.chunk_seconds if chunked else minutes * 60 + 60
    overlap = args.overlap_seconds if chunked else 0.0
    sep = SeparatorProcess(args.python, args.model_dir, chunk, overlap, timeout=6 * 3600.0)
    try:
        sep.start()
        pid = sep.pid
        assert pid is not None
        after_load = proc_status_mb(pid, "VmHWM")
        began = time.monotonic()
        sep.separate(src, dst)
        elapsed = time.monotonic() - began
        peak = proc_status_mb(pid, "VmHWM")
        chunks = int(sep.last_result["chunks"]) if sep.last_result else 0
    finally:
        sep.close()
        dst.unlink(missing_ok=True)
    return Case(minutes, chunked, chunk, overlap, round(after_load, 1), round(peak, 1), round(elapsed, 1), chunks)


def write_json_atomically(path: Path, payload: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(json.dumps(payload, indent=2) + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(name, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def print_table(cases: list[Case]) -> None:
    print(f"{'input':>8} {'mode':>10} {'chunk/overlap s':>16} {'chunks':>6} {'RSS after load MB':>18} "
          f"{'peak RSS MB':>12} {'time s':>8} {'x realtime':>10}")
    for c in cases:
        mode = "chunked" if c.chunked else "unchunked"
        print(f"{c.minutes:>6g} m {mode:>10} {c.chunk_seconds:>10g}/{c.overlap_seconds:<5g} {c.chunks:>6} "
              f"{c.rss_after_load_mb:>18.0f} {c.peak_rss_mb:>12.0f} {c.elapsed_s:>8.1f} {c.realtime_factor:>10.1f}")


def main() -> int:
    defaults = SeparationConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", default="1,10,30", help="chunked input lengths, comma-separated")
    parser.add_argument("--unchunked-minutes", default="1,5", help="unchunked input lengths (empty: none)")
    parser.add_argument("--chunk-seconds", type=float, default=defaults.chunk_seconds)
    parser.add_argument("--overlap-seconds", type=float, default=defaults.overlap_seconds)
    parser.add_argument("--python", type=Path, default=defaults.python_path)
    parser.add_argument("--model-dir", type=Path, default=REPO / "models" / "spleeter")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    chunked_minutes = [float(m) for m in args.minutes.split(",") if m.strip()]
    unchunked_minutes = [float(m) for m in args.unchunked_minutes.split(",") if m.strip()]

    minute = one_minute_of_speech_over_music()
    cases: list[Case] = []
    with tempfile.TemporaryDirectory(prefix="sepmem.") as tmp:
        work = Path(tmp)
        plan = [(m, False) for m in unchunked_minutes] + [(m, True) for m in chunked_minutes]
        for minutes, chunked in plan:
            src = work / f"in_{minutes:g}m.wav"
            if not src.exists():
                write_repeated(src, minute, minutes)
            case = measure(args, src, work / "vocals.wav", minutes, chunked)
            print(f"  {minutes:g} min {'chunked' if chunked else 'unchunked'}: peak {case.peak_rss_mb:.0f} MB, "
                  f"{case.elapsed_s:.1f} s", flush=True)
            cases.append(case)

    print_table(cases)
    chunked_cases = {c.minutes: c for c in cases if c.chunked}
    summary: dict[str, object] = {}
    if chunked_cases:
        shortest, longest = min(chunked_cases), max(chunked_cases)
        ratio = chunked_cases[longest].peak_rss_mb / chunked_cases[shortest].peak_rss_mb
        verdict = "meets" if ratio <= ALLOWED_GROWTH else "FAILS"
        print(f"peak({longest:g} min) / peak({shortest:g} min) = {ratio:.3f} "
              f"({verdict} the <= {ALLOWED_GROWTH} requirement)")
        summary = {"longest_over_shortest_peak": round(ratio, 3), "allowed": ALLOWED_GROWTH,
                   "meets": ratio <= ALLOWED_GROWTH}
    payload: dict[str, object] = {
        "what": "peak RSS (VmHWM) of the Spleeter worker process separating generated speech over music",
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "cases": [{**asdict(c), "realtime_factor": round(c.realtime_factor, 1)} for c in cases],
        "summary": summary,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomically(args.output, payload)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
