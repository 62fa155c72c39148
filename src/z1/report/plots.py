"""Figures of the run report and the comparison page, rendered to PNG bytes.

Figures are built with matplotlib's object API (`Figure` + the Agg canvas) inside each function: no
pyplot, no backend switch and no rcParams changes, so calling these from a notebook or another
process leaves its matplotlib state alone. Styling is set on each axes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

# Colour-blind-safe categorical palette (Okabe-Ito without black), then matplotlib's tab10 tail.
PALETTE = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#F0E442",
    "#8c564b",
    "#7f7f7f",
    "#bcbd22",
)
INK = "#1f2933"
MUTED = "#7b8794"
GRID = "#e4e7eb"


@dataclass(frozen=True)
class Series:
    """One line: x and y of equal length, drawn bold when `emphasis`, dashed when `dashed`."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    color: str = INK
    emphasis: bool = False
    dashed: bool = False
    marker: str | None = None


@dataclass(frozen=True)
class HLine:
    """A horizontal reference line (e.g. the SFT policy's success)."""

    label: str
    y: float
    color: str = MUTED


def color_for(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _new_axes(title: str, xlabel: str, ylabel: str, size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=size, dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title, loc="left", fontsize=11, fontweight="bold", color=INK)
    ax.set_xlabel(xlabel, fontsize=9, color=INK)
    ax.set_ylabel(ylabel, fontsize=9, color=INK)
    ax.tick_params(labelsize=8, colors=INK)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # x is an iteration or step count
    ax.grid(True, color=GRID, linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#9aa5b1")
    return fig, ax


def _png(fig, ax, legend: bool) -> bytes:
    if legend:
        ax.legend(
            fontsize=7.5, loc="best", frameon=True, framealpha=0.85, facecolor="white", edgecolor="none"
        )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    return buf.getvalue()


def _percent_axis(ax) -> None:
    from matplotlib.ticker import PercentFormatter

    ax.set_ylim(-0.03, 1.03)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))


def line_plot(
    title: str,
    xlabel: str,
    ylabel: str,
    series: Sequence[Series],
    hlines: Sequence[HLine] = (),
    percent: bool = False,
    log_y: bool = False,
    size: tuple[float, float] = (5.0, 3.2),
    xlim: tuple[float, float] | None = None,
) -> bytes:
    """Lines (plus optional horizontal references) as PNG bytes; `xlim` fixes the x range (figures meant
    to be read side by side share one)."""
    if not series and not hlines:
        raise ValueError(f"line_plot {title!r}: nothing to draw (no series and no reference lines)")
    fig, ax = _new_axes(title, xlabel, ylabel, size)
    for s in series:
        if len(s.x) != len(s.y):
            raise ValueError(f"series {s.label!r}: {len(s.x)} x values but {len(s.y)} y values")
        ax.plot(
            s.x,
            s.y,
            label=s.label,
            color=s.color,
            linewidth=2.2 if s.emphasis else 1.2,
            alpha=1.0 if s.emphasis else 0.75,
            linestyle="--" if s.dashed else "-",
            marker=s.marker or ("o" if len(s.x) == 1 else None),
            markersize=10 if s.marker == "*" else 4,
            zorder=3 if s.emphasis else 2,
        )
    xs = [float(v) for s in series for v in s.x]
    if xlim is not None:
        ax.set_xlim(*xlim)
    elif xs and max(xs) - min(xs) < 2:  # one or two iterations: give the points room
        ax.set_xlim(min(xs) - 1, max(xs) + 1)
    for h in hlines:
        ax.axhline(h.y, color=h.color, linestyle=":", linewidth=1.6, label=h.label, zorder=1)
    if percent:
        _percent_axis(ax)
    if log_y:
        ax.set_yscale("log")
    elif not percent and max((max(s.y) for s in series if len(s.y)), default=0.0) >= 10_000:
        from matplotlib.ticker import FuncFormatter

        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g}k"))
    return _png(fig, ax, legend=True)


def stack_plot(
    title: str,
    xlabel: str,
    x: Sequence[float],
    layers: Sequence[tuple[str, Sequence[float], str]],
    size: tuple[float, float] = (5.0, 3.2),
) -> bytes:
    """Stacked fractions (label, values, colour) over x, as PNG bytes; the y axis is 0..100%."""
    if not layers:
        raise ValueError(f"stack_plot {title!r}: no layers")
    for label, ys, _ in layers:
        if len(ys) != len(x):
            raise ValueError(f"layer {label!r}: {len(x)} x values but {len(ys)} values")
    fig, ax = _new_axes(title, xlabel, "fraction of groups", size)
    if len(x) >= 2:
        ax.stackplot(
            x,
            *[ys for _, ys, _ in layers],
            labels=[label for label, _, _ in layers],
            colors=[c for _, _, c in layers],
            alpha=0.85,
            linewidth=0.0,
        )
        ax.set_xlim(min(x), max(x))
    else:  # one iteration: an area needs two points, so draw stacked bars
        bottom = [0.0] * len(x)
        for label, ys, c in layers:
            ax.bar(x, ys, width=0.5, bottom=bottom, label=label, color=c, alpha=0.85)
            bottom = [b + y for b, y in zip(bottom, ys)]
        ax.set_xlim(min(x) - 1, max(x) + 1)
    _percent_axis(ax)
    ax.set_ylim(0.0, 1.0)
    return _png(fig, ax, legend=True)
