"""Data for the experiments: classification sets, long-tailed subsets and segmentation sets.

Four groups of helpers live here.

* **Classification sources.** :func:`load_fashion_mnist` finds the real Fashion-MNIST IDX
  files on disk, or downloads them with torchvision (offline it stops with one message
  saying how to get them: :class:`DatasetNotFoundError`), :func:`load_digits` gives
  scikit-learn's bundled 8x8 digits, :func:`load_cifar` wraps torchvision's CIFAR-10/100, and
  :func:`load_classification_data` loads one by name and says where it came from (never
  another set in its place). All return ``(images uint8, labels int64)``.
  :func:`fashion_subset` gives the seeded Fashion-MNIST subsets the notebooks train on.
* **Long tails.** :func:`long_tail_counts` gives per-class counts for the exponential or step
  profile (Cui et al. 2019; Cao et al. 2019), :func:`make_long_tailed` subsamples a balanced
  training set to that profile and :func:`shot_groups` splits classes into many/medium/few.
  Only the training split is made long-tailed: evaluate on the untouched, balanced test split.
* **Training datasets.** :class:`ClassificationDataset` normalises once and augments with
  torch ops; :class:`SceneDataset` from :func:`make_fashion_scenes` is a small, long-tailed
  semantic-segmentation benchmark built from real Fashion-MNIST items with pixel-exact masks.
* **Real segmentation sets on disk.** :class:`SegmentationFolder` (ADE20K-style folders),
  :func:`pascal_voc` and the joint :class:`SegmentationTransform`; 255 stays the ignore label.
  The paper's benchmarks in their standard layouts: :func:`cityscapes` (19 train ids),
  :func:`ade20k` (150 classes) and :func:`pascal_context` (59 classes).
"""

from .benchmarks import (
    BENCHMARK_NUM_CLASSES,
    ade20k,
    benchmark_dataset,
    cityscapes,
    cityscapes_classes,
    cityscapes_train_ids,
    pascal_context,
)
from .classification import ClassificationDataset
from .constants import (
    CIFAR10_CLASSES,
    DIGITS_CLASSES,
    FASHION_MNIST_CLASSES,
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SCENE_CLASSES,
)
from .idx import read_idx, write_idx
from .longtail import LongTail, long_tail_counts, long_tail_weights, make_long_tailed, shot_groups
from .scenes import (
    SceneDataset,
    SceneItem,
    compose_single_items,
    item_alpha,
    make_fashion_scenes,
    scene_class_probs,
)
from .segmentation import SegmentationFolder, SegmentationTransform, pascal_voc
from .sources import (
    DATA_DIR_ENV,
    DEBIAN_FASHION_MNIST_DIR,
    DOWNLOAD_ENV,
    REPO_DATA_DIR,
    DatasetNotFoundError,
    download_allowed,
    fashion_mnist_search_dirs,
    find_fashion_mnist,
    load_cifar,
    load_classification_data,
    load_digits,
    load_fashion_mnist,
)
from .subsets import FashionSubset, cap_per_class, fashion_subset

__all__ = [
    "BENCHMARK_NUM_CLASSES",
    "CIFAR10_CLASSES",
    "ClassificationDataset",
    "DATA_DIR_ENV",
    "DEBIAN_FASHION_MNIST_DIR",
    "DOWNLOAD_ENV",
    "DatasetNotFoundError",
    "DIGITS_CLASSES",
    "FASHION_MNIST_CLASSES",
    "FashionSubset",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LongTail",
    "REPO_DATA_DIR",
    "SCENE_CLASSES",
    "SceneDataset",
    "SceneItem",
    "SegmentationFolder",
    "SegmentationTransform",
    "ade20k",
    "benchmark_dataset",
    "cap_per_class",
    "cityscapes",
    "cityscapes_classes",
    "cityscapes_train_ids",
    "download_allowed",
    "fashion_subset",
    "compose_single_items",
    "fashion_mnist_search_dirs",
    "find_fashion_mnist",
    "item_alpha",
    "load_cifar",
    "load_classification_data",
    "load_digits",
    "load_fashion_mnist",
    "long_tail_counts",
    "long_tail_weights",
    "make_fashion_scenes",
    "make_long_tailed",
    "pascal_context",
    "pascal_voc",
    "read_idx",
    "scene_class_probs",
    "shot_groups",
    "write_idx",
]
