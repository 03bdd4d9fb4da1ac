"""One look: fixed method and class colours across plots, readable labels, the SAR diagram."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.container import BarContainer, ErrorbarContainer  # noqa: E402

from sar import plots  # noqa: E402
from sar.data import SCENE_CLASSES  # noqa: E402
from sar.experiments import report  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def seeded_rows(methods, xs=(1, 10, 50, 100), seeds=(0, 1)) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame([{"method": m, "imbalance_factor": x, "seed": s,
                          "accuracy": rng.uniform(0.5, 0.9), "few_accuracy": rng.uniform(0, 0.5)}
                         for m in methods for x in xs for s in seeds])


def sweep_colours(ax) -> dict[str, tuple]:
    return {c.get_label(): to_rgb(c.lines[0].get_color()) for c in ax.containers
            if isinstance(c, ErrorbarContainer)}


def bar_colours(ax) -> dict[str, tuple]:
    return {c.get_label(): to_rgb(c.patches[0].get_facecolor()) for c in ax.containers
            if isinstance(c, BarContainer)}


def test_every_method_has_its_own_fixed_colour_and_label() -> None:
    methods = ["ce", "sar", "sar_tuned", "logit_adjusted", "sar_logit_adjusted", "prototype",
               "center", "etf", "etf_dr", "sar_anchor_ce_only", "sar_class_pull",
               "logit_adjusted_tau0.25", "logit_adjusted_tau0.5", "sar_logit_adjusted_tau0.5"]
    assert set(plots.METHOD_COLORS) == set(methods) == set(plots.METHOD_LABELS)
    assert len({plots.METHOD_COLORS[m] for m in methods}) == len(methods)
    for spelling, name in [("CE", "ce"), ("SAR", "sar"), ("prototypes", "prototype"),
                           ("CE run", "ce"), ("SAR prediction", "sar"),
                           ("SAR + logit-adjusted CE", "sar_logit_adjusted"),
                           ("SAR (both)", "sar"), ("etf-dr", "etf_dr"),
                           ("logit-adjusted CE, τ 0.5", "logit_adjusted_tau0.5"),
                           ("SAR + logit-adjusted CE, τ 0.5", "sar_logit_adjusted_tau0.5")]:
        assert plots.method_color(spelling) == plots.METHOD_COLORS[name], spelling
    assert plots.canonical_method("task_loss") is None
    with pytest.raises(KeyError, match="not a known method"):
        plots.method_color("Unet + SAR")
    assert plots.method_color("other", default=(0, 0, 0)) == (0, 0, 0)
    # levels that are not methods never take a method's colour when methods are present
    colours = plots.level_colors(["sar", "my idea", "ce", "another idea"])
    assert colours[0] == plots.METHOD_COLORS["sar"] and colours[2] == plots.METHOD_COLORS["ce"]
    assert not {colours[1], colours[3]} & set(plots.METHOD_COLORS.values())
    assert colours[1] != colours[3]


def test_the_same_method_has_the_same_colour_in_every_plot() -> None:
    rows = seeded_rows(["ce", "sar", "logit_adjusted", "prototype"])
    sweep = plots.plot_sweep(rows, "imbalance_factor", "accuracy", "method", logx=True)
    # another plot, other methods, another order, the notebooks' spellings
    shots = seeded_rows(["SAR", "prototypes", "CE"], xs=(100,)).melt(
        id_vars=["method", "seed"], value_vars=["accuracy", "few_accuracy"], var_name="metric")
    bars = plots.plot_bars(shots, "metric", "value", hue="method")
    curves = plots.plot_metric_curves(
        seeded_rows(["prototypes", "SAR"]).rename(columns={"imbalance_factor": "epoch"}),
        "accuracy")
    per_class = plots.plot_per_class({"CE": np.ones(3), "SAR": np.ones(3)}, counts=[3, 2, 1])
    history = pd.DataFrame({"step": range(5), "CE run": np.arange(5.0), "SAR run": 1.0})
    training = plots.plot_training_curves(history, ["CE run", "SAR run"])
    expected = {name: to_rgb(plots.METHOD_COLORS[name]) for name in plots.METHOD_COLORS}
    assert sweep_colours(sweep) == {"CE": expected["ce"], "SAR": expected["sar"],
                                    "logit-adjusted CE": expected["logit_adjusted"],
                                    "prototypes": expected["prototype"]}
    assert bar_colours(bars) == {"SAR": expected["sar"], "prototypes": expected["prototype"],
                                 "CE": expected["ce"]}
    assert {line.get_label(): to_rgb(line.get_color()) for line in curves.get_lines()} == {
        "prototypes": expected["prototype"], "SAR": expected["sar"]}
    assert [to_rgb(c.patches[0].get_facecolor()) for c in per_class.containers
            if isinstance(c, BarContainer)] == [expected["ce"], expected["sar"]]
    assert [to_rgb(line.get_color()) for line in training.get_lines()] == [
        expected["ce"], expected["sar"]]


def test_report_figures_use_the_method_colours() -> None:
    rows = seeded_rows(["ce", "sar", "prototype"], xs=(100,))
    ax = report.plot_paired_differences(rows, "accuracy", "ce", "method")
    bars = [c for c in ax.containers if isinstance(c, BarContainer)][0]
    assert [to_rgb(p.get_facecolor()) for p in bars.patches] == [
        to_rgb(plots.METHOD_COLORS["sar"]), to_rgb(plots.METHOD_COLORS["prototype"])]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["SAR", "prototypes"]
    seg = pd.DataFrame([{"method": m, "setting": arch, "seed": s, "mIoU": 0.3, "many_iou": 0.6,
                         "few_iou": 0.1} for m in ("ce", "sar") for arch in ("Unet", "FPN")
                        for s in (0, 1)])
    fig = report.plot_segmentation_shot_groups(seg)
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["CE", "SAR"]
    assert [to_rgb(h.get_facecolor()) for h in legend.legend_handles] == [
        to_rgb(plots.METHOD_COLORS["ce"]), to_rgb(plots.METHOD_COLORS["sar"])]
    assert all(ax.get_legend() is None for ax in fig.axes)
    ticks = [t.get_text().replace("\n", " ") for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["mIoU", "many-shot IoU", "few-shot IoU"]  # not the raw column names


def test_ablation_figure_pairs_each_setting_with_default_sar_and_keeps_loss_changes_apart(
) -> None:
    """A dot per seed of (ablation − default SAR) in SAR's colour, knob rows on one scale,
    the logit-adjusted loss (ten times any knob) on its own."""
    gaps = {"default": 0.0, "gate off": 0.002, "trade_off 1": -0.004,
            "with logit-adjusted CE": 0.07}
    ablation = pd.DataFrame([{"setting": name, "seed": s, "accuracy": 0.7 + gap + 0.001 * s,
                              "few_accuracy": 0.3 + 3 * gap, "imbalance_factor": 100,
                              "method": "sar"}
                             for name, gap in gaps.items() for s in (0, 1, 2)])
    fig = report.plot_ablation(ablation)
    assert len(fig.axes) == 3 * 2  # two knob themes and the loss row; overall and few-shot
    halves, gate, loss = fig.axes[0], fig.axes[2], fig.axes[4]
    for ax, setting in ((halves, "trade_off 1"), (gate, "gate off"),
                        (loss, "with logit-adjusted CE")):
        ticks = [t.get_text().replace("\n", " ") for t in ax.get_xticklabels()]
        assert ticks == [setting]
        dots = ax.collections[0]
        assert dots.get_offsets().shape == (3, 2)  # one dot per seed
        np.testing.assert_allclose(np.asarray(dots.get_offsets())[:, 1], 100 * gaps[setting],
                                   atol=1e-9)  # paired by seed: the seed's offset cancels
        assert to_rgb(dots.get_facecolor()[0][:3]) == to_rgb(plots.METHOD_COLORS["sar"])
        assert any(abs(line.get_ydata()[0]) < 1e-12 for line in ax.get_lines())  # zero line
    assert all(ax.get_legend() is None for ax in fig.axes)  # every marker is SAR's
    assert halves.get_ylim() == gate.get_ylim()  # the knobs share a scale
    assert not halves.patches  # no noise band unless one is given
    banded = report.plot_ablation(ablation, noise_band={"accuracy": 0.3})
    assert len(banded.axes[0].patches) == 1 and not banded.axes[1].patches  # overall only
    assert loss.get_ylim()[1] > 5 > halves.get_ylim()[1]  # the loss change has its own
    assert halves.get_ylabel() == "points vs default SAR"
    t95 = report.plot_ablation(ablation, interval="t95")
    assert t95.axes[0].get_ylabel().endswith("(bar: 95% t-interval)")  # no legend says it


def test_background_is_black_in_masks_and_in_embeddings() -> None:
    mask = np.array([[0, 1], [2, 0]])
    fig = plots.plot_segmentation_overlay(np.zeros((2, 2)), mask, num_classes=11,
                                          class_names=SCENE_CLASSES)
    mask_rgb = fig.axes[1].images[0].get_array()[0, 0]
    legend_bg = next(h for h, t in zip(fig.legends[0].legend_handles, fig.legends[0].texts,
                                       strict=True) if t.get_text() == "background")
    features = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(30) % 3
    ax = plots.plot_embedding(features, labels, class_names=SCENE_CLASSES[:3])
    scatter = ax.collections[0]  # class 0 is drawn first
    assert ax.get_legend().get_texts()[0].get_text() == "background"
    background = to_rgb(plots.BACKGROUND_RGB)
    assert tuple(mask_rgb) == background == to_rgb(legend_bg.get_facecolor())
    assert to_rgb(scatter.get_facecolor()[0]) == background
    # T-shirt/top keeps the colour of its name, label 1 here as label 0 in classification
    assert to_rgb(ax.collections[1].get_facecolor()[0]) == plots.CLASS_COLORS["t-shirt/top"]
    # without the name, index 0 keeps its class colour (classification: T-shirt/top)
    plain = plots.plot_embedding(features, labels)
    assert to_rgb(plain.collections[0].get_facecolor()[0]) == to_rgb(plots.class_palette(3)[0])
    assert plots.class_palette(3, class_names=["a", "Background", "c"])[1] == background


def test_sweep_has_a_tick_at_every_imbalance_factor() -> None:
    ax = plots.plot_sweep(seeded_rows(["ce", "sar"]), "imbalance_factor", "accuracy", "method",
                          logx=True)
    ax.figure.canvas.draw()
    assert list(ax.get_xticks()) == [1, 10, 50, 100]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "10", "50", "100"]
    assert ax.get_xlabel() == "imbalance factor" and ax.get_ylabel() == "accuracy"
    outside = plots.plot_sweep(seeded_rows(["ce"]), "imbalance_factor", "accuracy", "method",
                               legend="outside")
    assert outside.get_legend().get_bbox_to_anchor().x0 > outside.bbox.x1 - 1
    assert plots.plot_sweep(seeded_rows(["ce"]), "imbalance_factor", "accuracy", "method",
                            legend=None).get_legend() is None


def test_bar_tick_labels_are_readable_without_rotation() -> None:
    shots = seeded_rows(["ce", "sar"], xs=(100,)).melt(
        id_vars=["method", "seed"], value_vars=["accuracy", "few_accuracy"], var_name="metric")
    ax = plots.plot_bars(shots, "metric", "value", hue="method")
    labels = ax.get_xticklabels()
    assert [t.get_text().replace("\n", " ") for t in labels] == ["accuracy", "few-shot accuracy"]
    assert all(t.get_rotation() == 0 for t in labels)
    _, narrow = plt.subplots(figsize=(2, 3))
    plots.plot_bars(shots, "metric", "value", hue="method", ax=narrow)
    assert [t.get_text() for t in narrow.get_xticklabels()][1] == "few-shot\naccuracy"
    many = pd.DataFrame({"x": [f"category {i}" for i in range(12)], "seed": 0, "y": 1.0})
    crowded = plots.plot_bars(many, "x", "y")
    assert all(t.get_rotation() == 30 for t in crowded.get_xticklabels())


def test_training_curves_keep_coinciding_flags_visible_and_small_terms_on_a_right_axis():
    steps = np.arange(40)
    history = pd.DataFrame({"step": steps, "anchor_ce": 3.0 - steps / 40,
                            "pull": np.where(steps > 20, 0.06, 0.0) + 0.001 * steps,
                            "gate_passed": (steps > 20).astype(int),
                            "gate_opened": (steps > 20).astype(int)})
    ax = plots.plot_training_curves(history, ["anchor_ce", "pull"], secondary=["pull"],
                                    smooth={"anchor_ce": 5})
    right = ax.right_ax
    assert [line.get_label() for line in right.get_lines()] == ["pull (right axis)"]
    np.testing.assert_array_equal(right.get_lines()[0].get_ydata(), history["pull"])  # raw
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "anchor CE (trailing mean over 5 logged steps)", "pull (right axis)"]
    assert right.get_ylabel() == "pull"
    flags = plots.plot_training_curves(history, ["gate_passed", "gate_opened"])
    first, second = flags.get_lines()
    assert first.get_linewidth() > second.get_linewidth()
    assert first.get_linestyle() != second.get_linestyle()
    assert second.get_zorder() > first.get_zorder()
    with pytest.raises(KeyError, match="pull"):
        plots.plot_training_curves(history, ["anchor_ce"], secondary=["pull"])


def test_log_axes_have_plain_tick_labels() -> None:
    df = pd.DataFrame({"method": "ce", "seed": 0, "epoch": [1, 2, 3], "nc1": [0.3, 1.0, 4.0]})
    ax = plots.plot_metric_curves(df, "nc1", logy=True)
    ax.figure.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert labels and all("10^" not in t and "times" not in t for t in labels)
    assert {"0.5", "1", "2"} <= set(labels)


def test_anchor_cosine_annotations_never_show_minus_zero() -> None:
    cos = np.array([[1.0, -0.001], [-0.001, 1.0]])
    ax = plots.plot_anchor_cosines(cos, is_cosine=True, colorbar=False)
    texts = [t.get_text() for t in ax.texts]
    assert "-0.00" not in texts and texts.count("0.00") == 2
    assert len(ax.figure.axes) == 1  # no colour bar


def test_embedding_legend_can_be_left_out_or_name_the_stars() -> None:
    features = torch.randn(20, 4, generator=torch.Generator().manual_seed(1))
    labels, anchors = torch.arange(20) % 2, torch.randn(2, 4)
    ax = plots.plot_embedding(features, labels, anchors, anchor_label="prototype")
    assert [t.get_text() for t in ax.get_legend().get_texts()][-1] == "prototype"
    dot = ax.get_legend().legend_handles[0]  # a class: a readable dot, not the faint scatter
    assert dot.get_markersize() == 6 and dot.get_alpha() is None
    assert to_rgb(dot.get_color()) == to_rgb(ax.collections[0].get_facecolor()[0])
    assert plots.plot_embedding(features, labels, anchors, legend=False).get_legend() is None
    fig, axes = plt.subplots(1, 2)
    for panel in axes:
        plots.plot_embedding(features, labels, anchors, ax=panel)
    plots.figure_legend(fig, axes[-1])
    assert all(panel.get_legend() is None for panel in axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["0", "1", "anchor"]


def test_the_pipeline_diagram_names_every_stage_and_the_full_loss() -> None:
    fig = plots.plot_sar_pipeline()
    text = " ".join(t.get_text() for ax in fig.axes for t in ax.texts).replace("\n", " ")
    for stage in ("anchors A", "projector g", "projected anchors g(A)", "shared classifier W",
                  "gate", "EMA", "semantic anchors", "L_pull", "L_anchor", "encoder",
                  "feature f", "logits", "CE(logits, y)", "image x"):
        assert stage in text, stage
    assert "L = CE + 1.0·L_anchor + 0.1·L_pull" in text
    assert "‖f − s_y‖² / D" in text  # the pull as the loss equation writes it: mean over D
    # the gate feeds the EMA and also switches the pull on, on the steps it passes
    assert "when it passes" in text and "switches the pull on (steps it passes)" in text
    assert "update_conf 0.8" in text and "filter_conf 0.9" in text
    assert "momentum 0.999" in text
    assert fig.get_size_inches()[0] <= 13  # fits a notebook's width at 100 dpi


def test_the_diagram_follows_the_regulariser_it_is_given() -> None:
    from sar import SemanticAnchorRegularizer

    assert plots.sar_defaults() == {"trade_off_ce": 1.0, "trade_off": 0.1, "filter_conf": 0.9,
                                    "update_conf": 0.8, "momentum": 0.999}
    reg = SemanticAnchorRegularizer(4, 8, trade_off=1.0, trade_off_ce=3.0, momentum=0.99)
    assert plots.loss_equation(reg) == "L = CE + 3.0·L_anchor + 1.0·L_pull"
    _, ax = plt.subplots()
    fig = plots.plot_sar_pipeline(reg, ax=ax)
    assert fig is ax.figure and not ax.axison
    assert any("momentum 0.99 " in t.get_text() + " " for t in ax.texts)


def test_per_class_ten_class_names_are_slanted_so_they_do_not_collide() -> None:
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
             "Sneaker", "Bag", "Ankle boot"]
    ax = plots.plot_per_class(np.linspace(0, 1, 10), counts=np.arange(10, 0, -1),
                              class_names=names)
    labels = ax.get_xticklabels()
    assert [t.get_text() for t in labels] == names
    assert all(t.get_rotation() == 30 and t.get_ha() == "right" for t in labels)
    few = plots.plot_per_class(np.ones(3), counts=np.ones(3), class_names=["a", "b", "c"])
    assert all(t.get_rotation() == 0 for t in few.get_xticklabels())


def test_setup_notebook_styles_seeds_and_says_what_it_runs_on(capsys, monkeypatch):
    import matplotlib as mpl

    import sar
    from sar.notebook import setup_notebook

    monkeypatch.setenv("SAR_SMOKE", "1")
    mpl.rcParams["axes.titlesize"] = 5
    device = setup_notebook(7)
    first = torch.rand(3)
    assert device == sar.default_device()
    assert mpl.rcParams["axes.titlesize"] == 13  # the repository's style
    assert capsys.readouterr().out == (f"sar {sar.__version__} | torch {torch.__version__} | "
                                       f"device {device} | threads {torch.get_num_threads()} | "
                                       "smoke mode True\n")
    setup_notebook(7, verbose=False)
    assert torch.equal(torch.rand(3), first) and capsys.readouterr().out == ""


def test_a_class_has_the_colour_of_its_name_in_classification_and_segmentation() -> None:
    from sar.data import FASHION_MNIST_CLASSES

    classification = plots.class_palette(10, class_names=FASHION_MNIST_CLASSES)
    scenes = plots.class_palette(11, background_index=0, class_names=SCENE_CLASSES)
    assert scenes[0] == plots.BACKGROUND_RGB
    assert scenes[1:] == classification  # Trouser: label 1 there, label 2 here, one colour
    assert classification == plots.class_palette(10)  # the classification colours stay
    # a mask and its legend use the names too
    mask = np.array([[0, 2], [2, 9]])
    fig = plots.plot_segmentation_overlay(np.zeros((2, 2)), mask, num_classes=11,
                                          class_names=SCENE_CLASSES)
    trouser = to_rgb(plots.CLASS_COLORS["trouser"])
    assert tuple(fig.axes[1].images[0].get_array()[0, 1]) == trouser
    legend = {t.get_text(): to_rgb(h.get_facecolor())
              for h, t in zip(fig.legends[0].legend_handles, fig.legends[0].texts, strict=True)}
    assert legend["Trouser"] == trouser
    comparison = plots.plot_segmentation_comparison(np.zeros((1, 2, 2)), mask[None],
                                                    {"SAR": mask[None]}, num_classes=11,
                                                    class_names=SCENE_CLASSES)
    assert tuple(comparison.axes[2].images[0].get_array()[0, 1]) == trouser
    # names it does not know take colours that no known name in the set holds
    mixed = plots.class_palette(3, class_names=["Bag", "my class", "trouser"])
    assert mixed[0] == plots.CLASS_COLORS["bag"] and mixed[2] == trouser
    assert mixed[1] not in (mixed[0], mixed[2])
    assert plots.class_palette(3, class_names=["a", "b", "c"]) == plots.class_palette(3)


def test_loss_terms_have_fixed_colours_that_no_method_uses() -> None:
    assert not set(plots.TERM_COLORS.values()) & set(plots.METHOD_COLORS.values())
    assert len(set(plots.TERM_COLORS.values())) == len(plots.TERM_COLORS)
    history = pd.DataFrame({"step": range(5), "task_loss": 1.0, "anchor_ce": 2.0, "pull": 0.1,
                            "my_metric": 0.5})
    first = plots.plot_training_curves(history, ["task_loss", "anchor_ce", "pull"])
    second = plots.plot_training_curves(history, ["pull", "my_metric", "anchor_ce"])
    colours = {line.get_label(): to_rgb(line.get_color()) for line in first.get_lines()}
    assert colours == {"task CE": plots.TERM_COLORS["task_loss"],
                       "anchor CE": plots.TERM_COLORS["anchor_ce"],
                       "pull": plots.TERM_COLORS["pull"]}
    again = {line.get_label(): to_rgb(line.get_color()) for line in second.get_lines()}
    assert again["pull"] == colours["pull"] and again["anchor CE"] == colours["anchor CE"]
    other = again["my_metric"]
    assert other not in set(plots.METHOD_COLORS.values()) | set(plots.TERM_COLORS.values())
    assert plots.series_colors(["CE run", "pull"]) == [plots.METHOD_COLORS["ce"],
                                                      plots.TERM_COLORS["pull"]]
