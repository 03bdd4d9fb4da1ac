"""Classification sources: Fashion-MNIST from disk or a download, scikit-learn's digits, CIFAR."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .constants import DIGITS_CLASSES, FASHION_MNIST_CLASSES
from .idx import read_idx

REPO_DATA_DIR = Path(__file__).resolve().parents[2] / "data"


DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


DATA_DIR_ENV = "SAR_DATA_DIR"


DOWNLOAD_ENV = "SAR_DOWNLOAD"


_FASHION_PREFIX = {"train": "train", "test": "t10k"}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is neither on disk nor downloadable; the message says how to get it."""


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


def download_allowed(download: bool | None = None) -> bool:
    """``download``, or when it is ``None`` whether ``$SAR_DOWNLOAD`` allows downloads
    (default yes; ``0``/``false``/``no``/``off`` forbid them, as the tests do)."""
    if download is not None:
        return download
    return os.environ.get(DOWNLOAD_ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


def _data_root(root: str | Path | None) -> Path:
    """Where a download goes: ``root``, else ``$SAR_DATA_DIR``, else the repository's data/."""
    if root is not None:
        return Path(root)
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV])
    return REPO_DATA_DIR


def fashion_mnist_search_dirs(root: str | Path | None = None) -> list[Path]:
    """Folders that :func:`load_fashion_mnist` looks in, in order.

    For ``root``, then ``$SAR_DATA_DIR``, then the repository's ``data/``: the folder itself,
    its ``fashion-mnist/`` and its ``FashionMNIST/raw/`` (torchvision's download layout); then
    the Debian package's folder.
    """
    bases: list[Path] = []
    if root is not None:
        bases.append(Path(root))
    if os.environ.get(DATA_DIR_ENV):
        bases.append(Path(os.environ[DATA_DIR_ENV]))
    bases.append(REPO_DATA_DIR)
    dirs = [d for base in bases
            for d in (base, base / "fashion-mnist", base / "FashionMNIST" / "raw")]
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


def _not_found_message(split: str, root: str | Path | None, reason: str | None = None) -> str:
    searched = "\n".join(f"  - {d}" for d in fashion_mnist_search_dirs(root))
    prefix = _FASHION_PREFIX[split]
    why = (f"\nDownloading it failed: {reason}" if reason
           else f"\nNo download was tried (download=False or {DOWNLOAD_ENV}=0).")
    target = _data_root(root)
    return (
        f"Fashion-MNIST ({split} split: {prefix}-images-idx3-ubyte[.gz] and "
        f"{prefix}-labels-idx1-ubyte[.gz]) was not found. Searched:\n{searched}{why}\n"
        "Get it in one of these ways:\n"
        "  - sudo apt-get install dataset-fashion-mnist   (Debian/Ubuntu, no internet needed"
        " afterwards)\n"
        "  - pip install torchvision (or conda install -c pytorch torchvision), then with"
        " internet access\n"
        f"    sar.data.load_fashion_mnist('{split}', download=True)   (saves to"
        f" {target / 'FashionMNIST' / 'raw'})\n"
        "  - copy the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,"
        " t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)\n"
        f"    into {REPO_DATA_DIR / 'fashion-mnist'} or into the folder named by ${DATA_DIR_ENV}"
    )


def _download_fashion_mnist(split: str, root: Path) -> None:
    """Fetch ``split`` with torchvision into ``root/FashionMNIST/raw/`` (IDX files)."""
    from torchvision.datasets import FashionMNIST

    FashionMNIST(root=str(root), train=split == "train", download=True)


def _download_or_explain(split: str, root: str | Path | None) -> Path:
    """Download ``split``; the folder now holding it, or a :class:`DatasetNotFoundError`
    carrying the one message that says what failed and how to get the data."""
    try:
        _download_fashion_mnist(split, _data_root(root))
    except ImportError as err:
        reason = f"torchvision is not installed ({err})"
    except Exception as err:  # offline, a proxy, a mirror down: torchvision raises many kinds
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
    else:
        folder = find_fashion_mnist(split, root)
        if folder is not None:
            return folder
        reason = f"the download left no IDX files in {_data_root(root) / 'FashionMNIST/raw'}"
    raise DatasetNotFoundError(_not_found_message(split, root, reason))


def load_fashion_mnist(
    split: str = "train", root: str | Path | None = None, download: bool | None = None
) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST ``split`` ("train": 60000 images, "test": 10000).

    Returns ``images`` uint8 ``(N, 28, 28)`` and ``labels`` int64 ``(N,)`` with values 0..9
    (names in :data:`FASHION_MNIST_CLASSES`). See :func:`fashion_mnist_search_dirs` for where
    it looks. When nothing is found it downloads the data with torchvision into
    ``root``/``$SAR_DATA_DIR``/``data/`` (``FashionMNIST/raw/``), unless ``download=False``
    or ``$SAR_DOWNLOAD=0`` (``download=None`` reads that variable).

    Raises:
        DatasetNotFoundError: (a ``FileNotFoundError``) not on disk and not downloadable; one
            message lists the folders searched, why the download failed and the three ways to
            get the data, with no chained traceback.
        ValueError: files that are not Fashion-MNIST-shaped IDX files.
    """
    split = _check_split(split)
    folder = find_fashion_mnist(split, root)
    if folder is None:
        if not download_allowed(download):
            raise DatasetNotFoundError(_not_found_message(split, root))
        folder = _download_or_explain(split, root)
    return _read_fashion_folder(folder, split)


def _read_fashion_folder(folder: Path, split: str) -> tuple[Tensor, Tensor]:
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
        raise DatasetNotFoundError(
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
    name: str = "fashion-mnist", split: str = "train", root: str | Path | None = None,
    download: bool | None = None,
) -> tuple[Tensor, Tensor, tuple[str, ...], str]:
    """A classification set by name, with a sentence saying where it came from.

    ``name`` is "fashion-mnist", "digits", "cifar10" or "cifar100". Returns ``images`` uint8
    (``(N, H, W)`` grey or ``(N, 3, H, W)`` colour), ``labels`` int64 ``(N,)``, class names and
    a description to print. A missing dataset is downloaded (Fashion-MNIST: see
    :func:`load_fashion_mnist`; CIFAR only with ``download=True``) or raises
    :class:`DatasetNotFoundError`; no set ever stands in for another, so numbers computed on
    one never silently come from another. The digits come only when asked for by name.
    """
    key = name.lower().replace("_", "-")
    if key == "digits":
        images, labels = load_digits(split)
        return images, labels, DIGITS_CLASSES, f"scikit-learn digits, {split} split (8x8)"
    if key in ("cifar10", "cifar-10", "cifar100", "cifar-100"):
        images, labels, classes = load_cifar(key, split, root, download=bool(download))
        return images, labels, classes, f"{key.upper()} {split} split from torchvision"
    if key != "fashion-mnist":
        raise ValueError(f"unknown dataset {name!r}")
    split = _check_split(split)
    images, labels = load_fashion_mnist(split, root, download)
    folder = find_fashion_mnist(split, root)
    description = f"Fashion-MNIST {split} split ({len(labels)} images) from {folder}"
    return images, labels, FASHION_MNIST_CLASSES, description
