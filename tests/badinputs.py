"""A corpus of bad inbox inputs (and good ones with odd names or formats), each with what the daemon must do.

`build_corpus()` writes every static case into an inbox; the dynamic cases (a file still being written, a
file deleted while it is copied) are started by the test with `write_slowly()` / `delete_when_copied()` once
the daemon runs. The expectation of each case is data (`Case`), so one daemon run serves every case and the
test asserts them one by one.

Decisions this corpus documents:
* A top-level folder of the inbox is always a voice folder, whatever its name: `inbox/album.mp3/` holds the
  recordings of voice `album_mp3`. A folder inside a voice folder is never read (one "ignored" log line).
* Symlinks, FIFOs and other non-regular entries are quarantined without being opened: the error file records
  where a link pointed.
* Files with an extension the daemon does not take stay in the inbox (one log line); hidden files (a leading
  dot: partial uploads) stay without a word.
* A file that disappears while it is being taken is abandoned with one log line: there is nothing to keep.
"""

from __future__ import annotations

import enum
import errno
import hashlib
import os
import stat
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ttsft_daemon.demo.audio import SENTENCES, Recording, make_music, make_recording, write_media

SR = 22050
# Limits the corpus run's config sets (see `corpus_config()`).
MAX_DURATION_SECONDS = 1800.0
MAX_FILE_MB = 1536.0
SETTLE_SECONDS = 1.0


class Outcome(enum.Enum):
    PROCESSED = "processed"  # a job that ran to the end, with at least one clip in the dataset
    FAILED = "failed"  # the input is in failed/ with <name>.error.json (stage, reason, detail)
    CLIPS_REJECTED = "clips rejected"  # the job ran, every clip was rejected into failed/ with its reasons
    DUPLICATE = "duplicate"  # quarantined as a duplicate of another input with the same content
    IGNORED = "ignored"  # left where it is, one "ignored inbox entry" log line
    LEFT = "left alone"  # left where it is, no log line, no error
    ABANDONED = "abandoned"  # vanished while it was taken: no job, no error file, one log line


@dataclass(frozen=True)
class Material:
    bank: SpeechBank
    outside: Path  # a folder outside the inbox (symlink targets)


Maker = Callable[[Path, Material], object]


@dataclass(frozen=True)
class Case:
    name: str  # short id for test reports
    rel: str  # path under inbox/
    outcome: Outcome
    stage: str = ""  # FAILED: the stage that quarantined it
    reason: str = ""  # FAILED: error.json "reason"; IGNORED: substring of the log line's reason
    voice: str = "default"  # PROCESSED: the voice its clips go to
    needs: str = ""  # a precondition the test checks ("unprivileged": the daemon cannot bypass permissions)
    make: Maker | None = field(default=None, compare=False, repr=False)  # writes the case at a path

    @property
    def basename(self) -> str:
        return self.rel.rsplit("/", 1)[-1]


# --------------------------------------------------------------------------------------------- material


class SpeechBank:
    """Distinct short Piper recordings (one sentence each): distinct bytes, so none is a duplicate of another."""

    def __init__(self) -> None:
        self._next = 0

    def take(self) -> np.ndarray:
        i = self._next
        self._next += 1
        rec = make_recording([SENTENCES[(7 * i + 3) % len(SENTENCES)]], pause_range=(0.5, 0.6), music_db=None,
                             seed=500 + i, sr=SR)
        return rec.mix

    def write(self, path: Path, kind: str = "wav") -> None:
        """One fresh recording at `path` as wav, mp3, mp4 or flac."""
        audio = self.take()
        path.parent.mkdir(parents=True, exist_ok=True)
        short = path.parent / f".gen-{os.getpid()}.{kind}"  # the writers' temporaries would not fit a long name
        if kind == "flac":
            sf.write(str(short), audio, SR, format="FLAC")
        else:
            write_media(_as_recording(audio), short, kind)
        os.replace(short, path)


def _as_recording(audio: np.ndarray) -> Recording:
    return Recording(speech=audio, music=None, mix=audio, sr=SR, sentences=[], pauses=[])


def ffmpeg(*args: str) -> None:
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
    proc = subprocess.run(cmd, capture_output=True, timeout=300, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(args)} failed: {proc.stderr.decode(errors='replace')}")


