"""Smoke and content tests for sar.plots on the non-interactive Agg backend."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from sar.plots import (  # noqa: E402
    class_palette,
    colorize_mask,
    paired_gaps,
    plot_anchor_cosines,
    plot_embedding,
    plot_paired_gaps,
    plot_per_class,
    plot_per_class_seeds,
    plot_segmentation_overlay,
    plot_sweep,
    plot_training_curves,
    t_half_width,
    use_style,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_use_style_is_idempotent():
    use_style()
    first = dict(plt.rcParams)
    use_style()
    assert dict(plt.rcParams) == first
    assert tuple(plt.rcParams["figure.figsize"]) == (6.4, 4.4)


def test_class_palette_stable_and_background_black():
    assert class_palette(5) == class_palette(12)[:5]
    seg = class_palette(5, background_index=0)
    assert seg[0] == (0.0, 0.0, 0.0) and seg[1:] == class_palette(5)[1:]
    assert len(set(class_palette(30))) == 30


def test_anchor_heatmap_data_is_cosine_matrix():
    anchors = torch.randn(5, 16, generator=_gen())
    unit = torch.nn.functional.normalize(anchors.double(), dim=1)
    expected = (unit @ unit.T).numpy()
    ax = plot_anchor_cosines(anchors, class_names=list("abcde"))
    assert isinstance(ax, Axes)
    np.testing.assert_allclose(ax.images[0].get_array(), expected, atol=1e-12)
    assert ax.images[0].get_clim() == (-1.0, 1.0)
    assert [t.get_text() for t in ax.get_xticklabels()] == list("abcde")
    assert ax.get_title()


def test_anchor_heatmap_accepts_cosine_matrix():
    cos = np.array([[1.0, -0.5], [-0.5, 1.0]])
    _, ax = plt.subplots()
    assert plot_anchor_cosines(cos, ax=ax, is_cosine=True) is ax
    np.testing.assert_allclose(ax.images[0].get_array(), cos)
    with pytest.raises(ValueError, match="square"):
        plot_anchor_cosines(np.ones((2, 3)), is_cosine=True)


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_embedding_draws_one_star_per_anchor(method):
    num_classes, dim = 4, 8
    anchors = torch.randn(num_classes, dim, generator=_gen(1)) * 3
    labels = torch.arange(num_classes).repeat(15)
    feats = anchors[labels] + torch.randn(len(labels), dim, generator=_gen(2))
    ax = plot_embedding(feats, labels, anchors=anchors, method=method)
    assert isinstance(ax, Axes)
    stars = [line for line in ax.get_lines() if line.get_marker() == "*"]
    assert len(stars) == num_classes
    assert all(line.get_markeredgecolor() == "black" for line in stars)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["0", "1", "2", "3", "anchor"]
    assert ax.get_xlabel() and ax.get_ylabel()


def test_a_dark_class_gets_a_white_edged_star_so_it_shows_on_its_own_points():
    anchors = torch.randn(3, 4, generator=_gen(1))
    labels = torch.arange(3).repeat(10)
    ax = plot_embedding(anchors[labels], labels, anchors=anchors, background_index=0)
    stars = [line for line in ax.get_lines() if line.get_marker() == "*"]
    assert [line.get_markeredgecolor() for line in stars] == ["white", "black", "black"]


def test_log_count_ticks_are_plain_numbers_with_separators():
    from sar.plots.style import readable_log_axis

    _, ax = plt.subplots()
    ax.plot([1, 2], [40_000, 5_000_000])
    ax.set_yscale("log")
    readable_log_axis(ax.yaxis)
    ax.figure.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert "100,000" in labels and "1,000,000" in labels
    assert not any("e+" in label for label in labels)


def test_embedding_subsamples_deterministically():
    feats = np.random.default_rng(0).normal(size=(200, 5))
    labels = np.repeat(np.arange(4), 50)
    a = plot_embedding(feats, labels, max_points=50, seed=3)
    b = plot_embedding(feats, labels, max_points=50, seed=3)
    offsets_a = np.concatenate([c.get_offsets() for c in a.collections])
    offsets_b = np.concatenate([c.get_offsets() for c in b.collections])
    assert len(offsets_a) == 50
    np.testing.assert_array_equal(offsets_a, offsets_b)
    with pytest.raises(ValueError, match="method"):
        plot_embedding(feats, labels, method="umap")


def test_training_curves_with_smoothing_and_gate_column():
    steps = np.arange(50)
    history = pd.DataFrame(
        {
            "step": steps,
            "loss": np.exp(-steps / 10) + 0.01 * np.random.default_rng(0).normal(size=50),
            "gate_opened": (steps > 20).astype(int),
            "val_acc": np.where(steps % 10 == 0, steps / 50, np.nan),
        }
    )
    ax = plot_training_curves(history, ["loss", "gate_opened", "val_acc"], smooth=5)
    assert isinstance(ax, Axes)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [
        "loss (trailing mean over 5 logged steps)",
        "gate opened",  # raw column names become labels
        "val_acc (trailing mean over 5 logged steps)",
    ]
    # Lines: loss raw, loss smoothed, gate (never smoothed), val_acc raw, val_acc smoothed.
    lines = ax.get_lines()
    assert len(lines) == 5
    assert lines[2].get_drawstyle() == "steps-post"
    np.testing.assert_array_equal(lines[2].get_ydata(), history["gate_opened"])
    assert len(lines[3].get_xdata()) == 5  # NaN rows of the sparse column dropped
    with pytest.raises(KeyError, match="nope"):
        plot_training_curves(history, ["nope"])


def test_per_class_bars_ordered_by_counts_descending():
    counts = np.array([5, 100, 20, 50])
    values = np.array([0.1, 0.9, 0.3, 0.6])
    ax = plot_per_class(values, counts, class_names=list("abcd"), label="SAR")
    bars = sorted(ax.patches, key=lambda p: p.get_x())
    assert [b.get_height() for b in bars] == [0.9, 0.6, 0.3, 0.1]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["b", "d", "c", "a"]
    twin = [other for other in ax.figure.axes if other is not ax][0]
    np.testing.assert_array_equal(twin.get_lines()[0].get_ydata(), [100, 50, 20, 5])


@pytest.mark.parametrize(("counts", "log"), [([5, 100, 20], True), ([0, 100, 20], False)])
def test_per_class_count_axis_says_log_only_when_it_is_log(counts, log):
    ax = plot_per_class(np.array([0.1, 0.9, 0.3]), np.array(counts))
    twin = [other for other in ax.figure.axes if other is not ax][0]
    assert (twin.get_yscale() == "log") is log
    assert ("(log scale)" in twin.get_ylabel()) is log
    plt.close("all")


def test_per_class_log_values_and_the_count_axis_label():
    ax = plot_per_class(np.array([0.5, 50.0, 5.0]), np.array([5, 100, 20]), log_values=True,
                        counts_label="training pixels per class")
    twin = [other for other in ax.figure.axes if other is not ax][0]
    assert ax.get_yscale() == "log"
    assert twin.get_ylabel() == "training pixels per class (log scale)"
    assert plot_per_class(np.array([0.1, 0.2]), np.array([1, 2])).get_yscale() == "linear"
    plt.close("all")


def test_per_class_without_the_counts_line_keeps_the_order_and_one_axes():
    ax = plot_per_class({"pixels": np.array([0.1, 0.6, 0.3]), "pull": np.array([0.5, 0.2, 0.3])},
                        np.array([1, 6, 3]), class_names=list("abc"), counts_line=False)
    assert ax.figure.axes == [ax]  # no twin axis
    assert [t.get_text() for t in ax.get_xticklabels()] == ["b", "c", "a"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["pixels", "pull"]
    plt.close("all")


def test_per_class_grouped_bars_for_several_methods():
    counts = torch.tensor([3, 30, 10])
    methods = {"CE": torch.tensor([0.2, 0.8, 0.5]), "SAR": torch.tensor([0.3, 0.7, 0.6])}
    ax = plot_per_class(methods, counts)
    assert len(ax.patches) == 6
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["CE", "SAR", "training count"]
    sar_bars = sorted(ax.containers[1], key=lambda p: p.get_x())
    assert [round(b.get_height(), 6) for b in sar_bars] == [0.7, 0.6, 0.3]


@pytest.mark.parametrize("with_pred", [True, False])
def test_segmentation_overlay(with_pred):
    g = _gen(3)
    image = torch.randn(3, 12, 16, generator=g)
    mask = torch.randint(0, 4, (12, 16), generator=g)
    mask[0, :4] = 255
    pred = torch.randint(0, 4, (12, 16), generator=g) if with_pred else None
    fig = plot_segmentation_overlay(
        image,
        mask,
        pred,
        num_classes=4,
        class_names=["bg", "a", "b", "c"],
        mean=(0.5, 0.5, 0.5),
        std=(0.2, 0.2, 0.2),
    )
    assert isinstance(fig, Figure)
    assert len(fig.axes) == (3 if with_pred else 2)
    shown_mask = fig.axes[1].images[0].get_array()
    np.testing.assert_array_equal(shown_mask[0, 0], [1.0, 1.0, 1.0])  # ignore -> white
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["bg", "a", "b", "c", "ignore"]


def test_colorize_mask_background_black_and_range_check():
    rgb = colorize_mask(np.array([[0, 1], [255, 2]]), num_classes=3)
    np.testing.assert_array_equal(rgb[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(rgb[1, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="mask values"):
        colorize_mask(np.array([[5]]), num_classes=3)


def test_sweep_error_bars_equal_std_over_seeds():
    rows = [
        ("CE", 0.1, 0, 1.0),
        ("CE", 0.1, 1, 3.0),
        ("CE", 0.1, 2, 5.0),
        ("CE", 1.0, 0, 2.0),
        ("CE", 1.0, 1, 2.0),
        ("CE", 1.0, 2, 8.0),
        ("SAR", 0.1, 0, 4.0),
        ("SAR", 0.1, 1, 6.0),
        ("SAR", 0.1, 2, 5.0),
        ("SAR", 1.0, 0, 7.0),
        ("SAR", 1.0, 1, 9.0),
        ("SAR", 1.0, 2, 8.0),
    ]
    df = pd.DataFrame(rows, columns=["method", "lam", "seed", "acc"])
    ax = plot_sweep(df, x="lam", y="acc", hue="method", logx=True)
    containers = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(containers) == 2
    for container, method in zip(containers, ["CE", "SAR"], strict=True):
        mine = df[df.method == method]
        expected_mean = [mine[mine.lam == v].acc.mean() for v in (0.1, 1.0)]
        expected_std = [np.std(mine[mine.lam == v].acc, ddof=1) for v in (0.1, 1.0)]
        line, _, (bars,) = container.lines
        np.testing.assert_allclose(line.get_ydata(), expected_mean)
        half = [(seg[1, 1] - seg[0, 1]) / 2 for seg in bars.get_segments()]
        np.testing.assert_allclose(half, expected_std)
    assert "mean ± std over 3 seeds" in ax.get_legend().get_title().get_text()
    assert ax.get_xscale() == "log"


def test_sweep_range_bars_span_min_to_max_and_stay_in_bounds():
    df = pd.DataFrame({"method": ["CE"] * 3, "D": [2] * 3, "seed": [0, 1, 2],
                       "angle": [0.5, 1.0, 9.0]})  # std 4.6 > mean - min: ± std would cross 0
    ax = plot_sweep(df, x="D", y="angle", hue="method", spread="range")
    (container,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    _, _, (bars,) = container.lines
    (segment,) = bars.get_segments()
    np.testing.assert_allclose(segment[:, 1], [0.5, 9.0])
    assert "mean and min–max over 3 seeds" in ax.get_legend().get_title().get_text()
    # equal values whose mean comes out a hair below them: no negative bar
    same = pd.DataFrame({"method": ["CE"] * 3, "D": [9] * 3, "angle": [98.08353387762301] * 3})
    plot_sweep(same, x="D", y="angle", hue="method", spread="range")
    with pytest.raises(ValueError, match="spread"):
        plot_sweep(df, x="D", y="angle", hue="method", spread="iqr")


def test_sweep_panels_draw_each_metric_with_one_shared_legend():
    from sar.plots import plot_sweep_panels

    df = pd.DataFrame({"method": ["ce", "ce", "sar", "sar"], "factor": [1, 10, 1, 10],
                       "acc": [0.9, 0.7, 0.9, 0.8], "few": [0.8, 0.3, 0.8, 0.5]})
    fig = plot_sweep_panels(df, "factor", {"acc": ("Overall", "accuracy (fraction)"),
                                           "few": ("Few-shot", "few-shot accuracy (fraction)")},
                            hue="method", logx=True, xlabel="imbalance factor")
    left, right = fig.axes
    assert [left.get_title(), right.get_title()] == ["Overall", "Few-shot"]
    assert right.get_ylabel() == "few-shot accuracy (fraction)"
    assert left.get_xlabel() == right.get_xlabel() == "imbalance factor"
    np.testing.assert_allclose(right.lines[-1].get_ydata(), [0.8, 0.5])  # SAR's few-shot line
    assert left.get_legend() is None and right.get_legend() is None
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["CE", "SAR"]
    with pytest.raises(ValueError, match="panels is empty"):
        plot_sweep_panels(df, "factor", {}, hue="method")
    plt.close(fig)


def test_plot_bars_heights_and_error_bars_are_mean_and_std_over_seeds():
    from sar.plots import plot_bars

    df = pd.DataFrame({"method": ["a", "a", "b", "b"], "group": ["g"] * 4,
                       "seed": [0, 1, 0, 1], "acc": [0.5, 0.7, 0.8, 0.9]})
    ax = plot_bars(df, "method", "acc")
    heights = [patch.get_height() for patch in ax.patches]
    np.testing.assert_allclose(heights, [0.6, 0.85])
    errorbar = next(c for c in ax.containers if isinstance(c, ErrorbarContainer))
    segments = errorbar.lines[2][0].get_segments()
    spans = [seg[1][1] - seg[0][1] for seg in segments]
    expected = [2 * np.std([0.5, 0.7], ddof=1), 2 * np.std([0.8, 0.9], ddof=1)]
    np.testing.assert_allclose(spans, expected)
    ax2 = plot_bars(df, "group", "acc", hue="method", horizontal=True)
    widths = [patch.get_width() for patch in ax2.patches]
    np.testing.assert_allclose(widths, [0.6, 0.85])
    plt.close("all")


def test_horizontal_bars_keep_the_first_category_on_top_on_shared_axes():
    from sar.plots import plot_bars

    df = pd.DataFrame({"setting": ["first", "second", "third"], "seed": [0] * 3,
                       "acc": [0.1, 0.2, 0.3]})
    _, axes = plt.subplots(1, 2, sharey=True)
    for ax in axes:  # toggling the inversion twice on a shared axis used to undo it
        plot_bars(df, "setting", "acc", ax=ax, horizontal=True)
    axes[0].figure.canvas.draw()
    assert all(ax.yaxis_inverted() for ax in axes)
    labels = {tick.get_text(): y for tick, y in zip(axes[0].get_yticklabels(),
                                                    axes[0].get_yticks(), strict=True)}
    assert labels == {"first": 0, "second": 1, "third": 2}
    plt.close("all")


def test_metric_curves_mean_band_and_stable_colours():
    from matplotlib.colors import to_rgb

    from sar.plots import plot_metric_curves

    df = pd.DataFrame({
        "method": ["a"] * 4 + ["b"] * 4 + ["c"] * 2,
        "seed": [0, 0, 1, 1] * 2 + [0, 0],
        "epoch": [0, 1] * 5,
        "nc1": [4.0, 2.0, 6.0, 1.0, 3.0, 1.0, 3.0, 3.0, 5.0, 4.0],
        "cos": [np.nan] * 4 + [0.5, 0.6, 0.7, 0.8, 0.1, 0.2],
    })
    ax = plot_metric_curves(df, "nc1", hue_order=["a", "b", "c"])
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["a", "b", "c"]
    np.testing.assert_allclose(lines[0].get_ydata(), [5.0, 1.5])
    np.testing.assert_allclose(lines[1].get_ydata(), [3.0, 2.0])
    # one band for each level with two seeds, none for the single-run level "c"
    assert len(ax.collections) == 2
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    std0 = np.std([4.0, 6.0], ddof=1)
    std1 = np.std([2.0, 1.0], ddof=1)
    assert band.max() == pytest.approx(5.0 + std0) and band.min() == pytest.approx(1.5 - std1)
    # an all-NaN level draws nothing, and colours follow hue_order, not what is drawn
    ax2 = plot_metric_curves(df, "cos", hue_order=["a", "b", "c"], linestyle="--",
                             label_suffix=" (other)")
    drawn = ax2.get_lines()
    assert [line.get_label() for line in drawn] == ["b (other)", "c (other)"]
    assert to_rgb(drawn[0].get_color()) == to_rgb(lines[1].get_color())
    assert drawn[0].get_linestyle() == "--"
    assert "mean ± std over 1–2 runs" in ax2.get_title()
    plt.close("all")


def test_value_histograms_shared_bins_and_legend_facts():
    from sar.plots import plot_value_histograms

    relu = torch.tensor([0.0, 0.0, 1.0, 2.0])
    gauss = torch.tensor([-1.0, 0.5, 1.5, 3.0])
    ax = plot_value_histograms({"relu": relu, "gauss": gauss}, bins=8, logy=False)
    assert len(ax.patches) == 2  # one step outline per sample
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels[0] == "relu: n=4, 0 % < 0, 50 % = 0"
    assert labels[1] == "gauss: n=4, 25 % < 0, 0 % = 0"
    # shared bins of width 0.5 covering the overall range [-1, 3], with 0 as an edge
    xs = ax.patches[0].get_xy()[:, 0]
    assert xs.min() == pytest.approx(-1.0) and xs.max() == pytest.approx(3.5)
    assert np.isclose(np.unique(xs.round(9)), 0.0).any()
    assert plot_value_histograms({"a": gauss}).get_yscale() == "log"
    with pytest.raises(ValueError):
        plot_value_histograms({})


def test_anchor_probabilities_lines_thresholds_and_gate():
    from sar.plots import plot_anchor_probabilities

    probs = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.85, 0.9], [0.95, 0.92, 0.91]])
    ax = plot_anchor_probabilities(probs, steps=[0, 10, 20], gate_step=20,
                                   class_names=["a", "b", "c"])
    lines = ax.get_lines()
    np.testing.assert_allclose(lines[1].get_ydata(), [0.2, 0.85, 0.92])
    np.testing.assert_allclose(lines[1].get_xdata(), [0, 10, 20])
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels == ["a", "b", "c", "filter_conf = 0.9", "update_conf = 0.8",
                      "gate opens (step 20)"]
    closed = plot_anchor_probabilities(probs, gate_step=None)
    assert "gate still closed" in closed.get_title()
    with pytest.raises(ValueError):
        plot_anchor_probabilities(probs[0])


def test_anchor_probabilities_highlight_thickens_one_class_in_its_own_colour():
    from sar.plots import class_palette, plot_anchor_probabilities

    probs = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.85, 0.9]])
    names = ["a", "b", "c"]
    plain = plot_anchor_probabilities(probs, class_names=names).get_lines()
    lines = plot_anchor_probabilities(probs, class_names=names, highlight="b").get_lines()
    palette = class_palette(3, class_names=names)
    assert [line.get_color() for line in lines[:3]] == [line.get_color() for line in plain[:3]]
    assert lines[1].get_color() == palette[1]
    assert lines[1].get_linewidth() > plain[1].get_linewidth() > lines[0].get_linewidth()
    assert lines[0].get_alpha() < 1 and lines[1].get_alpha() is None
    with pytest.raises(ValueError, match="highlight"):
        plot_anchor_probabilities(probs, class_names=names, highlight="d")


def test_anchor_probabilities_others_label_greys_the_rest_under_one_entry():
    from sar.plots import class_palette, plot_anchor_probabilities

    probs = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.85, 0.9]])
    names = ["a", "b", "c"]
    ax = plot_anchor_probabilities(probs, class_names=names, highlight="b",
                                   others_label="other 2 classes", xlabel="SGD step")
    lines = ax.get_lines()
    assert lines[1].get_color() == class_palette(3, class_names=names)[1]
    assert lines[0].get_color() == lines[2].get_color() == "0.65"
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels[:2] == ["other 2 classes", "b"] and "a" not in labels and "c" not in labels
    assert ax.get_xlabel() == "SGD step"
    with pytest.raises(ValueError, match="others_label"):
        plot_anchor_probabilities(probs, class_names=names, others_label="rest")


def test_segmentation_comparison_rows_columns_and_accuracy_titles():
    from sar.plots import plot_segmentation_comparison

    g = _gen(5)
    images = torch.rand(2, 3, 8, 10, generator=g)
    masks = torch.randint(0, 3, (2, 8, 10), generator=g)
    masks[1, 0, 0] = 255
    perfect, wrong = masks.clone(), (masks + 1) % 3
    perfect[1, 0, 0], wrong[1, 0, 0] = 0, 0
    fig = plot_segmentation_comparison(images, masks, {"A": perfect, "B": wrong},
                                       num_classes=3, class_names=["bg", "x", "y"])
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2 * 4
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[2] == "A\n(pixel acc. 100.0 %)" and titles[3] == "B\n(pixel acc. 0.0 %)"
    assert titles[6].endswith("(pixel acc. 100.0 %)")  # the ignored pixel is not counted
    np.testing.assert_array_equal(fig.axes[5].images[0].get_array()[0, 0], [1.0, 1.0, 1.0])
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["bg", "x", "y", "ignore"]
    with pytest.raises(ValueError, match="shape"):
        plot_segmentation_comparison(images, masks, {"A": perfect[:, :4]})
    titled = plot_segmentation_comparison(images, masks, {"A": perfect}, title="T")
    titled.canvas.draw()
    top_of_axes = max(ax.get_tightbbox().y1 for ax in titled.axes)
    assert titled.texts[0].get_window_extent().y0 >= top_of_axes  # title above the panels


def test_plot_target_distances_draws_every_point_in_its_class_colour_under_a_shared_limit():
    from sar.metrics import target_distances
    from sar.plots import class_palette, plot_target_distances

    g = torch.Generator().manual_seed(0)
    targets = torch.randn(3, 5, generator=g)
    labels = torch.arange(60) % 3
    features = targets[labels] + 0.1 * torch.randn(60, 5, generator=g)
    own, nearest = target_distances(features, labels, targets)
    ax = plot_target_distances(own, nearest, labels, class_names=["a", "b", "c"], limit=2.0)
    (points,) = ax.collections  # one scatter, classes interleaved: none drawn over the rest
    assert len(points.get_offsets()) == 60
    assert ax.get_xlim() == (0, 2.0) and ax.get_ylim() == (0, 2.0)
    palette = np.array(class_palette(3, None, ["a", "b", "c"]))[:, :3]
    drawn = points.get_offsets()
    for (x, y), colour in zip(drawn, points.get_facecolor(), strict=True):
        i = int(np.argmin(np.abs(own.numpy() - x) + np.abs(nearest.numpy() - y)))
        assert np.allclose(colour[:3], palette[labels[i]])
    assert not np.array_equal(np.asarray(drawn)[:, 0], own.numpy())  # shuffled order
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b", "c",
                                                                   "own = nearest"]
    plt.close(ax.figure)


def test_metric_curves_take_colours_for_some_levels_and_keep_the_rest():
    from matplotlib.colors import to_rgb

    from sar.plots import level_colors, plot_metric_curves

    df = pd.DataFrame({"run": ["x", "x", "y", "y"], "epoch": [0, 1, 0, 1],
                       "acc": [0.1, 0.2, 0.3, 0.4]})
    ax = plot_metric_curves(df, "acc", hue="run", colors={"y": "#123456"})
    x_line, y_line = ax.get_lines()
    assert to_rgb(y_line.get_color()) == to_rgb("#123456")
    assert to_rgb(x_line.get_color()) == to_rgb(level_colors(["x", "y"])[0])
    plt.close(ax.figure)


def _paired_runs() -> pd.DataFrame:
    # two factors x three seeds; each method's value is CE's plus a known per-seed gap
    rows = []
    for factor in (10, 100):
        for seed in range(3):
            base = 0.5 + 0.1 * seed + 0.01 * factor / 10  # seed noise shared by every method
            rows += [{"method": "ce", "imbalance_factor": factor, "seed": seed, "acc": base},
                     {"method": "sar", "imbalance_factor": factor, "seed": seed,
                      "acc": base + 0.01 * (seed + 1)},
                     {"method": "logit_adjusted", "imbalance_factor": factor, "seed": seed,
                      "acc": base - 0.02}]
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # pairing must not rely on order


def test_paired_gaps_subtract_the_reference_of_the_same_seed_and_setting():
    gaps = paired_gaps(_paired_runs(), "acc", "ce", "imbalance_factor", scale=100.0)
    sar = gaps[gaps["method"] == "sar"].sort_values(["imbalance_factor", "seed"])
    np.testing.assert_allclose(sar["gap"], [1.0, 2.0, 3.0, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(gaps.loc[gaps["method"] == "logit_adjusted", "gap"], -2.0)
    assert "ce" not in set(gaps["method"])


def test_paired_gaps_refuse_an_unknown_reference_and_ambiguous_rows():
    runs = _paired_runs()
    with pytest.raises(ValueError, match="not a value"):
        paired_gaps(runs, "acc", "prototype", "imbalance_factor")
    with pytest.raises(ValueError, match="several rows"):
        paired_gaps(pd.concat([runs, runs]), "acc", "ce", "imbalance_factor")


def test_paired_gap_plot_draws_every_seed_the_mean_and_std_and_the_zero_line():
    ax = plot_paired_gaps(_paired_runs(), "acc", "ce", "imbalance_factor")
    dots = [c for c in ax.collections if c.get_offsets().shape[0] == 3]
    assert len(dots) == 4  # two methods x two factors, one dot per seed
    sar_dots = sorted(dots[0].get_offsets()[:, 1])
    np.testing.assert_allclose(sar_dots, [1.0, 2.0, 3.0])
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    mean_y = bars[0].lines[0].get_ydata()[0]
    assert mean_y == pytest.approx(2.0)
    low, high = bars[0].lines[2][0].get_segments()[0][:, 1]
    assert (high - low) / 2 == pytest.approx(1.0)  # std (ddof=1) of 1, 2, 3
    assert any(line.get_ydata()[0] == 0 for line in ax.get_lines())
    assert [t.get_text() for t in ax.get_xticklabels()] == ["10", "100"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["SAR", "logit-adjusted CE"]
    plt.close("all")


def test_paired_gap_plot_shades_the_noise_band_around_zero_only_when_asked():
    plain = plot_paired_gaps(_paired_runs(), "acc", "ce", "imbalance_factor")
    assert not plain.patches
    ax = plot_paired_gaps(_paired_runs(), "acc", "ce", "imbalance_factor", noise_band=0.24)
    (band,) = ax.patches
    assert (band.get_y(), band.get_y() + band.get_height()) == pytest.approx((-0.24, 0.24))
    assert ax.get_legend().get_texts()[0].get_text() == "noise band (± 0.24)"
    named = plot_paired_gaps(_paired_runs(), "acc", "ce", "imbalance_factor", noise_band=0.24,
                             band_label="drift")
    assert named.get_legend().get_texts()[0].get_text() == "drift (± 0.24)"
    with pytest.raises(ValueError, match="noise_band"):
        plot_paired_gaps(_paired_runs(), "acc", "ce", "imbalance_factor", noise_band=-1.0)
    plt.close("all")


def test_t_half_width_is_the_student_t_interval_of_a_mean():
    from scipy import stats

    assert t_half_width(1.0, 3) == pytest.approx(4.302653 / np.sqrt(3), rel=1e-6)  # t(.975, 2)
    assert t_half_width(2.0, 10, confidence=0.9) == pytest.approx(
        stats.t.ppf(0.95, 9) * 2.0 / np.sqrt(10))
    assert np.isnan(t_half_width(1.0, 1))
    with pytest.raises(ValueError, match="confidence"):
        t_half_width(1.0, 3, confidence=95)


def test_paired_gap_plot_draws_the_95_percent_t_interval_when_asked_and_says_so():
    default = plot_paired_gaps(_paired_runs(), "acc", "ce", "imbalance_factor")
    assert default.get_legend().get_title().get_text().endswith("mean ± std)")
    ax = plot_paired_gaps(_paired_runs(), "acc", "ce", "imbalance_factor", interval="t95")
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert bars[0].lines[0].get_ydata()[0] == pytest.approx(2.0)  # SAR's gaps 1, 2, 3
    low, high = bars[0].lines[2][0].get_segments()[0][:, 1]
    assert (low, high) == pytest.approx((2.0 - 2.484138, 2.0 + 2.484138), abs=1e-6)  # 4.303/√3
    assert low < 0 < high  # three agreeing seeds, yet the interval does not exclude zero
    assert ax.get_legend().get_title().get_text().endswith("mean, 95% t-interval)")
    with pytest.raises(ValueError, match="interval"):
        plot_paired_gaps(_paired_runs(), "acc", "ce", "imbalance_factor", interval="sem")
    plt.close("all")


def test_paired_gap_plot_refuses_more_than_five_methods_per_panel():
    runs = _paired_runs()
    extra = pd.concat([runs[runs["method"] == "sar"].assign(method=f"variant {k}")
                       for k in range(4)])
    with pytest.raises(ValueError, match="at most 5"):
        plot_paired_gaps(pd.concat([runs, extra]), "acc", "ce", "imbalance_factor")


def test_per_class_seed_lines_run_head_to_tail_with_mean_and_std_over_seeds():
    counts = [5, 50, 20]  # head is class 1, then 2, then 0
    seeds = np.array([[0.0, 1.0, 2.0], [2.0, 3.0, 6.0]])  # (S=2, C=3)
    ax = plot_per_class_seeds({"sar": seeds}, counts, class_names=["a", "b", "c"])
    bar = next(c for c in ax.containers if isinstance(c, ErrorbarContainer))
    np.testing.assert_allclose(bar.lines[0].get_ydata(), [2.0, 4.0, 1.0])  # b, c, a
    low, high = bar.lines[2][0].get_segments()[1][:, 1]  # class c: 2 and 6, std 2.83
    assert (high - low) / 2 == pytest.approx(np.std([2.0, 6.0], ddof=1))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["b\n(50)", "c\n(20)", "a\n(5)"]
    with pytest.raises(ValueError, match="2 classes"):
        plot_per_class_seeds({"sar": np.zeros((2, 2))}, counts)


def test_per_class_seed_lines_can_draw_the_t_interval():
    seeds = np.array([[1.0, 3.0, 2.0], [1.0, 5.0, 6.0]])  # 2 seeds, counts order b, c, a
    ax = plot_per_class_seeds({"sar": seeds}, [5, 50, 20], interval="t95")
    bar = next(c for c in ax.containers if isinstance(c, ErrorbarContainer))
    low, high = bar.lines[2][0].get_segments()[1][:, 1]  # class c: 2 and 6
    expected = 12.706 * np.std([2.0, 6.0], ddof=1) / np.sqrt(2)  # t(0.975, 1 df) · std / √2
    assert (high - low) / 2 == pytest.approx(expected, rel=1e-4)
    assert ax.get_legend().get_title().get_text() == "mean, 95% t-interval over 2 seeds"
    with pytest.raises(ValueError, match="interval"):
        plot_per_class_seeds({"sar": seeds}, [5, 50, 20], interval="sem")


def test_per_class_seed_lines_can_be_dodged_and_marked_apart():
    counts = [5, 50, 20]
    same = np.array([[1.0, 2.0, 3.0]])  # two methods with identical values: one hides the other
    ax = plot_per_class_seeds({"sar": same, "sar_anchor_ce_only": same}, counts, dodge=0.2,
                              markers=["o", "s"], linestyles=["-", "--"])
    first, second = (c for c in ax.containers if isinstance(c, ErrorbarContainer))
    np.testing.assert_allclose(first.lines[0].get_xdata(), [-0.1, 0.9, 1.9])
    np.testing.assert_allclose(second.lines[0].get_xdata(), [0.1, 1.1, 2.1])
    assert (first.lines[0].get_marker(), second.lines[0].get_marker()) == ("o", "s")
    assert (first.lines[0].get_linestyle(), second.lines[0].get_linestyle()) == ("-", "--")
    with pytest.raises(ValueError, match="1 markers for 2 methods"):
        plot_per_class_seeds({"sar": same, "ce": same}, counts, markers=["o"])
    with pytest.raises(ValueError, match="3 linestyles for 2 methods"):
        plot_per_class_seeds({"sar": same, "ce": same}, counts, linestyles=["-"] * 3)
    plt.close("all")


def test_plot_features_2d_draws_features_as_they_are_with_stars_and_says_what_it_leaves_out():
    from matplotlib.colors import to_rgb

    from sar.plots import class_palette, plot_features_2d

    g = torch.Generator().manual_seed(0)
    targets = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    labels = torch.arange(300) % 3
    features = targets[labels] + 0.3 * torch.randn(300, 2, generator=g)
    features[0] = torch.tensor([100.0, 100.0])  # one far outlier
    names = ["Trouser", "Bag", "my class"]
    ax = plot_features_2d(features, labels, targets, class_names=names, coverage=0.98)
    palette = class_palette(3, None, names)
    assert sum(len(c.get_offsets()) for c in ax.collections) == 300
    for c, collection in enumerate(ax.collections):
        assert to_rgb(collection.get_facecolor()[0]) == to_rgb(palette[c])
    stars = [line for line in ax.get_lines() if line.get_marker() == "*"]
    assert [[line.get_xdata()[0], line.get_ydata()[0]] for line in stars] == targets.tolist()
    assert [to_rgb(line.get_color()) for line in stars] == [to_rgb(p) for p in palette]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert x1 - x0 == pytest.approx(y1 - y0) and ax.get_aspect() == 1.0  # distances read true
    assert x0 < 0 < 4 < x1 and y0 < 0 < 4 < y1 and x1 < 100  # the targets in, the outlier out
    out = ((features[:, 0] < x0) | (features[:, 0] > x1) | (features[:, 1] < y0)
           | (features[:, 1] > y1)).sum().item()
    assert out >= 1
    assert ax.get_title().endswith(f"\n({out} of 300 points outside the view)")
    assert not ax.texts  # the count is in the title: no note over the stars
    assert "outside" not in plot_features_2d(features[1:], labels[1:], targets,
                                             coverage=1.0).get_title()
    with pytest.raises(ValueError, match="plot_embedding"):
        plot_features_2d(torch.randn(5, 3), torch.arange(5) % 3)
    plt.close("all")


def test_plot_feature_grid_has_a_row_per_run_a_column_per_epoch_and_one_legend():
    from sar.plots import plot_feature_grid

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(30) % 3
    features = torch.randn(30, 2, generator=g)
    targets = torch.randn(3, 2, generator=g)
    fig = plot_feature_grid({"CE": {1: (features, labels, targets), 5: (features, labels, targets)},
                             "SAR": {1: (features, labels, None), 5: (features, labels, targets)},
                             "prototypes": {5: (features, labels, targets)}},
                            class_names=["a", "b", "c"],
                            target_names={"CE": "class means", "SAR": "semantic anchors"})
    axes = fig.axes
    assert len(axes) == 6
    assert axes[0].get_title() == "epoch 1" and axes[1].get_title() == "epoch 5"
    assert axes[2].get_title() == "epoch 1\n(no semantic anchors yet)"
    # one title size, whether or not the title carries a note
    assert {axes[i].title.get_fontsize() for i in (0, 1, 2, 3, 5)} == {11}
    assert not axes[4].axison  # prototypes have no epoch-1 panel
    assert axes[2].get_ylabel() == "SAR\nstars: semantic anchors"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b", "c",
                                                                 "target (see row)"]
    assert all(ax.get_legend() is None for ax in axes)
    plt.close(fig)


def test_plot_feature_grid_shares_one_square_view_per_row():
    from sar.plots import plot_feature_grid

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 4
    small, large = torch.randn(40, 2, generator=g), 10 * torch.randn(40, 2, generator=g) + 5
    targets = torch.randn(4, 2, generator=g)
    panels = {"CE": {1: (small, labels, targets), 2: (large, labels, targets)},
              "SAR": {1: (small, labels, None), 2: (small, labels, targets)}}
    own = plot_feature_grid(panels)
    assert own.axes[0].get_xlim() != own.axes[1].get_xlim()  # default: a view per panel
    assert own.texts[0].get_text() == "feature 1 (feature units); each panel has its own scale," \
                                      " equal on both axes"
    fig = plot_feature_grid(panels, share="row")
    for row in (fig.axes[:2], fig.axes[2:]):
        assert row[0].get_xlim() == row[1].get_xlim() and row[0].get_ylim() == row[1].get_ylim()
        (x0, x1), (y0, y1) = row[0].get_xlim(), row[0].get_ylim()
        assert x1 - x0 == pytest.approx(y1 - y0)  # still square: distances read true
    for ax_own, ax_shared in zip(own.axes, fig.axes, strict=True):  # holds each panel's own view
        (a0, a1), (b0, b1) = ax_own.get_xlim(), ax_shared.get_xlim()
        assert b0 <= a0 + 1e-9 and a1 <= b1 + 1e-9
    assert fig.axes[0].get_xlim() != fig.axes[2].get_xlim()  # rows keep their own scales
    assert [ax.yaxis.get_tick_params()["labelleft"] for ax in fig.axes] == [True, False] * 2
    assert {t.get_text() for t in fig.texts} == {
        "feature 1 (feature units); each row has its own scale, equal on both axes",
        "feature 2 (feature units)"}
    mixed = plot_feature_grid(panels, share={"SAR": "row"})  # CE: a view per panel
    assert mixed.axes[0].get_xlim() == own.axes[0].get_xlim() != mixed.axes[1].get_xlim()
    assert mixed.axes[2].get_xlim() == fig.axes[2].get_xlim() == mixed.axes[3].get_xlim()
    assert mixed.texts[0].get_text() == "feature 1 (feature units); each row (CE: each panel)" \
                                        " has its own scale, equal on both axes"
    with pytest.raises(ValueError, match="share"):
        plot_feature_grid(panels, share="column")
    with pytest.raises(ValueError, match="share"):
        plot_feature_grid(panels, share={"CE": "column"})
    plt.close("all")


def test_metric_curves_take_line_styles_and_markers_for_some_levels():
    from sar.plots import plot_metric_curves

    df = pd.DataFrame({"run": ["x", "x", "y", "y"], "epoch": [0, 1, 0, 1],
                       "acc": [0.1, 0.2, 0.3, 0.4]})
    ax = plot_metric_curves(df, "acc", hue="run", linestyles={"y": "--"}, markers={"y": "s"})
    x_line, y_line = ax.get_lines()
    assert (x_line.get_linestyle(), x_line.get_marker()) == ("-", "o")
    assert (y_line.get_linestyle(), y_line.get_marker()) == ("--", "s")
    plt.close(ax.figure)


def test_metric_curves_draw_bands_only_for_the_levels_asked():
    from sar.plots import plot_metric_curves

    df = pd.DataFrame({"run": ["x"] * 4 + ["y"] * 4, "epoch": [0, 0, 1, 1] * 2,
                       "acc": [0.1, 0.2, 0.2, 0.3, 0.3, 0.4, 0.4, 0.5]})
    assert len(plot_metric_curves(df, "acc", hue="run").collections) == 2
    plt.close("all")
    ax = plot_metric_curves(df, "acc", hue="run", bands=["x"])
    assert len(ax.collections) == 1 and len(ax.get_lines()) == 2
    plt.close(ax.figure)
