"""From result rows to the README and docs/results.md: mean and spread tables, paired
differences, figures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from .. import data as sar_data
from ..metrics.intervals import t_half_width
from .grids import SEGMENTATION_SETUPS, segmentation_setup
from .runs import add_shot_group_iou, scene_shot_groups
from .store import load_results


# ---------------------------------------------------------------------------- summaries
def summarise(df: pd.DataFrame, metrics: list[str], by: list[str]) -> pd.DataFrame:
    """Mean and std over seeds of ``metrics`` for each group ``by``; adds the seed count."""
    grouped = df.groupby(by, sort=False)[metrics]
    table = pd.concat([grouped.mean(), grouped.std(ddof=1).add_suffix("_std")], axis=1)
    table["seeds"] = df.groupby(by, sort=False)["seed"].nunique()
    return table.reset_index()


def markdown_table(df: pd.DataFrame, rows: str, columns: str, metric: str,
                   scale: float = 100.0, higher_is_better: bool = True) -> str:
    """A ``rows x columns`` table of ``mean ± std`` of ``metric``, the best of each column bold.

    Rows and columns keep their order of first appearance in ``df``. A cell averaged over fewer
    seeds than the fullest cell says how many (``n=2``); a column with a single filled cell, or
    one where all cells tie, has no winner to bold; a cell not run yet shows "–".
    """
    stats = summarise(df, [metric], [rows, columns])
    pivot = {key: stats.pivot(index=rows, columns=columns, values=value)
             for key, value in (("mean", metric), ("std", f"{metric}_std"), ("n", "seeds"))}
    order, column_order = list(dict.fromkeys(df[rows])), list(dict.fromkeys(df[columns]))
    mean, std, n = (pivot[key].loc[order, column_order] for key in ("mean", "std", "n"))
    best = mean.max() if higher_is_better else mean.min()
    contested = (mean.notna().sum() > 1) & (mean.max() > mean.min())  # someone must lead
    full = n.max().max()
    lines = [f"| {rows} | " + " | ".join(str(c) for c in mean.columns) + " |",
             "|---" * (len(mean.columns) + 1) + "|"]
    for name in mean.index:
        cells = []
        for col in mean.columns:
            m, s = mean.loc[name, col] * scale, std.loc[name, col] * scale
            if pd.isna(m):  # a cell of the grid not run yet
                cells.append("–")
                continue
            text = f"{m:.2f} ± {s:.2f}" if pd.notna(s) else f"{m:.2f}"
            if contested[col] and mean.loc[name, col] == best[col]:
                text = f"**{text}**"
            if n.loc[name, col] < full:
                text += f" (n={int(n.loc[name, col])})"
            cells.append(text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_differences(df: pd.DataFrame, metric: str, reference: str,
                       by: str = "method") -> pd.DataFrame:
    """Per-seed ``metric`` of every level of ``by`` minus that of ``reference`` on the same seed.

    Returns columns ``[by, "seed", metric]``, one row per (level, seed) both ran. Pairing by
    seed cancels the data order and initialisation noise the two runs share.
    """
    ref = df[df[by] == reference].set_index("seed")[metric]
    parts = [pd.DataFrame({by: level, "seed": diff.index, metric: diff.to_numpy()})
             for level, group in df[df[by] != reference].groupby(by, sort=False)
             if len(diff := (group.set_index("seed")[metric] - ref).dropna())]
    return (pd.concat(parts, ignore_index=True) if parts
            else pd.DataFrame({by: [], "seed": [], metric: []}))


def paired_gap(df: pd.DataFrame, metric: str, a: str, b: str,
               by: str = "method") -> tuple[float, float, int]:
    """Mean and std (ddof=1; NaN for one seed) over seeds of ``metric`` where ``by == a`` minus
    where ``by == b``, and the number of seeds both ran."""
    paired = paired_differences(df[df[by].isin([a, b])], metric, b, by)[metric]
    return float(paired.mean()), float(paired.std(ddof=1)), len(paired)


def paired_gap_interval(df: pd.DataFrame, metric: str, a: str, b: str,
                        by: str = "method") -> tuple[float, float, int]:
    """:func:`paired_gap`'s mean, the half-width of its 95% Student-t interval
    (:func:`sar.metrics.t_half_width`; NaN for one seed) and the number of seeds: the gap is
    clear when ``abs(mean) > half``. Same units as ``metric``."""
    mean, std, n = paired_gap(df, metric, a, b, by)
    return mean, (t_half_width(std, n) if n > 1 else float("nan")), n


def paired_gap_table(df: pd.DataFrame, by: str, reference: str, metrics: list[str],
                     columns: str | None = None, scale: float = 100.0,
                     label: Callable[[str], str] = str, counts: bool = True,
                     digits: int = 2, bold_clear: bool = False) -> str:
    """Markdown: for each level of ``by``, its paired gap to ``reference`` on each metric,
    computed separately within each level of ``columns`` when given (e.g. per setting).
    ``label`` writes the row and metric names (e.g. :func:`sar.plots.pretty_label`);
    ``counts=False`` leaves out each cell's "(n=…)", for a table that states the seeds once;
    ``digits``: decimals of the mean and the std; ``bold_clear``: bold the cells whose 95%
    Student-t interval of the mean gap (:func:`sar.metrics.t_half_width`) excludes zero."""
    groups = list(df.groupby(columns, sort=False)) if columns else [(None, df)]
    header = [f"Δ {label(m)}" if level is None else (str(level) if len(metrics) == 1
                                                     else f"{level} Δ {label(m)}")
              for level, _ in groups for m in metrics]
    lines = [f"| {by} | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for row in dict.fromkeys(df[by]):
        if row == reference:
            continue
        cells = []
        for _, part in groups:
            for metric in metrics:
                mean, std, n = paired_gap(part, metric, row, reference, by)
                spread = f" ± {std * scale:.{digits}f}" if n > 1 else ""
                count = f" (n={n})" if counts else ""
                text = f"{mean * scale:+.{digits}f}{spread}"
                if bold_clear and n > 1 and abs(mean) > t_half_width(std, n):
                    text = f"**{text}**"
                cells.append(f"{text}{count}" if n else "–")
        lines.append(f"| {label(row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_paired_differences(df: pd.DataFrame, metric: str, reference: str, by: str,
                            ax: Any = None, title: str | None = None,
                            color: Any = None) -> Any:
    """Horizontal bars of each level's paired difference to ``reference`` (percentage points),
    mean ± std over seeds, with the zero line: which changes matter beyond seed noise.

    Bars of levels that are methods take the methods' fixed colours (:mod:`sar.plots.style`);
    ``color`` paints every bar one colour instead (e.g. SAR's, for SAR's ablations)."""
    from .. import plots

    diffs = paired_differences(df, metric, reference, by)
    levels = list(dict.fromkeys(diffs[by]))
    colors = dict.fromkeys(levels, color) if color is not None else None
    ax = plots.plot_bars(diffs.assign(**{metric: diffs[metric] * 100}), by, metric, ax=ax,
                         horizontal=True, colors=colors,
                         ylabel=f"percentage points vs {plots.pretty_label(reference)}",
                         title=title or f"Δ {plots.pretty_label(metric)} vs "
                                        f"{plots.pretty_label(reference)} (paired by seed)")
    ax.axvline(0, color="0.3", linewidth=1)
    return ax


# The ablations of the grid (:data:`~sar.experiments.grids.ABLATIONS`) in themed rows of
# plot_ablation; the last row is not a SAR knob, moves SAR about ten times as much as any knob,
# and is drawn on its own scale so that it does not flatten the others onto the zero line.
ABLATION_GROUPS: dict[str, tuple[str, ...]] = {
    "SAR's two halves and their weights": (
        "pull off (anchor CE only)", "anchor CE off (pull only)", "trade_off 0.01",
        "trade_off 1", "trade_off_ce 0.1"),
    "the gate, the filter and the anchor updates": (
        "gate off", "pull after open", "filter off", "momentum 0.9", "momentum 0.99"),
    "the anchors and the pull's distance": (
        "anchors orthogonal", "anchors etf", "anchors hypersphere", "cosine pull",
        "detached weights"),
    "not a SAR knob, own scale: the logit-adjusted loss": ("with logit-adjusted CE",),
}
OWN_SCALE_GROUPS = ("not a SAR knob, own scale: the logit-adjusted loss",)


def plot_ablation(df: pd.DataFrame, noise_band: dict[str, float] | None = None,
                  interval: str = "std") -> Any:
    """Figure: each ablation minus the default SAR of the same seed, overall (left) and
    few-shot (right), one row per theme of :data:`ABLATION_GROUPS`: a dot per seed, the mean
    ± std and the zero line (:func:`sar.plots.plot_paired_gaps`, in SAR's colour).

    The rows of SAR's own knobs share one y-scale per column, so their sizes compare; the
    rows of :data:`OWN_SCALE_GROUPS` have their own. Settings in no group (none in the grid
    of this commit) get a last row, "other settings".

    Args:
        df: the ablation rows (columns ``setting``, ``seed``, ``accuracy``, ``few_accuracy``,
            ``imbalance_factor``), the reference setting named ``"default"``.
        noise_band: per metric (``"accuracy"``, ``"few_accuracy"``), the half-width in points
            of a grey band around zero (:func:`sar.plots.plot_paired_gaps`); none if absent.
        interval: the error bar, ``"std"`` or ``"t95"`` (the 95% t-interval of the mean), as
            :func:`sar.plots.plot_paired_gaps`; the y label says which (the panels have no
            legend).
    """
    import matplotlib.pyplot as plt  # matplotlib only when plotting

    from .. import plots

    factor = df["imbalance_factor"].iloc[0]
    present = [s for s in dict.fromkeys(df["setting"]) if s != "default"]
    grouped = {title: [s for s in members if s in present]  # in the group's order
               for title, members in ABLATION_GROUPS.items()}
    grouped["other settings"] = [s for s in present
                                 if not any(s in m for m in ABLATION_GROUPS.values())]
    grouped = {title: members for title, members in grouped.items() if members}
    # each ablation's rows beside a copy of the default SAR's, so that plot_paired_gaps
    # pairs them by seed within each ablation
    default = df[df["setting"] == "default"]
    order = [name for members in grouped.values() for name in members]
    long = pd.concat([part.assign(ablation=name, change=variant) for name in order
                      for part, variant in ((df[df["setting"] == name], "sar"),
                                            (default, "default SAR"))])
    heights = [0.75 if title in OWN_SCALE_GROUPS else 1.0 for title in grouped]
    fig, axes = plt.subplots(len(grouped), 2, figsize=(14, 3.6 * sum(heights) + 0.4),
                             squeeze=False, gridspec_kw={"height_ratios": heights})
    shared: dict[int, Any] = {}
    for r, (title, members) in enumerate(grouped.items()):
        for c, metric in enumerate(("accuracy", "few_accuracy")):
            ax = axes[r, c]
            if title not in OWN_SCALE_GROUPS:
                if c in shared:
                    ax.sharey(shared[c])
                shared.setdefault(c, ax)
            plots.plot_paired_gaps(
                long[long["ablation"].isin(members)], metric, "default SAR", "ablation",
                hue="change", ax=ax, xlabel="the setting changed (one at a time)",
                ylabel="points vs default SAR" + ("" if interval == "std"
                                                  else "\n(bar: 95% t-interval)"),
                tick_width=10, noise_band=(noise_band or {}).get(metric), interval=interval,
                legend=None,  # every marker is SAR's: a one-entry legend reads as a point
                title=f"{title}\n{plots.pretty_label(metric)}, IF {factor:g}")
    fig.tight_layout()
    return fig


def plot_segmentation_shot_groups(df: pd.DataFrame) -> Any:
    """Figure: one panel per architecture, mIoU and the IoU of each shot group, one bar per
    method (mean ± std over seeds). ``df`` needs the columns of :func:`add_shot_group_iou`."""
    import matplotlib.pyplot as plt  # matplotlib only when plotting

    from .. import plots

    groups = ["mIoU", *(c for c in df.columns if c.endswith("_iou"))]
    long = df.melt(id_vars=["method", "setting", "seed"], value_vars=groups, var_name="group",
                   value_name="IoU")
    archs = list(dict.fromkeys(df["setting"]))
    fig, axes = plt.subplots(1, len(archs), figsize=(5 * len(archs), 4.2), sharey=True,
                             squeeze=False)
    for ax, arch in zip(axes[0], archs, strict=True):
        plots.plot_bars(long[long["setting"] == arch], "group", "IoU", hue="method", ax=ax,
                        ylabel="validation IoU (fraction)", title=f"{arch}: IoU by shot group")
    fig.tight_layout()
    # one legend for all panels, taken from the panel with the most methods (one architecture
    # may run extra ones), in the methods' fixed colours
    fullest = max(axes[0], key=lambda ax: len(ax.get_legend_handles_labels()[1]))
    plots.figure_legend(fig, fullest, loc="upper left", bbox_to_anchor=(1.0, 0.95),
                        title=f"method (mean ± std over {df['seed'].nunique()} seeds)")
    return fig


def render(experiment: str, out_dir: Path, figures: bool = True) -> Path:
    """A markdown summary of ``experiment``'s CSV, written beside it as ``NAME.md``, and its
    figures (PNG) in ``out_dir/figures`` unless ``figures`` is false (the tables alone, e.g.
    to check that the documents' blocks are in sync).

    Raises:
        FileNotFoundError: ``out_dir`` holds no CSV of ``experiment``.
    """
    df = load_results(experiment, out_dir)
    if df is None:
        raise FileNotFoundError(f"no {experiment}.csv in {out_dir}: run the experiment first")
    if experiment == "longtail":
        df = df.sort_values("imbalance_factor", kind="stable")
    summary = out_dir / f"{experiment}.md"
    summary.write_text(summary_markdown(experiment, df) + "\n")
    if figures:
        draw_figures(experiment, df, out_dir / "figures")
    return summary


def summary_markdown(experiment: str, df: pd.DataFrame) -> str:
    """The markdown tables of one experiment's rows ``df``: what its results block holds."""
    tables = [f"<!-- generated by `python -m sar.experiments render {experiment}` -->"]
    seeds = sorted(int(s) for s in df["seed"].unique())
    machines = ", ".join(sorted(df["hardware"].unique()))
    tables.append(f"Hardware: {machines}." if experiment == "overhead"
                  else f"Seeds {seeds}; hardware: {machines}.")
    if experiment == "longtail":
        for metric in ("accuracy", "many_accuracy", "medium_accuracy", "few_accuracy"):
            tables += [f"\n**{metric}** (%, mean ± std over seeds)\n",
                       markdown_table(df, "method", "setting", metric)]
        for metric in ("accuracy", "few_accuracy"):
            tables += [f"\n**Paired gain over CE, {metric}** (percentage points, mean ± std over"
                       " seeds of the per-seed difference)\n",
                       paired_gap_table(df, "method", "ce", [metric], columns="setting")]
        for metric in ("nc1", "ratio"):
            tables += [f"\n**{metric}** (lower is more collapsed; mean ± std)\n",
                       markdown_table(df, "method", "setting", metric, 1.0, False)]
    elif experiment == "ablation":
        factor = df["imbalance_factor"].iloc[0]
        for metric in ("accuracy", "few_accuracy"):
            tables += [f"\n**{metric}** (%, imbalance factor {factor:g}, mean ± std over seeds)\n",
                       markdown_table(df, "setting", "method", metric)]
        tables += ["\n**Paired difference to the default SAR** (percentage points, mean ± std "
                   "over seeds of the per-seed difference)\n",
                   paired_gap_table(df, "setting", "default", ["accuracy", "few_accuracy"])]
    elif experiment == "tuning":
        factor = df["imbalance_factor"].iloc[0]
        tables += [f"\nValidation accuracy (%) at imbalance factor {factor:g}, one seed; **bold**"
                   " = the setting each method keeps (highest validation accuracy)\n",
                   _markdown(_tuning_table(df))]
    elif experiment in SEGMENTATION_SETUPS:
        for metric in ("mIoU", "pixel_accuracy"):
            tables += [f"\n**{metric}** (%, mean ± std over seeds)\n",
                       markdown_table(df, "method", "setting", metric)]
        tables += ["\n**Paired gain over CE, mIoU** (percentage points, mean ± std over seeds of"
                   " the per-seed difference)\n",
                   paired_gap_table(df, "method", "ce", ["mIoU"], columns="setting")]
        groups = _scene_groups(experiment)
        df = add_shot_group_iou(df, groups)
        for group, ids in groups.items():
            names = ", ".join(sar_data.FASHION_MNIST_CLASSES[c] for c in ids)
            tables += [f"\n**IoU of the {group}-shot classes** ({names}; %, mean over these"
                       " classes, then mean ± std over seeds)\n",
                       markdown_table(df, "method", "setting", f"{group}_iou")]
        tables += ["\n**Paired gain over CE by shot group** (IoU, percentage points, mean ± std"
                   " over seeds of the per-seed difference)\n",
                   paired_gap_table(df, "method", "ce", [f"{g}_iou" for g in groups],
                                    columns="setting")]
        tables += ["\n**Per-class IoU** (%, mean over seeds; classes head → tail)\n",
                   _markdown(per_class_iou_table(df, groups))]
    else:
        columns = {"case": "case", "device": "device", "plain_ms": "plain ms/step",
                   "sar_ms": "SAR ms/step", "train_ratio": "train SAR/plain",
                   "infer_ratio": "inference SAR/plain", "memory_ratio": "peak memory SAR/plain"}
        table = df[list(columns)].rename(columns=columns).round(3).astype(object)
        table = table.fillna("not measured (GPU only)")
        tables += ["\nTrain and inference steps timed alternately in one process, median over "
                   "rounds (`sar/benchmark.py`).\n", _markdown(table)]
    return "\n".join(tables)


def draw_figures(experiment: str, df: pd.DataFrame, folder: Path) -> None:
    """The figures (PNG, in ``folder``) of one experiment's rows ``df``; the tuning and overhead
    experiments have none."""
    from .. import plots  # matplotlib only when plotting

    folder.mkdir(parents=True, exist_ok=True)
    plots.use_style()
    if experiment == "longtail":
        for metric in ("accuracy", "many_accuracy", "medium_accuracy", "few_accuracy"):
            ax = plots.plot_sweep(df, "imbalance_factor", metric, "method", logx=True,
                                  ylabel=f"{metric} (fraction)", xlabel="imbalance factor")
            save_figure(ax.figure, folder / f"longtail_{metric}.png")
    elif experiment == "ablation":
        save_figure(plot_ablation(df), folder / "ablation.png")
    elif experiment in SEGMENTATION_SETUPS:
        df = add_shot_group_iou(df, _scene_groups(experiment))
        ax = plots.plot_bars(df, "setting", "mIoU", hue="method", ylabel="validation mIoU",
                             title="Long-tailed scenes: mIoU by architecture")
        save_figure(ax.figure, folder / f"{experiment}_miou.png")
        save_figure(plot_segmentation_shot_groups(df), folder / f"{experiment}_shot_groups.png")


def _scene_groups(experiment: str) -> dict[str, list[int]]:
    return scene_shot_groups(segmentation_setup(experiment, smoke=False))  # the rows' scenes


def per_class_iou_table(df: pd.DataFrame, groups: dict[str, list[int]]) -> pd.DataFrame:
    """Architecture x method rows, one column per item class in shot-group order (head first),
    background first: IoU in %, mean over the seeds run so far."""
    ids = [c for group in ("many", "medium", "few") for c in groups[group]]
    columns = {"iou_class_0": "background"} | {
        f"iou_class_{c + 1}": sar_data.FASHION_MNIST_CLASSES[c] for c in ids}
    means = df.groupby(["setting", "method"], sort=False)[list(columns)].mean() * 100
    table = means.rename(columns=columns).round(1).reset_index()
    return table.rename(columns={"setting": "architecture"})


def chosen_settings(df: pd.DataFrame) -> pd.DataFrame:
    """Per method, the tuning row with the highest validation accuracy (ties: the first row)."""
    return df.loc[df.groupby("method", sort=False)["val_accuracy"].idxmax()]


def _tuning_table(df: pd.DataFrame) -> pd.DataFrame:
    chosen = set(chosen_settings(df).index)
    table = df[["method", "setting", "val_accuracy", "val_few_accuracy"]].copy()
    for column in ("val_accuracy", "val_few_accuracy"):
        table[column] = [f"**{v:.2%}**".replace("%", "") if i in chosen else f"{v:.2%}"[:-1]
                         for i, v in table[column].items()]
    return table.rename(columns={"val_accuracy": "val accuracy",
                                 "val_few_accuracy": "val few-shot accuracy"})


def fill_block(name: str, text: str, documents: list[Path]) -> list[Path]:
    """Replace the block between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` with
    ``text`` in each of ``documents`` that holds it; the rest of each file is kept as it was.

    Returns:
        The documents written.

    Raises:
        ValueError: none of ``documents`` holds the block.
    """
    start, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    written = []
    for document in documents:
        content = document.read_text()
        if start not in content or end not in content:
            continue
        head, rest = content.split(start, 1)
        document.write_text(f"{head}{start}\n{text.strip()}\n{end}{rest.split(end, 1)[1]}")
        written.append(document)
    if not written:
        raise ValueError(f"none of {', '.join(map(str, documents))} has a {start} ... {end}"
                         " block to fill")
    return written


def _markdown(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(df.columns) + " |", "|---" * len(df.columns) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def save_figure(figure: Any, path: Path) -> None:
    """Write ``figure`` as a PNG (120 dpi, tight) and close it."""
    import matplotlib.pyplot as plt

    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
