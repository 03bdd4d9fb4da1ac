"""Anchor geometry and feature pictures: cosine matrices, 2-D features and projections with
their targets as stars."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .style import (
    MAX_LEGEND_CLASSES,
    ArrayLike,
    _axes,
    _names,
    _numpy,
    class_palette,
)


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
    colorbar: bool = True,
) -> Axes:
    """Heatmap of pairwise cosines, diverging colour map fixed to ``[-1, 1]``.

    Args:
        anchors_or_cosine: anchors ``(C, D)``, or a precomputed cosine matrix ``(C, C)``
            when ``is_cosine=True`` (an explicit flag, as a square anchor matrix is legal).
        class_names: ``C`` tick labels (default: class indices); ticks shown up to 30 classes.
        ax: Axes to draw on; a new figure otherwise.
        title: Axes title.
        is_cosine: whether the input already is the cosine matrix.
        annotate: write each value in its cell, two decimals, never "-0.00" (default: when
            ``C <= 12``).
        colorbar: draw the colour bar (a grid of heatmaps shares one: draw it on one panel).

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
    if colorbar:
        ax.figure.colorbar(image, ax=ax, label="cosine similarity (unitless)")
    if num_classes <= 30:
        long = max(map(len, names)) > 3
        ax.set_xticks(range(num_classes), names, rotation=90 if long or num_classes > 10 else 0)
        ax.set_yticks(range(num_classes), names)
    ax.grid(False)
    if num_classes <= 12 if annotate is None else annotate:
        for (i, j), value in np.ndenumerate(cos):
            text = f"{value:.2f}"
            ax.text(
                j,
                i,
                "0.00" if text == "-0.00" else text,
                ha="center",
                va="center",
                fontsize=9 if num_classes <= 8 else 8,
                color="white" if abs(value) > 0.6 else "black",
            )
    ax.set(title=title, xlabel="class", ylabel="class")
    return ax


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


def _edge_for(colour: object) -> str:
    """Black around a light marker, white around a dark one (a black star on black points)."""
    from matplotlib.colors import to_rgb

    red, green, blue = to_rgb(colour)
    return "white" if 0.299 * red + 0.587 * green + 0.114 * blue < 0.35 else "black"


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
    legend: bool = True,
    anchor_label: str = "anchor",
    background_index: int | None = None,
) -> Axes:
    """2-D scatter of features coloured by class, with anchors as stars (edged in black, or
    in white on a dark class colour).

    Args:
        features: ``(N, D)`` features.
        labels: ``(N,)`` integer classes.
        anchors: optional ``(C, D)`` anchors, projected by the same PCA (or embedded jointly
            with the features for t-SNE); one star per class in that class's colour.
        method: ``"pca"`` (linear, keeps global geometry) or ``"tsne"`` (local neighbourhoods).
        class_names: names for the legend (default: class indices). A class named
            "background" is drawn black, as in the masks (:func:`class_palette`).
        ax: Axes to draw on.
        max_points: above this many features, a seeded random subset is drawn (to show
            every class, cap each one first: ``collect_features(..., per_class=...)``).
        seed: seed of the subsample, PCA and t-SNE.
        title: Axes title (default names the method).
        legend: draw the class legend (a grid of panels shares one:
            :func:`~sar.plots.style.figure_legend`).
        anchor_label: legend name of the stars ("prototype" for a prototype baseline).
        background_index: a class drawn black although not named "background".
    """
    feats = _numpy(features).astype(np.float64)
    labs = _numpy(labels).astype(np.int64)
    anc = None if anchors is None else _numpy(anchors).astype(np.float64)
    num_classes = max(int(labs.max()) + 1, 0 if anc is None else len(anc))
    keep = _subsample(len(feats), max_points, seed)
    feats, labs = feats[keep], labs[keep]
    xy, anchor_xy, (xlabel, ylabel) = _embed(feats, anc, method, seed)

    ax = _axes(ax)
    names = _names(class_names, num_classes)
    palette = class_palette(num_classes, background_index, class_names)
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
                markeredgecolor=_edge_for(palette[c]),
                markeredgewidth=1.2,
                zorder=3,
            )
    if legend:
        _embedding_legend(ax, n_classes=len(np.unique(labs)),
                          anchors=anchor_label if anchor_xy is not None else None)
    shown = f"{len(keep)} points" + (" (subsampled)" if len(keep) < len(_numpy(labels)) else "")
    ax.set(
        xlabel=xlabel,
        ylabel=ylabel,
        title=title or f"{method.upper() if method == 'pca' else 't-SNE'} of features, {shown}",
    )
    return ax


