"""Notebook 02's collapse tables, figures and the BatchNorm weight-norm test, against
hand-computed values."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import math  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.container import BarContainer, ErrorbarContainer  # noqa: E402

from sar.experiments.collapse import (  # noqa: E402
    cost_table,
    scatter_offset_rows,
    tightness_table,
)
from sar.metrics import nearest_target_summary, target_distances  # noqa: E402
from sar.plots import plot_recipe_costs, plot_scatter_offset  # noqa: E402

COLOURS = {"CE": "C0", "A": "C1", "B": "C2"}


def _final() -> pd.DataFrame:
    return pd.DataFrame({
        "run": ["CE"] * 3 + ["A"] * 3 + ["B"] * 3,
        "seed": [0, 1, 2] * 3,
        "accuracy": [0.80, 0.82, 0.78, 0.81, 0.80, 0.79, 0.30, 0.40, 0.35],
        "target_ratio": [0.05, 0.06, 0.04, 0.10, 0.12, 0.08, 0.9, 1.1, 1.0],
    })


def test_cost_table_gives_paired_points_and_distances():
    table = cost_table(_final())
    assert list(table.index) == ["CE", "A", "B"]
    # A - CE per seed: +1, -2, +1 points: mean 0, std sqrt(3)
    assert table.loc["A", "per seed"] == "+1.0, -2.0, +1.0"
    assert table.loc["A", "minus CE (points)"] == f"+0.0 ± {math.sqrt(3):.1f}"
    assert table.loc["B", "distance to own target"] == "1.000 ± 0.100"
    with pytest.raises(KeyError, match="no run named"):
        cost_table(_final(), reference="nope")


def _clusters(offset: float, spread: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    means = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    labels = torch.arange(300) % 3
    features = means[labels] + spread * torch.randn(300, 2, generator=g)
    return features, labels, means + offset


def test_scatter_offset_rows_split_exactly_and_tightness_table_pairs_by_seed():
    panels = {}
    for seed in (0, 1):
        f, y, t = _clusters(0.0, 0.3, seed)
        panels["CE", seed] = (f, y, t)
        f2, y2, t2 = _clusters(1.0, 0.6, seed)
        panels["A", seed] = (f2, y2, t2)
    panels["B", 0] = (f, y, None)  # no targets yet: left out
    rows = scatter_offset_rows(panels)
    assert set(rows.run) == {"CE", "A"}
    assert np.allclose(rows.total, rows.scatter + rows.offset)
    assert np.allclose(rows.scatter, rows.tightness)
    a = rows[rows.run == "A"]
    assert (a.offset > 0.05).all() and (rows[rows.run == "CE"].offset < 0.01).all()
    table = tightness_table(rows)
    diff = (a.set_index("seed").tightness - rows[rows.run == "CE"].set_index("seed").tightness)
    assert table.loc["A", "minus CE"] == f"{diff.mean():+.3f} ± {diff.std():.3f}"
    assert diff.mean() > 0  # twice the spread: looser


def test_nearest_target_summary_matches_the_per_point_distances():
    f, y, t = _clusters(0.5, 1.2, 0)
    own, nearest = target_distances(f, y, t)
    summary = nearest_target_summary(f, y, t, classes=[1])
    assert summary["nearer_own"] == pytest.approx((nearest > own).double().mean().item())
    assert summary["nearer_own_in_classes"] == pytest.approx(
        (nearest > own)[y == 1].double().mean().item())
    total = own + nearest
    assert summary["sum_spread"] == pytest.approx((total.std() / total.mean()).item())
    assert math.isnan(nearest_target_summary(f, y, t)["nearer_own_in_classes"])


def test_plot_recipe_costs_draws_paired_means_and_marks_a_mean_below_the_floor():
    fig = plot_recipe_costs(_final(), COLOURS, floor=-20)
    left, right = fig.axes
    assert left.get_yscale() == "log"
    bars = [c for c in right.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 1  # B (-45 points) is off the scale, drawn as a triangle
    assert bars[0].lines[0].get_ydata()[0] == pytest.approx(0.0)  # A: +1, -2, +1
    assert any(t.get_text() == "-45.0" for t in right.texts)
    assert right.get_ylim()[0] == -20
    # the bar: A's 95 % t-interval, t(0.975, 2) · std / √3 with std √3, i.e. ± 4.303
    (low, high) = bars[0].lines[2][0].get_segments()[0][:, 1]
    assert (low, high) == pytest.approx((-4.303, 4.303), abs=1e-3)
    assert "95 % t-interval" in right.get_legend().get_texts()[1].get_text()
    plt.close(fig)
    fig = plot_recipe_costs(_final(), COLOURS, floor=-20, interval="std")
    (bar,) = [c for c in fig.axes[1].containers if isinstance(c, ErrorbarContainer)]
    assert bar.lines[2][0].get_segments()[0][:, 1] == pytest.approx([-math.sqrt(3), math.sqrt(3)])
    plt.close(fig)
    with pytest.raises(ValueError, match="interval"):
        plot_recipe_costs(_final(), COLOURS, interval="sem")
    with pytest.raises(ValueError, match="no colour"):
        plot_recipe_costs(_final(), {"CE": "C0"})
    with pytest.raises(ValueError, match="several rows"):
        plot_recipe_costs(pd.concat([_final(), _final()]), COLOURS)


def test_plot_scatter_offset_stacks_the_means_and_clips_a_wrecked_run():
    rows = pd.DataFrame({"run": ["CE", "CE", "A", "A", "B", "B"], "seed": [0, 1] * 3,
                         "scatter": [0.1, 0.1, 0.2, 0.2, 0.3, 0.3],
                         "offset": [0.0, 0.0, 0.1, 0.3, 5.0, 7.0]})
    rows["total"] = rows.scatter + rows.offset
    ax = plot_scatter_offset(rows, COLOURS)
    solid, hatched = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [p.get_height() for p in solid] == pytest.approx([0.1, 0.2, 0.3])
    assert [p.get_height() for p in hatched] == pytest.approx([0.0, 0.2, 6.0])
    assert ax.get_ylim()[1] == pytest.approx(1.3 * 0.4)
    assert any(t.get_text() == "6.30" for t in ax.texts)
    # the clipped value is written dark, on a white box, not in the bar's own colour
    (clipped,) = [t for t in ax.texts if t.get_text() == "6.30"]
    assert clipped.get_color() == "0.1" and clipped.get_bbox_patch() is not None
    # the hatching: a darker shade of the run's colour, opaque, over the pale fill
    assert hatched[1].get_edgecolor()[3] == 1.0
    assert hatched[1].get_facecolor()[3] == pytest.approx(0.35)
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="no rows"):
        plot_scatter_offset(rows.iloc[:0], COLOURS)


def test_hollow_targets_draw_outlined_stars_over_the_dots():
    from matplotlib.colors import to_rgb

    from sar.plots import class_palette, plot_feature_grid, plot_features_2d

    g = torch.Generator().manual_seed(0)
    targets = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    labels = torch.arange(60) % 3
    features = 0.1 * torch.randn(60, 2, generator=g)  # every class on the first star
    palette = class_palette(3)
    for hollow in (False, True):
        ax = plot_features_2d(features, labels, targets, hollow_targets=hollow)
        stars = [line for line in ax.get_lines() if line.get_marker() == "*"]
        assert [[line.get_xdata()[0], line.get_ydata()[0]] for line in stars] == targets.tolist()
        assert [to_rgb(line.get_markeredgecolor() if hollow else line.get_markerfacecolor())
                for line in stars] == [to_rgb(p) for p in palette]  # the class's colour
        dots = min(collection.get_zorder() for collection in ax.collections)
        assert all(line.get_zorder() > dots for line in stars)  # never hidden by a cloud
        if hollow:  # an outline with a white rim: the cloud under a star stays visible
            assert all(line.get_markerfacecolor() == "none" for line in stars)
            assert all(line.get_path_effects() for line in stars)
    fig = plot_feature_grid({"SAR": {1: (features, labels, targets)}}, hollow_targets=True)
    assert all(line.get_markerfacecolor() == "none" for line in fig.axes[0].get_lines())
    assert fig.legends[0].legend_handles[-1].get_markerfacecolor() == "none"
    plt.close("all")


def test_plot_feature_step_draws_each_move_to_scale_from_before_to_after():
    from sar.plots import plot_feature_step

    before = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    after = torch.tensor([[3.0, 0.0], [1.0, -2.0], [0.5, 1.0]])
    targets = torch.tensor([[4.0, 4.0], [-1.0, 0.0]])
    ax = plot_feature_step(before, after, torch.tensor([0, 1, 1]), targets)
    quiver = next(c for c in ax.collections if c.__class__.__name__ == "Quiver")
    assert np.allclose(np.c_[quiver.U, quiver.V], (after - before).numpy())  # one arrow a move
    assert np.allclose(quiver.get_offsets(), before.numpy())  # starting where the feature was
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert math.isclose(x1 - x0, y1 - y0)  # one scale on both axes
    for x, y in torch.cat([before, after, targets]).tolist():  # both ends and every star shown
        assert x0 < x < x1 and y0 < y < y1
    assert sum(line.get_marker() == "*" for line in ax.get_lines()) == len(targets)
    with pytest.raises(ValueError, match="both be"):
        plot_feature_step(before, after[:2], torch.tensor([0, 1, 1]))
    plt.close("all")


def test_strength_styles_shade_the_method_and_grey_the_control():
    from matplotlib.colors import rgb_to_hsv, to_rgb

    from sar.plots import method_color, strength_styles

    labels = ["SAR, 0", "SAR, 0.1", "SAR, 1", "SAR, 10"]
    style = strength_styles(labels, control="SAR, 0")
    assert set(style) == {"colors", "linestyles", "markers"}
    for part in style.values():
        assert list(part) == labels
        assert len(set(map(str, part.values()))) == len(labels)  # every run told apart
    grey = to_rgb(style["colors"]["SAR, 0"])
    assert max(grey) - min(grey) < 1e-9  # the control is grey, not one more shade
    values = [rgb_to_hsv(to_rgb(style["colors"][label]))[2] for label in labels[1:]]
    assert values == sorted(values, reverse=True)  # light to dark as the strength grows
    hue = rgb_to_hsv(to_rgb(method_color("SAR")))[0]
    assert all(abs(rgb_to_hsv(to_rgb(style["colors"][label]))[0] - hue) < 0.05
               for label in labels[1:])  # SAR's own hue
    with pytest.raises(ValueError, match="control"):
        strength_styles(labels, control="CE")
    plt.close("all")
