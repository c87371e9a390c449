"""Audio for the report, embedded in the page as data URIs.

Embedded rather than referenced beside the page: the page then stays whole when it is copied or mailed, and when
the clips it plays move (a clip rejected by hand goes to failed/) or are cleaned away. To keep it small the audio is
re-encoded as MP3 (libsndfile through soundfile; mono, 16 kHz, ~3-5 KB per second of speech, a tenth of the WAV) and
each player holds at most `MAX_SECONDS`; the report bounds how many players it has. Where libsndfile has no MP3
encoder, 16 kHz 16-bit WAV is embedded instead.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

MAX_SECONDS = 20.0
RATE = 16000
MP3_COMPRESSION = 0.5  # libsndfile's 0 (best quality) .. 1 (smallest); speech stays clear at this setting


def _load(path: Path, max_seconds: float) -> tuple[object, int] | None:
    import numpy as np
    import soundfile as sf

    try:
        with sf.SoundFile(str(path)) as f:
            frames = min(f.frames, int(max_seconds * f.samplerate))
            samples = f.read(frames, dtype="float32", always_2d=True).mean(axis=1)
            rate = f.samplerate
    except (OSError, RuntimeError, ValueError):
        return None
    if rate != RATE and len(samples):
        import librosa

        samples = librosa.resample(samples, orig_sr=rate, target_sr=RATE)
        rate = RATE
    return np.clip(samples, -1.0, 1.0).astype("float32"), rate


def encode(path: Path, max_seconds: float = MAX_SECONDS) -> tuple[str, bytes] | None:
    """(MIME type, bytes) of the first `max_seconds` of the audio file at `path`; None when it cannot be read."""
    import soundfile as sf

    loaded = _load(path, max_seconds)
    if loaded is None:
        return None
    samples, rate = loaded
    buffer = io.BytesIO()
    try:
        sf.write(buffer, samples, rate, format="MP3", subtype="MPEG_LAYER_III", compression_level=MP3_COMPRESSION)
        return "audio/mpeg", buffer.getvalue()
    except (sf.LibsndfileError, TypeError, ValueError):
        buffer = io.BytesIO()
        sf.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
        return "audio/wav", buffer.getvalue()


def data_uri(path: Path | None, max_seconds: float = MAX_SECONDS) -> str | None:
    if path is None:
        return None
    encoded = encode(path, max_seconds)
    if encoded is None:
        return None
    mime, data = encoded
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
