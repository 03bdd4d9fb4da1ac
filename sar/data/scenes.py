"""A long-tailed segmentation benchmark built offline: Fashion-MNIST items pasted onto scenes."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .constants import FASHION_MNIST_CLASSES, IGNORE_INDEX, SCENE_CLASSES
from .longtail import long_tail_weights
from .sources import load_fashion_mnist


@dataclass(frozen=True)
class SceneItem:
    """One pasted item: its source image index and class id, and its box.

    ``box`` is ``(y0, x0, y1, x1)`` in scene pixels, ends exclusive, a square of side ``side``;
    ``tint`` the RGB multiplier (all ones for grey scenes).
    """

    source_index: int
    class_id: int
    box: tuple[int, int, int, int]
    tint: tuple[float, ...]

    @property
    def side(self) -> int:
        return self.box[2] - self.box[0]


def item_alpha(image: Tensor, side: int, threshold: float = 0.15) -> tuple[Tensor, Tensor]:
    """Resize source images and find their opaque pixels.

    ``image`` uint8 ``(h, w)`` or a batch ``(m, h, w)``. Intensities are resized to
    ``(side, side)`` bilinearly (antialiased when shrinking) and scaled to [0, 1]; a pixel
    belongs to the item where it is above ``threshold``. Returns ``intensity`` float32 and
    ``alpha`` bool, both ``(side, side)`` or ``(m, side, side)``.
    """
    x = image.float().div(255.0)
    batch = x.reshape(-1, 1, *x.shape[-2:])
    if batch.shape[-2:] != (side, side):
        batch = F.interpolate(
            batch, size=(side, side), mode="bilinear", align_corners=False, antialias=True
        )
    x = batch.clamp_(0.0, 1.0).reshape(*x.shape[:-2], side, side)
    return x, x > threshold


class SceneDataset(Dataset):
    """Scenes built by :func:`make_fashion_scenes`; items are ``(image, mask)``.

    ``images`` float32 ``(N, channels, size, size)`` in [0, 1]; ``masks`` int64
    ``(N, size, size)`` with 0 = background and ``k + 1`` = Fashion-MNIST class ``k``;
    ``items[n]`` lists scene ``n``'s :class:`SceneItem` records, bottom to top.
    ``transform(image, mask)``, when given, is applied per item (e.g. a
    :class:`SegmentationTransform`).
    """

    def __init__(
        self,
        images: Tensor,
        masks: Tensor,
        items: list[list[SceneItem]],
        class_order: list[int],
        class_probs: list[float],
        source_split: str,
        threshold: float,
        transform: Callable[[Any, Any], tuple[Tensor, Tensor]] | None = None,
    ) -> None:
        self.images, self.masks, self.items = images, masks, items
        self.class_order, self.class_probs = class_order, class_probs
        self.source_split, self.threshold, self.transform = source_split, threshold, transform
        self.class_names = SCENE_CLASSES
        self.num_classes = len(SCENE_CLASSES)
        self.ignore_index = IGNORE_INDEX

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, mask = self.images[index], self.masks[index]
        return self.transform(image, mask) if self.transform else (image, mask)

    @functools.cached_property
    def class_pixel_counts(self) -> Tensor:
        """int64 ``(11,)``: pixels of each scene class over all masks (background first)."""
        return torch.bincount(self.masks.flatten(), minlength=self.num_classes)

    @property
    def class_item_counts(self) -> Tensor:
        """int64 ``(10,)``: how many items of each Fashion-MNIST class were pasted."""
        ids = torch.tensor([it.class_id for scene in self.items for it in scene], dtype=torch.long)
        return torch.bincount(ids, minlength=len(FASHION_MNIST_CLASSES))

    @property
    def source_indices(self) -> Tensor:
        """int64: every source image index used, scene by scene (repeats possible)."""
        return torch.tensor([it.source_index for s in self.items for it in s], dtype=torch.long)


def _background(gen: torch.Generator, n: int, channels: int, size: int) -> Tensor:
    """Smooth two-octave value noise, float32 ``(n, channels, size, size)`` in [0.05, 0.6]."""
    low = max(4, size // 4)  # mix at low resolution, then one cheap bilinear upsample
    noise = torch.zeros(n, channels, low, low)
    for cells, weight in ((3, 0.65), (7, 0.35)):
        grid = torch.rand(n, channels, cells, cells, generator=gen)
        noise += weight * F.interpolate(grid, size=(low, low), mode="bicubic", align_corners=True)
    level = torch.rand(n, 1, 1, 1, generator=gen)  # some scenes darker, some lighter
    noise = 0.05 + 0.55 * (0.5 * noise.clamp_(0, 1) + 0.5 * level)
    return F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)


def _tints(gen: torch.Generator, n: int, channels: int) -> Tensor:
    """Random RGB item colours, float32 ``(n, 3)`` in [0.35, 1); ones ``(n, 1)`` for grey."""
    tints = 0.35 + 0.65 * torch.rand(n, 3, generator=gen)
    return torch.ones(n, 1) if channels == 1 else tints


def _tinted_items(
    images: Tensor, sides: Tensor, tints: Tensor, threshold: float
) -> tuple[list[Tensor], list[Tensor]]:
    """Each source image resized to its side and tinted, and its opaque pixels.

    ``images`` uint8 ``(n, h, w)``, ``sides`` int64 ``(n,)``, ``tints`` float32 ``(n, channels)``.
    Returns two lists of n tensors: the tinted item, float32 ``(channels, side, side)``, and
    its opaque pixels, bool ``(side, side)`` (see :func:`item_alpha`).
    """
    n = len(images)
    colours: list[Tensor] = [torch.empty(0)] * n
    alphas: list[Tensor] = [torch.empty(0)] * n
    # resizing is the costly step: do it once per distinct side for all items of that side
    for side in sides.unique().tolist():
        chosen = torch.nonzero(sides == side).flatten()
        intensity, alpha = item_alpha(images[chosen], side, threshold)
        tinted = intensity[:, None] * tints[chosen][:, :, None, None]
        for k, colour, opaque in zip(chosen.tolist(), tinted, alpha, strict=True):
            colours[k], alphas[k] = colour, opaque
    return colours, alphas


def _sides_and_corners(
    gen: torch.Generator, n: int, source_side: int, size: int, item_scale: tuple[float, float]
) -> tuple[Tensor, Tensor]:
    """Item sides ``round(source_side * scale)``, ``scale ~ U(item_scale)``, clamped to
    ``[4, size]``, and uniform top-left corners ``(y0, x0)`` inside the scene: int64 ``(n,)``
    and ``(n, 2)``."""
    scales = item_scale[0] + (item_scale[1] - item_scale[0]) * torch.rand(n, generator=gen)
    where = torch.rand(n, 2, generator=gen)
    sides = (scales * source_side).round().long().clamp(4, size)
    corners = (where * (size - sides + 1)[:, None]).long().minimum((size - sides)[:, None])
    return sides, corners


def compose_single_items(
    images: Tensor,
    size: int = 64,
    item_scale: tuple[float, float] = (0.6, 1.2),
    channels: int = 3,
    threshold: float = 0.15,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Each source image as one item on a scene background, drawn as the scenes draw items.

    For classification pretraining whose inputs look like :func:`make_fashion_scenes`'s items:
    the same smooth noise background, the same item sides (``round(28 * scale)``, ``scale ~
    U(item_scale)``), uniform positions, the same random RGB tints and the same opacity
    threshold; one item per image, so the image's label is the item's class.

    Args:
        images: uint8 ``(n, h, w)`` source items (e.g. Fashion-MNIST **train** images).
        generator: the draws' source; a fresh call gives a fresh composition.

    Returns:
        float32 ``(n, channels, size, size)`` in [0, 1].
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    n = len(images)
    canvas = _background(gen, n, channels, size)
    sides, corners = _sides_and_corners(gen, n, images.shape[-1], size, item_scale)
    colours, alphas = _tinted_items(images, sides, _tints(gen, n, channels), threshold)
    for k, (side, (y0, x0)) in enumerate(zip(sides.tolist(), corners.tolist(), strict=True)):
        region = canvas[k, :, y0:y0 + side, x0:x0 + side]
        region.copy_(torch.where(alphas[k], colours[k], region))
    return canvas


def scene_class_probs(
    imbalance_factor: float = 10.0,
    profile: str = "exp",
    seed: int = 0,
    class_order: Sequence[int] | None = None,
) -> tuple[list[int], Tensor]:
    """Which Fashion-MNIST classes :func:`make_fashion_scenes` makes head and tail, and how often.

    Returns ``class_order`` (class ids, head first; drawn from ``seed`` unless given) and
    ``probs``, float64 ``(10,)``: the probability that an item is of class id ``c``. Knowing
    these without building scenes lets results be split into head and tail classes afterwards.
    """
    num_classes = len(FASHION_MNIST_CLASSES)
    if class_order is None:
        class_order = torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed))
    class_order = [int(c) for c in class_order]
    if sorted(class_order) != list(range(num_classes)):
        raise ValueError(f"class_order must be a permutation of 0..{num_classes - 1}")
    weights = long_tail_weights(num_classes, imbalance_factor, profile)
    probs = torch.zeros(num_classes, dtype=torch.float64)
    probs[class_order] = torch.tensor(weights, dtype=torch.float64)
    return class_order, probs / probs.sum()


def make_fashion_scenes(
    num_scenes: int,
    size: int = 64,
    split: str = "train",
    items_per_scene: tuple[int, int] = (2, 5),
    imbalance_factor: float = 10.0,
    profile: str = "exp",
    item_scale: tuple[float, float] = (0.6, 1.2),
    seed: int = 0,
    channels: int = 3,
    images: Tensor | None = None,
    labels: Tensor | None = None,
    class_order: Sequence[int] | None = None,
    threshold: float = 0.15,
    transform: Callable[[Any, Any], tuple[Tensor, Tensor]] | None = None,
) -> SceneDataset:
    """Long-tailed semantic-segmentation scenes pasted from real Fashion-MNIST items.

    Each scene is smooth random background noise with ``items_per_scene`` (inclusive range)
    items on it. An item is a source image of its class resized to side
    ``round(28 * scale)``, ``scale ~ U(item_scale)``, pasted at a uniform position, later items
    on top; colour scenes tint each item by a random RGB colour. The mask is pixel-exact: the
    pixels of the resized item above ``threshold`` (see :func:`item_alpha`) take class id + 1
    in the mask and the tinted intensity in the image; the rest of the box shows what lay under.
    Item classes follow :func:`long_tail_weights` (normalised) over ``class_order``, head first,
    which depends only on ``seed`` so train and val scenes share head and tail classes.

    ``split`` "train" takes items from Fashion-MNIST train, "val"/"test" from its test split
    (disjoint sources). Pass ``images`` uint8 ``(M, h, w)`` and ``labels`` to use other
    sources (both or neither). 2000 scenes of 64x64 take a few seconds on two CPU cores.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    source_split = "train" if split == "train" else "test"
    if images is None or labels is None:
        images, labels = load_fashion_mnist(source_split)
        source_split = f"fashion-mnist/{source_split}"
    else:
        source_split = "custom"
    lo, hi = items_per_scene
    if not 1 <= lo <= hi:
        raise ValueError(
            f"items_per_scene must be (lo, hi) with 1 <= lo <= hi, got {items_per_scene}"
        )
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    num_classes = len(FASHION_MNIST_CLASSES)
    labels = torch.as_tensor(labels).long()
    class_order, probs = scene_class_probs(imbalance_factor, profile, seed, class_order)
    sizes = torch.bincount(labels, minlength=num_classes)[:num_classes]
    if len(labels) == 0 or labels.min() < 0 or labels.max() >= num_classes or sizes.min() == 0:
        raise ValueError("source labels must be 0..9, each class with at least one image")

    # the scene stream differs between splits even with one seed; the class order does not
    split_salt = {"train": 0, "val": 1, "test": 1}[split]
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * (split_salt + 1))
    canvas = _background(gen, num_scenes, channels, size)
    n_items = torch.randint(lo, hi + 1, (num_scenes,), generator=gen)
    total = int(n_items.sum())
    classes = torch.multinomial(probs.float(), total, replacement=True, generator=gen)
    picks = torch.rand(total, generator=gen)
    sides, corners = _sides_and_corners(gen, total, images.shape[-1], size, item_scale)
    tints = _tints(gen, total, channels)

    # per item: its source index, vectorised
    members = torch.argsort(labels, stable=True)  # source indices grouped by class
    starts = torch.cumsum(sizes, 0) - sizes
    offset = (picks * sizes[classes]).long().minimum(sizes[classes] - 1)
    sources = members[starts[classes] + offset]
    colours, alphas = _tinted_items(images[sources], sides, tints, threshold)

    masks = torch.zeros(num_scenes, size, size, dtype=torch.int64)
    scene_of = torch.repeat_interleave(torch.arange(num_scenes), n_items).tolist()
    all_items: list[list[SceneItem]] = [[] for _ in range(num_scenes)]
    columns = (scene_of, classes.tolist(), sources.tolist(), sides.tolist(), corners.tolist())
    tint_rows = tints.tolist()
    for k, (n, c, src, side, (y0, x0)) in enumerate(zip(*columns, strict=True)):
        # items are pasted in draw order, so later ones occlude earlier ones
        ys, xs = slice(y0, y0 + side), slice(x0, x0 + side)
        region = canvas[n, :, ys, xs]
        region.copy_(torch.where(alphas[k], colours[k], region))
        masks[n, ys, xs].masked_fill_(alphas[k], c + 1)
        all_items[n].append(SceneItem(src, c, (y0, x0, y0 + side, x0 + side), tuple(tint_rows[k])))
    return SceneDataset(
        canvas, masks, all_items, class_order, probs.tolist(), source_split, threshold, transform
    )
