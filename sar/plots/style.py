"""The house style: figure size, one colour per method and per class, readable labels.

Every plotting function of :mod:`sar.plots` (and the README figures of
:mod:`sar.experiments.report`) takes its colours from here, so a reader learns them once:

* a **method** has one colour in every figure (:data:`METHOD_COLORS`, :func:`method_color`,
  :func:`level_colors`); the names the notebooks display ("CE", "SAR", "prototypes", "CE
  run") map to the same colours as the registry names (``ce``, ``sar``, ``prototype``);
* a **class** has one colour in every figure (:func:`class_palette`), keyed by its *name*
  when names are given (:data:`CLASS_COLORS`), so Trouser is the same orange as classification
  label 1 and as segmentation label 2; a class named ``"background"`` is black in masks,
  embeddings and legends alike;
* a **logged quantity** (task CE, anchor CE, pull, the gate flags, ...) has one colour that no
  method uses (:data:`TERM_COLORS`, :func:`series_colors`), so a loss curve never looks like a
  method;
* raw column names become labels (:func:`pretty_label`: ``few_accuracy`` -> "few-shot
  accuracy") and log axes get plain tick labels (:func:`readable_log_axis`).
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from ..data.constants import FASHION_MNIST_CLASSES

ArrayLike = torch.Tensor | np.ndarray


FIGSIZE = (6.4, 4.4)


BACKGROUND_RGB = (0.0, 0.0, 0.0)


IGNORE_RGB = (1.0, 1.0, 1.0)


MAX_LEGEND_CLASSES = 20  # beyond this a per-class legend hides the plot


Colour = tuple[float, float, float]
_TAB20: list[Colour] = [tuple(c) for c in plt.get_cmap("tab20").colors]

# one colour per method of sar.methods and of the experiments' grids; a tuned or reduced
# variant of a method takes the light partner of its colour, except the τ variants of logit
# adjustment, which share panels with their base method and take darker shades of its hue
# (light ones left their dots too faint to tell apart)
METHOD_COLORS: dict[str, Colour] = {
    "ce": _TAB20[14],  # grey: the plain baseline
    "sar": _TAB20[6],  # red
    "sar_tuned": _TAB20[7],  # light red
    "logit_adjusted": _TAB20[0],  # blue
    "sar_logit_adjusted": _TAB20[8],  # purple
    "prototype": _TAB20[2],  # orange
    "center": _TAB20[16],  # olive
    "etf_dr": _TAB20[4],  # green
    "etf": _TAB20[5],  # light green
    "sar_anchor_ce_only": _TAB20[12],  # pink
    "sar_class_pull": _TAB20[10],  # brown
    "logit_adjusted_tau0.5": to_rgb("#0b3c7d"),  # navy
    "logit_adjusted_tau0.25": to_rgb("#0f8b8d"),  # dark teal
    "sar_logit_adjusted_tau0.5": to_rgb("#4a1f6e"),  # dark violet
}

# how a method is written in legends and tick labels
METHOD_LABELS: dict[str, str] = {
    "ce": "CE",
    "sar": "SAR",
    "sar_tuned": "SAR (tuned)",
    "logit_adjusted": "logit-adjusted CE",
    "sar_logit_adjusted": "SAR + logit-adjusted CE",
    "prototype": "prototypes",
    "center": "center loss",
    "etf_dr": "ETF head + DR loss",
    "etf": "ETF head + CE",
    "sar_anchor_ce_only": "SAR, anchor CE only",
    "sar_class_pull": "SAR, class-balanced pull",
    "logit_adjusted_tau0.5": "logit-adjusted CE, τ 0.5",
    "logit_adjusted_tau0.25": "logit-adjusted CE, τ 0.25",
    "sar_logit_adjusted_tau0.5": "SAR + logit-adjusted CE, τ 0.5",
}

# other spellings the notebooks and tables use -> registry name
METHOD_ALIASES: dict[str, str] = {
    "cross-entropy": "ce",
    "plain ce": "ce",
    "prototypes": "prototype",
    "center loss": "center",
    "sar (both)": "sar",
    "sar (default)": "sar",
    "logit adjustment": "logit_adjusted",
    "etf-dr": "etf_dr",
    "pull off (anchor ce only)": "sar_anchor_ce_only",
    **{label.lower(): name for name, label in METHOD_LABELS.items()},
}

# colours for levels that are not methods, when they share a figure with methods
_RESERVE: list[Colour] = [_TAB20[i] for i in (18, 3, 11, 13, 17, 15)]

# one colour per class name (lower case), whatever the class's index in a data set: the
# Fashion-MNIST classes take the ten dark tab20 colours in label order, as class_palette gives
# classification labels 0-9, so a segmentation set that puts background first keeps them
CLASS_COLORS: dict[str, Colour] = {
    name.lower(): colour for name, colour in zip(FASHION_MNIST_CLASSES, _TAB20[0::2], strict=True)
}

# one colour per logged quantity of sar.train.fit's history (and a few the notebooks log),
# none of them a method's colour nor a tab20 colour
TERM_COLORS: dict[str, Colour] = {
    name: to_rgb(hex_colour) for name, hex_colour in {
        "task_loss": "#000000",  # black
        "anchor_ce": "#00796b",  # teal
        "pull": "#c2185b",  # magenta
        "loss": "#1f2a6b",  # navy: the total
        "reg_loss": "#4a148c",  # indigo
        "gate_opened": "#1b5e20",  # dark green
        "gate_passed": "#e0a800",  # gold
        "min_anchor_prob": "#882255",  # wine
        "anchor_accuracy": "#006064",  # dark cyan
        "pull_on": "#e65100",  # dark orange
        "lr": "#37474f",  # slate
        "ema_distance": "#4e342e",  # dark brown
    }.items()
}

# raw result columns -> axis and tick labels
COLUMN_LABELS: dict[str, str] = {
    "accuracy": "accuracy",
    "many_accuracy": "many-shot accuracy",
    "medium_accuracy": "medium-shot accuracy",
    "few_accuracy": "few-shot accuracy",
    "val_accuracy": "validation accuracy",
    "val_few_accuracy": "validation few-shot accuracy",
    "pixel_accuracy": "pixel accuracy",
    "many_iou": "many-shot IoU",
    "medium_iou": "medium-shot IoU",
    "few_iou": "few-shot IoU",
    "imbalance_factor": "imbalance factor",
    "nc1": "NC1",
    "ratio": "compactness / separation",
    "anchor_cosine": "cosine to own anchor",
    "anchor_cosine_other": "cosine to other anchors",
    "task_loss": "task CE",
    "anchor_ce": "anchor CE",
    "min_anchor_prob": "lowest anchor probability",
    "gate_opened": "gate opened",
    "gate_passed": "gate passed",
    "anchor_accuracy": "anchor accuracy",
    "reg_loss": "regulariser loss",
    "pull_on": "pull on",
    "lr": "learning rate",
    "ema_distance": "semantic anchors − current projection",
}


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


def class_palette(num_classes: int, background_index: int | None = None,
                  class_names: Sequence[str] | None = None) -> list[tuple]:
    """One RGB colour (floats in ``[0, 1]``) per class.

    Without ``class_names``: up to 20 classes, the ten dark ``tab20`` colours, then their ten
    light partners, so class ``c`` has the same colour whatever ``num_classes`` is (and classes
    0-9 match ``tab10``); beyond 20, evenly spaced ``husl`` hues.

    With ``class_names``, a class is coloured by its *name*: a name of :data:`CLASS_COLORS`
    (case-insensitive) has that colour at any index, so Trouser is the same in a
    classification set (label 1) and in the segmentation scenes (label 2, after background);
    the other names take, in index order, the colours above that no named class holds.

    ``background_index`` (segmentation), and any class whose name is ``"background"``, is
    painted black (:data:`BACKGROUND_RGB`), as in the masks; every other class keeps its colour.
    """
    names = [str(name).strip().lower() for name in (class_names or [])][:num_classes]
    fixed = {i: CLASS_COLORS[name] for i, name in enumerate(names) if name in CLASS_COLORS}
    if fixed:
        taken = set(fixed.values())
        pool = _index_colours(max(num_classes, 20))  # all of tab20 up to 20 classes
        spare = iter([c for c in pool if c not in taken])
        colours = [fixed[i] if i in fixed else next(spare) for i in range(num_classes)]
    else:
        colours = _index_colours(num_classes)
    background = {background_index} if background_index is not None else set()
    background |= {i for i, name in enumerate(names) if name == "background"}
    for index in background:
        colours[index] = BACKGROUND_RGB
    return colours


def _index_colours(count: int) -> list[Colour]:
    if count <= 20:
        return (_TAB20[0::2] + _TAB20[1::2])[:count]
    return [tuple(c) for c in sns.color_palette("husl", count)]


def canonical_method(name: object) -> str | None:
    """The registry name (``"sar"``) of a method written as the notebooks and tables do
    (``"SAR"``, ``"prototypes"``, ``"CE run"``, ``"SAR prediction"``); None if not a method."""
    text = re.sub(r"\s+", " ", str(name).strip().lower())
    for candidate in (text, re.sub(r" (run|prediction|predictions)$", "", text)):
        if candidate in METHOD_COLORS:
            return candidate
        if candidate in METHOD_ALIASES:
            return METHOD_ALIASES[candidate]
        if (snake := re.sub(r"[ -]", "_", candidate)) in METHOD_COLORS:
            return snake
    return None


def method_color(name: object, default: Colour | None = None) -> Colour:
    """The fixed colour of a method (any spelling :func:`canonical_method` knows).

    Raises:
        KeyError: an unknown method and no ``default``.
    """
    method = canonical_method(name)
    if method is not None:
        return METHOD_COLORS[method]
    if default is not None:
        return default
    raise KeyError(f"{name!r} is not a known method (known: {sorted(METHOD_COLORS)})")


def level_colors(levels: Iterable[object]) -> list[Colour]:
    """Colours for the lines or bars of ``levels``, in order.

    When at least one level is a method, methods get their fixed colours and the other
    levels colours no method uses (in order of appearance); otherwise the ``deep`` palette.
    """
    levels = list(levels)
    if not any(canonical_method(level) for level in levels):
        return [tuple(c) for c in sns.color_palette("deep", len(levels))]
    spare = iter(_RESERVE + [tuple(c) for c in sns.color_palette("husl", len(levels))])
    return [method_color(level) if canonical_method(level) else next(spare) for level in levels]


def strength_styles(labels: Sequence[str], method: str = "SAR",
                    control: str | None = None) -> dict[str, dict[str, object]]:
    """Colour, line style and marker for runs of one method at several strengths (e.g. SAR at
    ``trade_off`` 0.1, 1 and 10), to pass as ``**style`` to :func:`plot_metric_curves`.

    The method keeps its fixed hue (:func:`method_color`): the strengths run from a light
    shade to a dark one in the order given, and ``control`` (a run with the term switched off,
    e.g. ``trade_off`` 0), if given, is grey, so that it never reads as one more strength.
    Line styles and markers differ too, so the runs stay apart in greyscale.

    Returns:
        ``{"colors": {label: colour}, "linestyles": {label: str}, "markers": {label: str}}``.

    Raises:
        ValueError: ``control`` not among ``labels``, or more than four other labels.
    """
    labels = list(labels)
    if control is not None and control not in labels:
        raise ValueError(f"control {control!r} is not one of the labels {labels}")
    strengths = [label for label in labels if label != control]
    if len(strengths) > 4:
        raise ValueError(f"at most four strengths besides the control, got {len(strengths)}")
    base = method_color(method)
    light, dark = sns.light_palette(base, 4)[1], sns.dark_palette(base, 4)[1]
    shades = (sns.blend_palette([light, base, dark], len(strengths)) if len(strengths) > 1
              else [base])
    colours = dict(zip(strengths, [tuple(c) for c in shades], strict=True))
    styles = dict(zip(strengths, ["-", "--", "-.", (0, (5, 1))], strict=False))
    markers = dict(zip(strengths, ["o", "s", "D", "^"], strict=False))
    if control is not None:
        colours[control], styles[control], markers[control] = (0.55, 0.55, 0.55), ":", "v"
    return {"colors": {label: colours[label] for label in labels},
            "linestyles": {label: styles[label] for label in labels},
            "markers": {label: markers[label] for label in labels}}


def series_colors(columns: Iterable[object]) -> list[Colour]:
    """Colours for curves of logged columns, in order: a method (``"CE run"``) its fixed
    colour, a logged quantity of :data:`TERM_COLORS` (``"anchor_ce"``, ``"pull"``) its fixed
    colour, anything else a colour that neither uses (the same one for the same position)."""
    columns = list(columns)
    used = set(METHOD_COLORS.values()) | set(TERM_COLORS.values())
    spare = iter([c for c in _RESERVE if c not in used]
                 + [tuple(c) for c in sns.color_palette("husl", len(columns))])
    return [method_color(c) if canonical_method(c) else TERM_COLORS.get(str(c)) or next(spare)
            for c in columns]


def method_label(name: object) -> str:
    """How a level is written in a legend: a registry method name becomes its display label
    (``"sar_logit_adjusted"`` -> "SAR + logit-adjusted CE"); anything else is kept."""
    return METHOD_LABELS.get(str(name), str(name))


def pretty_label(name: object) -> str:
    """A raw column or method name as a label: :data:`COLUMN_LABELS`, then
    :func:`method_label`; anything else is kept as written."""
    return COLUMN_LABELS.get(str(name), method_label(name))


def tick_labels(labels: Sequence[object], width: int = 14) -> list[str]:
    """:func:`pretty_label` of each category, wrapped onto lines of about ``width``
    characters, so tick labels need no rotation."""
    return [textwrap.fill(pretty_label(label), width, break_long_words=False,
                          break_on_hyphens=False)
            for label in labels]


def _plain_number(value: float, _position: object = None) -> str:
    """``0.05``, ``2``, ``100,000``, ``1,000,000``: no exponent notation on a tick."""
    return f"{value:,.0f}" if value >= 1000 else f"{value:g}"


def readable_log_axis(axis: Axis) -> None:
    """Plain tick labels on a log axis (``0.2, 0.5, 1, 2``, not ``2 x 10^-1``); ticks at
    1, 2 and 5 per decade when the axis spans at most two decades, one per decade beyond."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lo, hi = sorted(axis.get_view_interval())
    decades = np.log10(hi / lo) if lo > 0 else np.inf
    subs = (1.0, 2.0, 5.0) if decades <= 2 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(_plain_number))
    axis.set_minor_formatter(NullFormatter())


def figure_legend(fig: Figure, ax: Axes, title: str | None = None, **kwargs) -> None:
    """Move ``ax``'s legend to the right of ``fig``: one legend for a grid of panels.
    Other panels' legends are removed; ``kwargs`` go to ``fig.legend``."""
    legend = ax.get_legend()
    if legend is None:
        raise ValueError("the Axes has no legend to move")
    handles, labels = legend.legend_handles, [t.get_text() for t in legend.get_texts()]
    title = title if title is not None else legend.get_title().get_text()
    for other in fig.axes:
        if other.get_legend() is not None:
            other.get_legend().remove()
    options = {"loc": "center left", "bbox_to_anchor": (1.0, 0.5), "frameon": False}
    fig.legend(handles, labels, title=title or None, **(options | kwargs))


def legend_entries(axes: Sequence[Axes]) -> tuple[list[Artist], list[str]]:
    """The legend handles and labels of several panels, each label once (its first handle),
    in order of first appearance: for one figure legend under panels that repeat entries."""
    entries: dict[str, Artist] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    return list(entries.values()), list(entries)


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