def write_hour_of_silence(path: Path, seconds: float = 3600.0) -> None:
    """A long mp3 made cheaply: `seconds` of digital silence at 8 kHz, 8 kbit/s (about 3.6 MB an hour)."""
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", f"{seconds:.0f}",
           "-c:a", "libmp3lame", "-b:a", "8k", str(path))


def write_video_without_audio(path: Path) -> None:
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=5:duration=2",
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-f", "mp4", str(path))


def write_sparse_wav(path: Path, size_bytes: int) -> None:
    """A WAV header followed by a hole: `size_bytes` long, almost no disk used."""
    with open(path, "wb") as fh:
        fh.write(wav_header(data_bytes=size_bytes - 44))
        fh.truncate(size_bytes)


def wav_header(data_bytes: int, rate: int = SR) -> bytes:
    """A 16-bit mono PCM WAV header announcing `data_bytes` of samples (clamped to the 32-bit field)."""
    data_bytes = min(data_bytes, 0xFFFFFFFF - 36)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", data_bytes))


def write_pcm(path: Path, samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "PCM_16") -> None:
    sf.write(str(path), samples, rate, format=fmt, subtype=subtype)


# --------------------------------------------------------------------------------------------- the corpus


def corpus_config() -> dict[str, dict[str, object]]:
    """Config sections of the corpus run (besides tests/daemon_support.py's defaults)."""
    return {
        "inbox": {"settle_seconds": SETTLE_SECONDS, "rescan_seconds": 0.5, "max_file_mb": MAX_FILE_MB,
                  "max_duration_seconds": MAX_DURATION_SECONDS},
        "daemon": {"retry_backoff_seconds": 0.5, "workers": {"transcribe": 1}},
        "quality": {"dnsmos": False},
    }




_F, _P = Outcome.FAILED, Outcome.PROCESSED


def _fresh(kind: str) -> Maker:
    return lambda p, m: m.bank.write(p, kind)


