"""ffprobe / ffmpeg calls for untrusted files: always with a time limit, never through a shell."""

from __future__ import annotations

import errno
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ttsft_daemon.errors import RejectedInput, TransientError


@dataclass(frozen=True)
class MediaInfo:
    duration: float
    codec: str
    channels: int
    sample_rate: int
    format_name: str
    has_video: bool
    audio_streams: int = 1  # only the first is used


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise RejectedInput("time limit exceeded", f"{cmd[0]} ran longer than {timeout:.0f} s") from None
    except FileNotFoundError:
        raise TransientError(f"{cmd[0]} is not installed (run scripts/install.sh)") from None


def _last_line(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"


def probe(path: Path, timeout: float = 60.0) -> MediaInfo:
    """Describe the first audio stream; RejectedInput when there is none or it is unreadable."""
    cmd = ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", "--", str(path)]
    proc = _run(cmd, timeout)
    if proc.returncode != 0:
        raise RejectedInput("not a readable media file", _last_line(proc.stderr))
    try:
        data = json.loads(proc.stdout or b"{}")
    except json.JSONDecodeError:
        raise RejectedInput("not a readable media file", "ffprobe printed no valid description") from None
    streams = data.get("streams") or []
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    if not audio:
        raise RejectedInput("no audio stream", f"streams found: {[s.get('codec_type') for s in streams]}")
    stream = audio[0]
    fmt = data.get("format") or {}
    duration = _float(stream.get("duration")) or _float(fmt.get("duration"))
    if duration <= 0:
        raise RejectedInput("zero duration", "the audio stream has no length")
    return MediaInfo(
        duration=duration,
        codec=str(stream.get("codec_name", "unknown")),
        channels=int(stream.get("channels") or 0),
        sample_rate=int(_float(stream.get("sample_rate"))),
        format_name=str(fmt.get("format_name", "unknown")),
        has_video=any(s.get("codec_type") == "video" and not _is_cover_art(s) for s in streams),
        audio_streams=len(audio),
    )


def _is_cover_art(stream: dict[str, Any]) -> bool:
    return bool((stream.get("disposition") or {}).get("attached_pic"))


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def decode_to_wav(src: Path, dst: Path, sample_rate: int, channels: int, timeout: float) -> None:
    """Decode the first audio stream of `src` to 16-bit PCM WAV at `dst` (streamed: flat memory)."""
    cmd = [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-i", str(src), "-map", "0:a:0", "-vn", "-sn", "-dn",
        "-ac", str(channels), "-ar", str(sample_rate), "-c:a", "pcm_s16le", "-f", "wav", str(dst),
    ]
    proc = _run(cmd, timeout)
    if proc.returncode != 0:
        dst.unlink(missing_ok=True)
        msg = _last_line(proc.stderr)
        if b"No space left on device" in proc.stderr:
            # an OSError like any other full-disk write: retried without counting against the input
            raise OSError(errno.ENOSPC, f"disk full while decoding: {msg}")
        raise RejectedInput("audio cannot be decoded", msg)
    if not dst.exists() or dst.stat().st_size <= 44:
        dst.unlink(missing_ok=True)
        raise RejectedInput("audio cannot be decoded", "ffmpeg produced no audio samples")
