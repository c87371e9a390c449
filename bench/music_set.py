#!/usr/bin/env python3
"""A real-music set for issue 14's curve: game music from Debian packages, fetched with the ordinary clients.

    .venv/bin/python bench/music_set.py fetch     # ~300 MB of .debs once, ~10 s on a fast mirror

`apt-get download` + `dpkg-deb -x` into the git-ignored `models/music/` (the packages are not installed); each
piece listed in PIECES is decoded to mono 16-bit WAV at 16 kHz under `models/music/<name>.wav`, the package's
copyright file is kept next to it as `<package>.copyright`, and `models/music/.probe` is written last.
Nothing is committed. Sources and licences: bench/MUSIC_SOURCES.md.

`bed(seconds, sr, seed)` joins excerpts of every piece (each in turn, cross-faded over 1 s) into one music bed of
the given length: a podcast whose music changes from orchestral to electronic to metal and back.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MUSIC_DIR = REPO / "models" / "music"
SR = 16000
CROSSFADE_S = 1.0


@dataclass(frozen=True)
class Piece:
    name: str
    package: str
    version: str
    files: tuple[str, ...]  # paths inside the package (several are mixed: a song's backing and guitar tracks)
    licence: str
    kind: str
    member: str = ""  # a file inside a .pk3 (zip) archive of the package


PIECES: tuple[Piece, ...] = (
    Piece("wesnoth_the_city_falls", "wesnoth-1.16-music", "1:1.16.9-1",
          ("usr/share/games/wesnoth/1.16/data/core/music/the_city_falls.ogg",), "GPL-2+",
          "orchestral: strings, brass, timpani and drums"),
    Piece("nexuiz_brainsukker", "nexuiz-music", "2.5.2-12",
          ("usr/share/games/nexuiz/data/music.pk3",), "GPL-2+",
          "electronic: synthesizers over a steady drum kit", member="sound/cdtracks/brainsukker.ogg"),
    Piece("muldjord_chaos_god", "fretsonfire-songs-muldjord", "2.dfsg-2.1",
          ("usr/share/games/fretsonfire/data/songs/muldjord/chaos_god/song.ogg",
           "usr/share/games/fretsonfire/data/songs/muldjord/chaos_god/guitar.ogg"), "CC BY-SA 3.0",
          "metal: distorted guitars, bass and drums (the song's backing track and guitar track mixed)"),
)


def available() -> bool:
    return (MUSIC_DIR / ".probe").is_file()


def _run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-2000:]}")


def _decode_mix(sources: list[Path], dst: Path) -> None:
    """The sources (tracks of one song) summed, to mono 16-bit WAV at SR."""
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    for s in sources:
        cmd += ["-i", str(s)]
    if len(sources) > 1:
        cmd += ["-filter_complex", f"amix=inputs={len(sources)}:normalize=0"]
    cmd += ["-ac", "1", "-ar", str(SR), "-c:a", "pcm_s16le", str(dst)]
    _run(cmd, dst.parent)


def fetch(dest: Path = MUSIC_DIR) -> None:
    """Download and decode every piece (idempotent: nothing to do when `.probe` exists)."""
    if (dest / ".probe").is_file():
        return
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="music-", dir=dest) as tmp:
        work = Path(tmp)
        roots: dict[str, Path] = {}
        for piece in PIECES:
            if piece.package not in roots:
                _run(["apt-get", "download", f"{piece.package}={piece.version}"], work)
                deb = next(work.glob(f"{piece.package}_*.deb"))
                roots[piece.package] = work / piece.package
                _run(["dpkg-deb", "-x", str(deb), str(roots[piece.package])], work)
                deb.unlink()
                shutil.copy(roots[piece.package] / "usr/share/doc" / piece.package / "copyright",
                            dest / f"{piece.package}.copyright")
            root = roots[piece.package]
            sources = [root / f for f in piece.files]
            if piece.member:
                import zipfile

                with zipfile.ZipFile(sources[0]) as z:
                    z.extract(piece.member, work / "members")
                sources = [work / "members" / piece.member]
            _decode_mix(sources, dest / f"{piece.name}.wav")
    (dest / ".probe").write_text("\n".join(p.name for p in PIECES) + "\n")


def load(name: str) -> np.ndarray:
    import soundfile as sf

    audio, sr = sf.read(MUSIC_DIR / f"{name}.wav", dtype="float32", always_2d=False)
    if sr != SR:
        raise ValueError(f"{name}: {sr} Hz, expected {SR}")
    return np.asarray(audio, dtype=np.float32)


def bed(seconds: float, sr: int = SR, seed: int = 0, segment_s: float = 60.0) -> np.ndarray:
    """`seconds` of music: excerpts of `segment_s` from each piece in turn, cross-faded, each at its own
    level brought to one RMS (so no piece dominates the level the caller sets)."""
    if sr != SR:
        raise ValueError(f"the music set is decoded at {SR} Hz")
    rng = np.random.default_rng(seed)
    pieces = [load(p.name) for p in PIECES]
    pieces = [p / max(float(np.sqrt(np.mean(np.square(p[p != 0], dtype=np.float64)))), 1e-9) for p in pieces]
    n, fade = int(seconds * sr), int(CROSSFADE_S * sr)
    seg = int(segment_s * sr)
    out = np.zeros(n + seg + fade, dtype=np.float32)
    pos, k = 0, int(rng.integers(len(pieces)))
    ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
    while pos < n:
        src = pieces[k % len(pieces)]
        length = min(seg + fade, len(src))
        start = int(rng.integers(0, max(1, len(src) - length)))
        part = src[start : start + length].copy()
        if pos:
            part[:fade] *= ramp
        part[-fade:] *= ramp[::-1]
        out[pos : pos + length] += part
        pos += length - fade
        k += 1
    return out[:n]


if __name__ == "__main__":
    if sys.argv[1:] == ["fetch"]:
        fetch()
        for p in PIECES:
            print(f"{p.name:28s} {len(load(p.name)) / SR:7.1f} s  {p.package} {p.version} ({p.licence})")
    else:
        print("usage: python bench/music_set.py fetch", file=sys.stderr)
        sys.exit(2)
