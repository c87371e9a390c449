#!/usr/bin/env python3
"""How much of a speaker's speech reaches the dataset as the music under it gets louder (issue 14's curve).

One "podcast" of real human speech (Allison Smith's prompts, tests/realspeech.py) is
mixed with music at each --levels dB below the speech (speech RMS over music RMS; once without music), and each
mix runs through `ttsft-daemon run --exit-when-idle` (Spleeter, Whisper and the quality gate: all real, default
settings unless --set changes them). --music real (default): real game music from Debian packages
(bench/music_set.py, sources in bench/MUSIC_SOURCES.md); --music synthetic: the demo's music bed (tonal pads and
a beat), the first baseline.
Per level it reports:

- coverage: the spoken seconds that accepted clips cover / all spoken seconds;
- accepted-clip WER against the known text (Debian's transcripts of the prompts, tests/REALSPEECH_SOURCES.md): a
  clip is compared with the texts of the utterances it holds most of (numbers compared as words,
  `normalize_for_wer`); `wer_whole` only over clips that hold every utterance they touch whole; `wer_joined`
  (the one plotted) over runs of clips that together hold whole utterances with nothing of them rejected, the
  clips' texts joined (a long prompt split at its inner pauses is scored whole, not as a clip that misses
  words). The floor is
  Whisper's own WER on each clean utterance alone (`whisper_clean_wer`, the daemon's model and settings): the
  issue's goal is accepted-clip WER within 1.2x of it;
- the mean DNSMOS of accepted clips, the reject reasons (clips, and the spoken seconds they held), and the
  signals of the clips the music rules rejected.

    .venv/bin/python bench/music_coverage.py [--music real|synthetic] [--label NAME] [--set quality.x=1 ...]
Each run is one curve, stored under its --label (default: the music kind) in bench/results/music_coverage.json;
bench/results/music_coverage.svg plots every stored curve.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import support

from tests import realspeech as rs
from ttsft_daemon.demo.audio import Recording, write_media
from ttsft_daemon.report.review import rejected_clips
from ttsft_daemon.text.textnorm import normalize_for_wer

PAUSE_S = (0.5, 1.0)


def podcast(n: int, seed: int) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """`n` utterances with known text joined by pauses: (speech, [(start, end, text)])."""
    rng = np.random.default_rng(seed)
    utts = list(rs.utterances("allison"))[:: max(1, len(rs.utterances("allison")) // n)][:n]
    parts: list[np.ndarray] = [np.zeros(int(0.5 * rs.SR), dtype=np.float32)]
    spans: list[tuple[float, float, str]] = []
    t = 0.5
    for u in utts:
        spans.append((t, t + u.seconds, u.text or ""))
        parts.append(u.audio)
        t += u.seconds
        gap = float(rng.uniform(*PAUSE_S))
        parts.append(np.zeros(int(gap * rs.SR), dtype=np.float32))
        t += len(parts[-1]) / rs.SR
    return np.concatenate(parts), spans


def run_level(work: Path, name: str, mix: np.ndarray, spans: list[tuple[float, float, str]],
              overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    root = work / name
    shutil.rmtree(root, ignore_errors=True)
    (root / "inbox").mkdir(parents=True)
    media = work / f"{name}.mp3"
    write_media(Recording(mix, None, mix, rs.SR, spans, []), media, "mp3")
    shutil.copy(media, root / "inbox" / media.name)
    sections: dict[str, dict[str, Any]] = {
        "inbox": {"settle_seconds": 0.2, "rescan_seconds": 0.5}, "training": {"enabled": False},
        "logging": {"format": "json", "journal": "off"}}
    for section, values in overrides.items():
        sections.setdefault(section, {}).update(values)
    cfg = support.write_config(work / f"{name}.yaml", root, sections)
    log = work / f"{name}.log"
    log.unlink(missing_ok=True)
    run = support.run_measured(support.daemon_command(cfg, True), log, timeout=3600)
    if run.rc != 0:
        raise SystemExit(f"daemon failed ({run.rc}); see {log}")
    return {**summarize(root, spans), "wall_s": run.wall_s}


def summarize(root: Path, spans: list[tuple[float, float, str]]) -> dict[str, Any]:
    """One level's numbers from its state root (after the daemon run, or again later with --rescore)."""
    clips = [json.loads(p.read_text()) for p in sorted((root / "dataset" / "default" / "clips").glob("*.json"))]
    spoken = sum(e - s for s, e, _ in spans)
    covered, refs, hyps, dnsmos, kept_by_parts = 0.0, [], [], [], 0
    whole_refs, whole_hyps, whole_s = [], [], 0.0
    for c in clips:
        start, end = float(c["start"]), float(c["end"])
        covered += _spoken_in(start, end, spans)
        held = [txt for s, e, txt in spans if min(end, e) - max(start, s) > 0.5 * (e - s)]
        if held:
            refs.append(normalize_for_wer(" ".join(held)))
            hyps.append(normalize_for_wer(str(c.get("text", ""))))
        # Whole utterances only: the clip holds every utterance it touches (to WHOLE_SLACK_S) and nothing of
        # another, so its reference text is exact; clips that cut an utterance are left out of this WER.
        touched = [(s, e, txt) for s, e, txt in spans if min(end, e) - max(start, s) > 0]
        if touched and all(start <= s + WHOLE_SLACK_S and end >= e - WHOLE_SLACK_S for s, e, _ in touched):
            whole_refs.append(normalize_for_wer(" ".join(txt for _, _, txt in touched)))
            whole_hyps.append(normalize_for_wer(str(c.get("text", ""))))
            whole_s += _spoken_in(start, end, spans)
        details = (c.get("quality_report") or {}).get("details") or {}
        score = details.get("dnsmos_ovrl")
        if isinstance(score, (int, float)):
            dnsmos.append(float(score))
        kept_by_parts += bool(details.get("dnsmos_verdict"))
    joined = joined_wer(clips, spans)
    reasons: dict[str, int] = {}
    lost: dict[str, float] = {}
    music_rejects: list[dict[str, Any]] = []
    for clip in rejected_clips(root, "default"):  # which signal rejected each clip (several may)
        keys = list(dict.fromkeys(r.split(" ")[0].split(":")[0] for r in clip.reasons))
        meta = _failed_meta(root, clip.clip)
        seconds = _spoken_in(float(meta.get("start", 0.0)), float(meta.get("end", 0.0)), spans) if meta else 0.0
        for key in keys:
            reasons[key] = reasons.get(key, 0) + 1
            lost[key] = round(lost.get(key, 0.0) + seconds, 1)
        if meta and any(k in MUSIC_REASONS for k in keys):
            d = (meta.get("quality_report") or {}).get("details") or {}
            music_rejects.append({"clip": clip.clip, "reasons": keys, "spoken_s": round(seconds, 2),
                                  **{k: d.get(k) for k in MUSIC_DETAILS if k in d}})
    return {"coverage": round(covered / spoken, 4), "accepted_clips": len(clips), "accepted_seconds":
            round(covered, 1), "spoken_seconds": round(spoken, 1), "wer": _wer(refs, hyps),
            "wer_whole": _wer(whole_refs, whole_hyps), "wer_whole_clips": len(whole_refs),
            "wer_whole_seconds": round(whole_s, 1), **joined,
            "dnsmos_accepted_mean": round(float(np.mean(dnsmos)), 3) if dnsmos else None,
            "dnsmos_accepted_p10": round(float(np.percentile(dnsmos, 10)), 3) if dnsmos else None,
            "accepted_by_music_rule": kept_by_parts,
            "rejects": dict(sorted(reasons.items())), "rejected_spoken_seconds": dict(sorted(lost.items())),
            "music_rejects": music_rejects}


