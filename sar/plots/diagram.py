"""SAR at a glance: the whole method as one diagram drawn by code, with the full loss."""

from __future__ import annotations

import inspect
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from .style import BACKGROUND_RGB, method_color

KNOBS = ("trade_off_ce", "trade_off", "filter_conf", "update_conf", "momentum")

# column centres (axes fraction) and row heights of the three rows
_X = (0.075, 0.243, 0.411, 0.579, 0.747, 0.915)
_TOP, _MID, _LOW = 0.77, 0.49, 0.21
_W, _H = 0.14, 0.16
_TASK, _SAR, _LOSS = "#e6e6e6", "#f7d4d4", "#fff0c2"


def sar_defaults(regularizer: Any = None) -> dict[str, float]:
    """The knobs the diagram shows: those of ``regularizer`` (a
    :class:`~sar.SemanticAnchorRegularizer`), else the constructor's defaults (read from its
    signature, so the diagram never disagrees with the code)."""
    if regularizer is not None:
        return {name: float(getattr(regularizer, name)) for name in KNOBS}
    from ..regularizer import SemanticAnchorRegularizer

    params = inspect.signature(SemanticAnchorRegularizer.__init__).parameters
    return {name: float(params[name].default) for name in KNOBS}


def _num(value: float) -> str:
    text = f"{value:g}"
    return text if "." in text or "e" in text else f"{value:.1f}"


def loss_equation(regularizer: Any = None) -> str:
    """The full training loss with each term's weight, e.g.
    ``"L = CE + 1.0·L_anchor + 0.1·L_pull"`` at the defaults."""
    knobs = sar_defaults(regularizer)
    return (f"L = CE + {_num(knobs['trade_off_ce'])}·L_anchor + "
            f"{_num(knobs['trade_off'])}·L_pull")


def _box(ax: Axes, x: float, y: float, name: str, detail: str, colour: str,
         width: float = _W, bold: bool = False) -> None:
    """A rounded box: ``name`` (11 pt) over ``detail`` (9 pt), centred at ``(x, y)``."""
    ax.add_patch(FancyBboxPatch((x - width / 2, y - _H / 2), width, _H,
                                boxstyle="round,pad=0.006,rounding_size=0.012",
                                facecolor=colour, edgecolor="0.25",
                                linewidth=1.8 if bold else 1.0, transform=ax.transAxes))
    ax.text(x, y + 0.035, name, ha="center", va="center", fontsize=11, linespacing=1.15,
            fontweight="bold" if bold else "normal", transform=ax.transAxes)
    ax.text(x, y - 0.035, detail, ha="center", va="center", fontsize=9, color="0.2",
            linespacing=1.15, transform=ax.transAxes)


def _arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float], colour: str = "0.2",
           style: str = "-", label: str | None = None, rad: float = 0.0) -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14,
                                 color=colour, linewidth=1.4, linestyle=style,
                                 connectionstyle=f"arc3,rad={rad}", transform=ax.transAxes))
    if label:
        ax.text((start[0] + end[0]) / 2 + 0.006, (start[1] + end[1]) / 2, label, fontsize=9,
                color=colour, ha="left", va="center", transform=ax.transAxes, style="italic")


