"""Baselines that share SAR's interface, so they can be swapped in and compared side by side.

Regularisers (``forward(features, labels, classifier) -> dict`` with a ``"loss"`` key, the same
keys on every call, same shapes as :class:`sar.SemanticAnchorRegularizer`):

- :class:`NoRegularizer`: plain cross-entropy training through the same wrapper.
- :class:`CenterLoss`: learned class centres, pulled both ways (Wen et al., ECCV 2016).
- :class:`PrototypeRegularizer`: EMA class means taken from the features and pulled toward
  one-way, exactly like SAR's pull: the "EM paradigm" the paper argues against.

Heads and task losses:

- :class:`ETFClassifier`: a fixed simplex-ETF linear head (Yang et al., NeurIPS 2022).
- :class:`LogitAdjustedCrossEntropy`: classifier rebalancing by the label prior
  (Menon et al., ICLR 2021).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .anchors import etf_anchors
from .regularizer import Float32Module, check_class_count, check_labels


def _flatten_valid(
    features: torch.Tensor, labels: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(N, D)`` features, ``(N,)`` labels with ignored set to 0, and the ``(N,)`` valid mask.

    Segmentation labels ``(B, h, w)`` are nearest-resized to the feature map first.
    """
    if features.dim() == 4:
        if labels.shape[-2:] != features.shape[-2:]:
            size = features.shape[-2:]
            labels = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0]
        features = features.movedim(1, -1).reshape(-1, features.shape[1])
    labels = labels.reshape(-1).long()
    valid = labels != ignore_index
    # float32 at least, as SAR's pull: half features are upcast, float64 ones are kept
    features = features.to(torch.promote_types(features.dtype, torch.float32))
    return features, torch.where(valid, labels, 0), valid


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return (values * valid).sum() / valid.sum().clamp(min=1)


class NoRegularizer(nn.Module):
    """Adds nothing: plain cross-entropy through the same wrapper (features stay tappable)."""

    def forward(
        self, features: torch.Tensor, labels: torch.Tensor, classifier: object = None
    ) -> dict[str, torch.Tensor]:
        return {"loss": features.new_zeros((), dtype=torch.float32)}


class CenterLoss(Float32Module):
    """Pull features toward learned class centres ``(C, D)``; the centres move toward features too.

    Loss: ``weight * mean over valid positions of mean over D of (f - c_y)^2``, the same scale
    as SAR's pull, but without detaching the centres. The classifier argument is ignored.
    Features may be of any float dtype; the centres stay float32 under ``.half()`` (see
    :class:`sar.regularizer.Float32Module`) and the loss is float32.

    Raises:
        ValueError: for ``num_classes < 2``, an ``ignore_index`` that is a class id, or labels
            that are neither a class id nor ``ignore_index`` (e.g. -100 with the default 255,
            which would otherwise index the last class).
    """

    def __init__(
        self, num_classes: int, feat_dim: int, weight: float = 0.1, ignore_index: int = 255
    ) -> None:
        super().__init__()
        check_class_count(num_classes, ignore_index)
        self.centres = nn.Parameter(torch.randn(num_classes, feat_dim))
        self.weight, self.ignore_index = weight, ignore_index

    def forward(
        self, features: torch.Tensor, labels: torch.Tensor, classifier: object = None
    ) -> dict[str, torch.Tensor]:
        check_labels(labels, len(self.centres), self.ignore_index)
        flat, targets, valid = _flatten_valid(features, labels, self.ignore_index)
        distance = (flat - self.centres[targets]).pow(2).mean(dim=1)
        pull = self.weight * _masked_mean(distance, valid)
        return {"pull": pull, "loss": pull}


class PrototypeRegularizer(Float32Module):
    """Pull features toward EMA class means of the features themselves (one-way, detached).

    Each step the batch mean of every present class updates its prototype (a copy the first
    time the class is seen, then ``m * proto + (1 - m) * batch_mean``); features are then
    pulled toward the prototype of their label with SAR's MSE, for classes already seen.
    Prototypes inherit whatever bias the features have: on long tails, head classes dominate.
    The prototypes stay float32 under ``.half()``/``.bfloat16()`` (in bf16 the EMA would stop
    moving) and the loss is float32. Raises ``ValueError`` as :class:`CenterLoss` does.
    """

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        weight: float = 0.1,
        momentum: float = 0.999,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        check_class_count(num_classes, ignore_index)
        self.weight, self.momentum, self.ignore_index = weight, momentum, ignore_index
        self.register_buffer("prototypes", torch.zeros(num_classes, feat_dim))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    def forward(
        self, features: torch.Tensor, labels: torch.Tensor, classifier: object = None
    ) -> dict[str, torch.Tensor]:
        check_labels(labels, len(self.prototypes), self.ignore_index)
        flat, targets, valid = _flatten_valid(features, labels, self.ignore_index)
        if self.training:
            self._update(flat.detach().to(self.prototypes.dtype), targets, valid)
        usable = valid & self.seen[targets]
        distance = (flat - self.prototypes[targets]).pow(2).mean(dim=1)
        pull = self.weight * _masked_mean(distance, usable)
        return {"pull": pull, "loss": pull}

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> None:
        num_classes = len(self.prototypes)
        weights = valid.float()
        counts = torch.zeros(num_classes, device=flat.device).index_add_(0, targets, weights)
        sums = torch.zeros_like(self.prototypes).index_add_(0, targets, flat * weights[:, None])
        present = counts > 0
        means = sums / counts.clamp(min=1)[:, None]
        blended = self.momentum * self.prototypes + (1 - self.momentum) * means
        new = torch.where(self.seen[:, None], blended, means)
        self.prototypes.copy_(torch.where(present[:, None], new, self.prototypes))
        self.seen |= present


class ETFClassifier(nn.Module):
    """A linear head whose weights are a fixed simplex ETF ``(C, D)`` with unit rows, no bias.

    ``(B, D) -> (B, C)``; nothing in it is trained, so the class directions are maximally
    separated from the first step and the features must align to them.
    """

    def __init__(self, in_features: int, num_classes: int, seed: int = 0) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, num_classes
        weight = etf_anchors(num_classes, in_features, seed=seed) / math.sqrt(in_features)
        self.register_buffer("weight", weight)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features, self.weight)


class LogitAdjustedCrossEntropy(nn.Module):
    """Cross-entropy on ``logits + tau * log(prior)`` (Menon et al., 2021), for training only.

    Adding the log prior during training makes the plain logits Bayes-consistent for the
    balanced error, so the rebalancing lives in the loss and inference is unchanged.

    Args:
        class_counts: training samples per class, ``(C,)``.
        tau: strength of the adjustment (1.0 in the paper).
    """

    def __init__(
        self, class_counts: Sequence[int] | torch.Tensor, tau: float = 1.0, ignore_index: int = -100
    ) -> None:
        super().__init__()
        counts = torch.as_tensor(class_counts, dtype=torch.float)
        if (counts <= 0).any():
            raise ValueError("every class needs a positive count for the log prior")
        self.register_buffer("log_prior", torch.log(counts / counts.sum()))
        self.tau, self.ignore_index = tau, ignore_index

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        shift = self.log_prior.view(1, -1, *([1] * (logits.dim() - 2)))
        return F.cross_entropy(logits + self.tau * shift, labels, ignore_index=self.ignore_index)