def joined_wer(clips: list[dict[str, Any]], spans: list[tuple[float, float, str]]) -> dict[str, Any]:
    """WER over runs of accepted clips whose references are exact: clips are joined with the utterances they
    touch (a long prompt split at its inner pauses gives several clips of one utterance); a run whose clips
    cover every utterance it touches whole (to WHOLE_SLACK_S, nothing of it rejected) is scored as the clips'
    texts in order against those utterances' known texts in order. Runs with a part rejected are left out (their
    reference is not known word by word); `wer_joined_seconds` says how much of the accepted speech was scored."""
    order = sorted(clips, key=lambda c: float(c["start"]))
    parent = list(range(len(order) + len(spans)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for ci, c in enumerate(order):
        start, end = float(c["start"]), float(c["end"])
        for ui, (s, e, _) in enumerate(spans):
            if min(end, e) - max(start, s) > 0:
                parent[find(ci)] = find(len(order) + ui)
    groups: dict[int, tuple[list[int], list[int]]] = {}
    for ci in range(len(order)):
        groups.setdefault(find(ci), ([], []))[0].append(ci)
    for ui in range(len(spans)):
        if find(len(order) + ui) in groups:
            groups[find(len(order) + ui)][1].append(ui)
    refs, hyps, seconds, n = [], [], 0.0, 0
    for members, utts in groups.values():
        if not utts:
            continue
        spans_here = [(float(order[ci]["start"]), float(order[ci]["end"])) for ci in members]
        if all(_covered(s, e, spans_here) for s, e, _ in (spans[ui] for ui in utts)):
            refs.append(normalize_for_wer(" ".join(spans[ui][2] for ui in sorted(utts))))
            hyps.append(normalize_for_wer(" ".join(str(order[ci].get("text", "")) for ci in members)))
            seconds += sum(spans[ui][1] - spans[ui][0] for ui in utts)
            n += len(members)
    return {"wer_joined": _wer(refs, hyps), "wer_joined_clips": n, "wer_joined_seconds": round(seconds, 1)}


def _covered(s: float, e: float, pieces: list[tuple[float, float]]) -> bool:
    """Whether the union of `pieces` covers [s, e] but for gaps of WHOLE_SLACK_S at most (a clip's trimmed
    edges and a split's pause)."""
    t = s
    for a, b in sorted(pieces):
        if b <= t:
            continue
        if a - t > WHOLE_SLACK_S:
            return False
        t = max(t, b)
        if t >= e - WHOLE_SLACK_S:
            return True
    return t >= e - WHOLE_SLACK_S


MUSIC_REASONS = ("dnsmos_low", "music_residue")
WHOLE_SLACK_S = 0.25
MUSIC_DETAILS = ("dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak", "dnsmos_verdict")


def _spoken_in(start: float, end: float, spans: list[tuple[float, float, str]]) -> float:
    return sum(max(0.0, min(end, e) - max(start, s)) for s, e, _ in spans)


def _failed_meta(root: Path, clip_id: str) -> dict[str, Any]:
    for path in (root / "failed").glob(f"{clip_id}*.json"):
        if not path.name.endswith(".error.json"):
            data = json.loads(path.read_text())
            return data if isinstance(data, dict) else {}
    return {}


def _wer(refs: list[str], hyps: list[str]) -> float | None:
    import jiwer

    pairs = [(r, h) for r, h in zip(refs, hyps, strict=True) if r.strip()]
    return round(float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs])), 4) if pairs else None


