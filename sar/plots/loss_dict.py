"""SAR's loss dict over training: the logged terms and the gate of one or more runs.

:func:`plot_loss_dict` draws three panels (task CE and anchor CE, pull, gate), :func:`plot_gate`
the gate panel alone and :func:`plot_runs` any logged column of several runs; in all three a
term keeps its colour (:func:`~sar.plots.style.series_colors`), a run its line style, and the
step at which each run's gate opened is a vertical line in the gate's colour (in the run's line
style where the runs open at different steps, dash-dotted where they share the step).
:func:`sar.metrics.loss_dict_events` tabulates what the figure shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..metrics.history import gate_opened_step
from .style import TERM_COLORS, _axes, pretty_label, series_colors

RUN_STYLES = ("-", "--", ":")  # one per run; dash-dot marks the gate


def plot_runs(histories: Mapping[str, pd.DataFrame], columns: Sequence[str], ax: Axes | None = None,
              title: str = "", ylabel: str = "value", gate: bool = True) -> Axes:
    """``columns`` of every run in ``histories`` ({run name: fit's history}) against ``step``.

    Colour names the column, line style the run (at most three runs); with ``gate`` a
    vertical line marks the step at which the gate opened, one line per distinct step: in the
    line style of its run where only one of several runs opened then, dash-dotted otherwise.
    The legend lists the columns (solid), then the runs (grey) when there are several.
    """
    if len(histories) > len(RUN_STYLES):
        raise ValueError(f"at most {len(RUN_STYLES)} runs per panel, got {len(histories)}")
    ax = _axes(ax)
    colours = dict(zip(columns, series_colors(columns), strict=True))
    styles = dict(zip(histories, RUN_STYLES, strict=False))
    for run, history in histories.items():
        for column in columns:
            ax.plot(history["step"], history[column], color=colours[column],
                    linestyle=styles[run])
    handles = [Line2D([], [], color=colours[c], label=pretty_label(c)) for c in columns]
    if len(histories) > 1:
        handles += [Line2D([], [], color="0.45", linestyle=styles[r], label=r) for r in histories]
    if gate:
        opened: dict[int, list[str]] = {}
        for run, history in histories.items():
            if (step := gate_opened_step(history)) is not None:
                opened.setdefault(step, []).append(run)
        for step, runs in sorted(opened.items()):
            which = "" if len(runs) == len(histories) else f", {', '.join(runs)}"
            # a step of one run among several: that run's line style; shared: dash-dot
            style = styles[runs[0]] if len(runs) == 1 and len(histories) > 1 else "-."
            ax.axvline(step, color=TERM_COLORS["gate_opened"], linestyle=style, linewidth=1)
            handles.append(Line2D([], [], color=TERM_COLORS["gate_opened"], linestyle=style,
                                  linewidth=1, label=f"gate opens (step {step}{which})"))
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    ax.legend(handles=handles, frameon=False, fontsize=8)
    return ax


def plot_gate(histories: Mapping[str, pd.DataFrame], update_conf: float, filter_conf: float,
              ax: Axes | None = None, title: str = "Gate: lowest anchor probability") -> Axes:
    """Each run's lowest anchor probability, with ``update_conf`` (the gate's threshold,
    dotted) and ``filter_conf`` (anchors above it leave the anchor CE, dashed)."""
    ax = plot_runs(histories, ["min_anchor_prob"], ax=ax, title=title,
                   ylabel="probability of own class")
    handles = ax.get_legend().legend_handles
    for value, style, label in ((update_conf, ":", f"update_conf = {update_conf:g}"),
                                (filter_conf, "--", f"filter_conf = {filter_conf:g} (anchor CE "
                                                    "drops anchors above)")):
        ax.axhline(value, color="0.4", linestyle=style, linewidth=1)
        handles.append(Line2D([], [], color="0.4", linestyle=style, linewidth=1, label=label))
    ax.legend(handles=handles, frameon=False, fontsize=8)
    return ax


def plot_loss_dict(histories: Mapping[str, pd.DataFrame], update_conf: float, filter_conf: float,
                   title: str = "SAR's loss dict over training") -> Figure:
    """Three panels: task CE and anchor CE (nats), the pull, the gate (:func:`plot_gate`)."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    plot_runs(histories, ["task_loss", "anchor_ce"], ax=axes[0], title="Task CE and anchor CE",
              ylabel="cross-entropy (nats)")
    plot_runs(histories, ["pull"], ax=axes[1], title="Pull",
              ylabel="trade_off x squared distance (feature units²)")
    plot_gate(histories, update_conf, filter_conf, ax=axes[2])
    fig.suptitle(title)
    fig.tight_layout()
    return fig
