"""Plots for anchors, embeddings, training curves, per-class results and segmentation.

Every function draws onto a given matplotlib ``ax`` (or creates one), returns the Axes (the
Figure for multi-panel plots) and never calls ``plt.show()``, so the same code serves
notebooks, scripts and tests. Call :func:`use_style` once for the house style. A class keeps
one colour across all plots through :func:`class_palette`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

ArrayLike = torch.Tensor | np.ndarray

FIGSIZE = (6.4, 4.4)
BACKGROUND_RGB = (0.0, 0.0, 0.0)
IGNORE_RGB = (1.0, 1.0, 1.0)
MAX_LEGEND_CLASSES = 20  # beyond this a per-class legend hides the plot


def use_style() -> None:
    """Seaborn ``whitegrid`` theme, fixed figure size, readable fonts. Safe to call again."""
    sns.set_theme(
        context="notebook",
        style="whitegrid",
        rc={
            "figure.figsize": FIGSIZE,
            "figure.dpi": 100,
            "savefig.dpi": 150,
            "savefig.bbox": "tight",
            "axes.titlesize": 13,
            "axes.labelsize": 11,
            "legend.fontsize": 9,
            "legend.title_fontsize": 9,
            "image.interpolation": "nearest",
        },
    )


def class_palette(num_classes: int, background_index: int | None = None) -> list[tuple]:
    """One RGB colour (floats in ``[0, 1]``) per class.

    Up to 20 classes: the ten dark ``tab20`` colours, then their ten light partners, so
    class ``c`` has the same colour whatever ``num_classes`` is (and classes 0-9 match
    ``tab10``). Beyond 20: evenly spaced ``husl`` hues. ``background_index`` (segmentation)
    is painted black; every other class keeps its colour.
    """
    if num_classes <= 20:
        tab20 = plt.get_cmap("tab20").colors
        colours = [tuple(c) for c in (tab20[0::2] + tab20[1::2])[:num_classes]]
    else:
        colours = [tuple(c) for c in sns.color_palette("husl", num_classes)]
    if background_index is not None:
        colours[background_index] = BACKGROUND_RGB
    return colours


def _numpy(x: ArrayLike | Sequence) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _axes(ax: Axes | None) -> Axes:
    return ax if ax is not None else plt.subplots()[1]


def _names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [str(c) for c in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    return list(class_names)


# ----------------------------------------------------------------------------------- anchors


def cosine_matrix(rows: ArrayLike) -> np.ndarray:
    """Pairwise cosine similarity of the rows of ``(C, D)``; float64 ``(C, C)``."""
    x = _numpy(rows).astype(np.float64)
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return unit @ unit.T


def plot_anchor_cosines(
    anchors_or_cosine: ArrayLike,
    class_names: Sequence[str] | None = None,
    ax: Axes | None = None,
    title: str = "Pairwise cosine similarity of anchors",
    is_cosine: bool = False,
    annotate: bool | None = None,
) -> Axes:
    """Heatmap of pairwise cosines, diverging colour map fixed to ``[-1, 1]``.

    Args:
        anchors_or_cosine: anchors ``(C, D)``, or a precomputed cosine matrix ``(C, C)``
            when ``is_cosine=True`` (an explicit flag, as a square anchor matrix is legal).
        class_names: ``C`` tick labels (default: class indices); ticks shown up to 30 classes.
        ax: Axes to draw on; a new figure otherwise.
        title: Axes title.
        is_cosine: whether the input already is the cosine matrix.
        annotate: write each value in its cell (default: when ``C <= 12``).

    Returns:
        The Axes; ``ax.images[0].get_array()`` is the ``(C, C)`` cosine matrix.
    """
    values = _numpy(anchors_or_cosine).astype(np.float64)
    if is_cosine and (values.ndim != 2 or values.shape[0] != values.shape[1]):
        raise ValueError(f"a cosine matrix must be square, got {values.shape}")
    cos = values if is_cosine else cosine_matrix(values)
    num_classes = cos.shape[0]
    names = _names(class_names, num_classes)
    ax = _axes(ax)
    image = ax.imshow(cos, cmap="RdBu_r", vmin=-1.0, vmax=1.0, interpolation="nearest")
    ax.figure.colorbar(image, ax=ax, label="cosine similarity (unitless)")
    if num_classes <= 30:
        ax.set_xticks(range(num_classes), names, rotation=90 if num_classes > 10 else 0)
        ax.set_yticks(range(num_classes), names)
    ax.grid(False)
    if num_classes <= 12 if annotate is None else annotate:
        for (i, j), value in np.ndenumerate(cos):
            ax.text(
                j,
                i,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if abs(value) > 0.6 else "black",
            )
    ax.set(title=title, xlabel="class", ylabel="class")
    return ax


# --------------------------------------------------------------------------------- embedding


def _subsample(n: int, max_points: int, seed: int) -> np.ndarray:
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def _embed(
    feats: np.ndarray, anchors: np.ndarray | None, method: str, seed: int
) -> tuple[np.ndarray, np.ndarray | None, tuple[str, str]]:
    """2-D coordinates of the features and anchors, plus axis labels."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    if method == "pca":
        pca = PCA(n_components=2, random_state=seed).fit(feats)
        var = 100 * pca.explained_variance_ratio_
        labels = (f"PC 1 ({var[0]:.1f} % of variance)", f"PC 2 ({var[1]:.1f} % of variance)")
        return pca.transform(feats), None if anchors is None else pca.transform(anchors), labels
    if method == "tsne":
        # Anchors are embedded jointly: t-SNE has no transform for unseen points.
        joint = feats if anchors is None else np.concatenate([feats, anchors])
        perplexity = min(30.0, (len(joint) - 1) / 3)
        # One OpenMP thread: with torch loaded, two OpenMP runtimes fight over the cores and
        # t-SNE ran 3-30x slower than single-threaded in our measurements.
        with threadpool_limits(limits=1, user_api="openmp"):
            tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=seed)
            xy = tsne.fit_transform(joint)
        labels = ("t-SNE 1 (arbitrary units)", "t-SNE 2 (arbitrary units)")
        return xy[: len(feats)], None if anchors is None else xy[len(feats) :], labels
    raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")


