"""Segmentation masks: colourised, overlaid on images, compared between methods."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .style import IGNORE_RGB, ArrayLike, _names, _numpy, class_palette


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


def colorize_mask(mask: ArrayLike, num_classes: int, ignore_index: int | None = 255,
                  class_names: Sequence[str] | None = None) -> np.ndarray:
    """RGB image ``(H, W, 3)`` of a label map: class colours (keyed by ``class_names`` when
    given, see :func:`~sar.plots.style.class_palette`), background (0) black, ignore white.
    Raises ValueError for values outside ``[0, C)`` other than ``ignore_index``."""
    m = _numpy(mask).astype(np.int64)
    ignore = m == ignore_index if ignore_index is not None else np.zeros_like(m, dtype=bool)
    if ((m[~ignore] < 0) | (m[~ignore] >= num_classes)).any():
        raise ValueError(f"mask values must lie in [0, {num_classes}) or be {ignore_index}")
    palette = class_palette(num_classes, background_index=0, class_names=class_names)
    lut = np.array([to_rgb(c) for c in palette])
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
        rgb = (data if name == "image"
               else colorize_mask(data, num_classes, ignore_index, class_names))
        ax.imshow(rgb, cmap="gray" if rgb.ndim == 2 else None, interpolation="nearest")
        h, w = rgb.shape[:2]
        ax.set_title(f"{name}\n{h} × {w} px", fontsize=10)
        ax.set(xticks=[], yticks=[])  # keep the frame: white ignore pixels touch the border
        ax.grid(False)
    if title:  # before the legend's tight_layout, which then leaves room for it
        fig.suptitle(title)
    _segmentation_legend(fig, maps, num_classes, names, ignore_index, class_names)
    return fig


def _classes_present(maps: list[np.ndarray], ignore_index: int) -> int:
    """Largest label in any map, ignore pixels aside, plus one."""
    return max(int(m[m != ignore_index].max(initial=0)) + 1 for m in maps)


def _pixel_accuracy(pred: np.ndarray, truth: np.ndarray, ignore_index: int) -> float:
    """Percentage of non-ignore pixels predicted right (NaN if all are ignored)."""
    valid = truth != ignore_index
    return (pred[valid] == truth[valid]).mean() * 100 if valid.any() else np.nan


def _segmentation_legend(
    fig: Figure, maps: list[np.ndarray], num_classes: int, names: list[str], ignore_index: int,
    class_names: Sequence[str] | None = None,
) -> None:
    palette = class_palette(num_classes, background_index=0, class_names=class_names)
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
                  ("ground truth", colorize_mask(truth[row], num_classes, ignore_index,
                                                 class_names))]
        for name, p in pred_maps.items():
            acc = _pixel_accuracy(p[row], truth[row], ignore_index)
            panels.append((f"{name}\n(pixel acc. {acc:.1f} %)",
                           colorize_mask(p[row], num_classes, ignore_index, class_names)))
        for ax, (name, data) in zip(axes[row], panels, strict=True):
            ax.imshow(data, cmap="gray" if data.ndim == 2 else None, interpolation="nearest")
            ax.set_title(name if row == 0 or "\n" in name else "", fontsize=9)
            ax.set(xticks=[], yticks=[])
            ax.grid(False)
        h, w = truth.shape[1:]
        axes[row, 0].set_ylabel(f"scene {row + 1}\n{h} × {w} px", fontsize=9)
    if title:  # before the legend's tight_layout, which then leaves room for it
        fig.suptitle(title)
    _segmentation_legend(fig, maps, num_classes, names, ignore_index, class_names)
    return fig
