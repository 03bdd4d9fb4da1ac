""":class:`ClassificationDataset`: images normalised once, augmented with torch ops."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..labels import class_labels


class ClassificationDataset(Dataset):
    """Normalised images with optional crop-and-flip augmentation.

    ``images`` uint8 ``(N, H, W)`` or ``(N, C, H, W)``; ``labels`` int64 ``(N,)``. Items are
    ``(float32 (C, H, W), int64 scalar)``. ``mean``/``std`` (one value per channel) default
    to this set's own statistics and are kept as ``.mean``/``.std`` so a test set can reuse
    the training ones. The whole set is normalised once here (60000x28x28 float is 188 MB).
    ``augment`` pads by 2 px with the value of a black pixel, crops back at a random offset and
    flips half the images, drawing from torch's global RNG (seed it via the DataLoader).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        mean: Sequence[float] | Tensor | None = None,
        std: Sequence[float] | Tensor | None = None,
        augment: bool = False,
        pad: int = 2,
    ) -> None:
        x = torch.as_tensor(images)
        if x.ndim == 3:
            x = x.unsqueeze(1)
        if x.ndim != 4:
            raise ValueError(f"images must be (N, H, W) or (N, C, H, W), got {tuple(x.shape)}")
        self.labels = class_labels(torch.as_tensor(labels)).flatten()
        if len(self.labels) != len(x):
            raise ValueError(f"{len(x)} images but {len(self.labels)} labels")
        # a private float copy: normalising in place must not touch the caller's tensor
        scale = 255.0 if x.dtype == torch.uint8 else 1.0
        x = x.to(torch.float32, copy=True).div_(scale)
        self.mean = _per_channel(mean, x.mean(dim=(0, 2, 3)), x.shape[1])
        self.std = _per_channel(std, x.std(dim=(0, 2, 3)).clamp_min(1e-6), x.shape[1])
        self.images = x.sub_(self.mean.view(1, -1, 1, 1)).div_(self.std.view(1, -1, 1, 1))
        self.augment, self.pad = augment, pad
        self._fill = (-self.mean / self.std).view(-1, 1, 1)  # a black pixel, normalised

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x = self.images[index]
        if self.augment:
            x = _random_shift(x, self.pad, self._fill)
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        return x, self.labels[index]

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1


def _per_channel(value: Sequence[float] | Tensor | None, default: Tensor, channels: int) -> Tensor:
    out = default if value is None else torch.as_tensor(value, dtype=torch.float32).flatten()
    if out.numel() == 1:
        out = out.expand(channels)
    if out.numel() != channels:
        raise ValueError(f"expected {channels} per-channel values, got {out.numel()}")
    return out.float().clone()


def _random_shift(x: Tensor, pad: int, fill: Tensor) -> Tensor:
    """Same as zero-padding by ``pad`` and a random crop back to size, without the pad copy."""
    _, h, w = x.shape
    dy, dx = (torch.randint(-pad, pad + 1, (2,))).tolist()
    if dy == 0 and dx == 0:
        return x
    out = fill.expand_as(x).clone()
    ys, yd = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h + min(-dy, 0))
    xs, xd = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w + min(-dx, 0))
    out[:, yd, xd] = x[:, ys, xs]
    return out
