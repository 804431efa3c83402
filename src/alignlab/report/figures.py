"""The report's figures: matplotlib drawings returned as PNG bytes, one colour per method.

Jitter is seeded and the PNGs carry no version metadata, so the same runs give byte-identical
files. Figures draw names from configs and data as plain text (no `$...$` mathtext).
"""

from __future__ import annotations

import io
import textwrap

import numpy as np
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.text import Text
from matplotlib.ticker import FixedFormatter, FuncFormatter

from alignlab.analysis import RunRecord, metric_value, sensitivity
from alignlab.analysis.runs import method_label
from alignlab.report.blocks import BASELINE, BASELINE_COLOR, TITLES, TOP_K, Sweep, param_text
from alignlab.untrusted import displayable

DPI = 110
PLOT_STYLE = {"font.size": 9, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
              "grid.color": "#e6e9ec", "grid.linewidth": 0.6, "axes.axisbelow": True,
              "axes.edgecolor": "#8a949e", "legend.frameon": False,
              "text.parse_math": False}  # names from the data are text: a method named "$\\x$" is no formula


def new_figure(width: float, height: float) -> Figure:
    # A bare Figure (no pyplot): no global backend or figure registry is touched.
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def png_bytes(fig: Figure) -> bytes:
    # Names from configs and data: control characters drawn as escapes. Tick labels are drawn from
    # their axis' formatter at save time, so those are rewritten there.
    for text in fig.findobj(Text):
        text.set_text(displayable(text.get_text()))
    for axis in (axis for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)):
        formatter = axis.get_major_formatter()
        if isinstance(formatter, FixedFormatter):
            formatter.seq = [displayable(str(label)) for label in formatter.seq]
        elif isinstance(formatter, FuncFormatter):  # what set_ticks(ticks, labels) installs
            formatter.func = lambda x, pos, label=formatter.func: displayable(str(label(x, pos)))
    buffer = io.BytesIO()
    # No "Software" entry (the matplotlib version): for a given matplotlib and FreeType, the bytes
    # depend on the figure alone, so rewriting an unchanged report changes no file.
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _boxes(ax, groups: list[list[float]], positions, colors, width: float, rng) -> None:
    """A box (quartiles, median, whiskers at 1.5 IQR) per group, with its values as jittered dots."""
    for values, x, color in zip(groups, positions, colors):
        if not values:
            continue
        ax.boxplot([values], positions=[x], widths=width, patch_artist=True, showfliers=False,
                   boxprops={"facecolor": to_rgba(color, 0.25), "edgecolor": color},
                   whiskerprops={"color": color}, capprops={"color": color}, medianprops={"color": "black"})
        jitter = rng.uniform(-width / 3, width / 3, len(values))
        ax.scatter(x + jitter, values, s=14, color=color, edgecolor="white", linewidth=0.5, zorder=3)


def _sft_line(ax, sft: RunRecord | None) -> None:
    if sft is not None:
        ax.axhline(sft.score, color=BASELINE_COLOR, lw=1, ls="--", label=f"{BASELINE}: {sft.score:.3f}")


def legend_beside(ax, handles=None) -> None:
    """The legend beside the plot, where it cannot hide data (constrained layout makes room)."""
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _method_legend(ax, methods, colors) -> None:
    legend_beside(ax, [Patch(facecolor=to_rgba(colors[m], 0.5), edgecolor=colors[m], label=method_label(m))
                       for m in methods])


def grouped_boxes_figure(dist: dict[str, dict[int, list[float]]], colors: dict, ylabel: str) -> bytes:
    """Per k a group of boxes, one per method: the metric over each method's top-k% runs."""
    methods = list(dist)
    slot = 0.8 / len(methods)
    fig = new_figure(8.0, 3.6)
    ax = fig.subplots()
    rng = np.random.default_rng(0)
    for i, method in enumerate(methods):
        offset = (i - (len(methods) - 1) / 2) * slot
        _boxes(ax, [dist[method][k] for k in TOP_K], [g + offset for g in range(len(TOP_K))],
               [colors[method]] * len(TOP_K), 0.85 * slot, rng)
    ax.set_xticks(range(len(TOP_K)), [f"top {k}%" for k in TOP_K])
    ax.set_xlim(-0.5, len(TOP_K) - 0.5)
    ax.set_ylabel(ylabel)
    _method_legend(ax, methods, colors)
    return png_bytes(fig)


