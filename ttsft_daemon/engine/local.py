"""The local engine: the heavy work in the daemon's own process, one set of models per stage worker thread.

These worker classes are the bodies of the heavy stages; the Ray engine's actors run the same classes on the
cluster's nodes, so both engines give the same results on the same input.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from ttsft_daemon.audio.residue import ResidueRemover, find_library, library_missing, pause_gap_db
from ttsft_daemon.audio.separation import SeparatorProcess, decode_and_separate
from ttsft_daemon.audio.speaker import SpeakerEncoder
from ttsft_daemon.config import Config
from ttsft_daemon.core import cpu
from ttsft_daemon.core.atomic import tmp_name
from ttsft_daemon.engine import PassResult
from ttsft_daemon.text.quality import QualityGate, QualityReport
from ttsft_daemon.text.transcription import Transcriber, Transcript

log = structlog.get_logger(__name__)


class LocalSeparator:
    """Decode a recording and keep its voice with the Spleeter worker process (plain decode when disabled)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._separator: SeparatorProcess | None = None
        self._residue: ResidueRemover | None = None

    def open(self) -> None:
        sep = self.config.separation
        if sep.enabled and self._separator is None:
            self._separator = SeparatorProcess(
                python=sep.python_path,
                model_dir=sep.model_dir or self.config.paths.models_dir / "spleeter",
                chunk_seconds=sep.chunk_seconds,
                overlap_seconds=sep.overlap_seconds,
                timeout=sep.timeout_seconds,
                start_timeout=sep.start_timeout_seconds,
                crossfade=sep.crossfade,
                level_dbfs=sep.input_level_dbfs,
                threads=cpu.pool_threads(sep.threads, big_host=max(1, cpu.usable_cores() // 2)),
                engine=sep.engine,
                music_gap_db=sep.music_free_gap_db if sep.skip_music_free else None,
            )
            self._separator.start()
        if sep.enabled and sep.remove_residue and self._residue is None:
            library = find_library(sep.residue_library)
            if library is None:
                log.warning("music residue removal off", why=library_missing(sep.residue_library))
            else:
                self._residue = ResidueRemover(library, sep.residue_keep)

    def separate(self, src: Path, dst: Path, workdir: Path, stop: threading.Event | None = None) -> dict[str, Any]:
        decode_and_separate(self._separator, src, dst, workdir, self.config.daemon.ffmpeg_timeout_seconds)
        if self._separator is None:
            return {"separated": False}
        answer = self._separator.last_result or {}
        chunks, music_free = answer.get("chunks"), answer.get("music_free_chunks") or 0
        info = {"separated": True, "chunks": chunks, "music_free_chunks": music_free}
        if self._residue is not None and chunks is not None and music_free < chunks:
            skip_db = self.config.separation.residue_skip_gap_db
            if skip_db is not None:  # nothing for RNNoise to take out where the pauses are already near silence
                info["residue_pause_gap_db"] = gap = round(pause_gap_db(dst), 1)
                if gap >= skip_db:
                    info["residue_removed"] = False
                    return info
            polished = tmp_name(dst)
            try:
                self._residue.run(dst, polished)
                os.replace(polished, dst)
            finally:
                polished.unlink(missing_ok=True)
            info["residue_removed"] = True
        return info

    def close(self) -> None:
        if self._separator is not None:
            self._separator.close()
            self._separator = None


class LocalTranscriber:
    """faster-whisper and the quality gate, loaded once."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._transcriber: Transcriber | None = None
        self._gate: QualityGate | None = None

    def open(self) -> None:
        if self._transcriber is not None and self._gate is not None:
            return
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # one line per clip is our own log's job
        self._transcriber = Transcriber(self.config.transcription, self.config.paths.models_dir)
        q = self.config.quality
        self._gate = QualityGate(q, espeak_voice=self.config.training.espeak_voice,
                                 min_word_probability=q.min_word_probability,
                                 voiced_threshold_db=q.voiced_threshold_db,
                                 hallucination_phrases=tuple(q.hallucination_phrases))

    def packed_pass(self, clips16k: list[np.ndarray], stop: threading.Event | None = None) -> list[PassResult]:
        self.open()
        assert self._transcriber is not None and self._gate is not None
        texts = self._transcriber.transcribe_packed(clips16k, self.config.quality.min_word_probability)
        groups = self._gate.score_groups(clips16k)
        return list(zip(texts, groups, strict=True))

    def judge(self, samples: np.ndarray, sr: int, packed: Transcript | None, group_dnsmos: dict[str, float] | None,
              stop: threading.Event | None = None) -> tuple[Transcript, QualityReport]:
        self.open()
        assert self._transcriber is not None and self._gate is not None
        transcript = packed if packed is not None else self._transcriber.transcribe_array(samples, sr)
        return transcript, self._gate.assess(transcript, samples, sr, group_dnsmos=group_dnsmos)

    def close(self) -> None:
        self._transcriber = None
        self._gate = None


class LocalEngine:
    kind = "local"

    def separator(self, config: Config, limit: float) -> LocalSeparator:
        return LocalSeparator(config)

    def speaker_encoder(self, config: Config, limit: float) -> SpeakerEncoder:
        return SpeakerEncoder(threads=cpu.pool_threads(config.speaker.threads, big_host=2))

    def transcriber(self, config: Config, limit: float) -> LocalTranscriber:
        return LocalTranscriber(config)

    def threads(self, stage: str, configured: int) -> int:
        return configured

    def describe(self) -> dict[str, Any]:
        return {"engine": self.kind}

    def close(self) -> None:
        pass