def plot_embedding(
    features: ArrayLike,
    labels: ArrayLike,
    anchors: ArrayLike | None = None,
    method: str = "pca",
    class_names: Sequence[str] | None = None,
    ax: Axes | None = None,
    max_points: int = 3000,
    seed: int = 0,
    title: str | None = None,
) -> Axes:
    """2-D scatter of features coloured by class, with anchors as black-edged stars.

    Args:
        features: ``(N, D)`` features.
        labels: ``(N,)`` integer classes.
        anchors: optional ``(C, D)`` anchors, projected by the same PCA (or embedded jointly
            with the features for t-SNE); one star per class in that class's colour.
        method: ``"pca"`` (linear, keeps global geometry) or ``"tsne"`` (local neighbourhoods).
        class_names: names for the legend (default: class indices).
        ax: Axes to draw on.
        max_points: above this many features, a seeded random subset is drawn.
        seed: seed of the subsample, PCA and t-SNE.
        title: Axes title (default names the method).
    """
    feats = _numpy(features).astype(np.float64)
    labs = _numpy(labels).astype(np.int64)
    anc = None if anchors is None else _numpy(anchors).astype(np.float64)
    num_classes = max(int(labs.max()) + 1, 0 if anc is None else len(anc))
    keep = _subsample(len(feats), max_points, seed)
    feats, labs = feats[keep], labs[keep]
    xy, anchor_xy, (xlabel, ylabel) = _embed(feats, anc, method, seed)

    ax = _axes(ax)
    palette, names = class_palette(num_classes), _names(class_names, num_classes)
    for c in np.unique(labs):
        pts = xy[labs == c]
        ax.scatter(
            pts[:, 0], pts[:, 1], s=8, alpha=0.6, color=palette[c], label=names[c], linewidths=0
        )
    if anchor_xy is not None:
        for c, (x, y) in enumerate(anchor_xy):
            ax.plot(
                x,
                y,
                marker="*",
                markersize=18,
                linestyle="none",
                color=palette[c],
                markeredgecolor="black",
                markeredgewidth=1.2,
                zorder=3,
            )
    _embedding_legend(ax, n_classes=len(np.unique(labs)), anchors=anchor_xy is not None)
    shown = f"{len(keep)} points" + (" (subsampled)" if len(keep) < len(_numpy(labels)) else "")
    ax.set(
        xlabel=xlabel,
        ylabel=ylabel,
        title=title or f"{method.upper() if method == 'pca' else 't-SNE'} of features, {shown}",
    )
    return ax


