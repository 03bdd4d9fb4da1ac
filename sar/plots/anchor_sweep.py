"""Notebook 01's dimension sweep: how anchor sets spread out as the dimension grows.

:func:`plot_anchor_sweep` draws two panels over the dimension D (log axis), one line per anchor
set with min-max bars over seeds: the mean absolute cosine over pairs (left) and the closest pair's
angle (right), with the reference levels of ``num_classes`` anchors (the simplex ETF; orthogonal
anchors' absolute cosine 0 and angle 90°, drawn from the first swept D >= C, since C orthogonal
anchors need D >= C; and D = C - 1, where an ETF first exists) and one legend for both panels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from .results import plot_sweep
from .style import legend_entries


def plot_anchor_sweep(
    sweep: pd.DataFrame,
    num_classes: int,
    expected: tuple[Sequence[float], Sequence[float]] | None = None,
    expected_label: str = "sqrt(2 / (pi D))",
    legend_title: str | None = None,
    hue: str = "anchors",
) -> Figure:
    """Mean absolute cosine (left) and closest-pair angle (right) of anchor sets against D.

    Args:
        sweep: one row per (anchor set, D, seed) with columns ``hue``, ``"D"``,
            ``"mean_abs_cosine"`` and ``"min_angle_deg"``.
        num_classes: C, for the reference levels: the simplex ETF's absolute cosine ``1/(C-1)`` and
            angle ``acos(-1/(C-1))``, orthogonal anchors' 0 and 90° from the first swept
            ``D >= C``, and the vertical line at ``D = C - 1``.
        expected: ``(dims, values)`` of a predicted mean absolute cosine curve (e.g. Gaussian
            anchors' ``sqrt(2 / (pi D))``), drawn black dashed on the left panel.
        expected_label: its legend entry.
        legend_title: title of the shared legend below the panels.
        hue: the column naming the anchor set.
    """
    c = num_classes
    simplex_angle = math.degrees(math.acos(-1.0 / (c - 1)))
    dims = sorted(sweep["D"].unique())
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.4))
    plot_sweep(sweep, x="D", y="mean_abs_cosine", hue=hue, ax=left, logx=True, spread="range",
               legend=None, title=f"Mean |cosine| of {c} anchors",
               xlabel="dimension D (log scale)", ylabel="mean |cosine| over pairs (unitless)")
    if expected is not None:
        left.plot(*expected, color="black", linestyle="--", linewidth=1, label=expected_label)
    left.axhline(1 / (c - 1), color="0.5", linestyle=":",
                 label=f"simplex ETF: |cosine| 1/(C-1) = {1 / (c - 1):.3f}, "
                       f"angle {simplex_angle:.1f}°")
    plot_sweep(sweep, x="D", y="min_angle_deg", hue=hue, ax=right, logx=True, spread="range",
               legend=None, title=f"Angle of the closest pair of {c} anchors",
               xlabel="dimension D (log scale)", ylabel="min pairwise angle (degrees)")
    right.axhline(simplex_angle, color="0.5", linestyle=":")
    on_grid = [d for d in dims if d >= c]  # C orthogonal anchors need D >= C
    if on_grid:  # their level on both panels, from the first swept D where they exist
        label = f"orthogonal: |cosine| 0, angle 90° (needs D ≥ C = {c})"
        for ax, level in ((left, 0.0), (right, 90.0)):
            ax.plot([on_grid[0], on_grid[-1]], [level, level], color="black", linestyle="-",
                    linewidth=1.2, label=label)
    right.axvline(c - 1, color="0.4", linestyle="-.", linewidth=1,
                  label=f"D = C - 1 = {c - 1}: an ETF exists from here")
    for ax in (left, right):
        ax.set_xticks(dims, labels=[str(int(d)) for d in dims])
        ax.minorticks_off()
    fig.tight_layout()
    fig.legend(*legend_entries((left, right)), title=legend_title, frameon=False,  # both panels
               ncol=3, loc="upper center", bbox_to_anchor=(0.5, 0.0))
    return fig


__all__ = ["plot_anchor_sweep"]