CASES: list[Case] = [
    # --- not audio at all, or broken
    Case("zero-byte", "empty.mp3", _F, "ingest", "empty file", make=lambda p, m: p.write_bytes(b"")),
    Case("text-as-mp3", "meeting notes.mp3", _F, "ingest", "not a readable media file",
         make=lambda p, m: p.write_text("Agenda:\n1. budget\n2. hiring\n" * 40)),
    Case("random-bytes", "garbage.ogg", _F, "ingest", "not a readable media file",
         make=lambda p, m: p.write_bytes(np.random.default_rng(7).bytes(6000))),
    Case("corrupt-header", "corrupt header.wav", _F, "ingest", "not a readable media file",
         make=lambda p, m: _corrupt_header(p, m.bank)),
    Case("truncated-mp3-header-only", "cut short.mp3", _F, "ingest", "not a readable media file",
         make=lambda p, m: _truncated_mp3(p, m.bank, keep_bytes=400)),
    # its Xing header announces the whole recording: cut short (issue 21: held while young, then quarantined)
    Case("truncated-mp3", "cut early.mp3", _F, "ingest", "truncated recording",
         make=lambda p, m: _truncated_mp3(p, m.bank, keep_bytes=1500, age_seconds=3600)),
    Case("wav-header-lies", "liar.wav", _F, "segment", "no speech found",
         make=lambda p, m: p.write_bytes(wav_header(0xFFFFFF00) + b"\x01\x00" * 512)),
    Case("video-without-audio", "screen capture.mp4", _F, "ingest", "no audio stream",
         make=lambda p, m: write_video_without_audio(p)),
    Case("nan-samples", "nan float.wav", Outcome.CLIPS_REJECTED,
         make=lambda p, m: write_pcm(p, np.full(SR * 3, np.nan, dtype=np.float32), SR, subtype="FLOAT")),
    # --- audio, but nothing to learn from
    Case("too-short", "blip.wav", _F, "segment", "no speech found",
         make=lambda p, m: write_pcm(p, m.bank.take()[int(0.6 * SR):int(0.8 * SR)], SR)),
    Case("silence", "silence.wav", _F, "segment", "no speech found",
         make=lambda p, m: write_pcm(p, np.zeros(SR * 5, dtype=np.float32), SR)),
    Case("music-only", "music only.mp3", Outcome.CLIPS_REJECTED, make=lambda p, m: _music(p, seconds=8.0)),
    Case("white-noise", "white noise.flac", Outcome.CLIPS_REJECTED, make=lambda p, m: _white_noise(p, seconds=6.0)),
    Case("hour-over-limit", "hour long.mp3", _F, "ingest", "recording too long",
         make=lambda p, m: write_hour_of_silence(p)),
    Case("over-size-limit", "huge.wav", _F, "ingest", "file too large",
         make=lambda p, m: write_sparse_wav(p, 2 * 1024**3)),
    # --- good audio in unusual shapes: processed
    Case("eight-channels", "surround 8ch.wav", _P,
         make=lambda p, m: write_pcm(p, np.tile(m.bank.take()[:, None], (1, 8)) * 0.5, SR)),
    Case("96-khz", "studio 96k.flac", _P,
         make=lambda p, m: write_pcm(p, soxr.resample(m.bank.take(), SR, 96000).astype(np.float32), 96000,
                                     fmt="FLAC")),
    Case("wav-named-mp3", "really a wav.mp3", _P, make=_fresh("wav")),
    Case("upper-case-extension", "LOUD.WAV", _P, make=_fresh("wav")),
    # --- names
    Case("spaces", "  my talk   with spaces .wav", _P, make=_fresh("wav")),
    Case("unicode", "Grüße ünïcødé 日本語 🎤.mp3", _P, make=_fresh("mp3")),
    Case("newline", "line\nbreak.wav", _P, make=_fresh("wav")),
    Case("leading-dash", "-rf --help.wav", _P, make=_fresh("wav")),
    Case("name-255-bytes", "n" * 251 + ".wav", _P, make=_fresh("wav")),
    Case("bad-file-named-255-bytes", "b" * 251 + ".mp3", _F, "ingest", "not a readable media file",
         make=lambda p, m: p.write_text("not audio, and a name as long as the filesystem allows")),
    Case("unicode-voice-folder", "Zoë Ω/interview.mp4", _P, voice="Zoe", make=_fresh("mp4")),
    # --- entries that are not plain files, folders
    Case("symlink-outside", "linked.mp3", _F, "ingest", "symbolic link", make=lambda p, m: _link_outside(p, m)),
    Case("symlink-loop", "loop.mp3", _F, "ingest", "symbolic link", make=lambda p, m: os.symlink(p.name, p)),
    Case("fifo", "pipe.mp3", _F, "ingest", "not a regular file", make=lambda p, m: os.mkfifo(p)),
    Case("folder-named-like-audio", "album.mp3/track.wav", _P, voice="album_mp3", make=_fresh("wav")),
    Case("nested-folder", "alice/deeper.wav", Outcome.IGNORED, reason="folders deeper than one level",
         make=lambda p, m: p.mkdir()),
    Case("unsupported-extension", "notes.txt", Outcome.IGNORED, reason="unsupported extension",
         make=lambda p, m: p.write_text("not for the daemon")),
    Case("no-extension", "README", Outcome.IGNORED, reason="no file extension",
         make=lambda p, m: p.write_text("not for the daemon")),
    Case("hidden-partial-upload", ".upload.mp3", Outcome.LEFT, make=lambda p, m: p.write_bytes(b"ID3 partial")),
    # --- permissions, content identity, timing
    Case("unreadable", "locked.wav", _F, "ingest", "cannot read the file", needs="unprivileged",
         make=lambda p, m: _unreadable(p, m.bank)),
    Case("duplicate-first", "dup first.wav", _P,
         make=lambda p, m: _write_duplicates(p, p.with_name("dup second.wav"), m.bank)),
    Case("duplicate-second", "dup second.wav", Outcome.DUPLICATE, "ingest", "duplicate"),  # made with the first
    Case("slow-upload", "slow upload.wav", _P),  # the test writes it slowly while the daemon runs
    Case("deleted-while-taken", "vanishing.wav", Outcome.ABANDONED, make=lambda p, m: write_sparse_wav(p, 1 << 30)),
]


def build_corpus(inbox: Path, material: Material, cases: list[Case]) -> None:
    """Write the static `cases` under `inbox` (link targets under `material.outside`).

    The slow upload is not written here: the test starts `write_slowly()` once the daemon runs, and
    `delete_when_copied()` for the vanishing file.
    """
    inbox.mkdir(parents=True, exist_ok=True)
    material.outside.mkdir(parents=True, exist_ok=True)
    for case in cases:
        if case.make is not None:
            path = inbox / case.rel
            path.parent.mkdir(parents=True, exist_ok=True)
            case.make(path, material)