def _embedding_legend(ax: Axes, n_classes: int, anchors: bool) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if n_classes > MAX_LEGEND_CLASSES:
        handles, labels = [], []
    if anchors:
        handles.append(
            Line2D(
                [],
                [],
                marker="*",
                markersize=12,
                linestyle="none",
                color="0.7",
                markeredgecolor="black",
            )
        )
        labels.append("anchor")
    if handles:
        ax.legend(
            handles,
            labels,
            title="class",
            loc="upper left",
            bbox_to_anchor=(1.02, 1),
            markerscale=1.0,
            frameon=False,
        )


# ---------------------------------------------------------------------------- training curves


def _is_binary(series: pd.Series) -> bool:
    values = series.dropna().unique()
    return len(values) > 0 and set(np.asarray(values, dtype=float)) <= {0.0, 1.0}


def plot_training_curves(
    history: pd.DataFrame,
    columns: Sequence[str],
    x: str = "step",
    ax: Axes | None = None,
    smooth: int = 0,
    title: str = "Training curves",
    xlabel: str | None = None,
    ylabel: str = "value",
    logy: bool = False,
) -> Axes:
    """Line plot of logged columns against ``x``.

    Args:
        history: one row per logging step; columns may be sparse (NaN where not logged).
        columns: columns to draw, one line each.
        x: column for the horizontal axis (the index if absent from ``history``).
        ax: Axes to draw on.
        smooth: window (rows) of a trailing rolling mean; ``0``/``1`` plot the raw values.
            The raw curve stays visible underneath, faded. 0/1 columns such as a gate flag
            are never smoothed and are drawn as steps.
        title: Axes title.
        xlabel: horizontal-axis label (default: ``x``, e.g. ``"step"``).
        ylabel: vertical-axis label; give units, e.g. ``"loss (nats)"``.
        logy: logarithmic vertical axis.
    """
    missing = [c for c in columns if c not in history.columns]
    if missing:
        raise KeyError(f"columns {missing} not in history (have {list(history.columns)})")
    ax = _axes(ax)
    for col in columns:
        data = history[[col]].assign(_x=history[x] if x in history else history.index)
        data = data.dropna().sort_values("_x")
        y = data[col].astype(float)
        if _is_binary(y):
            ax.plot(data["_x"], y, drawstyle="steps-post", label=col)
        elif smooth > 1:
            (raw,) = ax.plot(data["_x"], y, alpha=0.25, linewidth=1)
            ax.plot(
                data["_x"],
                y.rolling(smooth, min_periods=1).mean(),
                color=raw.get_color(),
                label=f"{col} (rolling mean, {smooth} rows)",
            )
        else:
            ax.plot(data["_x"], y, label=col)
    if logy:
        ax.set_yscale("log")
    ax.set(title=title, xlabel=xlabel or x, ylabel=ylabel)
    ax.legend(frameon=False)
    return ax


# -------------------------------------------------------------------------------- per class