def whisper_clean_wer(spans: list[tuple[float, float, str]], speech: np.ndarray, cache: Path) -> float | None:
    """Whisper's WER (the daemon's model and settings) on each clean utterance alone against its known text: the
    floor the accepted clips are compared with. Cached in `cache`, keyed by the spans."""
    key = json.dumps([[round(s, 3), round(e, 3)] for s, e, _ in spans])
    texts: list[str] | None = None
    if cache.is_file():
        stored = json.loads(cache.read_text())
        if stored.get("key") == key:
            texts = list(stored["texts"])
    if texts is None:
        from ttsft_daemon.config import config_from_dict
        from ttsft_daemon.text.transcription import Transcriber

        cfg = config_from_dict({"paths": {"root": str(support.OUT / "music_coverage" / "clean")}})
        whisper = Transcriber(cfg.transcription, cfg.paths.models_dir)
        texts = [whisper.transcribe_array(speech[int(s * rs.SR): int(e * rs.SR)], rs.SR).text for s, e, _ in spans]
        cache.write_text(json.dumps({"key": key, "texts": texts}))
    return _wer([normalize_for_wer(t) for _, _, t in spans], [normalize_for_wer(t) for t in texts])


def music_bed(kind: str, speech: np.ndarray, db: float, seed: int) -> np.ndarray:
    if kind == "synthetic":
        return rs.over_music(speech, db, seed=seed)
    import music_set

    if not music_set.available():
        raise SystemExit("models/music is missing: run .venv/bin/python bench/music_set.py fetch")
    bed = music_set.bed(len(speech) / rs.SR, rs.SR, seed=seed)
    bed = bed * (_rms(speech) * 10 ** (-db / 20) / max(_rms(bed), 1e-12))
    return (speech + bed).astype(np.float32)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def parse_sets(items: list[str]) -> dict[str, dict[str, Any]]:
    """`section.key=value` (value parsed as YAML) into config sections."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, _, value = item.partition("=")
        section, _, key = name.partition(".")
        if not key or not _:
            raise SystemExit(f"--set wants section.key=value, not {item!r}")
        out.setdefault(section, {})[key] = yaml.safe_load(value)
    return out


def plot(curves: dict[str, dict[str, Any]]) -> str | None:
    """Coverage and accepted-clip WER against the music level, one pair of lines per stored curve."""
    from ttsft_daemon.report import plots

    if not curves:
        return None
    plt = plots._pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 6.0), sharex=True)
    styles = ("-", "--", "-.", ":")
    markers = ("o", "s", "^", "D")
    order = [("none", None)] + [(f"{db:g}", f"{db:g} dB") for db in (20, 12, 6, 0)]
    xs = list(range(len(order)))
    for i, (label, curve) in enumerate(curves.items()):
        levels = curve["levels"]
        pts = [(x, levels.get(key or "no music")) for x, (_, key) in zip(xs, order, strict=True)]
        pts = [(x, v) for x, v in pts if v is not None]
        style = dict(linestyle=styles[i % 4], marker=markers[i % 4], markersize=4, label=label, color=f"C{i % 10}")
        top.plot([x for x, _ in pts], [100 * v["coverage"] for _, v in pts], **style)
        if curve.get("reference") == "known text":  # earlier curves were scored against Whisper on clean speech
            bottom.plot([x for x, _ in pts], [100 * (v.get("wer_joined", v["wer"]) or 0.0) for _, v in pts], **style)
            if curve.get("whisper_clean_wer") is not None:
                bottom.axhline(120 * curve["whisper_clean_wer"], color="grey", linewidth=0.6)
    top.axhline(60, color="grey", linewidth=0.6)
    top.axhline(90, color="grey", linewidth=0.6)
    top.set_ylabel("coverage (% of spoken s)")
    top.set_title("Speech kept as the music gets louder")
    top.legend(frameon=False, fontsize=7)
    bottom.set_ylabel("accepted-clip WER, % (known text)")
    bottom.set_xticks(xs, ["no music"] + [f"{db} dB" for db, _ in order[1:]])
    bottom.set_xlabel("speech over music")
    desc = "; ".join(f"{label}: coverage " + ", ".join(f"{k} {100 * v['coverage']:.1f}%" for k, v in
                                                      c["levels"].items()) for label, c in curves.items())
    return plots._to_svg(fig, "Speech kept as the music gets louder", desc, "music-coverage")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utterances", type=int, default=60)
    ap.add_argument("--levels", type=float, nargs="+", default=[20.0, 12.0, 6.0, 0.0])
    ap.add_argument("--no-clean", action="store_true", help="skip the run without music")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--music", choices=("real", "synthetic"), default="real")
    ap.add_argument("--label", help="name of this curve in the results (default: the music kind)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a config value for every run of this curve (repeatable)")
    ap.add_argument("--plot-only", action="store_true", help="only redraw the plot from the stored curves")
    ap.add_argument("--rescore", action="store_true",
                    help="recompute the stored curve --label from its state roots under bench/out (no daemon runs)")
    args = ap.parse_args()
    label = args.label or args.music
    out_json = support.RESULTS / "music_coverage.json"
    stored = json.loads(out_json.read_text()) if out_json.is_file() else {}
    curves: dict[str, Any] = stored.get("curves") or ({"synthetic": stored} if "levels" in stored else {})
    if args.rescore:
        stored_curve = curves[label]
        n, seed = stored_curve["args"]["utterances"], stored_curve["args"]["seed"]
        speech, spans = podcast(n, seed)
        stored_curve["reference"] = "known text"
        stored_curve["whisper_clean_wer"] = whisper_clean_wer(spans, speech,
                                                              support.OUT / f"music_coverage_refs_{n}_{seed}.json")
        work = support.OUT / (f"music_coverage_{label}" if label != "synthetic" else "music_coverage")
        for key, level in stored_curve["levels"].items():
            name = "clean" if key == "no music" else f"music{key.split()[0]}"
            level.update(summarize(work / name, spans))
        support.write_json_atomically(out_json, {"curves": curves})
    elif not args.plot_only:
        if not rs.available():
            raise SystemExit("models/speech is missing: run scripts/install.sh")
        overrides = parse_sets(args.sets)
        work = support.OUT / f"music_coverage_{label}"
        work.mkdir(parents=True, exist_ok=True)
        speech, spans = podcast(args.utterances, args.seed)
        started = time.time()
        refs = support.OUT / f"music_coverage_refs_{args.utterances}_{args.seed}.json"
        floor = whisper_clean_wer(spans, speech, refs)
        levels: dict[str, dict[str, Any]] = {}
        if not args.no_clean:
            levels["no music"] = run_level(work, "clean", speech, spans, overrides)
        for db in args.levels:
            levels[f"{db:g} dB"] = run_level(work, f"music{db:g}", music_bed(args.music, speech, db, args.seed),
                                             spans, overrides)
        curves[label] = {"machine": support.machine(), "args": vars(args), "settings": overrides,
                         "reference": "known text", "whisper_clean_wer": floor,
                         "levels": levels,
                         "load_average": support.load_average(), "wall_s": round(time.time() - started, 1)}
        support.write_json_atomically(out_json, {"curves": curves})
        print(f"Whisper on the clean utterances: WER {floor}")
        print(f"{'level':10}{'coverage':>10}{'WER':>8}{'joined':>8}{'DNSMOS':>8}{'clips':>7}  rejects")
        for k, v in levels.items():
            print(f"{k:10}{v['coverage']:10.3f}{(v['wer'] if v['wer'] is not None else float('nan')):8.3f}"
                  f"{(v['wer_joined'] if v['wer_joined'] is not None else float('nan')):8.3f}"
                  f"{(v['dnsmos_accepted_mean'] or float('nan')):8.2f}{v['accepted_clips']:7d}  {v['rejects']}")
    svg = plot(curves)
    if svg:
        (support.RESULTS / "music_coverage.svg").write_text(svg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