def _corrupt_header(path: Path, bank: SpeechBank) -> None:
    bank.write(path, "wav")
    data = bytearray(path.read_bytes())
    data[:64] = np.random.default_rng(11).bytes(64)
    path.write_bytes(bytes(data))


def _truncated_mp3(path: Path, bank: SpeechBank, keep_bytes: int, age_seconds: float = 0.0) -> None:
    """The start of a real mp3: its Xing header still announces the full length, the audio is mostly gone."""
    bank.write(path, "mp3")
    with open(path, "r+b") as fh:
        fh.truncate(keep_bytes)
    if age_seconds:  # left behind long ago by a copier: no longer held as possibly still being written
        os.utime(path, (time.time() - age_seconds, time.time() - age_seconds))


def _music(path: Path, seconds: float) -> None:
    write_media(_as_recording(make_music(seconds, SR, seed=5)), path, "mp3")


def _white_noise(path: Path, seconds: float) -> None:
    noise = 0.2 * np.random.default_rng(3).standard_normal(round(SR * seconds))
    write_pcm(path, noise.astype(np.float32), SR, fmt="FLAC")


def _link_outside(path: Path, material: Material) -> None:
    target = link_target(material)
    material.bank.write(target, "wav")
    os.symlink(target, path)


def link_target(material: Material) -> Path:
    """The file outside the inbox that the symlink case points to (the test checks it is never read)."""
    return material.outside / "private.wav"


def _unreadable(path: Path, bank: SpeechBank) -> None:
    bank.write(path, "wav")
    path.chmod(0)


def _write_duplicates(first: Path, second: Path, bank: SpeechBank) -> None:
    bank.write(first, "wav")
    second.write_bytes(first.read_bytes())
    # the second copy is older, yet sorts after the first: the first name is the one processed
    os.utime(second, (time.time() - 60, time.time() - 60))


# --------------------------------------------------------------------------------------------- dynamic cases


def slow_upload_bytes(bank: SpeechBank) -> bytes:
    """The content `write_slowly()` writes for the slow-upload case (a real recording)."""
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f".slow-{os.getpid()}-{time.monotonic_ns()}.wav"
    try:
        bank.write(tmp, "wav")
        return tmp.read_bytes()
    finally:
        tmp.unlink(missing_ok=True)


def write_slowly(path: Path, data: bytes, pieces: int, pause: float) -> threading.Thread:
    """Start writing `data` to `path` in `pieces` writes, `pause` seconds apart; the first piece is written now."""
    size = len(data) // pieces + 1
    chunks = [data[i:i + size] for i in range(0, len(data), size)]
    fh = open(path, "wb")  # closed by the writer thread
    fh.write(chunks[0])
    fh.flush()

    def rest() -> None:
        with fh:
            for chunk in chunks[1:]:
                time.sleep(pause)
                fh.write(chunk)
                fh.flush()

    thread = threading.Thread(target=rest, name="slow-upload", daemon=True)
    thread.start()
    return thread


@dataclass
class DeleteWatch:
    thread: threading.Thread
    deleted_during_copy: threading.Event


def delete_when_copied(path: Path, inbox: Path, raw_spool: Path, timeout: float) -> DeleteWatch:
    """Delete `path` as soon as ingest starts copying it (its temporary appears in `raw_spool`)."""
    seen = threading.Event()
    marker = f"incoming-default--{hashlib.sha256(os.path.relpath(path, inbox).encode()).hexdigest()[:16]}."

    def copying(names: list[str]) -> list[str]:
        return [n for n in names if n.startswith(".tmp.") and marker in n]

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                names = os.listdir(raw_spool)
            except FileNotFoundError:
                names = []
            if copying(names) and _is_regular(path):
                size_before = path.stat().st_size
                path.unlink()
                # still copying? the temporary is then shorter than the original
                if any(_size(raw_spool / n) < size_before for n in copying(os.listdir(raw_spool))):
                    seen.set()
                return
            time.sleep(0.002)

    thread = threading.Thread(target=watch, name="delete-when-copied", daemon=True)
    thread.start()
    return DeleteWatch(thread, seen)


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return 1 << 62
        raise
