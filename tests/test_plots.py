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
    plot_anchor_cosines,
    plot_embedding,
    plot_per_class,
    plot_segmentation_overlay,
    plot_sweep,
    plot_training_curves,
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
        "loss (rolling mean, 5 rows)",
        "gate_opened",
        "val_acc (rolling mean, 5 rows)",
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
