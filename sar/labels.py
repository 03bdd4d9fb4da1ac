"""What a label tensor may be, decided in one place for the regulariser, the wrappers, ``fit``,
``evaluate`` and the datasets, so they accept and refuse the same inputs with the same message.

Labels are integer class ids: ``(B,)`` for classification, ``(B, H, W)`` (or ``(B, 1, H, W)``)
for segmentation, with one *ignore index* for unlabelled pixels (255 by default, as in
mmsegmentation and torchvision's VOC).
"""

from __future__ import annotations

from typing import Literal

import torch
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


def regularizer_ignore_index(model: nn.Module) -> int | None:
    """The ignore index of the regulariser inside ``model`` (DDP/DataParallel unwrapped), if any."""
    inner = getattr(model, "module", model)
    return getattr(getattr(inner, "regularizer", None), "ignore_index", None)


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