def plot_per_class(
    values: ArrayLike | Mapping[str, ArrayLike],
    counts: ArrayLike,
    class_names: Sequence[str] | None = None,
    ax: Axes | None = None,
    ylabel: str = "accuracy (fraction)",
    label: str | None = None,
    title: str = "Per-class results, head → tail",
    log_counts: bool = True,
) -> Axes:
    """Bars per class ordered by training count (descending), counts as a line on a twin axis.

    Args:
        values: ``(C,)`` per-class values, or ``{method: (C,)}`` for grouped bars.
        counts: ``(C,)`` training samples per class; sets the order (stable for ties).
        class_names: tick labels; ticks are drawn only for up to 30 classes.
        ax: Axes to draw on; the count axis is ``ax.twinx()``.
        ylabel: label of the bars' axis, with units.
        label: legend name of a single ``values`` array.
        title: Axes title.
        log_counts: logarithmic count axis (long-tailed counts span decades).
    """
    series = dict(values) if isinstance(values, Mapping) else {label or "value": values}
    n = _numpy(counts).astype(float)
    order = np.argsort(-n, kind="stable")
    names = np.array(_names(class_names, len(n)))[order]
    ax = _axes(ax)
    width = 0.8 / len(series)
    pos = np.arange(len(n))
    colours = sns.color_palette("deep", len(series))
    for i, (name, vals) in enumerate(series.items()):
        v = _numpy(vals).astype(float)
        if v.shape != n.shape:
            raise ValueError(f"values for {name!r} have shape {v.shape}, counts {n.shape}")
        ax.bar(
            pos + (i - (len(series) - 1) / 2) * width,
            v[order],
            width,
            label=str(name),
            color=colours[i],
        )
    ax.set(ylabel=ylabel, xlim=(-0.6, len(n) - 0.4))
    ax.set_title(title, pad=24)  # room for the legend row
    if len(n) <= 30:
        ax.set_xticks(pos, names, rotation=90 if len(n) > 10 else 0)
        ax.set_xlabel("class (sorted by training count, head → tail)")
    else:
        ax.set_xlabel("class rank by training count (head → tail)")
    _count_axis(ax, pos, n[order], log_counts)
    return ax


def _count_axis(ax: Axes, pos: np.ndarray, counts: np.ndarray, log: bool) -> None:
    twin = ax.twinx()
    twin.plot(pos, counts, color="0.2", marker=".", linewidth=1.2, label="training count")
    log = log and bool((counts > 0).all())  # a zero count has no place on a log axis
    twin.set_ylabel("training samples per class" + (" (log scale)" if log else ""))
    if log:
        twin.set_yscale("log")
    twin.grid(False)
    handles = ax.get_legend_handles_labels()
    extra = twin.get_legend_handles_labels()
    # Above the axes: inside it would hide bars of one of the two scales.
    ax.legend(
        handles[0] + extra[0],
        handles[1] + extra[1],
        frameon=False,
        loc="lower left",
        bbox_to_anchor=(0.0, 1.0),
        ncol=len(handles[0]) + 1,
    )


# ---------------------------------------------------------------------------- segmentation


def _image_hwc(image: ArrayLike, mean: Sequence[float] | None, std: Sequence[float] | None):
    img = _numpy(image).astype(np.float64)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)  # CHW -> HWC
    if std is not None:
        img = img * np.asarray(std, dtype=np.float64)
    if mean is not None:
        img = img + np.asarray(mean, dtype=np.float64)
    if img.max() > 1.5:  # 0-255 pixel values
        img = img / 255.0
    img = np.clip(img, 0.0, 1.0)
    return img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img


def colorize_mask(mask: ArrayLike, num_classes: int, ignore_index: int | None = 255) -> np.ndarray:
    """RGB image ``(H, W, 3)`` of a label map: class colours, background (0) black, ignore
    white. Raises ValueError for values outside ``[0, C)`` other than ``ignore_index``."""
    m = _numpy(mask).astype(np.int64)
    ignore = m == ignore_index if ignore_index is not None else np.zeros_like(m, dtype=bool)
    if ((m[~ignore] < 0) | (m[~ignore] >= num_classes)).any():
        raise ValueError(f"mask values must lie in [0, {num_classes}) or be {ignore_index}")
    lut = np.array([to_rgb(c) for c in class_palette(num_classes, background_index=0)])
    rgb = lut[np.where(ignore, 0, m)]
    rgb[ignore] = IGNORE_RGB
    return rgb


