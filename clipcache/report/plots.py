"""The report's figures, drawn with matplotlib's Agg and SVG back ends (no pyplot, no display).

Line plots and histograms become inline SVG (text kept as text, so they stay
small, sharp and printable); the confusion heat map of many classes becomes a
PNG data URI. matplotlib is imported inside the functions that draw.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "accuracy_figure",
    "confusion_figure",
    "estimate_figure",
    "ood_figure",
    "png_uri",
    "reliability_figure",
    "svg",
]

_RC = {
    "svg.fonttype": "none",  # text stays text: small files, the page's font, selectable
    "svg.hashsalt": "clipcache-report",  # the same figure gives the same SVG ids
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
}
_IN_COLOUR = "#2358c4"
_OUT_COLOURS = ("#d1495b", "#edae49", "#00798c", "#66a182", "#8d96a3", "#6a4c93")


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def svg(fig) -> str:
    """The figure as an ``<svg>`` element to inline in HTML (no XML prologue)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    start, end = text.find("<metadata>"), text.find("</metadata>")
    return text[:start] + text[end + len("</metadata>"):] if 0 <= start < end else text


def png_uri(fig, dpi: int = 100) -> str:
    """The figure as a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _styled(draw):
    """Run ``draw`` under the report's rc settings (they apply when artists are made)."""

    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(_RC):
            return draw(*args, **kwargs)

    wrapper.__doc__, wrapper.__name__ = draw.__doc__, draw.__name__
    return wrapper


@_styled
def accuracy_figure(curves: Mapping[str, Mapping[int, tuple[float, float]]], best: Mapping[int, Sequence[str]], ylabel: str):
    """Metric against shots (log2 axis), one line per method with a 95% CI band; best per shot ringed.

    Parameters
    ----------
    curves : {method: {shots: (mean, ci95 half-width)}}
    best : {shots: [method, ...]}
    ylabel : str
    """
    fig = _figure(4.6, 3.4)
    ax = fig.add_subplot()
    shots = sorted({k for by in curves.values() for k in by})
    for method, by in curves.items():
        ks = sorted(by)
        mean = np.array([by[k][0] for k in ks])
        ci = np.array([by[k][1] for k in ks])
        (line,) = ax.plot(ks, mean, marker="o", ms=4, lw=1.6, label=method)
        ax.fill_between(ks, mean - ci, mean + ci, color=line.get_color(), alpha=0.16, lw=0)
        ringed = [k for k in ks if method in best.get(k, ())]
        ax.plot(ringed, [by[k][0] for k in ringed], ls="none", marker="o", ms=9, mfc="none", mec="#222", mew=1.2)
    if shots and min(shots) > 0:
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, [str(k) for k in shots])
        ax.minorticks_off()
    ax.set_xlabel("shots per class")
    ax.set_ylabel(ylabel)
    ax.legend(loc="lower right", fontsize=8)
    return fig


@_styled
def confusion_figure(rates: np.ndarray, classes: Sequence[str]):
    """Heat map of the row-normalised confusion matrix (rows: true class, columns: predicted).

    Parameters
    ----------
    rates : ndarray of shape (C, C), float
        Row-normalised counts (each row sums to 1 where the class has test rows).
    classes : sequence of str, length C
    """
    from matplotlib.colors import PowerNorm

    n = len(classes)
    side = float(np.clip(2.8 + 0.095 * n, 4.5, 12.5))
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", norm=PowerNorm(0.5, vmin=0.0, vmax=1.0), interpolation="nearest")
    ax.grid(False)
    size = float(np.clip(700.0 / max(n, 1), 4.0, 9.0))
    ax.set_xticks(range(n), [str(c) for c in classes], rotation=90, fontsize=size)
    ax.set_yticks(range(n), [str(c) for c in classes], fontsize=size)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.colorbar(image, ax=ax, shrink=0.6, label="share of the true class (square-root scale)")
    return fig


@_styled
def reliability_figure(bins: Sequence[Mapping], ece: float):
    """Reliability diagram: accuracy against confidence per bin, the gap shaded, counts below.

    Parameters
    ----------
    bins : sequence of {"lo", "hi", "count", "accuracy", "confidence"}
        Equal-width confidence bins; accuracy and confidence are None for empty bins.
    ece : float
    """
    fig = _figure(4.6, 4.4)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    full = [b for b in bins if b["count"]]
    lo = np.array([b["lo"] for b in full])
    width = np.array([b["hi"] - b["lo"] for b in full])
    acc = np.array([b["accuracy"] for b in full])
    conf = np.array([b["confidence"] for b in full])
    top.bar(lo, acc, width=width, align="edge", color=_IN_COLOUR, alpha=0.85, edgecolor="white", label="accuracy")
    top.bar(lo, conf - acc, bottom=acc, width=width, align="edge", color="none", edgecolor=_OUT_COLOURS[0],
            hatch="///", lw=0.6, label="gap to confidence")
    top.plot([0, 1], [0, 1], ls="--", color="#555", lw=1)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"ECE = {ece:.4f}", fontsize=10)
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(lo, [b["count"] for b in full], width=width, align="edge", color="#8d96a3", edgecolor="white")
    bottom.set_ylabel("images")
    bottom.set_xlabel("confidence (highest probability)")
    return fig


@_styled
def ood_figure(panels: Sequence[tuple[str, np.ndarray, Sequence[tuple[str, np.ndarray]]]], in_label: str):
    """Score histograms, one panel per detector: in-distribution filled, each OOD set as a step line.

    Parameters
    ----------
    panels : sequence of (title, in_scores, [(out_label, out_scores), ...])
        Scores are 1-D float arrays; higher means more in-distribution.
    in_label : str
    """
    cols = min(3, max(1, len(panels)))
    rows = -(-len(panels) // cols)
    fig = _figure(3.5 * cols, 2.5 * rows + 0.3)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, (title, s_in, outs) in zip(axes, panels, strict=False):
        edges = np.histogram_bin_edges(np.concatenate([s_in, *[s for _, s in outs]]), bins=40)
        ax.hist(s_in, bins=edges, density=True, color=_IN_COLOUR, alpha=0.45, label=f"in: {in_label}")
        for (label, s_out), colour in zip(outs, _OUT_COLOURS, strict=False):
            ax.hist(s_out, bins=edges, density=True, histtype="step", lw=1.6, color=colour, label=f"out: {label}")
        ax.set_title(title, fontsize=9)
        ax.set_yticks([])
        ax.set_xlabel("score (higher: more in-distribution)", fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, loc="upper left")
    return fig


@_styled
def estimate_figure(points: Mapping[str, tuple[Sequence[float], Sequence[float]]]):
    """Estimated against true accuracy, one marker series per method, with the identity line.

    Parameters
    ----------
    points : {method: (true accuracies, estimates)}
    """
    fig = _figure(4.8, 4.2)
    ax = fig.add_subplot()
    values = [v for true, est in points.values() for v in (*true, *est)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    pad = 0.05 * max(hi - lo, 0.1)
    markers = "osD^vP*X"
    for (method, (true, est)), marker in zip(points.items(), markers * 4, strict=False):
        ax.plot(true, est, ls="none", marker=marker, ms=5, alpha=0.85, label=method)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], ls="--", color="#555", lw=1)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")
    ax.set_xlabel("true accuracy")
    ax.set_ylabel("estimated accuracy")
    ax.legend(fontsize=8, loc="best")
    return fig
