"""Speaker embeddings on real speech: equal error rates, thresholds, change detection and CPU cost.

For each distinct real speaker of tests/realspeech.py, a stream of ~`--stream` seconds of their utterances is
built (0.3 s between utterances), also mixed with the demo's music bed `--snr` dB below the speech, and (with
--spleeter, when .venv-spleeter is installed) that mix's Spleeter vocal stem. Clips of 1-2 s, 2-4 s and 4-8 s are cut
at the same random places in each version. Reported per condition and length:

- pair EER: clip vs clip of the same condition (same speaker vs different speakers), and its threshold;
- ref EER: clip vs the speaker's reference, the centroid of clean 4-8 s clips from the first third of the stream
  (the clips are cut from the other two thirds): the daemon's situation, clip against enrollment or cluster;
- find_change on two speakers joined (4-8 s each) and on one speaker (8-12 s): detection rate, median error,
  false changes;
- CPU seconds per audio minute of `SpeakerEncoder.embed` with one torch thread.

Writes bench/results/speaker_eer.json and prints a table. Run: .venv/bin/python bench/speaker_eer.py [--spleeter]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import realspeech as rs  # noqa: E402
from ttsft_daemon.audio import speaker as sp  # noqa: E402

BINS = {"1-2s": (1.0, 2.0), "2-4s": (2.0, 4.0), "4-8s": (4.0, 8.0)}


def stream_of(speaker: str, seconds: float, seed: int) -> np.ndarray:
    utts = list(rs.utterances(speaker))
    rng = np.random.default_rng(seed)
    rng.shuffle(utts)  # type: ignore[arg-type]
    gap = np.zeros(int(0.3 * rs.SR), dtype=np.float32)
    parts: list[np.ndarray] = []
    total = 0.0
    for u in utts:
        parts += [u.audio, gap]
        total += u.seconds + 0.3
        if total >= seconds:
            break
    return np.concatenate(parts)


def separate(sep: Any, mix: np.ndarray, tmp: Path) -> np.ndarray:
    src, dst = tmp / "mix.wav", tmp / "voc.wav"
    up = soxr.resample(mix, rs.SR, 44100).astype(np.float32)
    sf.write(src, np.stack([up, up], axis=1), 44100, subtype="PCM_16")
    sep.separate(src, dst)
    voc, sr = sf.read(dst, dtype="float32", always_2d=True)
    out: np.ndarray = soxr.resample(voc.mean(axis=1), sr, rs.SR).astype(np.float32)[: len(mix)]
    return out


def eer(same: np.ndarray, diff: np.ndarray) -> tuple[float, float]:
    """(equal error rate, threshold): where the false-accept and false-reject rates cross."""
    ts = np.unique(np.concatenate([same, diff]))
    far = np.array([(diff >= t).mean() for t in ts])
    frr = np.array([(same < t).mean() for t in ts])
    i = int(np.argmin(np.abs(far - frr)))
    return float((far[i] + frr[i]) / 2), float(ts[i])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=10, help="clips per speaker per length bin")
    ap.add_argument("--stream", type=float, default=75.0, help="seconds of speech per speaker")
    ap.add_argument("--snr", type=float, default=6.0)
    ap.add_argument("--spleeter", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "speaker_eer.json")
    args = ap.parse_args()
    if not rs.available():
        sys.exit("models/speech missing: run scripts/install.sh (python tests/realspeech.py fetch)")
    enc = sp.SpeakerEncoder(threads=1)
    rng = np.random.default_rng(0)
    speakers = list(rs.DISTINCT)
    versions: dict[str, dict[str, np.ndarray]] = {}
    sep: Any = None
    if args.spleeter:
        from ttsft_daemon.audio.separation import SeparatorProcess

        sep = SeparatorProcess(REPO / ".venv-spleeter" / "bin" / "python", REPO / "models" / "spleeter", 30.0, 1.0,
                               900.0)
    sep_s = 0.0
    for i, s in enumerate(speakers):
        clean = stream_of(s, args.stream, seed=i)
        v = {"clean": clean, f"music{args.snr:g}dB": rs.over_music(clean, args.snr, seed=i)}
        if sep is not None:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                v["spleeter"] = separate(sep, v[f"music{args.snr:g}dB"], Path(tmp))
                sep_s += time.perf_counter() - t0
        versions[s] = v
    if sep is not None:
        sep.close()
    conditions = list(next(iter(versions.values())))

    # clips: (speaker, bin, start, length), cut from the last two thirds; references from the first third
    clips: list[tuple[str, str, int, int]] = []
    refs: dict[str, np.ndarray] = {}
    cpu = audio_s = 0.0
    for s in speakers:
        n = len(versions[s]["clean"])
        third = n // 3
        ref_embs = []
        for _ in range(6):
            length = int(rng.uniform(4.0, 8.0) * rs.SR)
            start = int(rng.integers(0, max(1, third - length)))
            ref_embs.append(enc.embed(versions[s]["clean"][start : start + length], rs.SR))
        refs[s] = sp.centroid(np.stack(ref_embs))
        for name, (lo, hi) in BINS.items():
            for _ in range(args.clips):
                length = int(rng.uniform(lo, hi) * rs.SR)
                if n - third - length <= 0:
                    continue
                clips.append((s, name, third + int(rng.integers(0, n - third - length)), length))
    embs: dict[str, np.ndarray] = {}
    for cond in conditions:
        t0 = time.process_time()
        embs[cond] = np.stack([enc.embed(versions[s][cond][a : a + ln], rs.SR) for s, _, a, ln in clips])
        if cond == "clean":
            cpu = time.process_time() - t0
            audio_s = sum(ln for *_, ln in clips) / rs.SR
    labels = np.array([s for s, *_ in clips])
    bins = np.array([b for _, b, *_ in clips])
    ref_mat = np.stack([refs[s] for s in speakers])
    table: list[dict[str, Any]] = []
    for cond in conditions:
        for name in BINS:
            sel = np.flatnonzero(bins == name)
            e = embs[cond][sel]
            lab = labels[sel]
            sim = e @ e.T
            iu = np.triu_indices(len(sel), 1)
            same_pair = lab[iu[0]] == lab[iu[1]]
            p_eer, p_t = eer(sim[iu][same_pair], sim[iu][~same_pair])
            rsim = e @ ref_mat.T
            is_same = lab[:, None] == np.array(speakers)[None, :]
            r_eer, r_t = eer(rsim[is_same], rsim[~is_same])
            rates = {f"{t:.2f}": {"false_accept": float((rsim[~is_same] >= t).mean()),
                                  "false_reject": float((rsim[is_same] < t).mean())}
                     for t in np.arange(0.60, 0.90, 0.025)}
            table.append({"condition": cond, "length": name, "clips": len(sel), "ref_rates": rates,
                          "pair_eer": p_eer,
                          "pair_threshold": p_t, "ref_eer": r_eer, "ref_threshold": r_t,
                          "ref_same_mean": float(rsim[is_same].mean()),
                          "ref_other_mean": float(rsim[~is_same].mean())})
    # cross-condition: the same clips, music vs clean and separated vs clean
    drift = {c: float(np.mean(np.sum(embs[c] * embs["clean"], axis=1))) for c in conditions if c != "clean"}
    # same person, other language
    es = rs.utterances("allison_es")
    es_sims = [sp.cosine(enc.embed(u.audio, rs.SR), refs["allison"]) for u in es[:20] if u.seconds >= 2.0]
    # change detection
    p = sp.SpeakerParams()
    errors: list[float] = []
    missed = false_changes = singles = 0
    for k in range(30):
        a, b = rng.choice(len(speakers), 2, replace=False)
        xa = stream_of(speakers[a], 12, seed=100 + k)[: int(rng.uniform(4, 8) * rs.SR)]
        xb = stream_of(speakers[b], 12, seed=200 + k)[: int(rng.uniform(4, 8) * rs.SR)]
        t = sp.find_change(enc.embed_windows(np.concatenate([xa, xb]), rs.SR, p.window_s, p.hop_s),
                           p.change_threshold, p.min_side_s)
        if t is None:
            missed += 1
        else:
            errors.append(round(abs(t - len(xa) / rs.SR), 3))
        x1 = stream_of(speakers[a], 14, seed=300 + k)[: int(rng.uniform(8, 12) * rs.SR)]
        singles += 1
        if sp.find_change(enc.embed_windows(x1, rs.SR, p.window_s, p.hop_s), p.change_threshold,
                          p.min_side_s) is not None:
            false_changes += 1
    result = {
        "speakers": speakers,
        "snr_db": args.snr,
        "table": table,
        "embedding_drift_vs_clean": drift,
        "same_person_other_language_mean": float(np.mean(es_sims)) if es_sims else None,
        "change": {"pairs": 30, "missed": missed, "median_error_s": float(np.median(errors)) if errors else None,
                   "within_0.5s": int(sum(e <= 0.5 for e in errors)), "errors_s": sorted(errors),
                   "single_speaker_clips": singles,
                   "false_changes": false_changes, "threshold": p.change_threshold},
        "cpu_s_per_audio_min": cpu / (audio_s / 60) if audio_s else None,
        "audio_min_embedded_clean": audio_s / 60,
        "spleeter_wall_s": sep_s,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"{'condition':14s} {'length':6s} {'clips':>5s} {'pairEER':>8s} {'thr':>6s} {'refEER':>7s} {'thr':>6s}"
          f" {'same':>6s} {'other':>6s}")
    for r in table:
        print(f"{r['condition']:14s} {r['length']:6s} {r['clips']:5d} {r['pair_eer']:8.1%} {r['pair_threshold']:6.3f}"
              f" {r['ref_eer']:7.1%} {r['ref_threshold']:6.3f} {r['ref_same_mean']:6.3f} {r['ref_other_mean']:6.3f}")
    print("drift vs clean (mean cosine of the same clip):", {k: round(v, 3) for k, v in drift.items()})
    print("allison (es) vs allison (en) reference:", result["same_person_other_language_mean"])
    print("change:", result["change"])
    print(f"CPU s per audio minute (1 thread): {result['cpu_s_per_audio_min']:.2f}")


if __name__ == "__main__":
    main()