def _embedding_legend(ax: Axes, n_classes: int, anchors: str | None) -> None:
    handles, labels = ax.get_legend_handles_labels()
    # a class's handle as a dot of readable size and full colour, not its tiny faint scatter
    handles = [Line2D([], [], marker="o", markersize=6, linestyle="none",
                      color=handle.get_facecolor()[0][:3]) if isinstance(handle, PathCollection)
               else handle for handle in handles]
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
        labels.append(anchors)
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


def plot_target_distances(
    own: ArrayLike,
    nearest_other: ArrayLike,
    labels: ArrayLike,
    class_names: Sequence[str] | None = None,
    ax: Axes | None = None,
    max_points: int = 2000,
    seed: int = 0,
    limit: float | None = None,
    title: str | None = None,
    legend: bool = True,
) -> Axes:
    """Each feature as a point (distance to its own target, distance to the nearest other).

    The inputs are :func:`sar.metrics.target_distances`: exact distances in the feature
    space, in units of the targets' RMS spacing, so nothing is projected. Collapse onto the
    targets moves points to the left edge; points above the dashed diagonal are nearer their
    own target than any other (a nearest-target classifier gets them right).

    Args:
        own, nearest_other: ``(N,)`` distances (unitless); labels: ``(N,)`` classes.
        class_names: legend names (the fixed class palette colours the points).
        max_points: above this many points a seeded random subset is drawn; the points are
            drawn in a seeded random order, so that no class hides the others.
        limit: upper limit of both axes (default: the data's 99th percentile), so that panels
            of a grid can share one scale.
        title: Axes title; legend: draw the class legend (a grid shares one:
            :func:`~sar.plots.style.figure_legend`).
    """
    x, y = _numpy(own).astype(np.float64), _numpy(nearest_other).astype(np.float64)
    labs = _numpy(labels).astype(np.int64)
    keep = _subsample(len(x), max_points, seed)
    x, y, labs = x[keep], y[keep], labs[keep]
    ax = _axes(ax)
    num_classes = int(labs.max()) + 1
    palette, names = class_palette(num_classes, None, class_names), _names(class_names, num_classes)
    order = np.random.default_rng(seed).permutation(len(x))  # no class drawn over the rest
    ax.scatter(x[order], y[order], s=7, alpha=0.55, linewidths=0,
               c=[palette[c] for c in labs[order]])
    top = limit if limit is not None else float(np.percentile(np.concatenate([x, y]), 99))
    ax.plot([0, top], [0, top], linestyle="--", color="0.4", linewidth=1, label="own = nearest")
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="distance to own target (× RMS target spacing)",
           ylabel="distance to nearest other target", title=title or "Features and their targets")
    if legend:
        handles = [Line2D([], [], marker="o", markersize=5, linestyle="none", color=palette[c],
                          label=names[c]) for c in np.unique(labs)]
        ax.legend(handles=[*handles, *ax.get_lines()], fontsize=8, loc="lower right")
    return ax


def _square_limits(points: np.ndarray, must_show: np.ndarray | None,
                   coverage: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """Square x and y limits holding the central ``coverage`` of ``points`` and every row of
    ``must_show``, with a 12 % margin (a star drawn at the edge stays whole), so that one unit
    is as long on both axes."""
    tail = 50 * (1 - coverage)
    lo, hi = np.percentile(points, tail, axis=0), np.percentile(points, 100 - tail, axis=0)
    if must_show is not None and len(must_show):
        lo, hi = np.minimum(lo, must_show.min(0)), np.maximum(hi, must_show.max(0))
    centre, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1e-6) * 1.12
    return (centre[0] - half, centre[0] + half), (centre[1] - half, centre[1] + half)


def _feature_view(features: ArrayLike, targets: ArrayLike | None = None,
                  max_points: int = 2000, seed: int = 0,
                  coverage: float = 0.99) -> tuple[tuple[float, float], tuple[float, float]]:
    """The square view ``((x0, x1), (y0, y1))`` that :func:`plot_features_2d` computes for
    these features and targets: every target and the central ``coverage`` of the (seeded
    subsample of the) features on each axis, with a 12 % margin."""
    xy = _numpy(features).astype(np.float64)
    stars = None if targets is None else _numpy(targets).astype(np.float64)
    return _square_limits(xy[_subsample(len(xy), max_points, seed)], stars, coverage)


