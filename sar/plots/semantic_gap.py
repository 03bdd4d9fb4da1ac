"""Notebook 01's semantic-gap figure: where each class's anchor points, stage by stage.

:func:`plot_gap_stages` puts one column per stage (e.g. raw anchors, untrained projection,
trained projection) on two panels: each class's anchor's cosine to its own class mean (left)
and its margin over the closest other class mean (right). Every class gets a faint dot per seed
and a big dot at its mean over seeds, in its class colour; a short dotted line per stage marks
the chance level of random directions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from .style import _numpy, class_palette, legend_entries


def plot_gap_stages(
    own: Mapping[str, object],
    margin: Mapping[str, object],
    chance: Mapping[str, tuple[float, float]],
    class_names: Sequence[str],
    chance_label: str = "chance: random direction",
    seed: int = 0,
) -> Figure:
    """Per-class dots of the anchors' cosine to their class mean and their margin, by stage.

    Args:
        own: ``{stage: (seeds, C)}`` cosine of class ``k``'s anchor to class ``k``'s mean.
        margin: ``{stage: (seeds, C)}`` that cosine minus the one to the closest other mean.
        chance: ``{stage: (own level, margin level)}`` of random directions, drawn dotted.
        class_names: the C names, for the class colours and the legend.
        chance_label: the legend entry of the dotted lines.
        seed: seeds the horizontal jitter of the per-seed dots (the same for every stage).

    Raises:
        ValueError: the stages of ``own``, ``margin`` and ``chance`` differ.
    """
    stages = list(own)
    if list(margin) != stages or set(chance) != set(stages):
        raise ValueError("own, margin and chance must have the same stages")
    palette = dict(zip(class_names, class_palette(len(class_names), class_names=class_names),
                       strict=True))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.6))
    n_seeds = _numpy(own[stages[0]]).shape[0]
    jitter = np.random.default_rng(seed).uniform(-0.1, 0.1, size=n_seeds)
    for x, stage in enumerate(stages):
        for ax, values, level in ((left, own[stage], chance[stage][0]),
                                  (right, margin[stage], chance[stage][1])):
            values = _numpy(values)
            for k, name in enumerate(class_names):
                ax.scatter(x + jitter, values[:, k], s=10, color=palette[name], alpha=0.35)
                ax.scatter(x, values[:, k].mean(), s=60, color=palette[name], edgecolor="black",
                           linewidth=0.5, label=name, zorder=3)
            ax.hlines(level, x - 0.32, x + 0.32, color="black", linestyle=":",
                      label=chance_label)
    right.axhline(0, color="0.4", linewidth=1)
    for ax in (left, right):
        ax.set_xticks(range(len(stages)), stages)
        ax.set_xlim(-0.5, len(stages) - 0.5)
    left.set(ylabel="cosine to its class mean (unitless)",
             title="Each class's anchor vs its class's mean feature")
    right.set(ylabel="cos to own mean − cos to closest other (unitless)",
              title="Margin over the closest other class mean (> 0: nearer own)")
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    fig.legend(*legend_entries([left]), frameon=False, ncol=6,
               loc="lower center",
               title=f"big dot: a class's mean over {n_seeds} seeds; small dots: one seed each")
    return fig