def plot_sar_pipeline(regularizer: Any = None, ax: Axes | None = None) -> Figure:
    """The task path and SAR's branch side by side, with the full loss and its defaults.

    Top row (SAR, training only): fixed anchors -> projector -> projected anchors -> the
    *shared* classifier -> anchor probabilities -> anchor CE. Bottom row (the task): image ->
    encoder -> feature -> the same classifier -> logits -> CE. Middle row: the gate (every
    anchor classified right and above ``update_conf``) lets the projected anchors into an EMA
    (the semantic anchors), which the pull draws the features toward; the gate also switches the
    pull on, on the steps it passes (the default ``pull_after_open=False``). Under it, the loss as
    one equation and the knobs' values.

    Args:
        regularizer: show this regulariser's knobs instead of the defaults.
        ax: Axes to draw on (its frame is hidden); a new 13 x 6.2 inch figure otherwise, which
            stays readable at a notebook's width.

    Returns:
        The Figure. Its texts name every stage, so ``[t.get_text() for t in ax.texts]``
        lists them.
    """
    knobs = sar_defaults(regularizer)
    if ax is None:
        fig, ax = plt.subplots(figsize=(12.5, 6.0))
        fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.92)
    fig = ax.figure
    ax.set_axis_off()
    ax.set(xlim=(0, 1), ylim=(0, 1))
    red = method_color("sar")
    x0, x1, x2, x3, x4, x5 = _X
    half = _W / 2

    def row(y: float) -> None:
        for a, b in zip(_X[:-1], _X[1:], strict=True):
            _arrow(ax, (a + half, y), (b - half, y))

    # SAR's anchor branch (top)
    _box(ax, x0, _TOP, "anchors A", "(C × D), fixed,\nrandom Gaussian", _SAR)
    _box(ax, x1, _TOP, "projector g", "3 × (Linear, BN,\nReLU), trained", _SAR)
    _box(ax, x2, _TOP, "projected\nanchors g(A)", "(C × D)", _SAR)
    _box(ax, x3, _TOP, "shared\nclassifier W", "the task head", _TASK, bold=True)
    _box(ax, x4, _TOP, "probabilities p", "p_c: anchor c's\nown class", _SAR)
    _box(ax, x5, _TOP, "L_anchor", "anchor CE; hard anchors\nweigh more; p_c > "
         f"{_num(knobs['filter_conf'])}\n(filter_conf) left out", _LOSS, width=0.16)
    row(_TOP)

    # the task path (bottom)
    _box(ax, x0, _LOW, "image x", "and its label y", _TASK)
    _box(ax, x1, _LOW, "encoder", "any backbone\n(smp, ResNet, ...)", _TASK)
    _box(ax, x2, _LOW, "feature f", "(B × D) or\n(B × D × h × w)", _TASK)
    _box(ax, x3, _LOW, "shared\nclassifier W", "same weights", _TASK, bold=True)
    _box(ax, x4, _LOW, "logits", "(B × C)", _TASK)
    _box(ax, x5, _LOW, "CE", "the task loss,\nCE(logits, y)", _LOSS, width=0.16)
    row(_LOW)
    _arrow(ax, (x3, _TOP - _H / 2), (x3, _LOW + _H / 2), colour="0.45", style="--")
    ax.text(x3 + 0.006, _TOP - _H / 2 - 0.05, "one module,\nused twice", fontsize=9, color="0.35",
            style="italic", va="center", transform=ax.transAxes)

    # gate -> EMA -> pull (middle)
    ema_x, pull_x = (x2 + x3) / 2 - 0.08, (x0 + x1) / 2 - 0.02
    _box(ax, x4, _MID, "gate", f"every p_c > update_conf\n{_num(knobs['update_conf'])}"
         " and argmax right", _SAR, width=0.16)
    _box(ax, ema_x, _MID, "EMA: semantic anchors s", "s ← m·s + (1 − m)·g(A)\n"
         f"momentum m = {_num(knobs['momentum'])}", _SAR, width=0.2)
    _box(ax, pull_x, _MID, "L_pull",
         "‖f − s_y‖² / D, batch mean:\neach feature to its class's s\n(s fixed)", _LOSS, width=0.2)
    _arrow(ax, (x4, _TOP - _H / 2), (x4, _MID + _H / 2), colour=red)
    _arrow(ax, (x4 - 0.08, _MID), (ema_x + 0.1, _MID), colour=red)
    ax.text((x4 - 0.08 + ema_x + 0.1) / 2, _MID + 0.03, "when it passes", fontsize=9,
            color=red, ha="center", style="italic", transform=ax.transAxes)
    _arrow(ax, (x2, _TOP - _H / 2), (x2, _MID + _H / 2), colour=red)
    _arrow(ax, (ema_x - 0.1, _MID), (pull_x + 0.1, _MID), colour=red)
    # the gate also switches the pull on: only on steps it passes (pull_after_open=False)
    _arrow(ax, (x4 - 0.03, _MID - _H / 2), (pull_x + 0.07, _MID - _H / 2), colour=red, rad=-0.09)
    ax.text(x4 - 0.015, _MID - _H / 2 - 0.05, "switches the pull on\n(steps it passes)",
            fontsize=9, color=red, ha="left", va="center", style="italic", linespacing=1.1,
            transform=ax.transAxes)
    _arrow(ax, (pull_x - 0.03, _MID - _H / 2), (x2 - 0.05, _LOW + _H / 2), colour=red,
           style="--")
    ax.text(pull_x - 0.04, (_MID + _LOW) / 2, "moves f\ntoward s_y",
            fontsize=9, color=red, style="italic", ha="right", va="center", linespacing=1.1,
            transform=ax.transAxes)

    ax.text(0.5, 0.035, f"{loss_equation(regularizer)}      gate: update_conf "
            f"{_num(knobs['update_conf'])}   filter: filter_conf {_num(knobs['filter_conf'])}"
            f"   EMA: momentum {_num(knobs['momentum'])}", ha="center", va="center",
            fontsize=12.5, fontweight="bold", color=BACKGROUND_RGB, transform=ax.transAxes)
    ax.text(0.0, 0.975, "pink and red: SAR, training only (inference is the grey task path "
            "alone)   yellow: loss terms", fontsize=9.5, color="0.3", va="top",
            transform=ax.transAxes)
    ax.set_title("Semantic Anchor Regularization at a glance", fontsize=14, pad=10)
    return fig
