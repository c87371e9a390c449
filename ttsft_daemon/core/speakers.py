"""Per-voice speaker state under `speakers/<voice>/` (see ARCHITECTURE.md, "Speaker selection").

    speakers/<voice>/embeddings/<clip_id>.emb   one clip's speaker embedding: float32 seconds, then the unit vector
    speakers/<voice>/enroll/<name>              enrollment recordings taken from inbox/<voice>/enroll*.<ext>
    speakers/<voice>/enrollment.emb             the reference embedding made from them (same format, seconds = total)
    speakers/<voice>/state.json                 who the target is: state, source, reference, clusters, detail

Embeddings are derived data written once per clip (tmp + fsync + rename); every clip of the voice that was ever
embedded stays in the store, also the ones rejected as another speaker's, so that the clustering sees the whole
voice. Deleting the folder makes the daemon re-embed and decide again from the clips still in the spools.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ttsft_daemon.core.atomic import atomic_write_bytes, atomic_write_json, read_json

EMB_SUFFIX = ".emb"


def encode(seconds: float, embedding: np.ndarray) -> bytes:
    return np.concatenate([[np.float32(seconds)], embedding.astype(np.float32)]).astype("<f4").tobytes()


def decode(data: bytes) -> tuple[float, np.ndarray] | None:
    if len(data) % 4:
        return None  # torn or foreign: re-embedded
    values = np.frombuffer(data, dtype="<f4")
    if len(values) < 2 or not np.all(np.isfinite(values)):
        return None
    return float(values[0]), values[1:].astype(np.float32)


@dataclass
class SpeakerBook:
    """The speaker state of one voice."""

    root: Path  # speakers/<voice>
    voice: str

    def __post_init__(self) -> None:
        self._cache: dict[str, tuple[float, np.ndarray]] = {}

    @property
    def embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    @property
    def enroll_dir(self) -> Path:
        return self.root / "enroll"

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    # ---------------------------------------------------------------------------------------- embeddings
    def has(self, clip_id: str) -> bool:
        return clip_id in self._cache or (self.embeddings_dir / f"{clip_id}{EMB_SUFFIX}").exists()

    def add(self, clip_id: str, seconds: float, embedding: np.ndarray) -> None:
        self.embeddings_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.embeddings_dir / f"{clip_id}{EMB_SUFFIX}", encode(seconds, embedding))
        self._cache[clip_id] = (seconds, embedding.astype(np.float32))

    def get(self, clip_id: str) -> tuple[float, np.ndarray] | None:
        if clip_id not in self._cache:
            try:
                found = decode((self.embeddings_dir / f"{clip_id}{EMB_SUFFIX}").read_bytes())
            except OSError:
                return None
            if found is None:
                return None
            self._cache[clip_id] = found
        return self._cache[clip_id]

    def all(self) -> dict[str, tuple[float, np.ndarray]]:
        """Every embedded clip of the voice (read from disk once, then from memory)."""
        try:
            names = os.listdir(self.embeddings_dir)
        except FileNotFoundError:
            return dict(self._cache)
        for name in names:
            if name.endswith(EMB_SUFFIX) and not name.startswith("."):
                self.get(name[: -len(EMB_SUFFIX)])
        return dict(self._cache)

    # ---------------------------------------------------------------------------------------- enrollment
    def enrollment(self) -> tuple[float, np.ndarray] | None:
        try:
            return decode((self.root / f"enrollment{EMB_SUFFIX}").read_bytes())
        except OSError:
            return None

    def set_enrollment(self, seconds: float, embedding: np.ndarray) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.root / f"enrollment{EMB_SUFFIX}", encode(seconds, embedding))

    # ---------------------------------------------------------------------------------------- decision
    def state(self) -> dict[str, Any]:
        return read_json(self.state_path) or {}

    def save_state(self, state: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.state_path, state)

    def reference(self) -> np.ndarray | None:
        ref = self.state().get("reference")
        if self.state().get("state") != "decided" or not isinstance(ref, list) or not ref:
            return None
        return np.asarray(ref, dtype=np.float32)


def books_root(state_root: Path) -> Path:
    return state_root / "speakers"


def book(state_root: Path, voice: str) -> SpeakerBook:
    return SpeakerBook(books_root(state_root) / voice, voice)


def is_enrollment(name: str, enroll_name: str) -> bool:
    """Whether an inbox file name is an enrollment sample: `<enroll_name>[anything].<ext>`, any case."""
    return bool(re.match(rf"(?i){re.escape(enroll_name)}[^/]*\.[a-z0-9]+$", name))


def public_state(state_root: Path, voice: str) -> dict[str, Any] | None:
    """The speaker part of `status --json` for one voice, or None when speaker selection never ran for it."""
    st = book(state_root, voice).state()
    if not st:
        return None
    return {"speaker_state": st.get("state"), "speaker_source": st.get("source"), "detail": st.get("detail"),
            "speakers": st.get("clusters", []), "chosen": st.get("chosen"), "chosen_share": st.get("chosen_share")}
