"""The report's plots: matplotlib (Agg) rendered to inline SVG, text kept as text (no fonts to embed or fetch)."""

from __future__ import annotations

import html
import io
import re
from collections.abc import Sequence
from typing import Any

ACCEPTED_COLOR = "#1b7837"
REJECTED_COLOR = "#b2182b"
LINE_STYLES = ("-", "--", ":", "-.")
FIGSIZE = (6.4, 3.0)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                         "axes.spines.right": False, "svg.hashsalt": "ttsft"})
    return plt


def _to_svg(fig: Any, title: str, description: str, plot_id: str) -> str:
    plt = _pyplot()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML declaration and DOCTYPE: the SVG goes inline into HTML
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    head = (f'<svg role="img" aria-labelledby="{plot_id}-title {plot_id}-desc" class="plot" id="{plot_id}"'
            f' data-plot="{html.escape(plot_id)}"')
    svg = svg.replace("<svg", head, 1)
    close = svg.index(">", svg.index("<svg")) + 1
    return (svg[:close] + f'<title id="{plot_id}-title">{html.escape(title)}</title>'
            f'<desc id="{plot_id}-desc">{html.escape(description)}</desc>' + svg[close:])


def histogram(plot_id: str, title: str, xlabel: str, accepted: Sequence[float], rejected: Sequence[float],
              bins: int = 20) -> str | None:
    """Accepted and rejected clips of one measure, side by side (hatched rejected bars: not colour alone)."""
    if not accepted and not rejected:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    values = [list(accepted), list(rejected)]
    low = min(min(v) for v in values if v)
    high = max(max(v) for v in values if v)
    if high <= low:
        high = low + 1.0
    ax.hist(values, bins=bins, range=(low, high), label=[f"accepted ({len(accepted)})", f"rejected ({len(rejected)})"],
            color=[ACCEPTED_COLOR, REJECTED_COLOR], hatch=None, stacked=False)
    for patch in ax.containers[1] if len(ax.containers) > 1 else []:
        patch.set_hatch("//")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("clips")
    ax.set_title(title)
    ax.legend(frameon=False)
    description = (f"{title}: {len(accepted)} accepted clips, {len(rejected)} rejected clips, values from "
                   f"{low:.3g} to {high:.3g}. The table below the plot gives the numbers.")
    return _to_svg(fig, title, description, plot_id)


def lines(plot_id: str, title: str, xlabel: str, ylabel: str, series: dict[str, list[tuple[int, float]]],
          log_scale: bool = False) -> str | None:
    """One line per series, each with its own dash style and marker (not colour alone)."""
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    markers = ("o", "s", "^", "D")
    for i, (name, points) in enumerate(series.items()):
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, LINE_STYLES[i % len(LINE_STYLES)], marker=markers[i % len(markers)], markersize=3,
                label=name)
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(frameon=False)
    ax.xaxis.get_major_locator().set_params(integer=True)
    parts = []
    for name, points in series.items():
        parts.append(f"{name}: {points[0][1]:.4g} at epoch {points[0][0]} to {points[-1][1]:.4g} at epoch "
                     f"{points[-1][0]}")
    return _to_svg(fig, title, f"{title}. " + "; ".join(parts) + ".", plot_id)
