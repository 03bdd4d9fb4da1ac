"""What a label tensor may be, decided in one place for the regulariser, the wrappers, ``fit``,
``evaluate`` and the datasets, so they accept and refuse the same inputs with the same message.

Labels are integer class ids: ``(B,)`` for classification, ``(B, H, W)`` (or ``(B, 1, H, W)``)
for segmentation, with one *ignore index* for unlabelled pixels (255 by default, as in
mmsegmentation and torchvision's VOC).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_IGNORE_INDEX = 255
AUTO: Literal["auto"] = "auto"

FLOAT_LABELS = (
    "labels must be an integer tensor of class ids, got {dtype}. A mask that went through"
    " torchvision's ToTensor() (or any float conversion) is scaled to [0, 1], so class k"
    " becomes k/255 and the ignore value 255 becomes 1.0; casting that back gives the wrong"
    " classes. Convert masks with torch.as_tensor(numpy.array(mask), dtype=torch.long) or"
    " torchvision.transforms.v2.PILToTensor(), or use sar.data.SegmentationTransform."
)


def class_labels(labels: torch.Tensor) -> torch.Tensor:
    """``labels`` as int64 class ids; a ``(B, 1, H, W)`` mask becomes ``(B, H, W)``.

    Raises:
        TypeError: floating-point, complex or bool labels (the message names the usual cause,
            ``ToTensor`` on a mask, and the fix).
    """
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(FLOAT_LABELS.format(dtype=labels.dtype))
    if labels.dim() == 4 and labels.shape[1] == 1:
        labels = labels[:, 0]
    return labels.long()


def labels_at_feature_resolution(
    features: torch.Tensor, labels: torch.Tensor, feat_dim: int
) -> torch.Tensor:
    """``labels`` checked against ``features`` and nearest-resized to their map.

    Shapes: features ``(B, D)`` with labels ``(B,)``, or ``(B, D, H, W)`` with labels
    ``(B, h, w)``/``(B, 1, h, w)`` at any resolution (returned as ``(B, H, W)``); int64 out.

    Raises:
        ValueError: features that are not 2-D/4-D or not ``feat_dim`` wide, a batch mismatch,
            labels of the wrong rank.
        TypeError: float labels (:func:`class_labels`).
    """
    if features.dim() not in (2, 4):
        raise ValueError(
            f"features must be (B, D) or (B, D, H, W), got shape {tuple(features.shape)}"
        )
    if features.shape[1] != feat_dim:
        raise ValueError(
            f"features have {features.shape[1]} channels but the regulariser was built with"
            f" feat_dim={feat_dim}: pass the feature map that enters the classifier"
        )
    labels = class_labels(labels)
    if labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"batch mismatch: features have batch size {features.shape[0]}, labels"
            f" {labels.shape[0]}"
        )
    expected = 1 if features.dim() == 2 else 3
    if labels.dim() != expected:
        wanted = "(B,)" if expected == 1 else "(B, h, w)"
        raise ValueError(f"for {'(B, D)' if expected == 1 else '(B, D, H, W)'} features labels"
                         f" must be {wanted}, got {tuple(labels.shape)}")
    size = features.shape[2:]
    if expected == 3 and labels.shape[1:] != size:
        labels = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
    return labels


def zero_without_labels(loss: torch.Tensor, labels: torch.Tensor,
                        ignore_index: int) -> torch.Tensor:
    """``loss``, or 0 where every label is ``ignore_index`` (a mean over no position is NaN).

    A batch whose masks are all void is legitimate: it adds no task gradient and training goes
    on. A ``torch.where``, not a branch: no host sync, and its backward gives the NaN branch a
    zero gradient.
    """
    return torch.where((labels != ignore_index).any(), loss, 0.0)


def regularizer_ignore_index(model: nn.Module) -> int | None:
    """The ignore index of the regulariser inside ``model`` (every wrapper looked through by
    :func:`sar.distributed.unwrap`), if any."""
    from .distributed import unwrap  # sar.distributed imports the models, which import this

    return getattr(getattr(unwrap(model), "regularizer", None), "ignore_index", None)


def resolve_ignore_index(model: nn.Module, ignore_index: int | None | str) -> int | None:
    """The ignore index to score and train ``model`` with: one source of truth.

    ``"auto"`` takes the wrapped regulariser's ``ignore_index`` (255 when the model has none).
    An explicit value must agree with the regulariser's, else the task loss and the pull would
    disagree on which pixels are labelled.

    Raises:
        ValueError: an explicit ``ignore_index`` that differs from the regulariser's (both named).
    """
    own = regularizer_ignore_index(model)
    if ignore_index == AUTO:
        return DEFAULT_IGNORE_INDEX if own is None else own
    if isinstance(ignore_index, str):
        raise ValueError(f"ignore_index must be an int, None or 'auto', got {ignore_index!r}")
    if own is not None and ignore_index != own:
        raise ValueError(
            f"ignore_index={ignore_index} disagrees with the model's regulariser, which ignores"
            f" {own}: pass ignore_index={own} (or leave it out: the regulariser's value is the"
            " default), or build the wrapper with the ignore_index your labels use"
        )
    return ignore_index
