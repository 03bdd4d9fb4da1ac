"""Seeded subsets: the small Fashion-MNIST sets the notebooks train on, a per-class cap."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .classification import ClassificationDataset
from .sources import load_classification_data


class FashionSubset(NamedTuple):
    """What :func:`fashion_subset` returns; unpacks as ``train, test, class_names, description``.

    ``train``/``test``: :class:`ClassificationDataset` items ``(float32 (1, 28, 28), int64)``,
    both normalised with the training subset's mean and std. ``description``: where the images
    came from and how the subsets were drawn, to print.
    """

    train: ClassificationDataset
    test: ClassificationDataset
    class_names: tuple[str, ...]
    description: str

    def loaders(self, batch_size: int, test_batch_size: int = 500,
                seed: int = 0) -> tuple[DataLoader, DataLoader]:
        """A shuffling training loader (order fixed by ``seed``) and an ordered test loader,
        ``num_workers=0``: the notebooks' loaders."""
        train = DataLoader(self.train, batch_size=batch_size, shuffle=True, num_workers=0,
                           generator=torch.Generator().manual_seed(seed))
        return train, DataLoader(self.test, batch_size=test_batch_size, num_workers=0)


def _draw(n: int, size: int | None, seed: int, what: str) -> Tensor:
    if size is not None and not 0 < size <= n:
        raise ValueError(f"{what}_size must be in 1..{n}, got {size}")
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size]


def fashion_subset(
    train_size: int | None,
    test_size: int | None,
    seed: int = 0,
    test_seed: int | None = None,
    *,
    augment: bool = False,
    root: str | Path | None = None,
    download: bool | None = None,
) -> FashionSubset:
    """A seeded Fashion-MNIST training subset and a test subset normalised like it.

    The training images are ``torch.randperm(60000, generator=manual_seed(seed))[:train_size]``;
    the test images are the first ``test_size`` of the test split, or, with ``test_seed``, the
    same kind of draw with that seed. These are exactly the subsets notebooks 01 and 05
    (``seed=SEED``, first test images) and 02 (``seed=0, test_seed=1``) built by hand.

    Args:
        train_size: training images (``None``: all 60000, in a seeded order).
        test_size: test images (``None``: all 10000).
        seed: seed of the training draw.
        test_seed: ``None`` for the first ``test_size`` test images, else the seed of a draw.
        augment: crop-and-flip augmentation of the training subset.
        root, download: where to look and whether to download (:func:`load_fashion_mnist`).

    Raises:
        DatasetNotFoundError: Fashion-MNIST is not available (the message says how to get it).
        ValueError: a size outside ``1..N``.
    """
    images, labels, names, source = load_classification_data("fashion-mnist", "train", root,
                                                             download)
    test_images, test_labels, _, _ = load_classification_data("fashion-mnist", "test", root,
                                                              download)
    pick = _draw(len(labels), train_size, seed, "train")
    train = ClassificationDataset(images[pick], labels[pick], augment=augment)
    if test_seed is None:
        if test_size is not None and not 0 < test_size <= len(test_labels):
            raise ValueError(f"test_size must be in 1..{len(test_labels)}, got {test_size}")
        test_pick: Tensor | slice = slice(None, test_size)
        drawn = f"the first {len(test_labels[test_pick])} test images"
    else:
        test_pick = _draw(len(test_labels), test_size, test_seed, "test")
        drawn = f"{len(test_pick)} test images drawn with seed {test_seed}"
    test = ClassificationDataset(test_images[test_pick], test_labels[test_pick],
                                 mean=train.mean, std=train.std)
    description = (f"{source}; training subset: {len(train)} images drawn with seed {seed}; "
                   f"test subset: {drawn}; each image float32 {tuple(train[0][0].shape)},"
                   " normalised with the training subset's mean and std")
    return FashionSubset(train, test, names, description)


def cap_per_class(labels: Tensor, per_class: int, seed: int = 0) -> Tensor:
    """Indices of at most ``per_class`` items of each class, drawn at random without
    replacement, so an embedding plot shows every class (a background of 80 % of the pixels
    would hide the rest).

    Args:
        labels: ``(N,)`` integer classes.
        per_class: the cap (>= 1).
        seed: seed of the draw.

    Returns:
        int64 ``(M,)`` indices into ``labels``, grouped by class in ascending order, in the
        drawn order within a class; ``M = sum_c min(per_class, n_c)``.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    labels = torch.as_tensor(labels).flatten()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    parts = [order[labels[order] == c][:per_class] for c in labels.unique()]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