def _union_view(views: Sequence[tuple[tuple[float, float], tuple[float, float]]]
                ) -> tuple[tuple[float, float], tuple[float, float]]:
    """The smallest square view holding every one of ``views``."""
    lo = np.array([[v[0][0], v[1][0]] for v in views]).min(0)
    hi = np.array([[v[0][1], v[1][1]] for v in views]).max(0)
    centre, half = (lo + hi) / 2, float((hi - lo).max()) / 2
    return (centre[0] - half, centre[0] + half), (centre[1] - half, centre[1] + half)


def plot_features_2d(
    features: ArrayLike,
    labels: ArrayLike,
    targets: ArrayLike | None = None,
    class_names: Sequence[str] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    max_points: int = 2000,
    seed: int = 0,
    coverage: float = 0.99,
    legend: bool = True,
    target_label: str = "target",
    view: tuple[tuple[float, float], tuple[float, float]] | None = None,
    hollow_targets: bool = False,
) -> Axes:
    """Two-dimensional features as they are, no projection: a dot per feature in its class's
    colour, a star per class target (semantic anchor, prototype, class mean) in the same colour.

    Both axes have the same scale, so distances read true. The square view holds every target
    and the central ``coverage`` of the features on each axis; the number of features outside
    it (if any) is added to the title, so nothing leaves the picture unsaid and no note covers
    a star.

    Args:
        features: ``(N, 2)``; labels: ``(N,)`` integer classes; targets: ``(C, 2)`` or None.
        class_names: legend names; colours by name (:func:`~sar.plots.style.class_palette`).
        max_points: above this many features, a seeded random subset is drawn.
        legend: draw the class legend (a grid of panels shares one:
            :func:`~sar.plots.style.figure_legend`); ``target_label`` names the stars in it.
        view: ``((x0, x1), (y0, y1))`` to draw instead of the computed square view (panels
            sharing one scale); the points outside it are counted.
        hollow_targets: draw each star as an outline only (its class's colour inside a white
            rim), larger and on top of the dots, so the star shows over a cloud
            and the cloud shows through the star.

    Raises:
        ValueError: features that are not ``(N, 2)`` (project wider ones with
            :func:`plot_embedding`), or targets that are not ``(C, 2)``.
    """
    xy, labs = _numpy(features).astype(np.float64), _numpy(labels).astype(np.int64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"features must be (N, 2), got {xy.shape}: draw wider features with"
                         " plot_embedding (PCA or t-SNE)")
    stars = None if targets is None else _numpy(targets).astype(np.float64)
    if stars is not None and (stars.ndim != 2 or stars.shape[1] != 2):
        raise ValueError(f"targets must be (C, 2), got {stars.shape}")
    num_classes = max(int(labs.max()) + 1, 0 if stars is None else len(stars))
    palette = class_palette(num_classes, None, class_names)
    names = _names(class_names, num_classes)
    keep = _subsample(len(xy), max_points, seed)
    xlim, ylim = view if view is not None else _square_limits(xy[keep], stars, coverage)
    ax = _axes(ax)
    for c in np.unique(labs[keep]):
        pts = xy[keep][labs[keep] == c]
        ax.scatter(pts[:, 0], pts[:, 1], s=5, alpha=0.5, color=palette[c], label=names[c],
                   linewidths=0)
    if stars is not None:
        for c, (x, y) in enumerate(stars):
            if hollow_targets:  # an outline on top of the dots: the cloud shows through it
                ax.plot(x, y, marker="*", markersize=17, linestyle="none", color=palette[c],
                        markerfacecolor="none", markeredgecolor=palette[c], markeredgewidth=2.2,
                        zorder=3, path_effects=[  # a white rim sets the star off the cloud
                            patheffects.Stroke(linewidth=5.0, foreground="white"),
                            patheffects.Normal()])
            else:
                ax.plot(x, y, marker="*", markersize=15, linestyle="none", color=palette[c],
                        markeredgecolor=_edge_for(palette[c]), markeredgewidth=1.0, zorder=3)
    outside = ((xy[keep, 0] < xlim[0]) | (xy[keep, 0] > xlim[1]) | (xy[keep, 1] < ylim[0])
               | (xy[keep, 1] > ylim[1])).sum()
    title = title or f"{len(keep)} features"
    if outside:
        title += f"\n({outside} of {len(keep)} points outside the view)"
    ax.set(xlim=xlim, ylim=ylim, aspect="equal", xlabel="feature 1 (feature units)",
           ylabel="feature 2 (feature units)")
    ax.set_title(title, fontsize=9 if outside else None)
    if legend:
        _embedding_legend(ax, n_classes=len(np.unique(labs[keep])),
                          anchors=target_label if stars is not None else None)
    return ax


