"""The paper's segmentation benchmarks read from their standard on-disk layouts.

Cityscapes (19 classes), ADE20K (150) and Pascal-Context-59 (59), laid out as
mmsegmentation expects them and with mmsegmentation's label encodings, so a run here trains on
the same pixels as the authors' configs. Every item is ``(float32 (3, H, W), int64 (H, W))``
with class ids ``0..C-1`` and 255 as the ignore label, through ``transform(image, mask)`` when
given (a PIL image and an int64 mask tensor, e.g. :class:`~sar.data.SegmentationTransform`).
A missing root, folder or split file raises ``FileNotFoundError`` naming the expected layout
and where the data is downloaded from.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .constants import IGNORE_INDEX
from .segmentation import SegmentationFolder, _image_to_tensor, _mask_to_tensor

Transform = Callable[[Any, Any], tuple[Tensor, Tensor]]

BENCHMARK_NUM_CLASSES: dict[str, int] = {"cityscapes": 19, "ade20k": 150, "pascal_context": 59}

CITYSCAPES_LAYOUT = (
    "<root>/leftImg8bit/{split}/<city>/<name>_leftImg8bit.png and"
    " <root>/gtFine/{split}/<city>/<name>_gtFine_labelIds.png (download"
    " leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from"
    " https://www.cityscapes-dataset.com/downloads/, free registration, and unzip both"
    " into <root>)"
)
ADE20K_LAYOUT = (
    "<root>/ADEChallengeData2016/images/{split}/*.jpg and"
    " <root>/ADEChallengeData2016/annotations/{split}/*.png (download and unzip"
    " http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip into <root>)"
)
PASCAL_CONTEXT_LAYOUT = (
    "<root>/VOCdevkit/VOC2010/JPEGImages/<id>.jpg,"
    " <root>/VOCdevkit/VOC2010/SegmentationClassContext/<id>.png (0 = background, 1..59 the"
    " classes) and <root>/VOCdevkit/VOC2010/ImageSets/SegmentationContext/{split}.txt: the"
    " layout made by mmsegmentation's pascal_context.py converter from VOCtrainval_03-May-2010.tar"
    " (http://host.robots.ox.ac.uk/pascal/VOC/voc2010/) and trainval_merged.json (it needs the"
    " Detail API, see mmsegmentation's dataset preparation guide)"
)


# ------------------------------------------------------------------------------ Cityscapes
def cityscapes_train_ids() -> Tensor:
    """int64 ``(256,)`` lookup table from Cityscapes label ids to train ids.

    Read from ``torchvision.datasets.Cityscapes.classes``: the 19 evaluated classes get
    ``0..18`` (road, id 7 -> 0, ..., bicycle, id 33 -> 18); every other id, and every value
    that is no Cityscapes id, gets 255.
    """
    from torchvision.datasets import Cityscapes

    table = torch.full((256,), IGNORE_INDEX, dtype=torch.int64)
    for c in Cityscapes.classes:
        if 0 <= c.id < 256 and 0 <= c.train_id < IGNORE_INDEX:
            table[c.id] = c.train_id
    return table


def cityscapes_classes() -> tuple[str, ...]:
    """The 19 class names in train-id order (``road``, ``sidewalk``, ..., ``bicycle``)."""
    from torchvision.datasets import Cityscapes

    named = {c.train_id: c.name for c in Cityscapes.classes if 0 <= c.train_id < IGNORE_INDEX}
    return tuple(named[i] for i in range(len(named)))


class _CityscapesPair:
    """The ``transforms`` handed to torchvision: label ids -> train ids, then ``transform``."""

    def __init__(self, transform: Transform | None) -> None:
        self.transform, self.table = transform, cityscapes_train_ids()

    def __call__(self, image: Any, mask: Any) -> tuple[Tensor, Tensor]:
        mask = self.table[_mask_to_tensor(mask).clamp(0, 255)]
        if self.transform is not None:
            return self.transform(image, mask)
        return _image_to_tensor(image), mask


def cityscapes(root: str | Path, split: str = "train",
               transform: Transform | None = None) -> Dataset:
    """Cityscapes ``gtFine`` semantic labels via ``torchvision.datasets.Cityscapes``.

    ``root`` holds ``leftImg8bit/`` and ``gtFine/``; ``split`` is ``"train"`` (2975 images),
    ``"val"`` (500) or ``"test"`` (its public labels are all "unlabeled", so all 255). The 34
    label ids become the 19 train ids (others 255, see :func:`cityscapes_train_ids`). Images
    are listed in sorted order, so every rank of a distributed run sees the same indices.
    """
    from torchvision.datasets import Cityscapes

    root = Path(root)
    layout = CITYSCAPES_LAYOUT.format(split=split)
    for folder in (root / "leftImg8bit" / split, root / "gtFine" / split):
        if not folder.is_dir():
            raise FileNotFoundError(f"Cityscapes not found: {folder} does not exist. Expected"
                                    f" {layout}")
    data = Cityscapes(str(root), split=split, mode="fine", target_type="semantic",
                      transforms=_CityscapesPair(transform))
    pairs = sorted(zip(data.images, data.targets, strict=True))
    if not pairs:
        raise FileNotFoundError(f"no Cityscapes images under {root / 'leftImg8bit' / split};"
                                f" expected {layout}")
    if missing := [t[0] for _, t in pairs if not Path(t[0]).is_file()]:
        shown = ", ".join(Path(m).name for m in missing[:5])
        raise FileNotFoundError(f"{len(missing)} Cityscapes image(s) have no label file, e.g."
                                f" {shown}; expected {layout}")
    data.images, data.targets = [p[0] for p in pairs], [p[1] for p in pairs]
    return data


# --------------------------------------------------------------------------------- ADE20K
ADE20K_SPLITS = {"train": "training", "training": "training", "val": "validation",
                 "validation": "validation"}


def ade20k(root: str | Path, split: str = "train",
           transform: Transform | None = None) -> SegmentationFolder:
    """ADE20K (SceneParsing, 150 classes) as mmsegmentation reads it: ``reduce_zero_label``.

    ``root`` is ``ADEChallengeData2016/`` or the folder holding it; ``split`` is ``"train"``
    (``training``, 20210 images) or ``"val"`` (``validation``, 2000). Masks hold 0 ("other")
    and 1..150; 0 becomes 255 and ``k`` becomes ``k - 1``.
    """
    if split not in ADE20K_SPLITS:
        raise ValueError(f"ADE20K split must be one of {sorted(ADE20K_SPLITS)}, got {split!r}")
    folder, root = ADE20K_SPLITS[split], Path(root)
    if root.name != "ADEChallengeData2016" and (root / "ADEChallengeData2016").is_dir():
        root = root / "ADEChallengeData2016"
    images, masks = Path("images") / folder, Path("annotations") / folder
    for sub in (images, masks):
        if not (root / sub).is_dir():
            raise FileNotFoundError(f"ADE20K not found: {root / sub} does not exist. Expected"
                                    f" {ADE20K_LAYOUT.format(split=folder)}")
    return SegmentationFolder(root, str(images), str(masks), transform, reduce_zero_label=True)


# ------------------------------------------------------------------------- Pascal-Context
class _SplitFileSegmentation(SegmentationFolder):
    """A :class:`SegmentationFolder` whose pairs come from a split file of stems."""

    def __init__(self, root: Path, pairs: list[tuple[Path, Path]], transform: Transform | None,
                 reduce_zero_label: bool) -> None:
        self.root, self.transform, self.reduce_zero_label = root, transform, reduce_zero_label
        self.label_map: dict[int, int] = {}
        self.pairs = pairs


def pascal_context(root: str | Path, split: str = "train",
                   transform: Transform | None = None) -> SegmentationFolder:
    """Pascal-Context-59 in mmsegmentation's layout, with its ``reduce_zero_label``.

    ``root`` is ``VOCdevkit/VOC2010/``, ``VOCdevkit/`` or the folder holding ``VOCdevkit/``;
    ``split`` names ``ImageSets/SegmentationContext/<split>.txt`` (``train``: 4996 images,
    ``val``: 5104). Masks hold 0 (background, not evaluated) and the 59 classes 1..59; 0
    becomes 255 and ``k`` becomes ``k - 1``. Reading needs nothing beyond PIL; *making* the
    masks needs mmsegmentation's converter and the Detail API, once.
    """
    root = Path(root)
    for candidate in (root / "VOCdevkit" / "VOC2010", root / "VOC2010"):
        if candidate.is_dir():
            root = candidate
            break
    layout = PASCAL_CONTEXT_LAYOUT.format(split=split)
    split_file = root / "ImageSets" / "SegmentationContext" / f"{split}.txt"
    for path in (root / "JPEGImages", root / "SegmentationClassContext", split_file):
        if not path.exists():
            raise FileNotFoundError(f"Pascal-Context not found: {path} does not exist. Expected"
                                    f" {layout}")
    stems = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    if not stems:
        raise FileNotFoundError(f"{split_file} lists no images")
    pairs = [(root / "JPEGImages" / f"{s}.jpg", root / "SegmentationClassContext" / f"{s}.png")
             for s in stems]
    if missing := [p.name for pair in pairs for p in pair if not p.is_file()]:
        raise FileNotFoundError(f"{len(missing)} file(s) listed by {split_file} are missing,"
                                f" e.g. {', '.join(missing[:5])}; expected {layout}")
    return _SplitFileSegmentation(root, pairs, transform, reduce_zero_label=True)


def benchmark_dataset(name: str, root: str | Path, split: str,
                      transform: Transform | None = None) -> Dataset:
    """:func:`cityscapes`, :func:`ade20k` or :func:`pascal_context` by name."""
    builders = {"cityscapes": cityscapes, "ade20k": ade20k, "pascal_context": pascal_context}
    if name not in builders:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {sorted(builders)}")
    return builders[name](root, split, transform)
