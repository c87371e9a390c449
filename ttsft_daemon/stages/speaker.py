"""Speaker: spool/clips clip -> spool/audio clip of the voice's target speaker, or failed/ (other_speaker,
mixed_speakers), or it waits in spool/clips while the target is not known yet.

Who the target is (per voice, `core/speakers.py` keeps the state):
1. an enrollment: `inbox/<voice>/enroll*.<ext>` (10 s or more of the right person) is taken here, not by ingest,
   and becomes the reference;
2. else the dominant speaker: the voice's clip embeddings (across recordings) are clustered; the biggest cluster
   is chosen once it clearly holds the most speech (`speaker.min_share`, `speaker.min_ratio`) and enough of it has
   been heard (`speaker.min_decide_seconds`, or everything there is when nothing more is coming);
3. else the clips wait (errors.Deferred: nothing lost, nothing accepted, nothing quarantined) and status says what
   to do. Once decided the reference stays: later recordings that would make another speaker dominant put the voice
   on hold ("conflict") instead of flipping it silently.

Each clip is embedded once: the embedding goes into the store and into the clip's sidecar.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from ttsft_daemon import engine
from ttsft_daemon.audio.media import decode_to_wav
from ttsft_daemon.audio.speaker import (
    SpeakerParams,
    centroid,
    choose_target,
    cosine,
    find_change,
    nearest_other,
    other_speakers,
)
from ttsft_daemon.core.atomic import atomic_copy, link_or_copy, remove
from ttsft_daemon.core.jobs import CLIP_SPLIT, JobRecord
from ttsft_daemon.core.speakers import SpeakerBook, book, is_enrollment
from ttsft_daemon.core.spool import Item
from ttsft_daemon.errors import Deferred, RejectedInput
from ttsft_daemon.events import SPEAKER_ENROLLMENT_NEEDED, notify
from ttsft_daemon.pipeline import StageSpec, spools_of
from ttsft_daemon.stages.base import Output, Result, SpoolStage, StageContext, StageEnv
from ttsft_daemon.text.transcription import read_mono

log = structlog.get_logger(__name__)

WAIT_SECONDS = 10.0  # how soon a waiting clip is looked at again (cheap: its embedding is stored)
MIN_ENROLL_SECONDS = 5.0
# With recordings still on their way, the dominant speaker is chosen only after this many times
# speaker.min_decide_seconds: an interview's first minute is often the host's introduction.
DECIDE_EARLY_FACTOR = 5.0
MIN_DECIDE_SECONDS = 10.0  # with nothing more coming, the least speech the dominant speaker is chosen on


class SpeakerStage(SpoolStage):
    def __init__(self, spec: StageSpec, env: StageEnv) -> None:
        super().__init__(spec, env)
        self._encoder: engine.SpeakerWorker | None = None  # in this process, or the Ray engine's actors
        self._books: dict[str, SpeakerBook] = {}
        self._decided_at: dict[str, tuple[int, bool]] = {}  # voice -> (clips embedded, more coming) at its last look
        self._voices: dict[str, str] = {}  # item id -> voice (item ids never change their voice)
        # voice -> (clips clustered, reference, centroids of the other speakers heard)
        self._others: dict[str, tuple[int, np.ndarray, list[np.ndarray]]] = {}

    def open(self) -> None:
        if self.config.speaker.enabled:
            self._encoder = engine.current().speaker_encoder(self.config, self.spec.limit(self.config))

    def close(self) -> None:
        self._encoder = None

    def params(self) -> SpeakerParams:
        c = self.config.speaker
        return SpeakerParams(same_speaker_short=c.same_speaker_short, short_s=c.short_seconds,
                             same_speaker_long=c.same_speaker_long, long_s=c.long_seconds,
                             min_clip_s=c.min_clip_seconds,
                             dominant_share=c.dominant_share, dominant_ratio=c.dominant_ratio,
                             min_decide_s=c.min_decide_seconds, merge=c.merge, window_s=c.change_window_seconds,
                             hop_s=c.change_hop_seconds, change_threshold=c.change_threshold,
                             min_side_s=c.change_min_side_seconds, other_margin=c.other_margin)

    def book(self, voice: str) -> SpeakerBook:
        if voice not in self._books:
            self._books[voice] = book(self.spool.layout.root, voice)
        return self._books[voice]

    # ------------------------------------------------------------------------------------------------ items
    def candidates(self) -> list[Item]:
        if self.config.speaker.enabled:
            self._take_enrollments()
        return super().candidates()

    def process(self, item: Item, ctx: StageContext) -> Result:
        meta = item.meta()
        if not self.config.speaker.enabled:
            return self._pass(item, meta, {"decision": "not_checked"}, ctx)
        assert self._encoder is not None
        voice, cid = str(meta["voice"]), str(meta["clip_id"])
        bk = self.book(voice)
        samples, sr = read_mono(item.payload)
        seconds = len(samples) / sr
        stored = bk.get(cid)
        if stored is None:
            emb = self._encoder.embed(samples, sr)
            bk.add(cid, seconds, emb)
        else:
            emb = stored[1]
        try:
            reference = self._target(voice, bk, exclude=cid)
        except BaseException:
            self._decided_at.pop(voice, None)  # the state may not have been saved (a full disk): look again
            raise
        if reference is None:
            raise Deferred(str(bk.state().get("detail") or "the target speaker is not known yet"), WAIT_SECONDS)
        p = self.params()
        similarity = cosine(emb, reference)
        need = float(p.threshold_for(seconds))
        if self.config.separation.enabled and bk.state().get("source") == "enrollment":
            need -= self.config.speaker.enrollment_margin  # a stem against a clean sample scores lower
        info: dict[str, Any] = {"similarity": round(similarity, 4), "threshold": round(need, 4),
                                "embedding": [round(float(x), 5) for x in emb]}
        if similarity < need:
            raise RejectedInput("other_speaker", f"similarity {similarity:.3f} to the target of voice '{voice}' is "
                                f"below {need:.3f} ({seconds:.1f} s clip)")
        others = self._other_speakers(voice, bk, reference)
        other = nearest_other(emb, others)
        if others:
            info["other_similarity"] = round(other, 4)
        if other >= similarity + p.other_margin:
            raise RejectedInput("other_speaker", f"similarity {other:.3f} to another speaker heard in voice "
                                f"'{voice}' is above its {similarity:.3f} to the target ({seconds:.1f} s clip)")
        change = self._change(samples, sr, seconds)
        if change is not None:
            return self._split(item, meta, samples, sr, change, reference, others, info, ctx)
        return self._pass(item, meta, {**info, "decision": "target"}, ctx)

    # ------------------------------------------------------------------------------------------------ target
    def _other_speakers(self, voice: str, bk: SpeakerBook, reference: np.ndarray) -> list[np.ndarray]:
        """The other speakers heard in the voice's clips so far (re-clustered as the store grows by 5%)."""
        clips = bk.all()
        cached = self._others.get(voice)
        if cached is not None and len(clips) < _recheck_at(cached[0]) and np.array_equal(cached[1], reference):
            return cached[2]
        margin = self.config.speaker.enrollment_margin if self.config.separation.enabled and \
            bk.state().get("source") == "enrollment" else 0.0
        others = other_speakers([(e, s) for s, e in clips.values()], reference, self.params(), margin)
        self._others[voice] = (len(clips), reference, others)
        return others

    def _target(self, voice: str, bk: SpeakerBook, exclude: str) -> np.ndarray | None:
        """The voice's reference embedding; decides (or re-checks) who the target is when the evidence changed."""
        state = bk.state()
        enrolled = bk.enrollment()
        if enrolled is not None:
            if state.get("source") != "enrollment" or state.get("state") != "decided":
                self._save(bk, "decided", "enrollment", enrolled[1], state.get("clusters", []),
                           f"voice {voice}: the target is the enrolled speaker ({enrolled[0]:.0f} s of enrollment)")
            return enrolled[1]
        clips = bk.all()
        last = self._decided_at.get(voice)
        current = bk.reference()
        if current is not None and last is not None and len(clips) < _recheck_at(last[0]):
            return current  # decided, and not enough new evidence to look again (clustering costs O(clips))
        more = self._more_coming(voice, bk, exclude)
        if (last is not None and (len(clips), more) == last) or \
                (last is not None and more and last[1] and len(clips) < _recheck_at(last[0])):
            return current  # nothing new since the last look, or too little to change it
        self._decided_at[voice] = (len(clips), more)
        p = self.params()
        if not more:  # everything of the voice is here: decide on what there is, down to a floor
            p = dataclasses.replace(p, min_decide_s=min(p.min_decide_s, MIN_DECIDE_SECONDS))
        decision = choose_target([(e, s) for s, e in clips.values()], p)
        clusters = [{"seconds": round(c.seconds, 1), "share": round(c.share, 4), "clips": c.clips}
                    for c in decision.clusters]
        enroll_hint = f"add inbox/{voice}/{self.config.speaker.enroll_name}.wav with 10 s of the right speaker"
        if current is not None and state.get("source") == "dominant":
            # Decided before: keep it, unless the evidence now clearly says someone else dominates.
            top = decision.target
            if top is not None and cosine(top.centroid, current) < p.merge:
                self._save(bk, "conflict", "dominant", current, clusters,
                           f"voice {voice}: another speaker now holds {top.share:.0%} of {_minutes(clips)}, "
                           f"not the one chosen before; clips wait: {enroll_hint}")
                return None
            self._save(bk, "decided", "dominant", current, clusters, str(state.get("detail", "")), keep_time=True)
            return current
        if decision.state == "decided" and decision.centroid is not None and \
                (not more or decision.total_seconds >= self.config.speaker.min_decide_seconds * DECIDE_EARLY_FACTOR):
            self._save(bk, "decided", "dominant", decision.centroid, clusters, f"voice {voice}: {decision.detail}")
            return decision.centroid
        if not more and decision.state == "too_little_speech" and len(decision.clusters) <= 1:
            # All there is of the voice, and no second speaker in it: too little to call anyone dominant, but
            # nobody to tell apart either (the clips still have to match what was heard).
            ref = decision.clusters[0].centroid if decision.clusters else centroid(
                np.stack([e for _, e in clips.values()]), np.array([s for s, _ in clips.values()]))
            self._save(bk, "decided", "dominant", ref, clusters,
                       f"voice {voice}: one speaker in all {_minutes(clips)} heard so far")
            return ref
        if more:
            self._save(bk, "collecting", "dominant", None, clusters,
                       f"voice {voice}: {_minutes(clips)} heard so far; the target is chosen once the recordings "
                       f"on their way are in (or {enroll_hint})")
            return None
        self._save(bk, "waiting_for_enrollment", "dominant", None, clusters,
                   f"voice {voice}: {decision.detail}; {enroll_hint}")
        return None

    def _save(self, bk: SpeakerBook, state: str, source: str, reference: np.ndarray | None,
              clusters: list[dict[str, Any]], detail: str, keep_time: bool = False) -> None:
        old = bk.state()
        chosen_share = clusters[0]["share"] if clusters and state == "decided" else None
        new = {"voice": bk.voice, "state": state, "source": source, "detail": detail, "clusters": clusters,
               "chosen": 0 if state == "decided" else None, "chosen_share": chosen_share,
               "reference": [round(float(x), 6) for x in reference] if reference is not None else None,
               "decided_time": old.get("decided_time") if keep_time else (time.time() if state == "decided" else None)}
        if {k: v for k, v in old.items() if k != "updated"} == new:
            return
        bk.save_state({**new, "updated": time.time()})
        if old.get("state") != state:
            (log.info if state == "decided" else log.warning)(
                "speaker state", voice=bk.voice, state=state, source=source, detail=detail)
            if state in ("waiting_for_enrollment", "conflict"):
                notify(self.config.notify, SPEAKER_ENROLLMENT_NEEDED, voice=bk.voice, state=state, why=detail)
        if state == "decided" and self.env.backoff is not None:
            self.env.backoff.wake_deferred(f"{self.name}-")

    def _more_coming(self, voice: str, bk: SpeakerBook, exclude: str) -> bool:
        """Whether clips of `voice` are still on their way here (inbox, earlier spools, or not embedded yet)."""
        scan = self.env.scanner.scan()
        if scan.pending:  # settling files: their voice is not known yet
            return True
        if any(i.id.rsplit("--", 1)[0] == voice and not is_enrollment(i.payload.name, self.config.speaker.enroll_name)
               for i in scan.ready):
            return True
        spools = spools_of(self.env.pipeline)
        for spool in spools[: spools.index(self.source)] if self.source in spools else ():
            if any(self._voice_of(i) == voice for i in self.spool.items(spool)):
                return True
        return any(i.id != exclude and not bk.has(i.id) and self._voice_of(i) == voice
                   for i in self.spool.items(self.source))

    def _voice_of(self, item: Item) -> str:
        if item.id not in self._voices:
            self._voices[item.id] = str(item.meta().get("voice", ""))
        return self._voices[item.id]

    # ------------------------------------------------------------------------------------------------ a clip
    def _change(self, samples: np.ndarray, sr: int, seconds: float) -> float | None:
        assert self._encoder is not None
        p = self.params()
        if seconds < 2 * p.min_side_s + p.window_s:
            return None
        windows = self._encoder.embed_windows(samples, sr, p.window_s, p.hop_s)
        return find_change(windows, p.change_threshold, p.min_side_s)

    def _split(self, item: Item, meta: dict[str, Any], samples: np.ndarray, sr: int, at: float,
               reference: np.ndarray, others: list[np.ndarray], info: dict[str, Any], ctx: StageContext) -> Result:
        """The voice changes at `at` s: keep the side(s) of the target that are long enough, as clips of their own."""
        assert self._encoder is not None
        p = self.params()
        cut = int(at * sr)
        kept: list[Output] = []
        ids: list[str] = []
        for offset, part in ((0.0, samples[:cut]), (at, samples[cut:])):
            part_s = len(part) / sr
            if part_s < max(self.config.segmentation.min_clip_seconds, p.min_side_s):
                continue
            part_emb = self._encoder.embed(part, sr)
            sim = cosine(part_emb, reference)
            if sim < float(p.threshold_for(part_s)) or \
                    nearest_other(part_emb, others) >= sim + p.other_margin:
                continue
            start = float(meta.get("start", 0.0)) + offset
            cid = f"{meta['job_id']}-{round(start * 1000):09d}"
            tmp = ctx.tmp_output(self.target, cid, "wav")
            _write_pcm16(tmp, part, sr)
            kept.append(Output(self.target, cid, tmp, "wav", {
                **meta, "clip_id": cid, "start": round(start, 3), "end": round(start + part_s, 3),
                "duration": round(part_s, 3), "split_from": meta["clip_id"],
                "speaker": {"similarity": round(sim, 4), "threshold": info["threshold"], "decision": "target",
                            "split_at": round(at, 3)}}))
            ids.append(cid)
        if not kept:
            raise RejectedInput("mixed_speakers", f"the voice changes {at:.2f} s into this {len(samples) / sr:.1f} s "
                                "clip and no side of it is a usable clip of the target")
        original = str(meta["clip_id"])

        def update(job: JobRecord) -> None:
            for cid in ids:
                job.clips.setdefault(cid, self.target)
            job.set_clip(original, CLIP_SPLIT)

        return Result(kept, update, log={"split_at": round(at, 3), "kept": len(kept)})

    def _pass(self, item: Item, meta: dict[str, Any], info: dict[str, Any], ctx: StageContext) -> Result:
        cid = str(meta["clip_id"])
        tmp = ctx.tmp_output(self.target, cid, "wav")
        link_or_copy(item.payload, tmp)

        def update(job: JobRecord) -> None:
            if job.clips.get(cid) in (None, self.source):
                job.clips[cid] = self.target

        log_fields = {k: v for k, v in info.items() if k in ("similarity", "decision")}
        return Result([Output(self.target, cid, tmp, "wav", {**meta, "speaker": info})], update, log=log_fields)

    # ------------------------------------------------------------------------------------------------ enrollment
    def _take_enrollments(self) -> None:
        """inbox/<voice>/enroll*.<ext> (or inbox/enroll*.<ext> for the default voice): embed and keep as the
        voice's reference; the file moves to speakers/<voice>/enroll/ and never becomes training data."""
        inbox = self.spool.layout.inbox
        name = self.config.speaker.enroll_name
        for voice_dir in [inbox, *sorted(d for d in inbox.iterdir() if d.is_dir() and not d.is_symlink())] \
                if inbox.exists() else []:
            voice = self.config.inbox.default_voice if voice_dir == inbox else voice_dir.name
            files = sorted(f for f in voice_dir.iterdir() if is_enrollment(f.name, name)
                           and f.suffix.lower().lstrip(".") in self.config.inbox.extensions
                           and f.is_file() and not f.is_symlink() and _settled(f, self.config.inbox.settle_seconds))
            if files:
                self._enroll(voice, files)

    def _enroll(self, voice: str, files: list[Path]) -> None:
        assert self._encoder is not None
        bk = self.book(voice)
        bk.enroll_dir.mkdir(parents=True, exist_ok=True)
        for f in files:
            atomic_copy(f, bk.enroll_dir / f.name)
        pieces, total = [], 0.0
        for f in sorted(bk.enroll_dir.iterdir()):
            if f.name.startswith("."):
                continue
            try:
                wav = self.spool.layout.work / f".enroll-{voice}.wav"
                decode_to_wav(f, wav, 16000, 1, self.config.daemon.ffmpeg_timeout_seconds)
                samples, sr = read_mono(wav)
                wav.unlink(missing_ok=True)
            except (RejectedInput, OSError) as exc:
                log.error("enrollment file unreadable; ignored", voice=voice, file=f.name, error=str(exc))
                continue
            pieces.append(self._encoder.embed(samples, sr) * (len(samples) / sr))
            total += len(samples) / sr
        for f in files:
            remove(f)
        if total < MIN_ENROLL_SECONDS or not pieces:
            log.error("enrollment too short; ignored", voice=voice, seconds=round(total, 1),
                      hint=f"give {voice} 10 s or more of the target speaker alone")
            return
        mean = np.sum(pieces, axis=0)
        bk.set_enrollment(total, (mean / np.linalg.norm(mean)).astype(np.float32))
        self._decided_at.pop(voice, None)
        log.info("enrollment taken", voice=voice, seconds=round(total, 1), files=[f.name for f in files])
        if self.env.backoff is not None:
            self.env.backoff.wake_deferred(f"{self.name}-")


def _recheck_at(clips: int) -> int:
    """After looking at `clips` embeddings, look again once the store has grown by 5% (at least 10 clips)."""
    return clips + max(10, clips // 20)


def _settled(path: Path, settle: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime >= settle
    except OSError:
        return False


def _minutes(clips: dict[str, tuple[float, np.ndarray]]) -> str:
    total = sum(s for s, _ in clips.values())
    return f"{total / 60:.1f} min" if total >= 60 else f"{total:.0f} s"


def _write_pcm16(path: Path, samples: np.ndarray, sr: int) -> None:
    from ttsft_daemon.audio.cleaning import write_wav_pcm16

    write_wav_pcm16(path, samples, sr)


