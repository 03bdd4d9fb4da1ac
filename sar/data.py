"""Data for the experiments: classification sets, long-tailed subsets and segmentation sets.

Four groups of helpers live here.

* **Classification sources.** :func:`load_fashion_mnist` finds the real Fashion-MNIST IDX
  files on disk (or downloads them when asked), :func:`load_digits` gives scikit-learn's
  bundled 8x8 digits as an always-available stand-in, :func:`load_cifar` wraps torchvision's
  CIFAR-10/100, and :func:`load_classification_data` picks one and says which it picked.
  All return ``(images uint8, labels int64)``.
* **Long tails.** :func:`long_tail_counts` gives per-class counts for the exponential or step
  profile (Cui et al. 2019; Cao et al. 2019), :func:`make_long_tailed` subsamples a balanced
  training set to that profile and :func:`shot_groups` splits classes into many/medium/few.
  Only the training split is made long-tailed: evaluate on the untouched, balanced test split.
* **Training datasets.** :class:`ClassificationDataset` normalises once and augments with
  torch ops; :class:`SceneDataset` from :func:`make_fashion_scenes` is a small, long-tailed
  semantic-segmentation benchmark built from real Fashion-MNIST items with pixel-exact masks.
* **Real segmentation sets on disk.** :class:`SegmentationFolder` (ADE20K-style folders),
  :func:`pascal_voc` and the joint :class:`SegmentationTransform`; 255 stays the ignore label.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "CIFAR10_CLASSES",
    "DIGITS_CLASSES",
    "FASHION_MNIST_CLASSES",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "REPO_DATA_DIR",
    "SCENE_CLASSES",
    "ClassificationDataset",
    "LongTail",
    "SceneDataset",
    "SceneItem",
    "SegmentationFolder",
    "SegmentationTransform",
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
    "pascal_voc",
    "read_idx",
    "shot_groups",
    "write_idx",
]

REPO_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_DIR_ENV = "SAR_DATA_DIR"

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DIGITS_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
SCENE_CLASSES: tuple[str, ...] = ("background", *FASHION_MNIST_CLASSES)

IGNORE_INDEX = 255
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# ----------------------------------------------------------------------------------------------
# IDX files (the format of MNIST and Fashion-MNIST)
# ----------------------------------------------------------------------------------------------

# third byte of the magic number -> big-endian element type
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """Whole file, gunzipped when it starts with the gzip magic (whatever its suffix)."""
    raw = path.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: corrupt gzip stream ({err})") from err


def _parse_idx(data: bytes, path: Path) -> np.ndarray:
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (magic number must start with two zero bytes)")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX element type 0x{code:02X}")
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({ndim} dimensions, {len(data)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = header + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{path}: IDX size mismatch: header says shape {dims} ({expected} bytes), "
            f"file has {len(data)} bytes (truncated or corrupt download?)"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # native order, and a writable copy


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    array = _parse_idx(_read_bytes(Path(path)), Path(path))
    array.flags.writeable = False  # shared between callers; they get copies
    return array


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a native-endian array of the stored shape.

    Raises ``ValueError`` naming the file when the magic number, header or size is wrong.
    Parsed files are cached by path and modification time; the result is a fresh copy.
    """
    path = Path(path)
    stat = path.stat()
    return _read_idx_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size).copy()


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file; gzip it when ``compress`` (default: suffix is ``.gz``)."""
    path = Path(path)
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    header = bytes([0, 0, codes[native], array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    payload = header + array.astype(native.newbyteorder(">")).tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST
# ----------------------------------------------------------------------------------------------

_FASHION_PREFIX = {"train": "train", "test": "t10k"}


def _check_split(split: str) -> str:
    if split not in _FASHION_PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def _idx_file(folder: Path, stem: str) -> Path | None:
    """``stem`` or ``stem.gz`` inside ``folder``, whichever exists."""
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def fashion_mnist_search_dirs(root: str | Path | None = None) -> list[Path]:
    """Folders that :func:`load_fashion_mnist` looks in, in order.

    ``root`` (and its ``FashionMNIST/raw``), ``$SAR_DATA_DIR`` (likewise), the repository's
    ``data/FashionMNIST/raw`` and ``data/``, then the Debian package's folder.
    """
    bases: list[Path] = []
    if root is not None:
        bases.append(Path(root))
    if os.environ.get(DATA_DIR_ENV):
        bases.append(Path(os.environ[DATA_DIR_ENV]))
    bases.append(REPO_DATA_DIR)
    dirs = [d for base in bases for d in (base, base / "FashionMNIST" / "raw")]
    dirs.append(DEBIAN_FASHION_MNIST_DIR)
    return list(dict.fromkeys(dirs))  # drop repeats, keep order


def find_fashion_mnist(split: str = "train", root: str | Path | None = None) -> Path | None:
    """First folder from :func:`fashion_mnist_search_dirs` holding both files of ``split``."""
    prefix = _FASHION_PREFIX[_check_split(split)]
    for folder in fashion_mnist_search_dirs(root):
        if _idx_file(folder, f"{prefix}-images-idx3-ubyte") and _idx_file(
            folder, f"{prefix}-labels-idx1-ubyte"
        ):
            return folder
    return None


def _not_found_message(split: str, root: str | Path | None) -> str:
    searched = "\n".join(f"  - {d}" for d in fashion_mnist_search_dirs(root))
    prefix = _FASHION_PREFIX[split]
    return (
        f"Fashion-MNIST ({split} split: {prefix}-images-idx3-ubyte[.gz] and "
        f"{prefix}-labels-idx1-ubyte[.gz]) was not found. Searched:\n{searched}\n"
        "Get it in one of these ways:\n"
        "  - sudo apt-get install dataset-fashion-mnist   (Debian/Ubuntu, offline-friendly)\n"
        "  - load_fashion_mnist(..., download=True)        (needs internet; saves to data/)\n"
        f"  - put the four IDX files in a folder and pass root=... or set {DATA_DIR_ENV}"
    )


def _download_fashion_mnist(split: str) -> tuple[Tensor, Tensor]:
    from torchvision.datasets import FashionMNIST

    ds = FashionMNIST(root=str(REPO_DATA_DIR), train=split == "train", download=True)
    return ds.data.to(torch.uint8).clone(), ds.targets.to(torch.int64).clone()


def load_fashion_mnist(
    split: str = "train", root: str | Path | None = None, download: bool = False
) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST ``split`` ("train": 60000 images, "test": 10000).

    Returns ``images`` uint8 ``(N, 28, 28)`` and ``labels`` int64 ``(N,)`` with values 0..9
    (names in :data:`FASHION_MNIST_CLASSES`). See :func:`fashion_mnist_search_dirs` for where
    it looks; ``download=True`` fetches it with torchvision into ``data/`` when nothing is found.
    Raises ``FileNotFoundError`` saying how to get the data otherwise.
    """
    split = _check_split(split)
    folder = find_fashion_mnist(split, root)
    if folder is None:
        if download:
            return _download_fashion_mnist(split)
        raise FileNotFoundError(_not_found_message(split, root))
    prefix = _FASHION_PREFIX[split]
    image_path = _idx_file(folder, f"{prefix}-images-idx3-ubyte")
    label_path = _idx_file(folder, f"{prefix}-labels-idx1-ubyte")
    assert image_path is not None and label_path is not None  # find_fashion_mnist checked
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{image_path}: expected uint8 images (N, H, W), got {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{label_path}: expected {len(images)} labels, got shape {labels.shape}")
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{label_path}: label {labels.max()} out of range 0..9")
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


# ----------------------------------------------------------------------------------------------
# Digits (bundled with scikit-learn) and CIFAR (torchvision)
# ----------------------------------------------------------------------------------------------


def load_digits(
    split: str = "train", test_fraction: float = 0.25, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """scikit-learn's 1797 handwritten 8x8 digits, split per class by a seeded shuffle.

    Returns ``images`` uint8 ``(N, 8, 8)`` rescaled from 0..16 to 0..255 and ``labels`` int64
    ``(N,)``. The split is stratified, so both halves keep the (near-uniform) class balance;
    "train" and "test" with the same ``seed`` and ``test_fraction`` are disjoint and cover all.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    bunch = sk_load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = round(len(members) * test_fraction)
        chosen.append(members[:n_test] if split == "test" else members[n_test:])
    idx = np.sort(np.concatenate(chosen))
    return torch.from_numpy(images[idx]), torch.from_numpy(labels[idx])


_CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def _cifar_root(name: str, root: str | Path | None) -> Path | None:
    candidates = [Path(root)] if root is not None else []
    if os.environ.get(DATA_DIR_ENV):
        candidates.append(Path(os.environ[DATA_DIR_ENV]))
    candidates.append(REPO_DATA_DIR)
    return next((c for c in candidates if (c / _CIFAR_FOLDERS[name]).is_dir()), None)


def load_cifar(
    name: str = "cifar10",
    split: str = "train",
    root: str | Path | None = None,
    download: bool = False,
) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """CIFAR-10 or CIFAR-100 through torchvision, from ``root``, ``$SAR_DATA_DIR`` or ``data/``.

    Returns ``images`` uint8 ``(N, 3, 32, 32)``, ``labels`` int64 ``(N,)`` and the class
    names. ``download=True`` fetches the archive into ``root`` (default ``data/``).
    """
    from torchvision.datasets import CIFAR10, CIFAR100

    name = name.lower().replace("-", "")
    if name not in _CIFAR_FOLDERS:
        raise ValueError(f"name must be 'cifar10' or 'cifar100', got {name!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    found = _cifar_root(name, root)
    if found is None and not download:
        where = Path(root) if root is not None else REPO_DATA_DIR
        raise FileNotFoundError(
            f"{name}: folder {_CIFAR_FOLDERS[name]}/ not found under {where}"
            f"{' or $' + DATA_DIR_ENV if os.environ.get(DATA_DIR_ENV) else ''}. "
            f"Pass download=True (needs internet) or put the extracted archive there."
        )
    cls = CIFAR10 if name == "cifar10" else CIFAR100
    target = found or (Path(root) if root is not None else REPO_DATA_DIR)
    try:
        ds = cls(root=str(target), train=split == "train", download=download)
    except RuntimeError as err:  # torchvision's "not found or corrupted"
        raise FileNotFoundError(f"{name} under {target}: {err}") from err
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    return images, torch.as_tensor(ds.targets, dtype=torch.int64), tuple(ds.classes)


def load_classification_data(
    name: str = "fashion-mnist", split: str = "train", fallback: bool = True
) -> tuple[Tensor, Tensor, tuple[str, ...], str]:
    """A classification set by name, with a sentence saying where it came from.

    ``name`` is "fashion-mnist", "digits", "cifar10" or "cifar100". Returns ``images`` uint8
    (``(N, H, W)`` grey or ``(N, 3, H, W)`` colour), ``labels`` int64 ``(N,)``, class names and
    a description to print. When Fashion-MNIST is missing and ``fallback`` is true the digits
    (also grey, 10 classes) stand in and the description says so; CIFAR never falls back.
    """
    key = name.lower().replace("_", "-")
    if key == "digits":
        images, labels = load_digits(split)
        return images, labels, DIGITS_CLASSES, f"scikit-learn digits, {split} split (8x8)"
    if key in ("cifar10", "cifar-10", "cifar100", "cifar-100"):
        images, labels, classes = load_cifar(key, split)
        return images, labels, classes, f"{key.upper()} {split} split from torchvision"
    if key != "fashion-mnist":
        raise ValueError(f"unknown dataset {name!r}")
    split = _check_split(split)
    folder = find_fashion_mnist(split)
    if folder is None and fallback:
        images, labels = load_digits(split)
        description = (
            f"Fashion-MNIST not found, so using scikit-learn's 8x8 digits ({split} split, "
            f"{len(labels)} images) instead. For the real data: "
            "sudo apt-get install dataset-fashion-mnist, or load_fashion_mnist(download=True)."
        )
        return images, labels, DIGITS_CLASSES, description
    images, labels = load_fashion_mnist(split)
    description = f"Fashion-MNIST {split} split ({len(labels)} images) from {folder}"
    return images, labels, FASHION_MNIST_CLASSES, description


# ----------------------------------------------------------------------------------------------
# Long-tailed subsets
# ----------------------------------------------------------------------------------------------

_MAX_IMBALANCE = 200.0


def _check_profile(
    num_classes: int, imbalance_factor: float, profile: str, step_fraction: float
) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not 1.0 <= imbalance_factor <= _MAX_IMBALANCE:
        raise ValueError(
            f"imbalance_factor must be in [1, {_MAX_IMBALANCE:g}], got {imbalance_factor}"
        )
    if profile not in ("exp", "step"):
        raise ValueError(f"profile must be 'exp' or 'step', got {profile!r}")
    if not 0.0 < step_fraction < 1.0:
        raise ValueError(f"step_fraction must be in (0, 1), got {step_fraction}")


def _num_tail(num_classes: int, step_fraction: float) -> int:
    # the epsilon keeps 10 * 0.3 = 3.0000000000000004 from becoming 4 elsewhere; floor is exact
    return min(num_classes - 1, math.floor(num_classes * step_fraction + 1e-9))


def long_tail_weights(
    num_classes: int, imbalance_factor: float, profile: str = "exp", step_fraction: float = 0.5
) -> list[float]:
    """Relative class sizes head->tail, from 1 down to ``1 / imbalance_factor`` (unrounded).

    ``exp``: ``IF ** (-i / (C - 1))`` for rank ``i``; ``step``: see :func:`long_tail_counts`.
    """
    _check_profile(num_classes, imbalance_factor, profile, step_fraction)
    if num_classes == 1:
        return [1.0]
    if profile == "exp":
        return [imbalance_factor ** (-i / (num_classes - 1)) for i in range(num_classes)]
    n_tail = _num_tail(num_classes, step_fraction)
    return [1.0] * (num_classes - n_tail) + [1.0 / imbalance_factor] * n_tail


def long_tail_counts(
    num_classes: int,
    max_count: int,
    imbalance_factor: float,
    profile: str = "exp",
    step_fraction: float = 0.5,
) -> list[int]:
    """Per-rank class sizes, head (rank 0) to tail, for a long-tailed training set.

    * ``exp`` (Cui et al. 2019): ``n_i = floor(max_count / IF ** (i / (C - 1)))``, so the
      head keeps ``max_count`` and the tail gets exactly ``floor(max_count / IF)``.
    * ``step`` (Cao et al. 2019): the last ``floor(C * step_fraction)`` ranks are tail classes
      with ``floor(max_count / IF)`` each, the rest keep ``max_count`` (C=10, 0.5: five and five).

    ``imbalance_factor`` (IF, head size / tail size) must lie in [1, 200]; IF=1 is balanced.
    Raises ``ValueError`` when ``max_count / IF < 1`` (an empty tail class).
    """
    _check_profile(num_classes, imbalance_factor, profile, step_fraction)
    if max_count / imbalance_factor < 1:
        raise ValueError(f"max_count={max_count} / IF={imbalance_factor} leaves an empty tail")
    if num_classes == 1:
        return [int(max_count)]
    if profile == "exp":
        # dividing by IF ** t (not multiplying by IF ** -t) makes the last rank exact
        return [
            math.floor(max_count / imbalance_factor ** (i / (num_classes - 1)))
            for i in range(num_classes)
        ]
    n_tail = _num_tail(num_classes, step_fraction)
    tail = math.floor(max_count / imbalance_factor)
    return [int(max_count)] * (num_classes - n_tail) + [tail] * n_tail


@dataclass
class LongTail:
    """A long-tailed subset of a balanced labelled set.

    ``indices`` int64 ``(M,)`` ascending positions into the original set; ``counts[c]`` the
    number kept of class id ``c``; ``class_order`` class ids from head to tail.
    """

    indices: Tensor
    counts: list[int]
    class_order: list[int]
    imbalance_factor: float = 1.0
    profile: str = "exp"

    def apply(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``(images[indices], labels[indices])``."""
        return images[self.indices], labels[self.indices]


def make_long_tailed(
    labels: Tensor,
    imbalance_factor: float,
    profile: str = "exp",
    seed: int = 0,
    max_count: int | None = None,
    class_order: Sequence[int] | None = None,
    step_fraction: float = 0.5,
) -> LongTail:
    """Subsample ``labels`` (int64 ``(N,)``, ids ``0..C-1``) to a long-tailed profile.

    Which class is the head is a permutation of the class ids drawn from ``seed`` (pass
    ``class_order``, head first, to fix it). Within class ``c`` the kept samples are the
    first ``counts[c]`` of a permutation drawn from ``seed`` and ``c`` alone, so the subsets
    for growing IF are nested. ``max_count`` defaults to the smallest class size (every class
    can then be the head). Raises ``ValueError`` when a class has fewer samples than needed.
    Keep the test split untouched (balanced) for evaluation.
    """
    labels = torch.as_tensor(labels).long().flatten()
    num_classes = int(labels.max()) + 1
    available = torch.bincount(labels, minlength=num_classes).tolist()
    if max_count is None:
        max_count = min(available)
    if class_order is None:
        order_gen = torch.Generator().manual_seed(seed)
        class_order = torch.randperm(num_classes, generator=order_gen).tolist()
    class_order = [int(c) for c in class_order]
    if sorted(class_order) != list(range(num_classes)):
        raise ValueError(f"class_order must be a permutation of 0..{num_classes - 1}")
    per_rank = long_tail_counts(num_classes, max_count, imbalance_factor, profile, step_fraction)
    counts = [0] * num_classes
    for rank, c in enumerate(class_order):
        counts[c] = per_rank[rank]
    kept = []
    for c in range(num_classes):
        if available[c] < counts[c]:
            raise ValueError(
                f"class {c} has {available[c]} samples but the profile needs {counts[c]} "
                f"(lower max_count or pick another class_order)"
            )
        members = torch.nonzero(labels == c).flatten()
        gen = torch.Generator().manual_seed(seed * 1_000_003 + c)
        kept.append(members[torch.randperm(len(members), generator=gen)[: counts[c]]])
    indices = torch.sort(torch.cat(kept)).values
    return LongTail(indices, counts, class_order, float(imbalance_factor), profile)


def shot_groups(
    counts: Sequence[float],
    many_threshold: float | None = None,
    few_threshold: float | None = None,
    class_order: Sequence[int] | None = None,
) -> dict[str, list[int]]:
    """Split class ids into "many", "medium" and "few" shot groups (each list ascending).

    ``counts[c]`` is class ``c``'s training frequency: a sample count, or a probability.

    With thresholds (CIFAR-LT/ImageNet-LT use 100 and 20): many = ``count > many_threshold``,
    few = ``count < few_threshold``, medium otherwise. Without (both None): sort classes by
    count, largest first, and cut into thirds of ``round(C / 3)`` head and tail classes with
    the rest medium (C=10: 3/4/3). Ties go by position in ``class_order`` (head to tail, e.g.
    ``LongTail.class_order``), else by class id; so a balanced set (imbalance factor 1) gets
    the same groups as its long-tailed versions. Giving only one threshold is an error.
    """
    counts = [float(n) for n in counts]
    if (many_threshold is None) != (few_threshold is None):
        raise ValueError("give both many_threshold and few_threshold, or neither")
    if many_threshold is not None and few_threshold is not None:
        groups: dict[str, list[int]] = {"many": [], "medium": [], "few": []}
        for c, n in enumerate(counts):
            key = "many" if n > many_threshold else "few" if n < few_threshold else "medium"
            groups[key].append(c)
        return groups
    position = {c: i for i, c in enumerate(class_order if class_order is not None
                                           else range(len(counts)))}
    if sorted(position) != list(range(len(counts))):
        raise ValueError(f"class_order must be a permutation of 0..{len(counts) - 1}")
    ranked = sorted(range(len(counts)), key=lambda c: (-counts[c], position[c]))
    k = round(len(counts) / 3)
    return {
        "many": sorted(ranked[:k]),
        "medium": sorted(ranked[k : len(counts) - k]),
        "few": sorted(ranked[len(counts) - k :]),
    }


# ----------------------------------------------------------------------------------------------
# Classification dataset
# ----------------------------------------------------------------------------------------------


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
        self.labels = torch.as_tensor(labels, dtype=torch.int64).flatten()
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


# ----------------------------------------------------------------------------------------------
# Fashion scenes: a small long-tailed segmentation benchmark from real images
# ----------------------------------------------------------------------------------------------


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
    scales = item_scale[0] + (item_scale[1] - item_scale[0]) * torch.rand(total, generator=gen)
    where = torch.rand(total, 2, generator=gen)
    tints = 0.35 + 0.65 * torch.rand(total, 3, generator=gen)
    if channels == 1:
        tints = torch.ones(total, 1)

    # per item: source index, side and top-left corner, all vectorised
    members = torch.argsort(labels, stable=True)  # source indices grouped by class
    starts = torch.cumsum(sizes, 0) - sizes
    offset = (picks * sizes[classes]).long().minimum(sizes[classes] - 1)
    sources = members[starts[classes] + offset]
    sides = (scales * images.shape[-1]).round().long().clamp(4, size)
    corners = (where * (size - sides + 1)[:, None]).long().minimum((size - sides)[:, None])

    # resizing is the costly step: do it once per distinct side for all items of that side
    colours: list[Tensor] = [torch.empty(0)] * total  # tinted item, (channels, side, side)
    alphas: list[Tensor] = [torch.empty(0)] * total  # opaque pixels, bool (side, side)
    for side in sides.unique().tolist():
        chosen = torch.nonzero(sides == side).flatten()
        intensity, alpha = item_alpha(images[sources[chosen]], side, threshold)
        tinted = intensity[:, None] * tints[chosen][:, :, None, None]
        for k, colour, opaque in zip(chosen.tolist(), tinted, alpha, strict=True):
            colours[k], alphas[k] = colour, opaque

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


# ----------------------------------------------------------------------------------------------
# Segmentation datasets on disk
# ----------------------------------------------------------------------------------------------


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
        out = mask
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
    """

    def __init__(
        self,
        size: int | Sequence[int] | None = None,
        crop: int | Sequence[int] | None = None,
        hflip: bool = False,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.size, self.crop, self.hflip = size, crop, hflip
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.ignore_index = ignore_index

    def __call__(self, image: Any, mask: Any) -> tuple[Tensor, Tensor]:
        x, y = _image_to_tensor(image), _mask_to_tensor(mask)
        if x.shape[-2:] != y.shape:
            raise ValueError(f"image size {tuple(x.shape[-2:])} != mask size {tuple(y.shape)}")
        if self.size is not None:
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
        if isinstance(self.size, int):
            scale = self.size / min(h, w)
            out = (max(1, round(h * scale)), max(1, round(w * scale)))
        else:
            out = _pair(self.size)
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
    (PIL image, PIL mask or int64 tensor), else plain [0, 1] tensors. Raises
    ``FileNotFoundError`` listing unpaired files, and ``ValueError`` naming both files when
    an image and its mask differ in size (checked when the pair is loaded).
    """

    def __init__(
        self,
        root: str | Path,
        image_dir: str = "images",
        mask_dir: str = "masks",
        transform: Callable[[Any, Any], tuple[Tensor, Tensor]] | None = None,
        reduce_zero_label: bool = False,
    ) -> None:
        self.root, self.transform, self.reduce_zero_label = Path(root), transform, reduce_zero_label
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
        if self.reduce_zero_label:
            m = _mask_to_tensor(mask)
            mask = torch.where(m == 0, IGNORE_INDEX, torch.where(m == IGNORE_INDEX, m, m - 1))
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
