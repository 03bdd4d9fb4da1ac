"""The task loss of :func:`sar.train.fit`: cross-entropy that survives an all-void batch, with
PyTorch's or mmsegmentation's mean, and the check that a user's loss ignores the right label.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..labels import zero_without_labels

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
CE_MEAN_OVER = ("labelled", "all")


class IgnoreSafeCrossEntropy(nn.CrossEntropyLoss):
    r"""``nn.CrossEntropyLoss`` that gives 0, not NaN, on a batch with no labelled position.

    A segmentation batch whose masks are all ``ignore_index`` (a crop of pure boundary or
    void) is legitimate: it contributes no task gradient and training goes on. PyTorch's mean
    divides by zero valid targets there; this keeps its value bit for bit on every other batch.

    Args:
        \*args, \*\*kwargs: those of ``nn.CrossEntropyLoss``.
        mean_over: what ``reduction="mean"`` divides the summed loss by. ``"labelled"``
            (PyTorch's): the labelled positions (their class weights, with ``weight=``).
            ``"all"``: every position, ignored ones included, as mmsegmentation 0.29's
            ``CrossEntropyLoss`` without ``avg_non_ignore`` (the SAR authors' task loss): a
            batch with a fraction ``v`` of void pixels gets ``1 - v`` times the labelled mean,
            so the regulariser weighs more against it.

    Raises:
        ValueError: another ``mean_over``.
    """

    def __init__(self, *args: Any, mean_over: str = "labelled", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if mean_over not in CE_MEAN_OVER:
            raise ValueError(f"mean_over must be one of {CE_MEAN_OVER}, got {mean_over!r}")
        self.mean_over = mean_over

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.reduction != "mean" or target.dtype.is_floating_point:
            return super().forward(input, target)
        if self.mean_over == "all":  # ignored positions are 0 in the unreduced loss
            return F.cross_entropy(input, target, weight=self.weight, reduction="none",
                                   ignore_index=self.ignore_index,
                                   label_smoothing=self.label_smoothing).mean()
        return zero_without_labels(super().forward(input, target), target, self.ignore_index)


def task_criterion(criterion: Criterion | None, ignore_index: int | None, mean_over: str,
                    binding: bool) -> Criterion:
    """The default cross-entropy, or the user's criterion checked against ``ignore_index``
    (``binding``: it came from the regulariser or the caller, not from the default)."""
    if criterion is None:
        return IgnoreSafeCrossEntropy(ignore_index=-100 if ignore_index is None else ignore_index,
                                      mean_over=mean_over)
    if mean_over != "labelled":
        raise ValueError(
            f"ce_mean_over={mean_over!r} sets fit's default criterion; with criterion= build"
            " the loss with the mean you want, e.g. IgnoreSafeCrossEntropy(ignore_index=...,"
            f" mean_over={mean_over!r})"
        )
    own = getattr(criterion, "ignore_index", None)
    if binding and ignore_index is not None and own is not None and own != ignore_index:
        raise ValueError(
            f"the criterion ignores label {own} but the model's labels use {ignore_index} for"
            f" void positions: build the criterion with ignore_index={ignore_index} (methods."
            "build(..., ignore_index=...) gives the regulariser and the criterion the same)"
        )
    return criterion
