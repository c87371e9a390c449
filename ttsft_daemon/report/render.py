"""ReportData -> one self-contained, accessible HTML page (styles, script, plots and audio inside it).

A Content-Security-Policy in the page forbids every request that is not to a data: URI, so the page cannot reach
the network even by mistake. Plots are inline SVG with a title and a description; every number in a plot is also
in a table; players carry an aria-label naming what they play.
"""

from __future__ import annotations

import html
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from ttsft_daemon.report import audio, plots
from ttsft_daemon.report.data import ReportData
from ttsft_daemon.report.review import ClipInfo, review_command

MAX_EXPORTS = 8  # newest exports with players (the recommended one is always shown)
CHECK_FIRST = 8
REJECTED_PER_REASON = 2

Progress = Callable[[str, int, int], None]

CSS = """
:root { color-scheme: light; --fg: #1a1a1a; --muted: #555; --line: #d0d0d0; --accent: #0b5cad; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); margin: 0 auto;
       max-width: 70rem; padding: 1rem 1.5rem 3rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 2px solid var(--line); }
h3 { margin-top: 1.4rem; }
.muted { color: var(--muted); }
nav ul { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: .3rem 1rem; }
a { color: var(--accent); }
table { border-collapse: collapse; margin: .6rem 0; width: 100%; }
th, td { border-bottom: 1px solid var(--line); padding: .3rem .5rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
dl.summary { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; }
dl.summary dt { font-weight: 600; } dl.summary dd { margin: 0; }
figure { margin: 1rem 0; } figcaption { color: var(--muted); font-size: .9rem; }
svg.plot { max-width: 100%; height: auto; display: block; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(28rem, 1fr)); gap: 0 1.5rem; }
audio { width: 16rem; max-width: 100%; height: 2.2rem; }
code.cmd { display: block; white-space: pre-wrap; word-break: break-all; user-select: all; background: #f6f6f6;
           padding: .2rem .4rem; border-radius: 3px; font-size: .75rem; max-width: 26rem; }
table.clips td:nth-child(7) { min-width: 24rem; } table.clips td:nth-child(3) { min-width: 12rem; }
.clipid { font-size: .8rem; word-break: break-all; font-weight: normal; }
button.copy { font-size: .8rem; margin: .15rem 0 .4rem; }
.badge { background: #1b7837; color: #fff; border-radius: 3px; padding: 0 .4rem; font-size: .85rem; }
.note { background: #fff8e1; border-left: 4px solid #e0a800; padding: .4rem .8rem; }
"""

SCRIPT = """
document.addEventListener('click', function (event) {
  var button = event.target.closest('button.copy');
  if (!button) { return; }
  var text = button.getAttribute('data-copy');
  var done = function () { button.textContent = 'Copied'; };
  if (navigator.clipboard && navigator.clipboard.writeText) {
    navigator.clipboard.writeText(text).then(done, function () { selectCode(button); });
  } else { selectCode(button); }
});
function selectCode(button) {
  var code = button.previousElementSibling;
  var range = document.createRange(); range.selectNodeContents(code);
  var sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(range);
}
"""

CSP = ("default-src 'none'; img-src data:; media-src data:; style-src 'unsafe-inline'; "
       "script-src 'unsafe-inline'; font-src data:")


