"""Results across classes and settings: per-class bars with counts, sweeps, grouped bars."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

from .style import ArrayLike, _axes, _names, _numpy


def plot_per_class(
    values: ArrayLike | Mapping[str, ArrayLike],
    counts: ArrayLike,
    class_names: Sequence[str] | None = None,
    ax: Axes | None = None,
    ylabel: str = "accuracy (fraction)",
    label: str | None = None,
    title: str = "Per-class results, head → tail",
    log_counts: bool = True,
) -> Axes:
    """Bars per class ordered by training count (descending), counts as a line on a twin axis.

    Args:
        values: ``(C,)`` per-class values, or ``{method: (C,)}`` for grouped bars.
        counts: ``(C,)`` training samples per class; sets the order (stable for ties).
        class_names: tick labels; ticks are drawn only for up to 30 classes.
        ax: Axes to draw on; the count axis is ``ax.twinx()``.
        ylabel: label of the bars' axis, with units.
        label: legend name of a single ``values`` array.
        title: Axes title.
        log_counts: logarithmic count axis (long-tailed counts span decades).
    """
    series = dict(values) if isinstance(values, Mapping) else {label or "value": values}
    n = _numpy(counts).astype(float)
    order = np.argsort(-n, kind="stable")
    names = np.array(_names(class_names, len(n)))[order]
    ax = _axes(ax)
    width = 0.8 / len(series)
    pos = np.arange(len(n))
    colours = sns.color_palette("deep", len(series))
    for i, (name, vals) in enumerate(series.items()):
        v = _numpy(vals).astype(float)
        if v.shape != n.shape:
            raise ValueError(f"values for {name!r} have shape {v.shape}, counts {n.shape}")
        ax.bar(
            pos + (i - (len(series) - 1) / 2) * width,
            v[order],
            width,
            label=str(name),
            color=colours[i],
        )
    ax.set(ylabel=ylabel, xlim=(-0.6, len(n) - 0.4))
    ax.set_title(title, pad=24)  # room for the legend row
    if len(n) <= 30:
        ax.set_xticks(pos, names, rotation=90 if len(n) > 10 else 0)
        ax.set_xlabel("class (sorted by training count, head → tail)")
    else:
        ax.set_xlabel("class rank by training count (head → tail)")
    _count_axis(ax, pos, n[order], log_counts)
    return ax


def _count_axis(ax: Axes, pos: np.ndarray, counts: np.ndarray, log: bool) -> None:
    twin = ax.twinx()
    twin.plot(pos, counts, color="0.2", marker=".", linewidth=1.2, label="training count")
    log = log and bool((counts > 0).all())  # a zero count has no place on a log axis
    twin.set_ylabel("training samples per class" + (" (log scale)" if log else ""))
    if log:
        twin.set_yscale("log")
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
    """Mean, sample standard deviation (ddof=1; 0 for a single seed) and row count of ``y``
    over the rows sharing ``(hue, x)``; columns ``hue, x, mean, std, n``, sorted."""
    stats = df.groupby([hue, x], sort=True)[y].agg(["mean", "std", "count"]).reset_index()
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
) -> Axes:
    """Mean ± standard deviation over seeds of ``y`` against ``x``, one line per ``hue``.

    Args:
        df: one row per run (e.g. per seed); rows sharing ``(x, hue)`` are aggregated.
        x: numeric column for the horizontal axis (e.g. a regularisation weight).
        y: metric column.
        hue: column whose values get separate lines (e.g. the method).
        ax: Axes to draw on.
        logx: logarithmic horizontal axis.
        title, xlabel, ylabel: labels; default to the column names (give units).

    Error bars are the sample standard deviation (ddof=1) over the rows of each point.
    """
    stats = sweep_summary(df, x, y, hue)
    ax = _axes(ax)
    for level, group in stats.groupby(hue, sort=True):
        xs = group[x].to_numpy(float) if pd.api.types.is_numeric_dtype(group[x]) else group[x]
        ax.errorbar(
            xs,
            group["mean"].to_numpy(float),
            yerr=group["std"].to_numpy(float),
            marker="o",
            capsize=3,
            label=str(level),
        )
    if logx:
        ax.set_xscale("log")
    lo, hi = int(stats["n"].min()), int(stats["n"].max())
    seeds = f"{lo}" if lo == hi else f"{lo}–{hi}"
    ax.legend(title=f"{hue} (mean ± std over {seeds} seeds)", frameon=False)
    ax.set(title=title or f"{y} vs {x}", xlabel=xlabel or x, ylabel=ylabel or y)
    return ax


def plot_bars(
    df: pd.DataFrame,
    x: str,
    y: str,
    hue: str | None = None,
    ax: Axes | None = None,
    horizontal: bool = False,
    title: str | None = None,
    ylabel: str | None = None,
) -> Axes:
    """Bars of the mean of ``y`` per category ``x`` (grouped by ``hue``), error bars = std.

    Rows sharing ``(x, hue)`` are aggregated (e.g. seeds); categories keep their order of
    first appearance in ``df``. Error bars are the sample standard deviation (ddof=1).
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
    for i, level in enumerate(groups):
        rows = stats[stats[group_col] == level].set_index(x).reindex(categories)
        offset = positions - 0.4 + width * (i + 0.5)
        err = {"xerr" if horizontal else "yerr": rows["std"].to_numpy(float)}
        draw(offset, rows["mean"].to_numpy(float), width, label=str(level) if hue else None,
             capsize=3, **err)
    set_ticks, set_label = (ax.set_yticks, ax.set_xlabel) if horizontal else (ax.set_xticks,
                                                                              ax.set_ylabel)
    set_ticks(positions, categories, **({} if horizontal else {"rotation": 30, "ha": "right"}))
    set_label(ylabel or y)
    if horizontal:  # first category on top; set, not toggled, so shared axes stay right
        ax.set_ylim(len(categories) - 0.5, -0.5)
    n = int(stats["n"].max())
    if hue:
        ax.legend(title=f"{hue} (mean ± std over {n} seeds)", frameon=False)
    ax.set_title(title or f"{y} by {x} (mean ± std over {n} seeds)")
    return ax
