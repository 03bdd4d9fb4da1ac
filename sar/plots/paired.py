"""Paired differences from a reference method: a dot per seed, the mean and its interval.

:func:`paired_gaps` pairs every method's per-seed value with the reference's at the same seed
and setting; :func:`plot_paired_gaps` draws those gaps against a zero line (mean ± std or the
95% Student-t interval, :func:`sar.metrics.t_half_width`); :func:`plot_per_class_seeds` draws
per-class values with a dot per seed and the same choice of interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from ..metrics.intervals import t_half_width
from .results import _legend
from .style import (
    ArrayLike,
    _axes,
    _names,
    _numpy,
    level_colors,
    method_label,
    pretty_label,
    tick_labels,
)

MAX_PAIRED_LEVELS = 5  # more methods per panel and the dots of their seeds run together
PAIRED_INTERVALS = {"std": "mean ± std", "t95": "mean, 95% t-interval"}  # error bar -> legend


def paired_gaps(df: pd.DataFrame, value: str, reference: str, x: str, hue: str = "method",
                scale: float = 1.0) -> pd.DataFrame:
    """Per-seed ``value`` of every ``hue`` level minus the ``reference`` level's at the same
    ``x`` and seed, times ``scale`` (100 turns fractions into percentage points).

    Args:
        df: one row per run, with columns ``hue``, ``x``, ``"seed"`` and ``value``.
        value: the metric column.
        reference: the ``hue`` level subtracted (e.g. ``"ce"``).
        x: the column the comparison is made within (e.g. the imbalance factor).

    Returns:
        Columns ``[hue, x, "seed", "gap"]``, one row per (level, x, seed) that both the level
        and the reference ran; levels in order of first appearance.

    Raises:
        ValueError: ``reference`` is not a level of ``hue``, or a ``(hue, x, seed)`` cell
            holds more than one row (the pairing would be ambiguous).
    """
    if reference not in set(df[hue]):
        raise ValueError(f"{reference!r} is not a value of column {hue!r}; the levels are"
                         f" {sorted(map(str, set(df[hue])))}")
    keys = [hue, x, "seed"]
    if df.duplicated(keys).any():
        raise ValueError(f"several rows share one ({hue}, {x}, seed); select one setting first")
    ref = df.loc[df[hue] == reference, [x, "seed", value]].rename(columns={value: "_ref"})
    paired = df.loc[df[hue] != reference, [hue, x, "seed", value]].merge(ref, on=[x, "seed"])
    paired["gap"] = (paired[value] - paired["_ref"]) * scale
    return paired[[hue, x, "seed", "gap"]].dropna(subset=["gap"]).reset_index(drop=True)


def plot_paired_gaps(
    df: pd.DataFrame,
    value: str,
    reference: str,
    x: str,
    hue: str = "method",
    ax: Axes | None = None,
    scale: float = 100.0,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    legend: str | None = "best",
    tick_width: int = 14,
    noise_band: float | None = None,
    band_label: str = "noise band",
    interval: str = "std",
) -> Axes:
    """Each method's difference from ``reference`` on the same seed: a dot per seed, the mean
    with an error bar beside them (± std, or the 95% t-interval of the mean), and the zero
    line, grouped by ``x``.

    The paired difference cancels what two runs of one seed share (data order, initial
    weights), so a gap whose dots all lie on one side of zero is a gap the seeds agree on,
    however small beside the metric itself.

    Args:
        df: one row per run (see :func:`paired_gaps`); every ``hue`` level but ``reference``
            is drawn, in order of first appearance, in its fixed method colour.
        value, reference, x, hue: as :func:`paired_gaps`. ``x`` values are categories,
            sorted when numeric (e.g. imbalance factors) and in order of appearance otherwise.
        ax: Axes to draw on.
        scale: multiplies the gaps (100: fractions to percentage points).
        title, xlabel, ylabel: labels (give units); defaults from the column names.
        legend: a matplotlib ``loc``, ``"outside"`` or ``None``.
        tick_width: characters per line of the wrapped ``x`` tick labels
            (:func:`~sar.plots.style.tick_labels`); narrower for many categories.
        noise_band: if given, a grey band from ``-noise_band`` to ``+noise_band`` around zero
            (in the units of the drawn gaps, i.e. after ``scale``): the noise a mean gap must
            clear, e.g. the rerun noise of a mean of three seeds.
        band_label: the band's legend entry, followed by its half-width.
        interval: the error bar: ``"std"`` the sample std of the seeds' gaps (ddof=1);
            ``"t95"`` the 95% Student-t interval of their mean (:func:`t_half_width`, n − 1
            degrees of freedom), which excludes zero when the seeds tell the gap from none.
            The legend title says which is drawn.

    Raises:
        ValueError: more than :data:`MAX_PAIRED_LEVELS` levels besides ``reference``, no
            paired rows, a negative ``noise_band``, an unknown ``interval``, or the errors
            of :func:`paired_gaps`.
    """
    if interval not in PAIRED_INTERVALS:
        raise ValueError(f"interval must be one of {sorted(PAIRED_INTERVALS)}, got {interval!r}")
    gaps = paired_gaps(df, value, reference, x, hue, scale)
    levels = list(dict.fromkeys(gaps[hue]))
    if not levels:
        raise ValueError(f"no run shares an {x} and a seed with {reference!r}: nothing to pair")
    if len(levels) > MAX_PAIRED_LEVELS:
        raise ValueError(f"{len(levels)} levels in one panel; draw at most {MAX_PAIRED_LEVELS}"
                         " (split them over several panels)")
    categories = list(dict.fromkeys(gaps[x]))
    if pd.api.types.is_numeric_dtype(gaps[x]):
        categories = sorted(categories)
    ax = _axes(ax)
    if noise_band is not None:
        if noise_band < 0:
            raise ValueError(f"noise_band must be >= 0, got {noise_band}")
        ax.axhspan(-noise_band, noise_band, color="0.85", alpha=0.7, linewidth=0, zorder=1,
                   label=f"{band_label} (± {noise_band:.2f})")
    width = 0.8 / len(levels)
    for j, (level, colour) in enumerate(zip(levels, level_colors(levels), strict=True)):
        rows, labelled = gaps[gaps[hue] == level], False
        for i, category in enumerate(categories):
            cell = rows.loc[rows[x] == category, "gap"].to_numpy(float)
            if not len(cell):
                continue
            centre = i + (j - (len(levels) - 1) / 2) * width
            ax.scatter(np.full(len(cell), centre - width * 0.18), cell, s=14, color=colour,
                       alpha=0.75, linewidths=0, zorder=3)
            spread = 0.0
            if len(cell) > 1:
                spread = cell.std(ddof=1)
                if interval == "t95":
                    spread = t_half_width(spread, len(cell))
            ax.errorbar(centre + width * 0.18, cell.mean(), yerr=spread, fmt="o",
                        markersize=6, capsize=3, color=colour, markeredgecolor="0.15",
                        zorder=4, label=None if labelled else method_label(level))
            labelled = True
    ax.axhline(0.0, color="0.3", linewidth=1, zorder=2)
    ax.set_xticks(range(len(categories)), tick_labels(
        [f"{c:g}" if isinstance(c, float | int | np.number) else c for c in categories],
        tick_width))
    ax.set_xlim(-0.6, len(categories) - 0.4)
    seeds = gaps.groupby([hue, x])["seed"].nunique()
    lo, hi = int(seeds.min()), int(seeds.max())
    n_seeds = f"{lo}" if lo == hi else f"{lo}–{hi}"
    _legend(ax, legend, title=f"{hue} − {method_label(reference)} (dots: {n_seeds} seeds;"
                              f" {PAIRED_INTERVALS[interval]})")
    ax.set(title=title or f"{pretty_label(value)}: difference from {method_label(reference)}"
                          " on the same seed",
           xlabel=xlabel or pretty_label(x),
           ylabel=ylabel or f"Δ {pretty_label(value)} vs {method_label(reference)}")
    return ax


def plot_per_class_seeds(
    values: Mapping[str, ArrayLike],
    counts: ArrayLike,
    class_names: Sequence[str] | None = None,
    ax: Axes | None = None,
    ylabel: str = "value",
    title: str = "Per class, head → tail",
    legend: str | None = "best",
    dodge: float = 0.0,
    markers: Sequence[str] | None = None,
    linestyles: Sequence[str] | None = None,
    interval: str = "std",
) -> Axes:
    """One line per method across the classes, ordered by training count (head first): the
    mean over seeds with a ± std bar (sample std, ddof=1; none for one seed), or with
    ``interval="t95"`` the 95% Student-t interval of the mean (:func:`t_half_width`).

    Args:
        values: method -> ``(S, C)`` per-class values of S seeds (a ``(C,)`` array is one
            seed); methods in their fixed colours.
        counts: ``(C,)`` training samples per class; sets the order (stable for ties).
        class_names: tick labels (default: class ids).
        ax, ylabel, title, legend: as :func:`plot_sweep` (give units in ``ylabel``).
        dodge: horizontal distance, in class slots, between neighbouring methods' points,
            centred on each class: lines that run on top of each other stay apart.
        markers, linestyles: one marker and one line style per method, in order (default:
            circles and solid lines); with ``dodge`` they tell overlapping lines apart.
        interval: the error bar, ``"std"`` or ``"t95"``; the legend's title says which.

    Raises:
        ValueError: a method's values do not have C columns, ``markers`` or ``linestyles``
            is not one per method, or ``interval`` is unknown.
    """
    if interval not in PAIRED_INTERVALS:
        raise ValueError(f"interval must be one of {sorted(PAIRED_INTERVALS)}, got {interval!r}")
    for name, styles in (("markers", markers), ("linestyles", linestyles)):
        if styles is not None and len(styles) != len(values):
            raise ValueError(f"{len(styles)} {name} for {len(values)} methods")
    n = _numpy(counts).astype(float)
    order = np.argsort(-n, kind="stable")
    ax = _axes(ax)
    for j, ((name, vals), colour) in enumerate(zip(values.items(), level_colors(values),
                                                   strict=True)):
        v = np.atleast_2d(_numpy(vals).astype(float))
        if v.shape[1] != len(n):
            raise ValueError(f"values for {name!r} have {v.shape[1]} classes, counts {len(n)}")
        spread = v.std(0, ddof=1) if v.shape[0] > 1 else None
        if spread is not None and interval == "t95":
            spread = spread * t_half_width(1.0, v.shape[0])
        shift = (j - (len(values) - 1) / 2) * dodge
        ax.errorbar(np.arange(len(n)) + shift, v.mean(0)[order],
                    yerr=None if spread is None else spread[order],
                    marker="o" if markers is None else markers[j], markersize=4,
                    linestyle="-" if linestyles is None else linestyles[j],
                    capsize=2, color=colour, label=method_label(name))
    names = np.array(_names(class_names, len(n)))[order]
    ax.set_xticks(np.arange(len(n)), [f"{c}\n({int(k)})" for c, k in zip(names, n[order],
                                                                         strict=True)],
                  rotation=45, ha="right", rotation_mode="anchor")
    ax.set(xlabel="class (training images), head → tail", ylabel=ylabel, title=title)
    seeds = {np.atleast_2d(_numpy(v)).shape[0] for v in values.values()}
    seed_counts = "/".join(map(str, sorted(seeds)))
    _legend(ax, legend, title=f"{PAIRED_INTERVALS[interval]} over {seed_counts} seeds")
    return ax
