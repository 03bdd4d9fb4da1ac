"""Figures of notebook 02's collapse runs: where each run ends and what it paid for it
(:func:`plot_recipe_costs`, :func:`plot_scatter_offset`), and one training step seen in 2-D
(:func:`plot_feature_step`).

The first two take one row per (run, seed), as :func:`sar.experiments.collapse.epoch_table`
(its last epoch) and :func:`sar.experiments.collapse.scatter_offset_rows` give them, and
colour each run by a given ``{run: colour}``: the runs of one method at several strengths are
shades of the method's colour (:func:`~sar.plots.style.strength_styles`), which
:func:`~sar.plots.style.method_color` alone cannot tell apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb, to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..metrics.intervals import t_half_width
from .geometry import _square_limits, plot_features_2d
from .paired import paired_gaps
from .style import ArrayLike, _axes, _numpy, class_palette, readable_log_axis, tick_labels


def _runs(rows: pd.DataFrame, colors: Mapping[str, Any]) -> list[str]:
    runs = list(dict.fromkeys(rows["run"]))
    missing = [run for run in runs if run not in colors]
    if missing:
        raise ValueError(f"no colour for runs {missing}; give every run one in colors")
    return runs


def _seed_dots(ax: Axes, x: float, values: np.ndarray, colour: Any) -> None:
    offsets = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(1)
    ax.scatter(x - 0.14 + offsets, values, s=16, color=colour, alpha=0.8, linewidths=0, zorder=3)


def _off_scale(ax: Axes, x: float, value: float, edge: float, colour: Any, low: bool) -> None:
    """A mean beyond the axis: a triangle on the edge and the value written beside it, dark
    on a white box, so that it reads over a bar of the run's own colour too."""
    ax.plot(x + 0.14, edge, marker="v" if low else "^", color=colour, markersize=8,
            clip_on=False, zorder=4)
    ax.annotate(f"{value:+.1f}" if low else f"{value:.2f}", (x + 0.14, edge),
                xytext=(0, 9 if low else -9), textcoords="offset points", ha="center",
                va="bottom" if low else "top", fontsize=8, color="0.1", zorder=5,
                bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none",
                      "alpha": 0.85})


def plot_recipe_costs(
    final: pd.DataFrame,
    colors: Mapping[str, Any],
    reference: str = "CE",
    distance: str = "target_ratio",
    floor: float | None = None,
    axes: Sequence[Axes] | None = None,
    distance_label: str = "distance to own target (× target spacing, squared)",
    interval: str = "t95",
) -> Figure:
    """Where each run ends (left) and what it cost (right), a dot per seed.

    Left: ``distance`` of every run, log axis, a dot per seed and the mean as a larger marker.
    Right: test accuracy minus ``reference``'s on the same seed, in percentage points, a dot
    per seed and the mean of the paired differences with an error bar, and the zero line.
    With ``interval="t95"`` the bar is the 95 % Student-t interval of that mean
    (:func:`~sar.metrics.intervals.t_half_width`), so a bar that misses the zero line marks a
    clear difference; ``"std"`` draws ± their std instead.

    Args:
        final: one row per (run, seed), columns ``run``, ``seed``, ``accuracy`` (fraction)
            and ``distance``.
        colors: ``{run: colour}`` for every run.
        reference: the run subtracted on the right (drawn on the left only).
        floor: lower limit of the right panel (points); a mean below it is drawn as a
            triangle on the edge with its value, its seeds below the edge left out.
        axes: two Axes to draw on (default: a new 1 × 2 figure).
        interval: ``"t95"`` (default) or ``"std"``, the right panel's error bars.

    Returns:
        The Figure.

    Raises:
        ValueError: a run without a colour, ``reference`` not a run, a (run, seed) given
            twice, or an unknown ``interval``.
    """
    if interval not in ("t95", "std"):
        raise ValueError(f"interval must be 't95' or 'std', got {interval!r}")
    runs = _runs(final, colors)
    # the pairing of :func:`paired_gaps`, one comparison for all runs (it refuses a missing
    # reference and several rows of one (run, seed))
    gaps = paired_gaps(final.assign(_all=0), "accuracy", reference, "_all", hue="run",
                       scale=100.0)
    if axes is None:
        from matplotlib import pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(13, 4.4))
    left, right = axes
    others = [run for run in runs if run != reference]
    for i, run in enumerate(runs):
        values = final.loc[final.run == run, distance].dropna().to_numpy(float)
        if len(values):
            _seed_dots(left, i, values, colors[run])
            left.plot(i + 0.14, values.mean(), "D", color=colors[run], markeredgecolor="0.15",
                      markersize=7, zorder=4)
    left.set_yscale("log")
    readable_log_axis(left.yaxis)
    left.set_xticks(range(len(runs)), tick_labels(runs, 12))
    left.set(ylabel=distance_label, title="Where each run ends: distance to its own targets")
    for i, run in enumerate(others):
        values = gaps.loc[gaps.run == run, "gap"].to_numpy(float)
        mean = values.mean()
        std = values.std(ddof=1) if len(values) > 1 else 0.0
        half = t_half_width(std, len(values)) if interval == "t95" and len(values) > 1 else std
        if floor is not None and mean < floor:
            _off_scale(right, i, mean, floor, colors[run], low=True)
            continue
        _seed_dots(right, i, values, colors[run])
        right.errorbar(i + 0.14, mean, yerr=half, fmt="D", color=colors[run], capsize=3,
                       markeredgecolor="0.15", markersize=7, zorder=4)
    right.axhline(0, color="0.3", linewidth=1, zorder=2)
    if floor is not None:
        right.set_ylim(bottom=floor)
    right.set_xticks(range(len(others)), tick_labels(others, 12))
    right.set_xlim(-0.6, len(others) - 0.4)
    right.set(ylabel=f"test accuracy minus {reference} (points)",
              title=f"What it cost: accuracy against {reference} on the same seed")
    seeds = final.groupby("run")["seed"].nunique()
    right.legend(handles=[
        Line2D([], [], marker="o", color="0.4", linestyle="", markersize=4, label="one seed"),
        Line2D([], [], marker="D", color="0.4", markeredgecolor="0.15", linestyle="",
               label=f"mean (right: ± {'95 % t-interval' if interval == 't95' else 'std'} "
                     f"of {seeds.max()} paired differences)")],
        frameon=False, fontsize=8, loc="lower left")
    fig = left.figure
    fig.tight_layout()
    return fig


