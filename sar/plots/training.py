"""Training curves: losses and metrics over steps or epochs, histograms, anchor probabilities."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

from .results import sweep_summary
from .style import (
    ArrayLike,
    _axes,
    _names,
    _numpy,
    class_palette,
    level_colors,
    method_label,
    pretty_label,
    readable_log_axis,
    series_colors,
)


def _is_binary(series: pd.Series) -> bool:
    values = series.dropna().unique()
    return len(values) > 0 and set(np.asarray(values, dtype=float)) <= {0.0, 1.0}


def plot_training_curves(
    history: pd.DataFrame,
    columns: Sequence[str],
    x: str = "step",
    ax: Axes | None = None,
    smooth: int | Mapping[str, int] = 0,
    title: str = "Training curves",
    xlabel: str | None = None,
    ylabel: str = "value",
    logy: bool = False,
    secondary: Sequence[str] = (),
    secondary_ylabel: str | None = None,
) -> Axes:
    """Line plot of logged columns against ``x``.

    Args:
        history: one row per logging step; columns may be sparse (NaN where not logged).
        columns: columns to draw, one line each. Columns that name methods ("CE run", "SAR
            run") take the methods' fixed colours, logged quantities ("task_loss",
            "anchor_ce", "pull", the gate flags) theirs, which no method uses
            (:func:`~sar.plots.style.series_colors`).
        x: column for the horizontal axis (the index if absent from ``history``); integer
            values (steps, epochs) get integer ticks.
        ax: Axes to draw on.
        smooth: window (logged rows) of a trailing mean, one for all columns or
            ``{column: window}`` (columns left out are not smoothed, e.g. to keep the pull's
            step at the gate opening sharp); ``0``/``1`` plot the raw values. The raw curve
            stays visible underneath, faded. 0/1 columns such as a gate flag are never
            smoothed and are drawn as steps, each a little thinner and differently dashed, so
            two flags that coincide stay visible.
        title: Axes title.
        xlabel: horizontal-axis label (default: ``x``, e.g. ``"step"``).
        ylabel: vertical-axis label; give units, e.g. ``"loss (nats)"``.
        logy: logarithmic vertical axis (plain tick labels).
        secondary: columns (also listed in ``columns``) drawn against a right-hand axis, for
            a term orders of magnitude smaller than the others (the pull beside the anchor
            CE); the right axis is ``ax.right_ax`` and its label ``secondary_ylabel``.
    """
    missing = [c for c in columns if c not in history.columns]
    missing += [c for c in secondary if c not in columns]
    if missing:
        raise KeyError(f"columns {missing} not in history or columns (have "
                       f"{list(history.columns)})")
    ax = _axes(ax)
    right = ax.twinx() if secondary else None
    if right is not None:
        right.grid(False)
        ax.right_ax = right
    colours = dict(zip(columns, series_colors(columns), strict=True))
    windows = dict(smooth) if isinstance(smooth, Mapping) else dict.fromkeys(columns, smooth)
    flags = 0
    for col in columns:
        target = right if col in secondary else ax
        colour = colours[col]
        label = pretty_label(col) + (" (right axis)" if col in secondary else "")
        data = history[[col]].assign(_x=history[x] if x in history else history.index)
        data = data.dropna().sort_values("_x")
        y = data[col].astype(float)
        window = windows.get(col, 0)
        if _is_binary(y):
            target.plot(data["_x"], y, drawstyle="steps-post", label=label, color=colour,
                        linewidth=3.0 - 0.8 * min(flags, 2),
                        linestyle=("-", "--", ":")[flags % 3], zorder=2 + flags)
            flags += 1
        elif window > 1:
            target.plot(data["_x"], y, alpha=0.25, linewidth=1, color=colour)
            target.plot(data["_x"], y.rolling(window, min_periods=1).mean(), color=colour,
                        label=f"{label} (trailing mean over {window} logged steps)")
        else:
            target.plot(data["_x"], y, label=label, color=colour)
    if logy:
        ax.set_yscale("log")
        readable_log_axis(ax.yaxis)
    xs = history[x] if x in history else pd.Series(history.index)
    if len(xs) and pd.api.types.is_numeric_dtype(xs) and np.allclose(xs, np.round(xs)):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title=title, xlabel=xlabel or x, ylabel=ylabel)
    handles, labels = ax.get_legend_handles_labels()
    if right is not None:
        right.set_ylabel(secondary_ylabel or ", ".join(pretty_label(c) for c in secondary))
        more = right.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, frameon=False)
    return ax


def plot_metric_curves(
    df: pd.DataFrame,
    y: str,
    x: str = "epoch",
    hue: str = "method",
    ax: Axes | None = None,
    hue_order: Sequence[str] | None = None,
    linestyle: str = "-",
    label_suffix: str = "",
    logy: bool = False,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    colors: Mapping[str, Any] | None = None,
    linestyles: Mapping[str, str] | None = None,
    markers: Mapping[str, str] | None = None,
    bands: Sequence[str] | None = None,
) -> Axes:
    """Mean of ``y`` against ``x``, one line per ``hue`` level, with a ± std band over runs.

    Rows sharing ``(hue, x)`` (e.g. seeds) are averaged; where there are several, a shaded
    band shows ± one sample standard deviation (ddof=1). NaN values are dropped first, so a
    level whose ``y`` is all NaN (e.g. an anchor metric of a method without anchors) draws
    nothing. A level keeps its colour (a method its fixed colour, other levels the ``deep``
    palette by position in ``hue_order``, default: order of first appearance; see
    :func:`~sar.plots.style.level_colors`) across calls, so a second call with
    ``linestyle="--"`` and a ``label_suffix`` can add a related column to the same Axes.
    Registry method names are written as their display labels; a log axis gets plain ticks.
    ``colors`` overrides the colour of some levels (e.g. shades of one method for the levels
    of a knob); ``linestyles`` and ``markers`` override ``linestyle`` and the ``"o"`` marker
    of some levels, so that shades of one colour stay apart in print and for colour-blind
    readers. ``bands`` lists the levels that get a band (default: all), so that two levels whose
    bands overlap can still be read.
    """
    order = list(hue_order) if hue_order is not None else list(dict.fromkeys(df[hue]))
    colours = [(colors or {}).get(level, colour)
               for level, colour in zip(order, level_colors(order), strict=True)]
    stats = sweep_summary(df.dropna(subset=[y]), x, y, hue)
    ax = _axes(ax)
    for i, level in enumerate(order):
        rows = stats[stats[hue] == level]
        if rows.empty:
            continue
        xs, mean, std = (rows[c].to_numpy(float) for c in (x, "mean", "std"))
        ax.plot(xs, mean, linestyle=(linestyles or {}).get(level, linestyle),
                marker=(markers or {}).get(level, "o"), markersize=4, color=colours[i],
                label=f"{method_label(level)}{label_suffix}")
        if (rows["n"] > 1).any() and (bands is None or level in bands):
            ax.fill_between(xs, mean - std, mean + std, color=colours[i], alpha=0.15,
                            linewidth=0)
    if logy:
        ax.set_yscale("log")
        readable_log_axis(ax.yaxis)
    if len(stats) and np.allclose(stats[x], np.round(stats[x])):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs, steps
    n_lo, n_hi = (int(stats["n"].min()), int(stats["n"].max())) if len(stats) else (0, 0)
    runs = f"{n_lo}" if n_lo == n_hi else f"{n_lo}–{n_hi}"
    ax.set(title=title or f"{pretty_label(y)} (mean ± std over {runs} runs)",
           xlabel=xlabel or pretty_label(x), ylabel=ylabel or pretty_label(y))
    ax.legend(frameon=False)
    return ax


def plot_value_histograms(
    samples: Mapping[str, ArrayLike],
    ax: Axes | None = None,
    bins: int = 60,
    title: str = "Distribution of values",
    xlabel: str = "value (feature units)",
    logy: bool = True,
) -> Axes:
    """Overlaid step histograms (densities on shared bins) of the entries of several tensors.

    Args:
        samples: ``{name: tensor of any shape}``; every entry is one value.
        ax: Axes to draw on.
        bins: about this many bins span the overall range of all samples; 0 is a bin edge.
        title: Axes title.
        xlabel: horizontal-axis label, with units.
        logy: logarithmic density axis (a spike of exact zeros, as after a ReLU, would
            otherwise flatten everything else).

    Each legend entry gives the sample size and the shares of negative and exactly-zero
    values, the two facts that tell post-ReLU features from raw Gaussian vectors.
    """
    if not samples:
        raise ValueError("samples is empty")
    flat = {name: _numpy(values).astype(np.float64).ravel() for name, values in samples.items()}
    lo = min(v.min() for v in flat.values())
    hi = max(v.max() for v in flat.values())
    width = (hi - lo) / bins if hi > lo else 1.0 / bins
    # bins aligned on 0, so exact zeros (post-ReLU) fill the bin [0, width), not one straddling 0
    edges = width * np.arange(np.floor(lo / width), np.floor(hi / width) + 2)
    ax = _axes(ax)
    colours = sns.color_palette("deep", len(flat))
    peak = 0.0
    for colour, (name, values) in zip(colours, flat.items(), strict=True):
        negative, zero = 100 * (values < 0).mean(), 100 * (values == 0).mean()
        density, _, _ = ax.hist(values, bins=edges, density=True, histtype="step",
                                linewidth=1.8, color=colour,
                                label=f"{name}: n={values.size}, {negative:.0f} % < 0,"
                                      f" {zero:.0f} % = 0")
        peak = max(peak, float(np.max(density)))
    if logy:
        ax.set_yscale("log")
    if peak > 0:  # headroom above the tallest bar for the legend
        ax.set_ylim(top=peak * 30 if logy else peak * 1.4)
    ax.axvline(0.0, color="0.4", linewidth=0.8, linestyle=":")
    ax.set(title=title, xlabel=xlabel, ylabel="density" + (" (log scale)" if logy else ""))
    ax.legend(frameon=False, loc="upper right")
    return ax


def plot_anchor_probabilities(
    probs: ArrayLike,
    steps: ArrayLike | None = None,
    filter_conf: float | None = 0.9,
    update_conf: float | None = 0.8,
    gate_step: int | None = None,
    class_names: Sequence[str] | None = None,
    ax: Axes | None = None,
    title: str = "Own-class probability of each projected anchor",
    highlight: str | Sequence[str] | None = None,
    others_label: str | None = None,
    xlabel: str = "step",
) -> Axes:
    """One line per anchor: the probability the classifier gives anchor ``i`` for class ``i``.

    Args:
        probs: ``(T, C)`` probabilities in ``[0, 1]`` over ``T`` logged steps.
        steps: ``(T,)`` step numbers (default ``0..T-1``).
        filter_conf: drawn as a dashed line: above it an anchor leaves the anchor CE.
        update_conf: drawn as a dotted line: the gate needs every anchor above it.
        gate_step: step at which the gate first opened; marked by a vertical line
            (``None``: not drawn, the title says the gate stayed closed).
        class_names: legend names (default: class indices); class colours as everywhere.
        ax: Axes to draw on; the legend sits to the right of it.
        title: Axes title.
        highlight: class name(s) (of ``class_names``) to single out: their lines are drawn
            thick and on top, the other classes' thin and faded, each in its class colour.
        others_label: with ``highlight``, draw the other classes thin in one grey instead,
            under this single legend entry (e.g. ``"other 9 classes"``), so that the legend
            names only the highlighted classes.
        xlabel: x-axis label (say what a step trains).

    Raises:
        ValueError: ``probs`` is not 2-D, ``steps`` does not match it, a ``highlight``
            name is not one of ``class_names``, or ``others_label`` is given without
            ``highlight``.
    """
    p = _numpy(probs).astype(np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be (T, C), got shape {p.shape}")
    xs = np.arange(len(p)) if steps is None else _numpy(steps).astype(np.float64)
    if len(xs) != len(p):
        raise ValueError(f"{len(xs)} steps for {len(p)} rows of probabilities")
    num_classes = p.shape[1]
    names = _names(class_names, num_classes)
    palette = class_palette(num_classes, class_names=class_names)
    chosen = [highlight] if isinstance(highlight, str) else list(highlight or [])
    if unknown := [name for name in chosen if name not in names]:
        raise ValueError(f"highlight names {unknown} are not among the classes {names}")
    if others_label is not None and not chosen:
        raise ValueError("others_label needs highlight: it names the classes not highlighted")
    ax = _axes(ax)
    others_labelled = False
    for c in range(num_classes):
        colour, label = palette[c], names[c]
        style = ({"linewidth": 1.4} if not chosen else
                 {"linewidth": 3.0, "zorder": 3} if names[c] in chosen else
                 {"linewidth": 0.9, "alpha": 0.45})
        if chosen and names[c] not in chosen and others_label is not None:
            colour, style = "0.65", {"linewidth": 0.9}  # one grey for all the others
            label, others_labelled = ("_" if others_labelled else others_label), True
        ax.plot(xs, p[:, c], color=colour, label=label, **style)
    if filter_conf is not None and filter_conf < 1:
        ax.axhline(filter_conf, color="0.2", linestyle="--", linewidth=1.0,
                   label=f"filter_conf = {filter_conf:g}")
    if update_conf is not None:
        ax.axhline(update_conf, color="0.2", linestyle=":", linewidth=1.2,
                   label=f"update_conf = {update_conf:g}")
    if gate_step is not None:
        ax.axvline(gate_step, color="black", linewidth=1.2, alpha=0.7,
                   label=f"gate opens (step {gate_step})")
    elif title:
        title = f"{title} (gate still closed)"
    ax.set(title=title, xlabel=xlabel, ylabel="probability of own class", ylim=(0.0, 1.02))
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return ax