def plot_feature_grid(
    panels: Mapping[str, Mapping[int, tuple[ArrayLike, ArrayLike, ArrayLike | None]]],
    class_names: Sequence[str] | None = None,
    target_names: Mapping[str, str] | None = None,
    panel_size: float = 2.9,
    share: str | Mapping[str, str | None] | None = None,
    **options: Any,
) -> Figure:
    """Small multiples of :func:`plot_features_2d`: a row per run, a column per epoch, every
    panel's title in one size (11 pt), a note such as "no targets yet" included.

    Args:
        panels: ``{row label: {epoch: (features (N, 2), labels (N,), targets (C, 2) or
            None)}}``; rows in order, columns the sorted union of the epochs (an epoch a row
            lacks stays empty).
        class_names: class names, one legend for the whole figure, on the right.
        target_names: ``{row label: what its stars are}`` (e.g. "semantic anchors"), written
            under the row label; a panel without targets says so.
        panel_size: width and height of one panel (inches).
        share: ``None``: each panel has its own square view; ``"row"``: the panels of a row
            share one, the smallest square holding each panel's own view, so the epochs of a
            run are drawn in one fixed frame, and only the row's first panel keeps its tick
            labels on the vertical axis; or ``{row label: None or "row"}`` to choose per row
            (rows left out: ``None``), e.g. a row whose later panels would be specks in a
            frame made for its first.
        options: passed to :func:`plot_features_2d` (``max_points``, ``coverage``, ...).

    Returns:
        The Figure; ``fig.axes`` row by row.
    """
    shares = dict(share) if isinstance(share, Mapping) else dict.fromkeys(panels, share)
    if not set(shares.values()) <= {None, "row"}:
        raise ValueError(f"share must be None or 'row' (or a mapping to those), got {share!r}")
    epochs = sorted({epoch for row in panels.values() for epoch in row})
    target_names = dict(target_names or {})
    view_options = {k: options[k] for k in ("max_points", "seed", "coverage") if k in options}
    fig, axes = plt.subplots(len(panels), len(epochs), squeeze=False,
                             figsize=(panel_size * len(epochs) + 1.8, panel_size * len(panels)))
    for row_axes, (label, row) in zip(axes, panels.items(), strict=True):
        shared = shares.get(label) == "row"
        view = (_union_view([_feature_view(f, t, **view_options) for f, _, t in row.values()])
                if shared else None)
        for ax, epoch in zip(row_axes, epochs, strict=True):
            if epoch not in row:
                ax.set_axis_off()
                continue
            features, labels, targets = row[epoch]
            shown = target_names.get(label, "targets")
            title = f"epoch {epoch}" + ("" if targets is not None else f"\n(no {shown} yet)")
            plot_features_2d(features, labels, targets, class_names=class_names, ax=ax,
                             title=title, legend=False, view=view, **options)
            ax.set(xlabel="", ylabel="")
            ax.title.set_fontsize(11)  # one size for every panel, with or without a note
            ax.tick_params(labelsize=8, labelleft=not shared or epoch == min(row))
        row_axes[0].set_ylabel(f"{label}\nstars: {target_names.get(label, 'targets')}",
                               fontsize=10)
    num_classes = max(max(int(_numpy(labels).max()) + 1, 0 if targets is None else len(targets))
                      for row in panels.values() for _, labels, targets in row.values())
    palette, names = class_palette(num_classes, None, class_names), _names(class_names,
                                                                            num_classes)
    handles = [Line2D([], [], marker="o", markersize=6, linestyle="none", color=colour)
               for colour in palette]
    hollow = bool(options.get("hollow_targets"))
    handles.append(Line2D([], [], marker="*", markersize=12, linestyle="none", color="0.7",
                          markerfacecolor="none" if hollow else "0.7",
                          markeredgecolor="0.4" if hollow else "black",
                          markeredgewidth=1.6 if hollow else 1.0))
    fig.legend(handles, [*names, "target (see row)"], title="class", loc="center left",
               bbox_to_anchor=(1.0, 0.5), frameon=False)
    own = [label for label in panels if shares.get(label) != "row"]
    scale = ("each panel" if len(own) == len(panels) else "each row" if not own
             else f"each row ({', '.join(own)}: each panel)")
    fig.supxlabel(f"feature 1 (feature units); {scale} has its own scale, equal on both axes",
                  fontsize=9)
    fig.supylabel("feature 2 (feature units)", fontsize=9)
    fig.tight_layout()
    return fig