def plot_scatter_offset(
    rows: pd.DataFrame,
    colors: Mapping[str, Any],
    ax: Axes | None = None,
    title: str | None = None,
    clip: float | None = 1.3,
) -> Axes:
    """The distance to the targets split into scatter (solid: the run's tightness) and offset
    (hatched: its class means' distance from its targets), mean over seeds, a dot per seed's
    total.

    Args:
        rows: :func:`sar.experiments.collapse.scatter_offset_rows` (class-mean units).
        colors: ``{run: colour}`` for every run.
        ax: Axes to draw on.
        clip: the axis ends at ``clip`` times the second-largest mean total, so that one wrecked
            run does not flatten the others; a bar beyond it gets its value written. ``None``
            shows everything.

    Returns:
        The Axes.

    Raises:
        ValueError: a run without a colour, or no rows.
    """
    if rows.empty:
        raise ValueError("no rows to draw")
    runs = _runs(rows, colors)
    mean = rows.groupby("run", sort=False)[["scatter", "offset"]].mean().loc[runs]
    totals = mean.sum(axis=1)
    ax = _axes(ax)
    colours = [colors[run] for run in runs]
    x = np.arange(len(runs))
    ax.bar(x, mean.scatter, color=colours)
    # the offset: the run's colour, pale, hatched in a darker shade of it (seen on pale colours)
    ax.bar(x, mean.offset, bottom=mean.scatter, color=[to_rgba(c, 0.35) for c in colours],
           hatch="//", edgecolor=[tuple(0.6 * v for v in to_rgb(c)) for c in colours],
           linewidth=0.5)
    for i, run in enumerate(runs):
        seed_totals = rows.loc[rows.run == run, "total"].to_numpy(float)
        ax.plot(np.full(len(seed_totals), i), seed_totals, "o", color="0.15", markersize=3.5)
    if clip is not None and len(runs) > 1:
        top = clip * float(np.sort(totals.to_numpy())[-2])
        for i, total in enumerate(totals):
            if total > top:
                _off_scale(ax, i - 0.14, total, top, colours[i], low=False)
        ax.set_ylim(0, top)
    ax.set_xticks(x, tick_labels(runs, 12))
    ax.set(ylabel="mean ‖f − t‖² / class-mean spacing", title=title)
    ax.legend(handles=[Patch(color="0.5", label="scatter (the tightness)"),
                       Patch(facecolor="0.5", alpha=0.35, hatch="//",
                             label="offset (class means from targets)"),
                       Line2D([], [], marker="o", color="0.15", linestyle="",
                              label="one seed's total")], frameon=False, fontsize=8)
    return ax


def plot_feature_step(
    before: ArrayLike,
    after: ArrayLike,
    labels: ArrayLike,
    targets: ArrayLike | None = None,
    class_names: Sequence[str] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    legend: bool = False,
    target_label: str = "target",
) -> Axes:
    """One training step seen in 2-D: each feature's move as an arrow, from where it was
    (a small hollow circle) to where the step put it (a dot, as :func:`plot_features_2d` draws
    it), with the class targets as hollow stars on top.

    The square view holds every target and both ends of every arrow, on one scale for both
    axes, so the length of an arrow reads as the distance the feature moved.

    Args:
        before, after: ``(N, 2)`` the same features before and after the step.
        labels: ``(N,)`` integer classes; targets: ``(C, 2)`` or None.
        class_names, ax, title, legend, target_label: as in :func:`plot_features_2d`.

    Raises:
        ValueError: ``before`` and ``after`` of different shapes, or not ``(N, 2)``.
    """
    start, end = _numpy(before).astype(np.float64), _numpy(after).astype(np.float64)
    if start.shape != end.shape or start.ndim != 2 or start.shape[1] != 2:
        raise ValueError(f"before and after must both be (N, 2), got {start.shape} and "
                         f"{end.shape}")
    labs = _numpy(labels).astype(np.int64)
    stars = None if targets is None else _numpy(targets).astype(np.float64)
    view = _square_limits(np.concatenate([start, end]), stars, coverage=1.0)
    ax = plot_features_2d(end, labs, stars, class_names=class_names, ax=ax, title=title,
                          legend=legend, target_label=target_label, view=view,
                          max_points=len(end), hollow_targets=True)
    palette = class_palette(max(int(labs.max()) + 1, 0 if stars is None else len(stars)), None,
                            class_names)
    colours = [palette[c] for c in labs]
    ax.scatter(start[:, 0], start[:, 1], s=9, facecolors="none", edgecolors=colours,
               linewidths=0.6, alpha=0.6, zorder=1)
    move = end - start  # drawn to scale: an arrow is as long as the move
    ax.quiver(start[:, 0], start[:, 1], move[:, 0], move[:, 1], color=colours, angles="xy",
              scale_units="xy", scale=1, width=0.003, alpha=0.55, zorder=2)
    return ax
