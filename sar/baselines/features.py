"""What every feature regulariser shares: flattening features and labels, per-class sums, and
:class:`NoRegularizer` (plain cross-entropy through the same wrapper)."""

from __future__ import annotations

import torch
from torch import nn

from ..labels import labels_at_feature_resolution
from ..regularizer import check_labels


# ------------------------------------------------------------------------------- helpers
def _flatten_valid(
    features: torch.Tensor, labels: torch.Tensor, ignore_index: int, feat_dim: int,
    num_classes: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(N, D)`` features (float32 at least: half ones are upcast, float64 ones kept), ``(N,)``
    labels with ignored set to 0, ``(N,)`` valid mask.

    Checks shapes, dtypes and label values (a host sync, as SAR's ``validate=True``).
    Segmentation labels ``(B, h, w)`` or ``(B, 1, h, w)`` are nearest-resized to the feature
    map first.
    """
    labels = labels_at_feature_resolution(features, labels, feat_dim)
    check_labels(labels, num_classes, ignore_index)
    if features.dim() == 4:
        features = features.movedim(1, -1).reshape(-1, features.shape[1])
    labels = labels.reshape(-1).long()
    valid = labels != ignore_index
    features = features.to(torch.promote_types(features.dtype, torch.float32))
    return features, torch.where(valid, labels, 0), valid


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ``valid`` positions; 0 (not NaN) when none is valid."""
    return (values * valid).sum() / valid.sum().clamp(min=1)


@torch.no_grad()
def _class_sums(
    flat: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sample counts ``(C,)`` and feature sums ``(C, D)`` of the valid positions."""
    weights = valid.to(flat.dtype)
    counts = flat.new_zeros(num_classes).index_add_(0, targets, weights)
    sums = flat.new_zeros(num_classes, flat.shape[1]).index_add_(
        0, targets, flat.detach() * weights[:, None])
    return counts, sums


class NoRegularizer(nn.Module):
    """Adds nothing: plain cross-entropy through the same wrapper (features stay tappable).

    Returns ``{"loss": 0}`` (a float32 0-dim tensor on the features' device) on every call.
    ``ignore_index`` (default ``None``: no opinion) only tells :func:`sar.train.fit` and
    ``evaluate`` which label the void positions carry, as a regulariser's does.
    """

    def __init__(self, ignore_index: int | None = None) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(
        self, features: torch.Tensor, labels: torch.Tensor, classifier: object = None
    ) -> dict[str, torch.Tensor]:
        return {"loss": features.new_zeros((), dtype=torch.float32)}
