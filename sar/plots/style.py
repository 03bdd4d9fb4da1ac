"""The house style: figure size, one colour per class, and small shared helpers."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from matplotlib.axes import Axes

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