def plot_segmentation_overlay(
    image: ArrayLike,
    mask: ArrayLike,
    pred: ArrayLike | None = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    title: str | None = None,
) -> Figure:
    """Image, ground truth and (optionally) prediction side by side.

    Args:
        image: ``(3, H, W)``, ``(H, W, 3)`` or grey ``(H, W)``; floats in ``[0, 1]`` or
            0-255 values, or normalised values when ``mean``/``std`` are given.
        mask: ``(H, W)`` integer ground truth.
        pred: ``(H, W)`` integer prediction, or ``None`` for two panels.
        num_classes: ``C`` (default: largest label present + 1).
        class_names: legend names (default: class indices).
        ignore_index: label drawn white and left out of the legend's classes.
        mean, std: per-channel normalisation to undo, ``image * std + mean``.
        title: figure title.

    Returns:
        The Figure; the legend lists only the classes present in the mask or prediction.
    """
    maps = [_numpy(m).astype(np.int64) for m in ([mask] if pred is None else [mask, pred])]
    num_classes = num_classes or _classes_present(maps, ignore_index)
    names = _names(class_names, num_classes)
    panels = [("image", _image_hwc(image, mean, std)), ("ground truth", maps[0])]
    if pred is not None:
        acc = _pixel_accuracy(maps[1], maps[0], ignore_index)
        panels.append((f"prediction (pixel acc. {acc:.1f} %)", maps[1]))

    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 4.0), squeeze=False)
    for ax, (name, data) in zip(axes[0], panels, strict=True):
        rgb = data if name == "image" else colorize_mask(data, num_classes, ignore_index)
        ax.imshow(rgb, cmap="gray" if rgb.ndim == 2 else None, interpolation="nearest")
        h, w = rgb.shape[:2]
        ax.set_title(f"{name}\n{h} × {w} px", fontsize=10)
        ax.set(xticks=[], yticks=[])  # keep the frame: white ignore pixels touch the border
        ax.grid(False)
    if title:  # before the legend's tight_layout, which then leaves room for it
        fig.suptitle(title)
    _segmentation_legend(fig, maps, num_classes, names, ignore_index)
    return fig


def _classes_present(maps: list[np.ndarray], ignore_index: int) -> int:
    """Largest label in any map, ignore pixels aside, plus one."""
    return max(int(m[m != ignore_index].max(initial=0)) + 1 for m in maps)


def _pixel_accuracy(pred: np.ndarray, truth: np.ndarray, ignore_index: int) -> float:
    """Percentage of non-ignore pixels predicted right (NaN if all are ignored)."""
    valid = truth != ignore_index
    return (pred[valid] == truth[valid]).mean() * 100 if valid.any() else np.nan