def heatmap_figure(matrix: dict, title: str) -> bytes:
    """Annotated win-rate matrix: cell (i, j) is the win rate of row model i over column model j."""
    names = matrix["names"]
    rate = np.array([[np.nan if v is None else v for v in row] for row in matrix["rate"]])
    n = len(names)
    fig = new_figure(2.6 + 1.05 * n, 1.6 + 0.75 * n)
    ax = fig.subplots()
    image = ax.imshow(rate, cmap="RdBu", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            text = "–" if i == j else (f"{rate[i, j]:.0%}\n[{matrix['ci_low'][i][j]:.0%}, "
                                       f"{matrix['ci_high'][i][j]:.0%}]")
            ax.text(j, i, text, ha="center", va="center", fontsize=7.5,
                    color="white" if i != j and abs(rate[i, j] - 0.5) > 0.3 else "black")
    ax.set_xticks(range(n), names, rotation=30, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("column model")
    ax.set_ylabel("row model")
    ax.set_title(title)
    ax.grid(False)
    ax.spines[:].set_visible(False)
    fig.colorbar(image, ax=ax, shrink=0.8, label="win rate of row over column")
    return png_bytes(fig)


def scatter_figure(sweep: Sweep, points: list[RunRecord]) -> bytes:
    fig = new_figure(7.2, 4.0)
    ax = fig.subplots()
    for method in sweep.by_method:
        mine = [r for r in points if r.method == method]
        if mine:
            ax.scatter([metric_value(r, "ln_kl") for r in mine], [r.score for r in mine], s=22,
                       color=sweep.colors[method], edgecolor="white", linewidth=0.5, label=method_label(method))
    sft_kl = metric_value(sweep.sft, "ln_kl") if sweep.sft is not None else None
    if sft_kl is not None:
        ax.scatter([sft_kl], [sweep.sft.score], marker="*", s=140, color=BASELINE_COLOR, label=BASELINE)
    else:
        _sft_line(ax, sweep.sft)
    ax.set_xlabel(f"mean {TITLES['ln_kl']} to SFT")
    ax.set_ylabel(TITLES["mean_score"])
    legend_beside(ax)
    return png_bytes(fig)


def sensitivity_figure(runs: list[RunRecord], params: list[str], metrics: list[str], color: str,
                       title: str) -> bytes:
    """Small multiples: a row per hyper-parameter, a column per metric; mean line, min–max band, runs."""
    fig = new_figure(0.4 + 3.0 * len(metrics), 0.6 + 2.4 * len(params))
    fig.suptitle(title)
    axes = fig.subplots(len(params), len(metrics), squeeze=False)
    for row, param in enumerate(params):
        for col, metric in enumerate(metrics):
            ax = axes[row][col]
            stats = sensitivity(runs, param, metric)
            # Values sit at evenly spaced positions: grids are often log-spaced, and values may be text.
            position = {repr(s["value"]): x for x, s in enumerate(stats)}
            xs = range(len(stats))
            ax.fill_between(xs, [s["min"] for s in stats], [s["max"] for s in stats], color=color, alpha=0.15, lw=0)
            ax.plot(xs, [s["mean"] for s in stats], color=color, marker="o", ms=3.5, lw=1.4)
            dots = [(position[repr(r.params[param])], metric_value(r, metric)) for r in runs
                    if param in r.params and metric_value(r, metric) is not None]
            ax.scatter([x for x, _ in dots], [y for _, y in dots], s=9, color=color, alpha=0.6, lw=0, zorder=3)
            ax.set_xticks(xs, [param_text(s["value"]) for s in stats], fontsize=7.5)
            ax.set_xlim(-0.4, len(stats) - 0.6)
            ax.set_xlabel(param)
            ax.set_ylabel(TITLES[metric])
    return png_bytes(fig)



# The verdict colours of report.html's claims table (alignlab.report.render), in the figures.
VERDICT_COLORS = {"confirmed": "#19692c", "reversed": "#a3241b", "inconclusive": "#4f5963"}
FAMILY_TITLES = {"primary": "Primary claims", "secondary": "Secondary claims"}


def forest_rows(claims: list[dict]) -> list[tuple[str, object]]:
    """The forest plot's rows: ("claim", claim) in order, or, where claims carry a "family", a
    ("title", "Primary claims") row and the primary claims first, then the secondary ones likewise."""
    families = [f for f in FAMILY_TITLES if any(c.get("family") == f for c in claims)]
    if not families:
        return [("claim", c) for c in claims]
    return [row for f in families
            for row in [("title", FAMILY_TITLES[f])] + [("claim", c) for c in claims if c.get("family") == f]]


def forest_figure(claims: list[dict]) -> bytes:
    """One row per tested claim: its estimate and 95% CI, the null region shaded (a point null as a
    line), the marker coloured by verdict. Claims carry their own units (gold, tokens, shares), so each
    row has its own x axis. With a claim "family" field, primary claims come first, in a block apart."""
    rows = forest_rows(claims)
    fig = new_figure(8.4, 0.2 + 0.46 * len(rows))
    axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
    for ax, (kind, item) in zip(axes, rows):
        if kind == "title":
            ax.axis("off")
            ax.text(0.0, 0.2, item, transform=ax.transAxes, fontweight="bold")
            continue
        value, (low, high), (null_low, null_high) = item["value"], item["ci"], item["null"]
        color = VERDICT_COLORS.get(item["verdict"], VERDICT_COLORS["inconclusive"])
        if null_high > null_low:
            ax.axvspan(null_low, null_high, color="#d5d9de", alpha=0.6, lw=0)
        else:
            ax.axvline(null_low, color="#8a949e", lw=1.2)
        ax.errorbar([value], [0], xerr=[[value - low], [high - value]], fmt="o", color=color, ms=5, capsize=3)
        edges = [low, high, null_low, null_high]
        margin = 0.08 * (max(edges) - min(edges)) or 1.0
        ax.set_xlim(min(edges) - margin, max(edges) + margin)
        ax.set_ylim(-1, 1)
        ax.set_yticks([0], [textwrap.shorten(item["claim"], 70, placeholder="…")])
        ax.tick_params(axis="x", labelsize=7, pad=1)
        ax.tick_params(axis="y", length=0)
        ax.grid(axis="y", visible=False)
    handles = [Patch(color=c, label=v) for v, c in VERDICT_COLORS.items()]
    axes[0].legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=3, fontsize=7)
    return png_bytes(fig)