def e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt_seconds(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def _num(value: float | None, fmt: str = "{:.3f}") -> str:
    return "–" if value is None else fmt.format(value)


class Renderer:
    def __init__(self, data: ReportData, progress: Progress | None = None) -> None:
        self.data = data
        self.progress = progress
        self._players = 0
        self._players_total = 0

    # ------------------------------------------------------------------------------------------- pieces
    def player(self, path: Any, label: str) -> str:
        self._players += 1
        if self.progress is not None:
            self.progress("audio", self._players, self._players_total)
        uri = audio.data_uri(path) if path is not None else None
        if uri is None:
            return '<span class="muted">(audio not found)</span>'
        return f'<audio controls preload="metadata" src="{uri}" aria-label="{e(label)}"></audio>'

    def command(self, cmd: str, what: str) -> str:
        return (f'<code class="cmd">{e(cmd)}</code>'
                f'<button type="button" class="copy" data-copy="{e(cmd)}" aria-label="Copy the command to {e(what)}">'
                "Copy</button>")

    def table(self, caption: str, headers: Sequence[str], rows: Sequence[Sequence[str]],
              numeric: Sequence[int] = (), cls: str = "") -> str:
        head = "".join(f'<th scope="col"{" class=num" if i in numeric else ""}>{e(h)}</th>'
                       for i, h in enumerate(headers))
        body = []
        for row in rows:
            cells = []
            for i, cell in enumerate(row):
                tag, cls = ("th", ' scope="row"') if i == 0 else ("td", "")
                cls += ' class="num"' if i in numeric else ""
                cells.append(f"<{tag}{cls}>{cell}</{tag}>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        return (f"<table{f' class={cls}' if cls else ''}><caption class=muted>{e(caption)}</caption>"
                f"<thead><tr>{head}</tr></thead>"
                f"<tbody>{''.join(body)}</tbody></table>")

    def figure(self, svg: str | None, caption: str) -> str:
        if svg is None:
            return f'<p class="muted">{e(caption)}: no data yet.</p>'
        return f"<figure>{svg}<figcaption>{e(caption)}</figcaption></figure>"

    # ------------------------------------------------------------------------------------------- sections
    def summary(self) -> str:
        d = self.data
        t = d.training
        rec = d.recommendation
        items = [
            ("Dataset", f"{len(d.accepted)} clips, {_fmt_seconds(d.seconds)} of speech "
                        f"({d.seconds / 3600:.3f} h)"),
            ("Rejected", f"{len(d.rejected)} clips, {_fmt_seconds(sum(c.duration for c in d.rejected))}"),
            ("Training", f"{t.get('state', 'not started')}, epoch {t.get('epoch', 0)}"
                        + (f" of {t['target_epochs']}" if t.get("target_epochs") else "")),
            ("Progress", d.trend),
            ("Recommended", f"epoch {rec.evaluation.epoch}, WER {rec.evaluation.wer:.1%} ({rec.why})"
             if rec is not None and rec.evaluation.wer is not None else "no evaluated export yet"),
            ("Hand changes", f"{len(d.edits.rejected)} rejected, {len(d.edits.relabeled)} relabelled"),
        ]
        rows = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in items)
        return ('<section aria-labelledby="summary"><h2 id="summary">Summary</h2>'
                f'<dl class="summary">{rows}</dl></section>')

    def dataset(self) -> str:
        d = self.data
        reasons = self.table(
            "Rejected clips per reason (a clip with several reasons counts under each)",
            ["Reason", "Clips", "Seconds"],
            [[e(r.reason), str(r.clips), f"{r.seconds:.1f}"] for r in d.rejected_by_reason], numeric=(1, 2))
        if not d.rejected_by_reason:
            reasons = '<p class="muted">No clip of this voice was rejected.</p>'
        acc, rej = d.accepted, d.rejected
        measures = [
            ("duration", "Clip duration", "seconds", [c.duration for c in acc],
             [c.duration for c in rej if c.duration]),
            ("rate", "Speaking rate", "characters per second of voiced audio",
             [c.chars_per_second for c in acc if c.chars_per_second is not None],
             [c.chars_per_second for c in rej if c.chars_per_second is not None]),
            ("quality", "Quality score", "combined score (0-1)", [c.quality for c in acc if c.quality is not None],
             [c.quality for c in rej if c.quality is not None]),
        ]
        figures, stats_rows = [], []
        for key, title, xlabel, a, r in measures:
            a_values = [float(v) for v in a if v is not None]
            r_values = [float(v) for v in r if v is not None]
            svg = plots.histogram(f"hist-{key}", title, xlabel, a_values, r_values)
            figures.append(self.figure(svg, f"{title} of accepted and rejected clips (rejected bars hatched)"))
            for label, values in (("accepted", a_values), ("rejected", r_values)):
                if values:
                    stats_rows.append([e(f"{title}, {label}"), str(len(values)), f"{min(values):.3g}",
                                       f"{statistics.median(values):.3g}", f"{max(values):.3g}"])
        stats = self.table("The histograms in numbers", ["Measure", "Clips", "Minimum", "Median", "Maximum"],
                           stats_rows, numeric=(1, 2, 3, 4))
        totals = self.table("Totals", ["", "Clips", "Speech"], [
            ["Accepted (in metadata.csv)", str(len(acc)), e(_fmt_seconds(d.seconds))],
            ["Rejected (in failed/)", str(len(rej)), e(_fmt_seconds(sum(c.duration for c in rej)))],
        ], numeric=(1, 2))
        return ('<section aria-labelledby="dataset"><h2 id="dataset">Dataset</h2>' + totals
                + '<h3 id="reasons">Why clips were rejected</h3>' + reasons
                + '<h3 id="distributions">Distributions</h3><div class="plots">' + "".join(figures) + "</div>"
                + stats + "</section>")

    def speakers(self) -> str:
        info = self.data.speakers
        if info is None:
            return ""
        parts = ['<section aria-labelledby="speakers"><h2 id="speakers">Speakers</h2>']
        chosen = next((info[k] for k in ("chosen", "kept", "target", "speaker", "selected") if k in info), None)
        if chosen is not None:
            name = chosen.get("id", chosen) if isinstance(chosen, dict) else chosen
            parts.append(f"<p>Speaker kept: <strong>{e(name)}</strong></p>")
        found = info.get("speakers") or info.get("clusters")
        rows: list[list[str]] = []
        if isinstance(found, dict):
            found = [{"id": k, **(v if isinstance(v, dict) else {"value": v})} for k, v in found.items()]
        if isinstance(found, list) and found and all(isinstance(s, dict) for s in found):
            keys = list(dict.fromkeys(k for s in found for k in s if not isinstance(s[k], (list, dict))))[:8]
            rows = [[e(s.get(k, "")) for k in keys] for s in found]
            parts.append(self.table("Speakers found in the voice's recordings", keys, rows))
        others = {k: v for k, v in info.items() if not isinstance(v, (list, dict))}
        if others:
            parts.append(self.table("Speaker selection state", ["Key", "Value"],
                                    [[e(k), e(v)] for k, v in others.items()]))
        return "".join(parts) + "</section>"

    def training(self) -> str:
        d = self.data
        curves = d.curves()
        figures = []
        for name, points in curves.items():
            plot_id = "loss-" + name.split(" ")[0]
            svg = plots.lines(plot_id, f"{name.split(' ')[0].capitalize()} loss per epoch", "epoch", "loss",
                              {name: points})
            figures.append(self.figure(svg, f"{name} after each epoch"))
        if not curves:
            figures.append('<p class="muted">No epoch has finished yet.</p>')
        loss_rows = [[str(epoch), *(_num(losses.get(k[k.index('(') + 1:-1]), "{:.4g}") for k in curves)]
                     for epoch, losses in sorted(d.epochs.items())]
        loss_table = (self.table("Losses per epoch", ["Epoch", *curves], loss_rows[-50:],
                                 numeric=tuple(range(1, len(curves) + 1))) if loss_rows else "")
        return ('<section aria-labelledby="training"><h2 id="training">Training</h2>'
                f"<p><strong>{e(d.trend.capitalize())}.</strong> The curve counts as levelled off once the mel "
                "loss has stayed within 1% of its best for 3 epochs (and a fifth of all epochs).</p>"
                '<div class="plots">' + "".join(figures) + "</div>"
                + (f"<details><summary>Losses in numbers</summary>{loss_table}</details>" if loss_table else "")
                + "</section>")

    def exports(self) -> str:
        d = self.data
        rec = d.recommendation
        shown = d.evaluations[-MAX_EXPORTS:]
        if rec is not None and rec.evaluation not in shown:
            shown = [rec.evaluation, *shown]
        parts = ['<section aria-labelledby="exports"><h2 id="exports">Exports: listen and compare</h2>',
                 "<p>Each export speaks the configured test sentences; Whisper transcribes them back and the word "
                 "error rate (WER) compares what it heard with the sentence. Lower is better.</p>"]
        if rec is not None:
            ev = rec.evaluation
            where = (f"checkpoint {ev.checkpoint}" + ("" if ev.checkpoint_exists else " (since removed by the "
                     "retention policy; keep_best keeps the lowest-loss checkpoints)")) if ev.checkpoint else ""
            parts.append(f'<p class="note"><strong>Recommended: epoch {e(ev.epoch)}</strong>, WER '
                         f"{_num(ev.wer, '{:.1%}')}: {e(rec.why)}. Tie-break: equal WER (to 3 decimals) goes to the "
                         f"lower mel loss of the epoch, then to the later epoch. {e(where)}</p>")
        if not shown:
            parts.append('<p class="muted">No export has been evaluated yet.</p>')
        for ev in reversed(shown):
            badge = ' <span class="badge">recommended</span>' if rec is not None and ev is rec.evaluation else ""
            parts.append(f'<h3 id="export-{e(ev.epoch)}">Epoch {e(ev.epoch)}: WER {_num(ev.wer, "{:.1%}")}{badge}</h3>')
            rows = []
            for i, s in enumerate(ev.sentences):
                label = f"Test sentence {i + 1} spoken by the epoch {ev.epoch} export"
                rows.append([e(s.get("text", "")), self.player(s.get("wav"), label), e(s.get("transcript", "")),
                             _num(s.get("wer"), "{:.1%}")])
            parts.append(self.table(f"Test sentences of the epoch {ev.epoch} export",
                                    ["Sentence", "Listen", "Whisper heard", "WER"], rows, numeric=(3,)))
        return "".join(parts) + "</section>"

    def clip_rows(self, clips: Sequence[ClipInfo], commands: bool) -> list[list[str]]:
        d = self.data
        rows = []
        for c in clips:
            label = f"Clip {c.clip}: {c.transcript[:80]}"
            cells = [f'<span class="clipid">{e(c.clip)}</span>', self.player(c.wav, label),
                     e(c.transcript or "(no transcript)"), f"{c.duration:.1f}", _num(c.quality),
                     _num(c.disagreement, "{:.0%}")]
            if commands:
                cells.append(
                    self.command(review_command(d.config_path, d.voice, "reject", c.clip), f"reject clip {c.clip}")
                    + self.command(review_command(d.config_path, d.voice, "relabel", c.clip, c.transcript),
                                   f"relabel clip {c.clip}"))
            else:
                cells.append(e(", ".join(c.reasons)))
            rows.append(cells)
        return rows

    def to_check(self) -> str:
        clips = self.data.to_check(CHECK_FIRST)
        parts = ['<section aria-labelledby="check"><h2 id="check">Clips to check first</h2>',
                 "<p>The accepted clips with the lowest quality score, then those whose words Whisper was least sure "
                 "of (disagreement: share of words heard with a probability under 0.3). Listen; if the transcript "
                 "is wrong, edit the text in the relabel command; if the clip is bad, reject it. The next training "
                 "run uses the corrected dataset.</p>"]
        if not clips:
            parts.append('<p class="muted">No accepted clip yet.</p>')
        else:
            parts.append(self.table("Clips to check first", ["Clip", "Listen", "Transcript", "Seconds", "Quality",
                                                              "Disagreement", "Review command"],
                                    self.clip_rows(clips, commands=True), numeric=(3, 4, 5), cls="clips"))
        return "".join(parts) + "</section>"

    def rejected(self) -> str:
        samples = self.data.rejected_samples(REJECTED_PER_REASON)
        parts = ['<section aria-labelledby="rejected"><h2 id="rejected">Rejected clips, by reason</h2>',
                 f"<p>Up to {REJECTED_PER_REASON} playable clips per reason (the first reason of each clip).</p>"]
        if not samples:
            parts.append('<p class="muted">No rejected clip with audio.</p>')
        for reason, clips in samples.items():
            parts.append(f"<h3>{e(reason)}</h3>")
            parts.append(self.table(f"Clips rejected for {reason}", ["Clip", "Listen", "Transcript", "Seconds",
                                                                     "Quality", "Disagreement", "All reasons"],
                                    self.clip_rows(clips, commands=False), numeric=(3, 4, 5)))
        return "".join(parts) + "</section>"

    def hand_changes(self) -> str:
        edits = self.data.edits
        parts = ['<section aria-labelledby="changes"><h2 id="changes">Changed by hand</h2>']
        rows = [[e(cid), "rejected", e(v.get("text", "")), e(v.get("reason") or "–"), e(_when(v.get("time")))]
                for cid, v in sorted(edits.rejected.items())]
        rows += [[e(cid), "relabelled", e(f"{v.get('previous', '')} → {v.get('text', '')}"), "–",
                  e(_when(v.get("time")))] for cid, v in sorted(edits.relabeled.items())]
        if rows:
            parts.append(self.table("Hand edits recorded in review.json", ["Clip", "Change", "Transcript", "Reason",
                                                                          "When"], rows))
        else:
            parts.append('<p class="muted">Nothing yet. <code>ttsft-daemon review</code> rejects clips and corrects '
                         "transcripts.</p>")
        return "".join(parts) + "</section>"

    # ------------------------------------------------------------------------------------------- page
    def page(self) -> str:
        d = self.data
        self._players_total = (sum(len(ev.sentences) for ev in d.evaluations[-MAX_EXPORTS - 1:])
                               + len(d.to_check(CHECK_FIRST))
                               + sum(len(v) for v in d.rejected_samples(REJECTED_PER_REASON).values()))
        sections = [self.summary(), self.exports(), self.training(), self.to_check(), self.dataset(),
                    self.speakers(), self.rejected(), self.hand_changes()]
        nav = [("summary", "Summary"), ("exports", "Exports"), ("training", "Training"), ("check", "Clips to check"),
               ("dataset", "Dataset"), *([("speakers", "Speakers")] if d.speakers is not None else []),
               ("rejected", "Rejected clips"), ("changes", "Changed by hand")]
        links = "".join(f'<li><a href="#{k}">{e(v)}</a></li>' for k, v in nav)
        generated = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        return (
            "<!DOCTYPE html>\n"
            f'<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Voice {e(d.voice)}: ttsft-daemon report</title><style>{CSS}</style></head>"
            f'<body><header><h1>Voice “{e(d.voice)}”</h1><p class="muted">Report of ttsft-daemon, made {e(generated)} '
            f"from {e(d.root)}.</p>"
            f'<nav aria-label="Sections"><ul>{links}</ul></nav></header><main>'
            + "".join(sections)
            + f"</main><script>{SCRIPT}</script></body></html>\n"
        )


def _when(stamp: Any) -> str:
    if not isinstance(stamp, (int, float)):
        return ""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))


def render(data: ReportData, progress: Progress | None = None) -> str:
    return Renderer(data, progress).page()