def _segmentation_legend(
    fig: Figure, maps: list[np.ndarray], num_classes: int, names: list[str], ignore_index: int
) -> None:
    palette = class_palette(num_classes, background_index=0)
    values = np.unique(np.concatenate([m.ravel() for m in maps]))
    handles = [
        Patch(facecolor=palette[c], edgecolor="0.5", label=names[c])
        for c in values
        if c != ignore_index
    ]
    if (values == ignore_index).any():
        handles.append(Patch(facecolor=IGNORE_RGB, edgecolor="0.5", label="ignore"))
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=min(len(handles), 6),
        frameon=False,
        bbox_to_anchor=(0.5, -0.02),
    )
    fig.tight_layout(rect=(0, 0.08 + 0.04 * ((len(handles) - 1) // 6), 1, 1))


# ------------------------------------------------------------------------------------ sweeps


def sweep_summary(df: pd.DataFrame, x: str, y: str, hue: str) -> pd.DataFrame:
    """Mean, sample standard deviation (ddof=1; 0 for a single seed) and row count of ``y``
    over the rows sharing ``(hue, x)``; columns ``hue, x, mean, std, n``, sorted."""
    stats = df.groupby([hue, x], sort=True)[y].agg(["mean", "std", "count"]).reset_index()
    return stats.rename(columns={"count": "n"}).fillna({"std": 0.0})


def plot_sweep(
    df: pd.DataFrame,
    x: str,
    y: str,
    hue: str,
    ax: Axes | None = None,
    logx: bool = False,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
) -> Axes:
    """Mean ± standard deviation over seeds of ``y`` against ``x``, one line per ``hue``.

    Args:
        df: one row per run (e.g. per seed); rows sharing ``(x, hue)`` are aggregated.
        x: numeric column for the horizontal axis (e.g. a regularisation weight).
        y: metric column.
        hue: column whose values get separate lines (e.g. the method).
        ax: Axes to draw on.
        logx: logarithmic horizontal axis.
        title, xlabel, ylabel: labels; default to the column names (give units).

    Error bars are the sample standard deviation (ddof=1) over the rows of each point.
    """
    stats = sweep_summary(df, x, y, hue)
    ax = _axes(ax)
    for level, group in stats.groupby(hue, sort=True):
        xs = group[x].to_numpy(float) if pd.api.types.is_numeric_dtype(group[x]) else group[x]
        ax.errorbar(
            xs,
            group["mean"].to_numpy(float),
            yerr=group["std"].to_numpy(float),
            marker="o",
            capsize=3,
            label=str(level),
        )
    if logx:
        ax.set_xscale("log")
    lo, hi = int(stats["n"].min()), int(stats["n"].max())
    seeds = f"{lo}" if lo == hi else f"{lo}–{hi}"
    ax.legend(title=f"{hue} (mean ± std over {seeds} seeds)", frameon=False)
    ax.set(title=title or f"{y} vs {x}", xlabel=xlabel or x, ylabel=ylabel or y)
    return ax


def plot_bars(
    df: pd.DataFrame,
    x: str,
    y: str,
    hue: str | None = None,
    ax: Axes | None = None,
    horizontal: bool = False,
    title: str | None = None,
    ylabel: str | None = None,
) -> Axes:
    """Bars of the mean of ``y`` per category ``x`` (grouped by ``hue``), error bars = std.

    Rows sharing ``(x, hue)`` are aggregated (e.g. seeds); categories keep their order of
    first appearance in ``df``. Error bars are the sample standard deviation (ddof=1).
    """
    ax = _axes(ax)
    group_col = hue or "_all"
    data = df if hue else df.assign(_all=y)
    stats = sweep_summary(data, x, y, group_col)
    categories = list(dict.fromkeys(df[x]))
    groups = list(dict.fromkeys(data[group_col]))
    width = 0.8 / len(groups)
    positions = np.arange(len(categories))
    draw = ax.barh if horizontal else ax.bar
    for i, level in enumerate(groups):
        rows = stats[stats[group_col] == level].set_index(x).reindex(categories)
        offset = positions - 0.4 + width * (i + 0.5)
        err = {"xerr" if horizontal else "yerr": rows["std"].to_numpy(float)}
        draw(offset, rows["mean"].to_numpy(float), width, label=str(level) if hue else None,
             capsize=3, **err)
    set_ticks, set_label = (ax.set_yticks, ax.set_xlabel) if horizontal else (ax.set_xticks,
                                                                              ax.set_ylabel)
    set_ticks(positions, categories, **({} if horizontal else {"rotation": 30, "ha": "right"}))
    set_label(ylabel or y)
    if horizontal:  # first category on top; set, not toggled, so shared axes stay right
        ax.set_ylim(len(categories) - 0.5, -0.5)
    n = int(stats["n"].max())
    if hue:
        ax.legend(title=f"{hue} (mean ± std over {n} seeds)", frameon=False)
    ax.set_title(title or f"{y} by {x} (mean ± std over {n} seeds)")
    return ax


def plot_metric_curves(
    df: pd.DataFrame,
    y: str,
    x: str = "epoch",
    hue: str = "method",
    ax: Axes | None = None,
    hue_order: Sequence[str] | None = None,
    linestyle: str = "-",
    label_suffix: str = "",
    logy: bool = False,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
) -> Axes:
    """Mean of ``y`` against ``x``, one line per ``hue`` level, with a ± std band over runs.

    Rows sharing ``(hue, x)`` (e.g. seeds) are averaged; where there are several, a shaded
    band shows ± one sample standard deviation (ddof=1). NaN values are dropped first, so a
    level whose ``y`` is all NaN (e.g. an anchor metric of a method without anchors) draws
    nothing. A level keeps its colour (``deep`` palette, by position in ``hue_order``,
    default: order of first appearance) across calls, so a second call with
    ``linestyle="--"`` and a ``label_suffix`` can add a related column to the same Axes.
    """
    from matplotlib.ticker import MaxNLocator

    order = list(hue_order) if hue_order is not None else list(dict.fromkeys(df[hue]))
    colours = sns.color_palette("deep", len(order))
    stats = sweep_summary(df.dropna(subset=[y]), x, y, hue)
    ax = _axes(ax)
    for i, level in enumerate(order):
        rows = stats[stats[hue] == level]
        if rows.empty:
            continue
        xs, mean, std = (rows[c].to_numpy(float) for c in (x, "mean", "std"))
        ax.plot(xs, mean, linestyle=linestyle, marker="o", markersize=4, color=colours[i],
                label=f"{level}{label_suffix}")
        if (rows["n"] > 1).any():
            ax.fill_between(xs, mean - std, mean + std, color=colours[i], alpha=0.15,
                            linewidth=0)
    if logy:
        ax.set_yscale("log")
    if len(stats) and np.allclose(stats[x], np.round(stats[x])):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs, steps
    n_lo, n_hi = (int(stats["n"].min()), int(stats["n"].max())) if len(stats) else (0, 0)
    runs = f"{n_lo}" if n_lo == n_hi else f"{n_lo}–{n_hi}"
    ax.set(title=title or f"{y} (mean ± std over {runs} runs)", xlabel=xlabel or x,
           ylabel=ylabel or y)
    ax.legend(frameon=False)
    return ax


# ------------------------------------------------------------------------ anchor diagnostics


def plot_value_histograms(
    samples: Mapping[str, ArrayLike],
    ax: Axes | None = None,
    bins: int = 60,
    title: str = "Distribution of values",
    xlabel: str = "value (feature units)",
    logy: bool = True,
) -> Axes:
    """Overlaid step histograms (densities on shared bins) of the entries of several tensors.

    Args:
        samples: ``{name: tensor of any shape}``; every entry is one value.
        ax: Axes to draw on.
        bins: about this many bins span the overall range of all samples; 0 is a bin edge.
        title: Axes title.
        xlabel: horizontal-axis label, with units.
        logy: logarithmic density axis (a spike of exact zeros, as after a ReLU, would
            otherwise flatten everything else).

    Each legend entry gives the sample size and the shares of negative and exactly-zero
    values, the two facts that tell post-ReLU features from raw Gaussian vectors.
    """
    if not samples:
        raise ValueError("samples is empty")
    flat = {name: _numpy(values).astype(np.float64).ravel() for name, values in samples.items()}
    lo = min(v.min() for v in flat.values())
    hi = max(v.max() for v in flat.values())
    width = (hi - lo) / bins if hi > lo else 1.0 / bins
    # bins aligned on 0, so exact zeros (post-ReLU) fill the bin [0, width), not one straddling 0
    edges = width * np.arange(np.floor(lo / width), np.floor(hi / width) + 2)
    ax = _axes(ax)
    colours = sns.color_palette("deep", len(flat))
    peak = 0.0
    for colour, (name, values) in zip(colours, flat.items(), strict=True):
        negative, zero = 100 * (values < 0).mean(), 100 * (values == 0).mean()
        density, _, _ = ax.hist(values, bins=edges, density=True, histtype="step",
                                linewidth=1.8, color=colour,
                                label=f"{name}: n={values.size}, {negative:.0f} % < 0,"
                                      f" {zero:.0f} % = 0")
        peak = max(peak, float(np.max(density)))
    if logy:
        ax.set_yscale("log")
    if peak > 0:  # headroom above the tallest bar for the legend
        ax.set_ylim(top=peak * 30 if logy else peak * 1.4)
    ax.axvline(0.0, color="0.4", linewidth=0.8, linestyle=":")
    ax.set(title=title, xlabel=xlabel, ylabel="density" + (" (log scale)" if logy else ""))
    ax.legend(frameon=False, loc="upper right")
    return ax


def plot_anchor_probabilities(
    probs: ArrayLike,
    steps: ArrayLike | None = None,
    filter_conf: float | None = 0.9,
    update_conf: float | None = 0.8,
    gate_step: int | None = None,
    class_names: Sequence[str] | None = None,
    ax: Axes | None = None,
    title: str = "Own-class probability of each projected anchor",
) -> Axes:
    """One line per anchor: the probability the classifier gives anchor ``i`` for class ``i``.

    Args:
        probs: ``(T, C)`` probabilities in ``[0, 1]`` over ``T`` logged steps.
        steps: ``(T,)`` step numbers (default ``0..T-1``).
        filter_conf: drawn as a dashed line: above it an anchor leaves the anchor CE.
        update_conf: drawn as a dotted line: the gate needs every anchor above it.
        gate_step: step at which the gate first opened; marked by a vertical line
            (``None``: not drawn, the title says the gate stayed closed).
        class_names: legend names (default: class indices); class colours as everywhere.
        ax: Axes to draw on; the legend sits to the right of it.
        title: Axes title.
    """
    p = _numpy(probs).astype(np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be (T, C), got shape {p.shape}")
    xs = np.arange(len(p)) if steps is None else _numpy(steps).astype(np.float64)
    if len(xs) != len(p):
        raise ValueError(f"{len(xs)} steps for {len(p)} rows of probabilities")
    num_classes = p.shape[1]
    names, palette = _names(class_names, num_classes), class_palette(num_classes)
    ax = _axes(ax)
    for c in range(num_classes):
        ax.plot(xs, p[:, c], color=palette[c], linewidth=1.4, label=names[c])
    if filter_conf is not None and filter_conf < 1:
        ax.axhline(filter_conf, color="0.2", linestyle="--", linewidth=1.0,
                   label=f"filter_conf = {filter_conf:g}")
    if update_conf is not None:
        ax.axhline(update_conf, color="0.2", linestyle=":", linewidth=1.2,
                   label=f"update_conf = {update_conf:g}")
    if gate_step is not None:
        ax.axvline(gate_step, color="black", linewidth=1.2, alpha=0.7,
                   label=f"gate opens (step {gate_step})")
    elif title:
        title = f"{title} (gate still closed)"
    ax.set(title=title, xlabel="step", ylabel="probability of own class", ylim=(0.0, 1.02))
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return ax


# ------------------------------------------------------------------ segmentation comparison


def plot_segmentation_comparison(
    images: ArrayLike,
    masks: ArrayLike,
    preds: Mapping[str, ArrayLike],
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    title: str | None = None,
) -> Figure:
    """Several scenes, one per row: image, ground truth, then each method's prediction.

    Args:
        images: ``(N, 3, H, W)``, ``(N, H, W, 3)`` or grey ``(N, H, W)``; as in
            :func:`plot_segmentation_overlay`.
        masks: ``(N, H, W)`` integer ground truth.
        preds: ``{method: (N, H, W) integer predictions}``, one column each, in order.
        num_classes: ``C`` (default: largest label present + 1).
        class_names: legend names (default: class indices).
        ignore_index: label drawn white, left out of the accuracy and the class legend.
        mean, std: per-channel normalisation to undo, ``image * std + mean``.
        title: figure title.

    Returns:
        The Figure; each prediction panel's title gives its pixel accuracy on that scene (%),
        the legend lists the classes present in any shown map.
    """
    truth = _numpy(masks).astype(np.int64)
    if truth.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {truth.shape}")
    pred_maps = {name: _numpy(p).astype(np.int64) for name, p in preds.items()}
    for name, p in pred_maps.items():
        if p.shape != truth.shape:
            raise ValueError(f"predictions of {name!r} have shape {p.shape}, masks {truth.shape}")
    maps = [truth, *pred_maps.values()]
    num_classes = num_classes or _classes_present(maps, ignore_index)
    names = _names(class_names, num_classes)
    n_rows, n_cols = len(truth), 2 + len(pred_maps)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.5 * n_cols, 2.5 * n_rows + 0.9),
                             squeeze=False)
    image_batch = _numpy(images)
    for row in range(n_rows):
        panels = [("image", _image_hwc(image_batch[row], mean, std)),
                  ("ground truth", colorize_mask(truth[row], num_classes, ignore_index))]
        for name, p in pred_maps.items():
            acc = _pixel_accuracy(p[row], truth[row], ignore_index)
            panels.append((f"{name}\n(pixel acc. {acc:.1f} %)",
                           colorize_mask(p[row], num_classes, ignore_index)))
        for ax, (name, data) in zip(axes[row], panels, strict=True):
            ax.imshow(data, cmap="gray" if data.ndim == 2 else None, interpolation="nearest")
            ax.set_title(name if row == 0 or "\n" in name else "", fontsize=9)
            ax.set(xticks=[], yticks=[])
            ax.grid(False)
        h, w = truth.shape[1:]
        axes[row, 0].set_ylabel(f"scene {row + 1}\n{h} × {w} px", fontsize=9)
    if title:  # before the legend's tight_layout, which then leaves room for it
        fig.suptitle(title)
    _segmentation_legend(fig, maps, num_classes, names, ignore_index)
    return fig
