"""Notebook 01's figure helpers: the dimension sweep and the semantic-gap stages."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402

from sar.plots.anchor_sweep import plot_anchor_sweep  # noqa: E402
from sar.plots.semantic_gap import plot_gap_stages  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_anchor_sweep_has_both_panels_and_one_legend_with_distinct_entries():
    rows = [{"anchors": init, "D": dim, "seed": seed, "mean_abs_cosine": 1 / dim,
             "min_angle_deg": 90 - 10 / dim} for init in ("gaussian", "hypersphere")
            for dim in (2, 8, 32) for seed in range(2)]
    fig = plot_anchor_sweep(pd.DataFrame(rows), num_classes=4,
                            expected=([2, 8, 32], [0.5, 0.1, 0.05]), legend_title="spread")
    left, right = fig.axes
    assert left.get_title() == "Mean |cosine| of 4 anchors"
    assert right.get_ylabel() == "min pairwise angle (degrees)"
    assert all(ax.get_legend() is None for ax in fig.axes)
    (legend,) = fig.legends
    labels = [text.get_text() for text in legend.get_texts()]
    assert len(labels) == len(set(labels))
    orthogonal_label = "orthogonal: |cosine| 0, angle 90° (needs D ≥ C = 4)"
    assert {"gaussian", "hypersphere", "sqrt(2 / (pi D))", orthogonal_label} <= set(labels)
    styles = {label: (handle.get_linestyle(), handle.get_color())
              for label, handle in zip(labels, legend.legend_handles, strict=True)
              if label in ("sqrt(2 / (pi D))", orthogonal_label)}
    assert styles["sqrt(2 / (pi D))"] != styles[orthogonal_label]
    for ax, level in ((left, 0.0), (right, 90.0)):  # both panels, on the grid from D = 8
        (orthogonal,) = [line for line in ax.get_lines() if line.get_label().startswith("orth")]
        assert list(orthogonal.get_xdata()) == [8, 32]  # no 4 orthogonal anchors in D = 2
        assert list(orthogonal.get_ydata()) == [level, level]
    assert [t.get_text() for t in right.get_xticklabels()] == ["2", "8", "32"]


def test_gap_stages_draws_a_dot_per_seed_and_class_and_a_mean_per_class():
    names = ["a", "b", "c"]
    rng = np.random.default_rng(0)
    stages = ["raw", "trained"]
    own = {stage: rng.uniform(size=(4, 3)) for stage in stages}
    margin = {stage: rng.uniform(-1, 1, size=(4, 3)) for stage in stages}
    fig = plot_gap_stages(own, margin, {"raw": (0.0, -0.1), "trained": (0.3, -0.1)}, names)
    left, right = fig.axes
    # per stage and class: one scatter of the seeds and one of the mean
    assert len(left.collections) == len(stages) * (2 * len(names) + 1)
    dots = [c for c in left.collections if isinstance(c, PathCollection)]
    means = [c for c in dots if len(c.get_offsets()) == 1]
    assert len(dots) - len(means) == len(stages) * len(names)  # the per-seed scatters
    assert len(means) == len(stages) * len(names)
    assert np.isclose(means[0].get_offsets()[0][1], own["raw"][:, 0].mean())
    assert [t.get_text() for t in right.get_xticklabels()] == stages
    labels = [text.get_text() for text in fig.legends[0].get_texts()]
    assert labels == [*names, "chance: random direction"]
    with pytest.raises(ValueError, match="same stages"):
        plot_gap_stages(own, {"raw": margin["raw"]}, {"raw": (0, 0)}, names)
