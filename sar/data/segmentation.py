"""Segmentation sets on disk (ADE20K-style folders, Pascal VOC) and their joint transform."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..labels import class_labels
from .constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD


def _image_to_tensor(image: Any) -> Tensor:
    """PIL image, array or tensor -> float32 ``(C, H, W)`` in [0, 1]."""
    if isinstance(image, Tensor):
        x = image
    else:
        from PIL import Image

        if isinstance(image, Image.Image):
            image = image.convert("RGB")
        x = torch.from_numpy(np.array(image, copy=True))
        x = x.permute(2, 0, 1) if x.ndim == 3 else x[None]
    if x.ndim == 2:
        x = x[None]
    return x.float().div(255.0) if x.dtype == torch.uint8 else x.float()


def _mask_to_tensor(mask: Any) -> Tensor:
    """PIL mask (mode L/P/I), array or tensor of class ids -> int64 ``(H, W)``."""
    if isinstance(mask, Tensor):
        out = class_labels(mask)
    else:
        from PIL import Image

        if isinstance(mask, Image.Image) and mask.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"masks must hold class ids (mode L, P or I), got mode {mask.mode}")
        out = torch.from_numpy(np.array(mask).astype(np.int64))
    if out.ndim == 3 and out.shape[0] == 1:
        out = out[0]
    if out.ndim != 2:
        raise ValueError(f"mask must be (H, W), got {tuple(out.shape)}")
    return out.long()


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class SegmentationTransform:
    """Joint resize / random crop / flip / normalise for ``(image, mask)`` pairs.

    Takes a PIL image or tensor (uint8 or float in [0, 1], ``(C, H, W)``) and a mask of class
    ids; returns ``(float32 (C, H', W') normalised, int64 (H', W'))``. ``size`` int resizes the
    shorter side to it (torchvision's convention), a pair resizes to exactly ``(h, w)``: images
    bilinearly, masks by nearest neighbour so no new class ids appear. ``crop`` takes a random
    ``(h, w)`` window, padding image with 0 and mask with ``ignore_index`` when it is too small;
    ``hflip`` flips half the pairs. Randomness comes from torch's global RNG. ``mean=None``
    skips normalisation.

    ``max_size`` caps the longer side when ``size`` is an int (torchvision's
    ``Resize(max_size=)``): ``size=512, max_size=2048`` is mmsegmentation's keep-ratio
    ``Resize(img_scale=(2048, 512))``. ``scale_range=(lo, hi)`` then multiplies both sides by a
    ratio drawn uniformly from ``[lo, hi]`` (mmsegmentation's ``ratio_range``; without ``size``
    the ratio applies to the image's own size), before the crop.
    """

    def __init__(
        self,
        size: int | Sequence[int] | None = None,
        crop: int | Sequence[int] | None = None,
        hflip: bool = False,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
        ignore_index: int = IGNORE_INDEX,
        max_size: int | None = None,
        scale_range: Sequence[float] | None = None,
    ) -> None:
        if max_size is not None and not isinstance(size, int):
            raise ValueError(f"max_size caps the longer side after an int size; got size={size!r}")
        if scale_range is not None and not 0 < float(scale_range[0]) <= float(scale_range[1]):
            raise ValueError(f"scale_range must be (lo, hi) with 0 < lo <= hi, got {scale_range}")
        self.size, self.crop, self.hflip = size, crop, hflip
        self.max_size = max_size
        self.scale_range = None if scale_range is None else tuple(map(float, scale_range))
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.ignore_index = ignore_index

    def __call__(self, image: Any, mask: Any) -> tuple[Tensor, Tensor]:
        x, y = _image_to_tensor(image), _mask_to_tensor(mask)
        if x.shape[-2:] != y.shape:
            raise ValueError(f"image size {tuple(x.shape[-2:])} != mask size {tuple(y.shape)}")
        if self.size is not None or self.scale_range is not None:
            x, y = self._resize(x, y)
        if self.crop is not None:
            x, y = self._random_crop(x, y, *_pair(self.crop))
        if self.hflip and torch.rand(()) < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        if self.mean is not None:
            x = (x - self.mean) / (self.std if self.std is not None else 1.0)
        return x.contiguous(), y.contiguous()

    def _resize(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        h, w = x.shape[-2:]
        pair = self.size is not None and not isinstance(self.size, int)
        out_h, out_w = _pair(self.size) if pair else (h, w)
        scale = 1.0
        if isinstance(self.size, int):
            scale = self.size / min(h, w)
            if self.max_size is not None:
                scale = min(scale, self.max_size / max(h, w))
        if self.scale_range is not None:
            lo, hi = self.scale_range
            scale *= lo + (hi - lo) * float(torch.rand(()))
        out = (max(1, round(out_h * scale)), max(1, round(out_w * scale)))
        if out == (h, w):
            return x, y
        x = F.interpolate(x[None], size=out, mode="bilinear", align_corners=False, antialias=True)
        y = F.interpolate(y[None, None].float(), size=out, mode="nearest")
        return x[0], y[0, 0].long()

    def _random_crop(self, x: Tensor, y: Tensor, ch: int, cw: int) -> tuple[Tensor, Tensor]:
        h, w = x.shape[-2:]
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), value=0.0)
            y = F.pad(y, (0, pw, 0, ph), value=self.ignore_index)
        h, w = x.shape[-2:]
        top = int(torch.randint(0, h - ch + 1, ()))
        left = int(torch.randint(0, w - cw + 1, ()))
        return x[:, top : top + ch, left : left + cw], y[top : top + ch, left : left + cw]


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _list_missing(kind: str, names: list[str], where: Path) -> str:
    shown = ", ".join(names[:10]) + (f" ... ({len(names)} in all)" if len(names) > 10 else "")
    return f"{kind} in {where}: {shown}"


class SegmentationFolder(Dataset):
    """Images and class-id masks in two folders, paired by file stem (ADE20K-style).

    ``root/image_dir`` holds ``.png``/``.jpg`` images and ``root/mask_dir`` ``.png`` masks whose
    pixel values are class ids (255 = ignore). For ADE20K use
    ``image_dir="images/training", mask_dir="annotations/training", reduce_zero_label=True``
    (its 0 "other" becomes 255 and classes 1..150 become 0..149). Items are
    ``(float32 (3, H, W), int64 (H, W))``, through ``transform(image, mask)`` when given
    (PIL image, PIL mask or int64 tensor), else plain [0, 1] tensors. ``label_map`` renames
    mask values after ``reduce_zero_label``, e.g. ``{255: 1}`` for binary masks saved as 0/255.

    Raises ``FileNotFoundError`` listing unpaired files, and ``ValueError`` naming both files
    when an image and its mask differ in size (checked when the pair is loaded). Warns once,
    at construction, when the first masks hold only background (0) and the ignore value 255:
    that is usually a binary mask whose objects would all be ignored.
    """

    def __init__(
        self,
        root: str | Path,
        image_dir: str = "images",
        mask_dir: str = "masks",
        transform: Callable[[Any, Any], tuple[Tensor, Tensor]] | None = None,
        reduce_zero_label: bool = False,
        label_map: Mapping[int, int] | None = None,
    ) -> None:
        self.root, self.transform, self.reduce_zero_label = Path(root), transform, reduce_zero_label
        self.label_map = {int(k): int(v) for k, v in (label_map or {}).items()}
        image_root, mask_root = self.root / image_dir, self.root / mask_dir
        for folder in (image_root, mask_root):
            if not folder.is_dir():
                raise FileNotFoundError(f"segmentation folder {folder} does not exist")
        images = {p.stem: p for p in image_root.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES}
        masks = {p.stem: p for p in mask_root.iterdir() if p.suffix.lower() == ".png"}
        problems = []
        if no_mask := sorted(images[s].name for s in images.keys() - masks.keys()):
            problems.append(_list_missing("images without a mask", no_mask, image_root))
        if no_image := sorted(masks[s].name for s in masks.keys() - images.keys()):
            problems.append(_list_missing("masks without an image", no_image, mask_root))
        if problems:
            raise FileNotFoundError("; ".join(problems))
        if not images:
            raise FileNotFoundError(f"no .png/.jpg images in {image_root}")
        self.pairs = [(images[s], masks[s]) for s in sorted(images)]
        self._warn_if_only_background_and_ignore()

    def _warn_if_only_background_and_ignore(self, samples: int = 8) -> None:
        picked = self.pairs[:: max(1, len(self.pairs) // samples)][:samples]
        values = set().union(*(self._labels(mask).unique().tolist() for _, mask in picked))
        if values == {0, IGNORE_INDEX}:
            warnings.warn(
                f"the masks in {self.root} hold only 0 and {IGNORE_INDEX} (checked {len(picked)}"
                f" of {len(self.pairs)}): {IGNORE_INDEX} is the ignore label, so every object"
                " pixel would be ignored and only background learned. If these are binary masks"
                f" with objects saved as {IGNORE_INDEX}, pass label_map={{{IGNORE_INDEX}: 1}}"
                " (and num_classes=2).",
                UserWarning, stacklevel=3,
            )

    def _labels(self, mask_path: Path) -> Tensor:
        """The mask of ``mask_path`` as class ids, after ``reduce_zero_label`` and ``label_map``."""
        from PIL import Image

        with Image.open(mask_path) as mk:
            return self._relabel(_mask_to_tensor(mk))

    def _relabel(self, m: Tensor) -> Tensor:
        if self.reduce_zero_label:
            m = torch.where(m == 0, IGNORE_INDEX, torch.where(m == IGNORE_INDEX, m, m - 1))
        out = m.clone()
        for old, new in self.label_map.items():
            out[m == old] = new
        return out

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        from PIL import Image

        image_path, mask_path = self.pairs[index]
        with Image.open(image_path) as im, Image.open(mask_path) as mk:
            if im.size != mk.size:
                raise ValueError(
                    f"size mismatch: image {image_path} is {im.size[0]}x{im.size[1]} but mask "
                    f"{mask_path} is {mk.size[0]}x{mk.size[1]} (width x height)"
                )
            image, mask = im.convert("RGB"), mk.copy()
        if self.reduce_zero_label or self.label_map:
            mask = self._relabel(_mask_to_tensor(mask))
        if self.transform is not None:
            return self.transform(image, mask)
        return _image_to_tensor(image), _mask_to_tensor(mask)


def _to_tensors(image: Any, mask: Any) -> tuple[Tensor, Tensor]:
    return _image_to_tensor(image), _mask_to_tensor(mask)


def pascal_voc(
    root: str | Path,
    image_set: str = "train",
    transform: Callable[[Any, Any], tuple[Tensor, Tensor]] | None = None,
    year: str = "2012",
) -> Dataset:
    """PASCAL VOC segmentation via ``torchvision.datasets.VOCSegmentation(download=False)``.

    ``root`` holds ``VOCdevkit/VOC<year>/`` (the VOC folder itself is accepted too). Items are
    ``(float32 (3, H, W), int64 (H, W))``: classes 0..20 and 255 on object boundaries and
    "difficult" regions, which stays the ignore label. ``transform(image, mask)`` gets PIL
    images; without one the image is a plain [0, 1] tensor.
    """
    from torchvision.datasets import VOCSegmentation

    root = Path(root)
    if root.name == f"VOC{year}" and root.parent.name == "VOCdevkit":
        root = root.parent.parent
    voc = root / "VOCdevkit" / f"VOC{year}"
    split_file = voc / "ImageSets" / "Segmentation" / f"{image_set}.txt"
    if not voc.is_dir():
        raise FileNotFoundError(
            f"PASCAL VOC {year} not found: {voc} does not exist. Download VOCtrainval "
            f"and extract it so that {voc}/JPEGImages and SegmentationClass exist."
        )
    if not split_file.is_file():
        raise FileNotFoundError(f"PASCAL VOC split file {split_file} does not exist")
    return VOCSegmentation(
        str(root),
        year=year,
        image_set=image_set,
        download=False,
        transforms=transform or _to_tensors,
    )
