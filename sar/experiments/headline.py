"""The front page's findings at a glance: the headline paired gaps to CE, as a table and a figure.

A handful of comparisons, taken from the long-tail classification grid and the segmentation
grid from a pretrained encoder, each paired by seed. ``python -m sar.experiments render
headline`` (or ``render all``) writes the table into the README's ``results:headline`` block
and the figures the README shows into ``results/figures/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .grids import segmentation_setup
from .report import paired_differences, save_figure
from .runs import add_shot_group_iou, scene_shot_groups
from .store import load_results

REFERENCE = "ce"
# each grid's overall and few-shot metric (the few-shot IoU is added from the shot groups)
MEASURES = {"longtail": {"overall": "accuracy", "few-shot": "few_accuracy"},
            "segmentation_pretrained": {"overall": "mIoU", "few-shot": "few_iou"}}


@dataclass(frozen=True)
class HeadlineGap:
    """One comparison of the headline: ``method`` minus CE on one ``setting`` of a grid."""

    experiment: str
    setting: str
    method: str
    benchmark: str  # how the table and the figure name the setting


HEADLINE_GAPS = (
    HeadlineGap("longtail", "if=100", "sar", "Fashion-MNIST-LT, imbalance 100"),
    HeadlineGap("longtail", "if=100", "sar_tuned", "Fashion-MNIST-LT, imbalance 100"),
    HeadlineGap("longtail", "if=100", "logit_adjusted", "Fashion-MNIST-LT, imbalance 100"),
    HeadlineGap("segmentation_pretrained", "Unet", "sar", "scenes, Unet"),
    HeadlineGap("segmentation_pretrained", "FPN", "sar", "scenes, FPN"),
    HeadlineGap("segmentation_pretrained", "DeepLabV3Plus", "sar", "scenes, DeepLabV3+"),
)


def headline_differences(results_dir: Path,
                         gaps: tuple[HeadlineGap, ...] = HEADLINE_GAPS) -> pd.DataFrame:
    """Per-seed differences to CE of every comparison in ``gaps``, in percentage points.

    Returns:
        One row per (comparison, measure, seed): columns ``experiment``, ``method``,
        ``benchmark``, ``measure`` ("overall": accuracy or mIoU; "few-shot": few-shot accuracy
        or the mean IoU of the scenes' few-shot classes), ``seed`` and ``points``.

    Raises:
        FileNotFoundError: a grid's CSV is not in ``results_dir``.
        ValueError: a comparison has no seed that both it and CE ran.
    """
    frames = []
    for experiment in dict.fromkeys(gap.experiment for gap in gaps):
        df = load_results(experiment, results_dir)
        if df is None:
            raise FileNotFoundError(f"no {experiment}.csv in {results_dir}: the headline needs"
                                    f" it (python -m sar.experiments {experiment})")
        if experiment != "longtail":
            groups = scene_shot_groups(segmentation_setup(experiment, smoke=False))
            df = add_shot_group_iou(df, groups)
        for gap in (g for g in gaps if g.experiment == experiment):
            rows = df[(df["setting"] == gap.setting) & df["method"].isin([gap.method, REFERENCE])]
            for measure, metric in MEASURES[experiment].items():
                diffs = paired_differences(rows, metric, REFERENCE)
                if diffs.empty:
                    raise ValueError(f"{experiment}.csv has no seed where both {gap.method} and"
                                     f" {REFERENCE} ran at {gap.setting}")
                frames.append(pd.DataFrame({
                    "experiment": experiment, "method": gap.method, "benchmark": gap.benchmark,
                    "measure": measure, "seed": diffs["seed"].astype(int),
                    "points": diffs[metric] * 100}))
    return pd.concat(frames, ignore_index=True)


def headline_table(diffs: pd.DataFrame) -> str:
    """Markdown: one row per comparison, its gap to CE overall and few-shot as mean ± std over
    seeds (ddof=1) of the per-seed difference, and the seeds paired. ``diffs`` as returned by
    :func:`headline_differences`."""
    from ..plots import method_label

    lines = ["| comparison | benchmark | Δ overall | Δ few-shot | seeds |",
             "|---|---|---|---|---|"]
    for (method, benchmark), part in diffs.groupby(["method", "benchmark"], sort=False):
        cells = []
        for measure in ("overall", "few-shot"):
            points = part.loc[part["measure"] == measure, "points"]
            spread = f" ± {points.std(ddof=1):.2f}" if len(points) > 1 else ""
            cells.append(f"{points.mean():+.2f}{spread}")
        seeds = part["seed"].nunique()
        lines.append(f"| {method_label(method)} − CE | {benchmark} | {cells[0]} | {cells[1]} |"
                     f" {seeds} |")
    return "\n".join(lines)


def render_headline(out_dir: Path, figures: bool = True) -> Path:
    """Write ``out_dir/headline.md``, the README's ``results:headline`` block (the table of
    :func:`headline_table` and a line that says what its numbers are), and unless ``figures``
    is false the README's two figures into ``out_dir/figures``: ``findings.png``
    (:func:`plot_findings`) and ``sar_pipeline.png`` (:func:`sar.plots.plot_sar_pipeline`).

    Raises:
        FileNotFoundError, ValueError: as :func:`headline_differences`.
    """
    diffs = headline_differences(out_dir)
    summary = out_dir / "headline.md"
    summary.write_text("\n".join([
        "<!-- generated by `python -m sar.experiments render headline` -->",
        "Percentage points, paired by seed: mean ± std over seeds of the per-seed difference to"
        " CE. Overall = test accuracy (Fashion-MNIST-LT) or validation mIoU (scenes); few-shot ="
        " the accuracy, or mean IoU, of the three rarest classes.\n",
        headline_table(diffs)]) + "\n")
    if figures:
        from .. import plots

        folder = out_dir / "figures"
        folder.mkdir(parents=True, exist_ok=True)
        plots.use_style()
        save_figure(plot_findings(diffs), folder / "findings.png")
        save_figure(plots.plot_sar_pipeline(), folder / "sar_pipeline.png")
    return summary


def plot_findings(diffs: pd.DataFrame) -> Any:
    """Figure: the headline gaps as bars, one panel per grid, overall and few-shot side by side,
    error bars = std over seeds, each bar labelled with its mean beyond its error bar. ``diffs``
    as returned by :func:`headline_differences`."""
    import matplotlib.pyplot as plt  # matplotlib only when plotting
    from matplotlib.container import BarContainer

    from .. import plots

    titles = {"longtail": "Fashion-MNIST-LT, imbalance factor 100",
              "segmentation_pretrained": "Long-tailed scenes, pretrained encoder: SAR − CE"}
    levels = {"overall": "overall (accuracy, mIoU)", "few-shot": "few-shot (3 rarest classes)"}
    experiments = list(dict.fromkeys(diffs["experiment"]))
    fig, axes = plt.subplots(1, len(experiments), figsize=(6.5 * len(experiments), 3.6),
                             squeeze=False)
    colours = {levels["overall"]: "0.55", levels["few-shot"]: plots.method_color("sar")}
    for ax, experiment in zip(axes[0], experiments, strict=True):
        part = diffs[diffs["experiment"] == experiment]
        part = part.assign(measure=part["measure"].map(levels), comparison=(
            part["benchmark"].str.removeprefix("scenes, ") if experiment != "longtail"
            else part["method"].map(lambda m: f"{plots.method_label(m)} − CE")))
        plots.plot_bars(part, "comparison", "points", hue="measure", ax=ax, horizontal=True,
                        colors=colours, title=titles.get(experiment, experiment),
                        ylabel="percentage points vs CE (paired by seed)")
        ax.axvline(0, color="0.3", linewidth=1)
        std = part.groupby(["measure", "comparison"], sort=False)["points"].std(ddof=1)
        bars = [c for c in ax.containers if isinstance(c, BarContainer)]
        for level, container in zip(dict.fromkeys(part["measure"]), bars, strict=True):
            for category, bar in zip(dict.fromkeys(part["comparison"]), container, strict=True):
                mean = bar.get_width()
                tip = mean + (1 if mean >= 0 else -1) * np.nan_to_num(std[(level, category)])
                ax.annotate(f"{mean:+.1f}", (tip, bar.get_y() + bar.get_height() / 2),
                            xytext=(4 if mean >= 0 else -4, 0), textcoords="offset points",
                            ha="left" if mean >= 0 else "right", va="center", fontsize=8)
        ax.margins(x=0.12)
    plots.figure_legend(fig, axes[0][0], title=None, loc="lower center", ncol=2,
                        bbox_to_anchor=(0.5, -0.1))
    seeds = diffs["seed"].nunique()
    fig.suptitle(f"Findings at a glance: gaps to CE, mean ± std over {seeds} seeds", y=1.0)
    fig.tight_layout()
    return fig
