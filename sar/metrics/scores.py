"""Task scores: classification accuracy (overall, per class, per shot group) and segmentation IoU.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray


def _tensor(x: ArrayLike) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _class_indices(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.is_floating_point() or x.is_complex():
        raise TypeError(f"{name} must hold integer class indices, got dtype {x.dtype}")
    return x.long()


def accuracy(
    preds_or_logits: ArrayLike, labels: ArrayLike, ignore_index: int | None = None
) -> float:
    """Fraction of correct predictions.

    Args:
        preds_or_logits: integer predictions with the shape of ``labels`` (e.g. ``(N,)``), or
            float scores with one extra class dimension at position 1 (``(N, C)``, or
            ``(B, C, H, W)`` for dense labels ``(B, H, W)``); scores are arg-maxed over it.
        labels: integer true classes, e.g. ``(N,)``.
        ignore_index: label value excluded from the count (``None``: count everything).

    Returns:
        Accuracy in ``[0, 1]``; NaN when no label is counted.
    """
    preds, labels = _tensor(preds_or_logits), _class_indices(_tensor(labels), "labels")
    if preds.ndim == labels.ndim + 1:
        preds = preds.argmax(dim=1)
    if preds.shape != labels.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and labels {tuple(labels.shape)} differ")
    keep = labels != ignore_index if ignore_index is not None else torch.ones_like(labels).bool()
    if not keep.any():
        return math.nan
    return (preds[keep].long() == labels[keep]).double().mean().item()


def per_class_accuracy(
    preds: ArrayLike, labels: ArrayLike, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """Per-class recall: of the samples whose true class is ``c``, the fraction predicted ``c``.

    Args:
        preds: integer predictions, any shape; logits ``(N, C)`` are arg-maxed first.
        labels: integer true classes, same shape as ``preds``.
        num_classes: ``C``.
        ignore_index: label value that is skipped.

    Returns:
        float64 tensor ``(C,)`` in ``[0, 1]``; NaN for a class absent from ``labels``.
    """
    preds, labels = _tensor(preds), _tensor(labels)
    if preds.is_floating_point() and preds.ndim == labels.ndim + 1:
        preds = preds.argmax(dim=1)
    conf = confusion_matrix(preds, labels, num_classes, ignore_index).double()
    support = conf.sum(dim=1)
    return torch.where(support > 0, conf.diagonal() / support.clamp_min(1), math.nan)


def shot_accuracy(
    per_class_acc: ArrayLike, groups: Mapping[str, Sequence[int]]
) -> dict[str, float]:
    """Mean per-class accuracy within each group of classes.

    Args:
        per_class_acc: ``(C,)`` accuracies, e.g. from :func:`per_class_accuracy`; NaN entries
            (classes absent from the evaluation set) are skipped.
        groups: group name -> class indices, e.g. ``{"many": [...], "medium": [...],
            "few": [...]}`` from training-set counts (many > 100, few < 20 images in the
            usual long-tail convention).

    Returns:
        group name -> mean accuracy (unweighted over classes); NaN for an empty group.
    """
    acc = _tensor(per_class_acc).double()
    result = {}
    for name, classes in groups.items():
        idx = torch.as_tensor(list(classes), dtype=torch.long)
        result[name] = acc[idx].nanmean().item() if len(idx) else math.nan
    return result


def confusion_matrix(
    preds: ArrayLike, labels: ArrayLike, num_classes: int, ignore_index: int | None = 255
) -> torch.Tensor:
    """Count matrix of (true class, predicted class) pairs, computed with one ``bincount``.

    Args:
        preds: integer predicted classes, any shape, e.g. ``(N,)`` or ``(B, H, W)``.
        labels: integer true classes, same shape as ``preds``.
        num_classes: ``C``.
        ignore_index: label value whose positions are dropped (``None``: drop nothing).
            Only ``labels`` are masked: a prediction must always be a real class.

    Returns:
        int64 tensor ``(C, C)`` on the device of ``labels``; entry ``[i, j]`` counts elements
        of true class ``i`` predicted as ``j`` (rows = truth, like scikit-learn).

    Raises:
        ValueError: if the shapes differ or a kept value lies outside ``[0, C)``.
    """
    preds, labels = (
        _class_indices(_tensor(preds), "preds"),
        _class_indices(_tensor(labels), "labels"),
    )
    if preds.shape != labels.shape:
        raise ValueError(
            f"preds {tuple(preds.shape)} and labels {tuple(labels.shape)} must have the same shape"
        )
    preds, labels = preds.reshape(-1).to(labels.device), labels.reshape(-1)
    if ignore_index is not None:
        keep = labels != ignore_index
        preds, labels = preds[keep], labels[keep]
    for name, values in (("labels", labels), ("preds", preds)):
        bad = (values < 0) | (values >= num_classes)
        if bad.any():
            raise ValueError(
                f"{name} contain values outside [0, {num_classes}) other than "
                f"ignore_index={ignore_index}: {values[bad].unique()[:10].tolist()}"
            )
    flat = labels * num_classes + preds
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_per_class(confusion: ArrayLike) -> torch.Tensor:
    """Intersection over union per class, ``TP / (TP + FP + FN)``.

    Args:
        confusion: ``(C, C)`` counts from :func:`confusion_matrix` (rows = truth).

    Returns:
        float64 tensor ``(C,)`` in ``[0, 1]``; NaN for a class that is neither present nor
        predicted (its union is empty).
    """
    conf = _tensor(confusion).double()
    tp = conf.diagonal()
    union = conf.sum(dim=0) + conf.sum(dim=1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), math.nan)


def mean_iou(confusion: ArrayLike) -> float:
    """Mean IoU over classes with a non-empty union (NaN-mean of :func:`iou_per_class`)."""
    return iou_per_class(confusion).nanmean().item()


def pixel_accuracy(confusion: ArrayLike) -> float:
    """Fraction of counted elements predicted correctly, ``trace / sum``; NaN if empty."""
    conf = _tensor(confusion).double()
    total = conf.sum()
    return (conf.trace() / total).item() if total > 0 else math.nan


def segmentation_summary(
    scores: Mapping[str, Any],
    background: int | None = 0,
    gate_step: int | None = None,
    seconds: float | None = None,
) -> dict[str, Any]:
    """One row of a results table from the scores of ``sar.train.evaluate(task="segmentation")``.

    Args:
        scores: needs ``mIoU``, ``pixel_accuracy`` and ``per_class_iou`` (``C`` fractions,
            NaN for a class absent from prediction and truth); ``ratio`` (from
            ``features=True``) is used when present.
        background: class left out of "mIoU items only" (``None``: that column is left out).
        gate_step: the step SAR's gate first opened (``sar.train.gate_opened_step``), or None.
        seconds: wall time of the run (s), or None.

    Returns:
        ``{"mIoU", "pixel accuracy", "mIoU items only", "feature compactness / separation",
        "gate first open (step)", "wall time (s)"}``: fractions, a unitless ratio (NaN when
        not measured), a step and seconds.
    """
    iou = torch.as_tensor(list(scores["per_class_iou"]), dtype=torch.float64)
    row: dict[str, Any] = {"mIoU": scores["mIoU"], "pixel accuracy": scores["pixel_accuracy"]}
    if background is not None:
        if not 0 <= background < len(iou):
            raise ValueError(f"background {background} is not a class of {len(iou)}")
        items = torch.cat([iou[:background], iou[background + 1:]])
        row["mIoU items only"] = items.nanmean().item()
    row["feature compactness / separation"] = scores.get("ratio", math.nan)
    row["gate first open (step)"] = gate_step
    row["wall time (s)"] = seconds
    return row


class ConfusionMeter:
    """Accumulates a confusion matrix over batches.

    Example::

        meter = ConfusionMeter(num_classes=21)
        for images, masks in loader:
            meter.update(model(images).argmax(1), masks)
        print(meter.mean_iou())
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        """Zero the counts."""
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)

    def update(self, preds: ArrayLike, labels: ArrayLike) -> None:
        """Add one batch; shapes as in :func:`confusion_matrix`. Counts stay on the batch's
        device so a GPU loop does not synchronise every step."""
        batch = confusion_matrix(preds, labels, self.num_classes, self.ignore_index)
        self.matrix = self.matrix.to(batch.device) + batch

    def iou_per_class(self) -> torch.Tensor:
        """float64 ``(C,)``; see :func:`iou_per_class`."""
        return iou_per_class(self.matrix)

    def mean_iou(self) -> float:
        """See :func:`mean_iou`."""
        return mean_iou(self.matrix)

    def pixel_accuracy(self) -> float:
        """See :func:`pixel_accuracy`."""
        return pixel_accuracy(self.matrix)
