"""Results across classes and settings: per-class bars with counts, sweeps, grouped bars."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from .style import (
    ArrayLike,
    Colour,
    _axes,
    _names,
    _numpy,
    figure_legend,
    level_colors,
    method_label,
    pretty_label,
    readable_log_axis,
    tick_labels,
)


def plot_per_class(
    values: ArrayLike | Mapping[str, ArrayLike],
    counts: ArrayLike,
    class_names: Sequence[str] | None = None,
    ax: Axes | None = None,
    ylabel: str = "accuracy (fraction)",
    label: str | None = None,
    title: str = "Per-class results, head → tail",
    log_counts: bool = True,
    log_values: bool = False,
    counts_label: str = "training samples per class",
    counts_line: bool = True,
) -> Axes:
    """Bars per class ordered by training count (descending), counts as a line on a twin axis.

    Args:
        values: ``(C,)`` per-class values, or ``{method: (C,)}`` for grouped bars (methods
            in their fixed colours, :func:`~sar.plots.style.level_colors`).
        counts: ``(C,)`` training samples per class; sets the order (stable for ties).
        class_names: tick labels; ticks are drawn only for up to 30 classes.
        ax: Axes to draw on; the count axis is ``ax.twinx()``.
        ylabel: label of the bars' axis, with units.
        label: legend name of a single ``values`` array.
        title: Axes title.
        log_counts: logarithmic count axis (long-tailed counts span decades).
        log_values: logarithmic bar axis (shares that span decades, e.g. pixel shares).
        counts_label: what the counts are, for the count axis's label (e.g. "training pixels
            per class"); " (log scale)" is appended when that axis is logarithmic.
        counts_line: draw the counts on the twin axis; ``False`` when one of the bar series
            already is the counts (e.g. each class's share of the pixels): ``counts`` then
            only sets the order, and ``log_counts`` and ``counts_label`` are unused.
    """
    series = dict(values) if isinstance(values, Mapping) else {label or "value": values}
    n = _numpy(counts).astype(float)
    order = np.argsort(-n, kind="stable")
    names = np.array(_names(class_names, len(n)))[order]
    ax = _axes(ax)
    width = 0.8 / len(series)
    pos = np.arange(len(n))
    colours = level_colors(series)
    for i, (name, vals) in enumerate(series.items()):
        v = _numpy(vals).astype(float)
        if v.shape != n.shape:
            raise ValueError(f"values for {name!r} have shape {v.shape}, counts {n.shape}")
        ax.bar(
            pos + (i - (len(series) - 1) / 2) * width,
            v[order],
            width,
            label=method_label(name),
            color=colours[i],
        )
    ax.set(ylabel=ylabel, xlim=(-0.6, len(n) - 0.4))
    if log_values:
        ax.set_yscale("log")
        readable_log_axis(ax.yaxis)
    ax.set_title(title, pad=24)  # room for the legend row
    if len(n) <= 30:
        # ten names like "Ankle boot" and "T-shirt/top" collide when level
        rotation = 90 if len(n) > 10 else 30 if len(n) > 5 else 0
        ax.set_xticks(pos, names, rotation=rotation, ha="right" if rotation == 30 else "center",
                      rotation_mode="anchor" if rotation == 30 else "default")
        ax.set_xlabel("class (sorted by training count, head → tail)")
    else:
        ax.set_xlabel("class rank by training count (head → tail)")
    if counts_line:
        _count_axis(ax, pos, n[order], log_counts, counts_label)
    else:
        ax.legend(frameon=False, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=len(series))
    return ax


def _count_axis(ax: Axes, pos: np.ndarray, counts: np.ndarray, log: bool, label: str) -> None:
    twin = ax.twinx()
    twin.plot(pos, counts, color="0.2", marker=".", linewidth=1.2, label="training count")
    log = log and bool((counts > 0).all())  # a zero count has no place on a log axis
    twin.set_ylabel(label + (" (log scale)" if log else ""))
    if log:
        twin.set_yscale("log")
        readable_log_axis(twin.yaxis)
    twin.grid(False)
    handles = ax.get_legend_handles_labels()
    extra = twin.get_legend_handles_labels()
    # Above the axes: inside it would hide bars of one of the two scales.
    ax.legend(
        handles[0] + extra[0],
        handles[1] + extra[1],
        frameon=False,
        loc="lower left",
        bbox_to_anchor=(0.0, 1.0),
        ncol=len(handles[0]) + 1,
    )


def sweep_summary(df: pd.DataFrame, x: str, y: str, hue: str) -> pd.DataFrame:
    """Mean, sample standard deviation (ddof=1; 0 for a single seed), extremes and row count
    of ``y`` over the rows sharing ``(hue, x)``; columns ``hue, x, mean, std, min, max, n``,
    sorted."""
    stats = (df.groupby([hue, x], sort=True)[y].agg(["mean", "std", "min", "max", "count"])
             .reset_index())
    return stats.rename(columns={"count": "n"}).fillna({"std": 0.0})


def plot_sweep(
    df: pd.DataFrame,
    x: str,
    y: str,
    hue: str,
    ax: Axes | None = None,
    logx: bool = False,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    legend: str | None = "best",
    spread: str = "std",
) -> Axes:
    """Mean over seeds of ``y`` against ``x`` with error bars, one line per ``hue``.

    Args:
        df: one row per run (e.g. per seed); rows sharing ``(x, hue)`` are aggregated.
        x: numeric column for the horizontal axis (e.g. a regularisation weight).
        y: metric column.
        hue: column whose values get separate lines (e.g. the method: fixed colours and
            display labels, :mod:`sar.plots.style`); lines follow the order of first
            appearance in ``df``.
        ax: Axes to draw on.
        logx: logarithmic horizontal axis.
        title, xlabel, ylabel: labels; default to :func:`~sar.plots.style.pretty_label` of
            the column names (give units).
        legend: a matplotlib ``loc``, ``"outside"`` (right of the Axes, for many lines) or
            ``None`` (no legend, e.g. before :func:`~sar.plots.style.figure_legend`).
        spread: ``"std"``: error bars of ± the sample standard deviation (ddof=1) over the
            rows of each point; ``"range"``: from the smallest to the largest value, so bars
            never leave a bounded metric's range (an angle near 0°, an accuracy near 1).

    The legend title says which spread is drawn, and over how many seeds. With
    at most 12 distinct numeric ``x`` values there is a labelled tick at each (e.g. every
    imbalance factor), also on a log axis.
    """
    if spread not in ("std", "range"):
        raise ValueError(f"spread must be 'std' or 'range', got {spread!r}")
    stats = sweep_summary(df, x, y, hue)
    ax = _axes(ax)
    order = [level for level in dict.fromkeys(df[hue]) if level in set(stats[hue])]
    for level, colour in zip(order, level_colors(order), strict=True):
        group = stats[stats[hue] == level]
        xs = group[x].to_numpy(float) if pd.api.types.is_numeric_dtype(group[x]) else group[x]
        mean = group["mean"].to_numpy(float)
        low, high = group["min"].to_numpy(float), group["max"].to_numpy(float)
        # clipped: the mean of equal values can come out a hair below them
        yerr = (group["std"].to_numpy(float) if spread == "std"
                else np.clip(np.stack([mean - low, high - mean]), 0.0, None))
        ax.errorbar(
            xs,
            mean,
            yerr=yerr,
            marker="o",
            capsize=3,
            color=colour,
            label=method_label(level),
        )
    if logx:
        ax.set_xscale("log")
    _ticks_at_values(ax, stats[x])
    lo, hi = int(stats["n"].min()), int(stats["n"].max())
    seeds = f"{lo}" if lo == hi else f"{lo}–{hi}"
    bars = "± std" if spread == "std" else "and min–max"
    _legend(ax, legend, title=f"{hue} (mean {bars} over {seeds} seeds)")
    ax.set(title=title or f"{pretty_label(y)} vs {pretty_label(x)}",
           xlabel=xlabel or pretty_label(x), ylabel=ylabel or pretty_label(y))
    return ax


def plot_sweep_panels(
    df: pd.DataFrame,
    x: str,
    panels: Mapping[str, tuple[str, str]],
    hue: str,
    logx: bool = False,
    xlabel: str | None = None,
    panel_size: tuple[float, float] = (6.0, 4.5),
) -> Figure:
    """:func:`plot_sweep` of several metrics side by side, sharing one legend beside them.

    Args:
        df, x, hue, logx, xlabel: as :func:`plot_sweep` (one ``xlabel`` for every panel).
        panels: metric column -> ``(title, ylabel)``, one panel each, left to right.
        panel_size: width and height of one panel, inches.

    Raises:
        ValueError: ``panels`` is empty.
    """
    if not panels:
        raise ValueError("panels is empty: name at least one metric column")
    width, height = panel_size
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), height),
                             squeeze=False)
    for i, (ax, (metric, (title, ylabel))) in enumerate(zip(axes[0], panels.items(), strict=True)):
        plot_sweep(df, x, metric, hue, ax=ax, logx=logx, title=title, xlabel=xlabel,
                   ylabel=ylabel, legend="best" if i == 0 else None)
    fig.tight_layout()
    figure_legend(fig, axes[0, 0])  # beside the panels, not over their lines
    return fig


def _ticks_at_values(ax: Axes, values: pd.Series, most: int = 12) -> None:
    """A labelled tick at each distinct numeric value when there are few of them."""
    if not pd.api.types.is_numeric_dtype(values):
        return
    distinct = np.unique(values.to_numpy(float))
    if 0 < len(distinct) <= most:
        ax.set_xticks(distinct, [f"{v:g}" for v in distinct])
        ax.xaxis.set_minor_locator(NullLocator())


def _legend(ax: Axes, where: str | None, title: str) -> None:
    if where is None:
        return
    if where == "outside":
        ax.legend(title=title, frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    else:
        ax.legend(title=title, frameon=False, loc=where)


def plot_bars(
    df: pd.DataFrame,
    x: str,
    y: str,
    hue: str | None = None,
    ax: Axes | None = None,
    horizontal: bool = False,
    title: str | None = None,
    ylabel: str | None = None,
    colors: Mapping[object, Colour] | None = None,
    legend: str | None = "best",
) -> Axes:
    """Bars of the mean of ``y`` per category ``x`` (grouped by ``hue``), error bars = std.

    Rows sharing ``(x, hue)`` are aggregated (e.g. seeds); categories and hue levels keep
    their order of first appearance in ``df``. Error bars are the sample standard deviation
    (ddof=1). Hue levels that are methods get their fixed colours and display labels
    (:mod:`sar.plots.style`); without ``hue``, categories that are methods are coloured so.
    ``colors`` overrides any of these (keys: hue levels, or categories without ``hue``).
    Category tick labels are :func:`~sar.plots.style.pretty_label` of the values, wrapped
    rather than rotated. ``legend``: a ``loc``, ``"outside"`` or ``None``.
    """
    ax = _axes(ax)
    group_col = hue or "_all"
    data = df if hue else df.assign(_all=y)
    stats = sweep_summary(data, x, y, group_col)
    categories = list(dict.fromkeys(df[x]))
    groups = list(dict.fromkeys(data[group_col]))
    width = 0.8 / len(groups)
    positions = np.arange(len(categories))
    draw = ax.barh if horizontal else ax.bar
    colours = dict(zip(groups if hue else categories,
                       level_colors(groups if hue else categories), strict=True))
    colours |= dict(colors or {})
    for i, level in enumerate(groups):
        rows = stats[stats[group_col] == level].set_index(x).reindex(categories)
        offset = positions - 0.4 + width * (i + 0.5)
        err = {"xerr" if horizontal else "yerr": rows["std"].to_numpy(float)}
        colour = colours[level] if hue else [colours[c] for c in categories]
        draw(offset, rows["mean"].to_numpy(float), width,
             label=method_label(level) if hue else None, capsize=3, color=colour, **err)
    if horizontal:
        ax.set_yticks(positions, tick_labels(categories, width=40))
        ax.set_xlabel(ylabel or pretty_label(y))
        # first category on top; set, not toggled, so shared axes stay right
        ax.set_ylim(len(categories) - 0.5, -0.5)
    else:
        crowded = len(categories) > 8
        # about 10 characters of tick label fit in an inch: wrap to the room each bar group has
        inches = ax.get_position().width * ax.figure.get_figwidth() / len(categories)
        ax.set_xticks(positions, tick_labels(categories, width=max(7, int(9 * inches))),
                      **({"rotation": 30, "ha": "right"} if crowded else {}))
        ax.set_ylabel(ylabel or pretty_label(y))
    n = int(stats["n"].max())
    if hue:
        _legend(ax, legend, title=f"{hue} (mean ± std over {n} seeds)")
    ax.set_title(title or f"{pretty_label(y)} by {pretty_label(x)} (mean ± std over {n} seeds)")
    return ax
