"""Every training method by name: one call wraps a model and gives the criterion it trains with.

    model, criterion = sar.methods.build("sar", net)                        # paper defaults
    model, criterion = sar.methods.build("logit_adjusted", net, counts=counts)
    history = sar.train.fit(model, loader, criterion=criterion, ...)

The same names serve classifiers (a linear head, ``fc`` by default: :class:`~sar.SARClassifier`)
and smp segmentation models (:class:`~sar.SARSegmentationModel`). Every method is the same
network in the same wrapper; only the regulariser, the head or the loss differs, so methods
built from identically seeded networks start from identical weights.

=========================  ==============================================================
name                       what it trains with
=========================  ==============================================================
``ce``                     plain cross-entropy (:class:`~sar.NoRegularizer`)
``sar``                    SAR, Ge et al. AAAI 2024 (:class:`~sar.SemanticAnchorRegularizer`)
``sar_class_pull``         SAR with a class-balanced pull (``pull_reduction="class"``: the
                           mean distance within each class present, then over classes, so
                           background does not dominate the pull); not in the paper
``prototype``              EMA class-mean prototypes (:class:`~sar.PrototypeRegularizer`)
``center``                 center loss, Wen et al. ECCV 2016 (:class:`~sar.CenterLoss`)
``etf_dr``                 a fixed simplex-ETF head on normalised features with the
                           dot-regression loss, Yang et al. NeurIPS 2022
``etf``                    a fixed simplex-ETF head on raw features with plain CE (not Yang
                           et al.'s recipe; the variant of the committed result rows)
``logit_adjusted``         logit-adjusted CE, Menon et al. ICLR 2021
``sar_logit_adjusted``     SAR trained with the logit-adjusted CE
=========================  ==============================================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from torch import nn

from .baselines import (
    CenterLoss,
    DotRegressionLoss,
    ETFClassifier,
    LogitAdjustedCrossEntropy,
    NoRegularizer,
    PrototypeRegularizer,
)
from .heads import head_names as find_head_names
from .heads import one_per_head
from .models import RegularizedModel, SARClassifier, SARSegmentationModel, smp_head_names
from .regularizer import SemanticAnchorRegularizer

RegularizerFactory = Callable[..., nn.Module]

def _no_regularizer(num_classes: int, feat_dim: int, ignore_index: int | None = None,
                    **options: Any) -> NoRegularizer:
    """Plain cross-entropy's regulariser: none, so it takes no options but the label of the
    void positions (which ``fit`` and ``evaluate`` read from it)."""
    if options:
        raise ValueError(f"plain cross-entropy has no regulariser to take the options"
                         f" {sorted(options)}; pass them to a method that has one, e.g. 'sar'")
    return NoRegularizer(ignore_index)


# name -> regulariser built from (num_classes, feat_dim, **options)
_REGULARIZERS: dict[str, RegularizerFactory] = {
    "ce": _no_regularizer,
    "sar": SemanticAnchorRegularizer,
    "prototype": PrototypeRegularizer,
    "center": CenterLoss,
    "sar_class_pull": partial(SemanticAnchorRegularizer, pull_reduction="class"),
}
# name -> the regulariser it pairs with the logit-adjusted loss
_LOGIT_ADJUSTED = {"logit_adjusted": "ce", "sar_logit_adjusted": "sar"}
# name -> ETFClassifier variant and the criterion it trains with (None: cross-entropy)
_ETF_HEADS: dict[str, tuple[str, Callable[[], nn.Module] | None]] = {
    "etf_dr": ("dr", DotRegressionLoss),
    "etf": ("ce", None),
}
METHODS = (*_REGULARIZERS, *_ETF_HEADS, *_LOGIT_ADJUSTED)
# the methods whose regulariser is a SemanticAnchorRegularizer (they take its options)
SAR_METHODS = ("sar", "sar_class_pull", "sar_logit_adjusted")


def is_segmentation_model(model: nn.Module) -> bool:
    """True for smp-style models (a ``segmentation_head``), False for classifiers."""
    return hasattr(model, "segmentation_head")


def _head_dims(model: nn.Module, head_names: Sequence[str]) -> list[tuple[int, int]]:
    """``(num_classes, feat_dim)`` of each head (the smp segmentation head for smp models)."""
    if is_segmentation_model(model):
        conv = model.get_submodule(smp_head_names(model)[1])
        return [(conv.out_channels, conv.in_channels)]
    heads = [model.get_submodule(name) for name in head_names]
    return [(head.out_features, head.in_features) if isinstance(head, nn.Linear)
            else (head.out_channels, head.in_channels) for head in heads]


def _criterion(name: str, counts: Sequence[int] | None, tau: float, regularizer: nn.Module,
               segmentation: bool) -> nn.Module | None:
    """The logit-adjusted loss, ignoring what the regulariser ignores (its default otherwise:
    255 for masks, -100 for class labels), so the task loss and the pull skip the same labels."""
    if name not in _LOGIT_ADJUSTED:
        return None
    ignore_index = getattr(regularizer, "ignore_index", None)
    if ignore_index is None:
        ignore_index = 255 if segmentation else -100
    return LogitAdjustedCrossEntropy(counts, tau=tau, ignore_index=ignore_index)


def build(
    name: str,
    model: nn.Module,
    *,
    counts: Sequence[int] | None = None,
    tau: float = 1.0,
    head_name: str | Sequence[str] | None = None,
    **options: Any,
) -> tuple[RegularizedModel, nn.Module | None]:
    """Wrap ``model`` for the method ``name``; return it and its criterion.

    Args:
        name: one of :data:`METHODS`.
        model: a classifier with a linear or 1x1 conv head, or several (found as
            :class:`~sar.SARClassifier` finds them, or named by ``head_name``), or an smp
            model. For several heads the regulariser is one per head in a
            :class:`~sar.heads.HeadsRegularizer`.
            ``"etf"``/``"etf_dr"`` replace the classifier's head in place (classifiers only).
        counts: training samples (or pixels) per class, ``(C,)``; needed by the
            logit-adjusted methods for their log prior.
        tau: strength of the logit adjustment (1.0, Menon et al.).
        head_name: dotted name of the classifier's head, e.g. ``"classifier.1"``, or a
            sequence of names (default: found by :func:`~sar.heads.find_heads`; ignored for
            smp models).
        **options: keyword arguments of the method's regulariser (e.g. ``trade_off=1.0`` for
            SAR, ``momentum=0.99`` for prototypes) or, for ``"etf"``, of the ETF head.
            ``ignore_index`` (the label of void positions) also goes to the logit-adjusted
            criterion, and is the one option that ``ce`` and ``logit_adjusted`` take.

    Returns:
        ``(wrapped, criterion)``: a :class:`~sar.RegularizedModel` and the loss to pass to
        :func:`sar.train.fit` as ``criterion=`` (``None`` means plain cross-entropy).

    Raises:
        ValueError: an unknown name (the message lists the known ones), a logit-adjusted method
            without ``counts``, an ETF head on a segmentation model or on a model without one
            linear head, or ``options`` for a method without a regulariser (``ce``,
            ``logit_adjusted``).
        TypeError: a classifier whose head is not found or is not a ``Linear``/1x1 conv (see
            :func:`~sar.heads.find_heads`).
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    segmentation = is_segmentation_model(model)
    head_names = () if segmentation else find_head_names(model, head_name)
    dims = _head_dims(model, head_names)
    if name in _ETF_HEADS:
        variant, make_criterion = _ETF_HEADS[name]
        head = _etf(model, head_names, dims, segmentation, variant, options)
        return head, make_criterion() if make_criterion is not None else None
    if name in _LOGIT_ADJUSTED and counts is None:
        raise ValueError(
            f"method {name!r} needs counts= (training samples or pixels per class) for its"
            " log prior"
        )
    make_regularizer = _REGULARIZERS[_LOGIT_ADJUSTED.get(name, name)]
    regularizers = [make_regularizer(num_classes, feat_dim, **options)
                    for num_classes, feat_dim in dims]
    regularizer = one_per_head(regularizers)
    criterion = _criterion(name, counts, tau, regularizers[0], segmentation)
    if segmentation:
        return SARSegmentationModel(model, regularizer), criterion
    return SARClassifier(model, regularizer, head_name=head_names), criterion


def _etf(model: nn.Module, head_names: Sequence[str], dims: list[tuple[int, int]],
         segmentation: bool, variant: str, options: dict[str, Any]) -> RegularizedModel:
    if segmentation:
        raise ValueError("the ETF head replaces a linear classifier: use it with classifiers")
    kinds = ", ".join(type(model.get_submodule(name)).__name__ for name in head_names)
    if kinds != "Linear":
        raise ValueError(
            f"the ETF head replaces one nn.Linear head, but the heads of"
            f" {type(model).__name__} are {list(head_names)} ({kinds}): use a model with one"
            " linear head, or name one with head_name="
        )
    (num_classes, feat_dim), = dims
    head = ETFClassifier(feat_dim, num_classes, variant=variant, **options)
    model.set_submodule(head_names[0], head)
    return RegularizedModel(model, head, head, NoRegularizer())
