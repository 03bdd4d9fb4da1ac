"""Tests for sar.data: loaders, long-tail profiles, scenes and segmentation folders."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sar import data as D

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not DEBIAN_DIR.is_dir(), reason="dataset-fashion-mnist is not installed"
)


@pytest.fixture
def no_fashion(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point every Fashion-MNIST search location at empty folders."""
    monkeypatch.delenv(D.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(D.sources, "REPO_DATA_DIR", tmp_path / "repo-data")
    monkeypatch.setattr(D.sources, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")
    return tmp_path


def write_fake_fashion(folder: Path, n: int = 12, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Both splits as tiny IDX files in ``folder``; returns the train images and labels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    suffix = ".gz" if gz else ""
    for prefix in ("train", "t10k"):
        D.write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        D.write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return images, labels


def fake_sources(per_class: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Blob-like uint8 (10 * per_class, 28, 28) images standing in for Fashion-MNIST."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(10 * per_class, 1, 5, 5, generator=gen)
    images = torch.nn.functional.interpolate(low, size=(28, 28), mode="bilinear")[:, 0]
    images = (images * 255).to(torch.uint8)
    return images, torch.arange(10).repeat_interleave(per_class)


# --------------------------------------------------------------------------- long tails


@pytest.mark.parametrize("imbalance", [1.0, 10.0, 12.5, 50.0, 100.0, 200.0])
@pytest.mark.parametrize("max_count", [500, 5000, 997])
def test_exp_counts_hit_head_and_tail_exactly(imbalance: float, max_count: int) -> None:
    counts = D.long_tail_counts(10, max_count, imbalance, "exp")
    assert counts[0] == max_count
    assert counts[-1] == math.floor(max_count / imbalance)
    assert all(a >= b for a, b in zip(counts, counts[1:], strict=False))
    expected = [math.floor(max_count * imbalance ** (-i / 9)) for i in range(10)]
    assert all(abs(a - b) <= 1 for a, b in zip(counts, expected, strict=True))


def test_step_counts_and_balanced_case() -> None:
    assert D.long_tail_counts(10, 5000, 100, "step") == [5000] * 5 + [50] * 5
    assert D.long_tail_counts(5, 100, 10, "step", step_fraction=0.4) == [100] * 3 + [10] * 2
    assert D.long_tail_counts(10, 300, 10, "step", step_fraction=0.3) == [300] * 7 + [30] * 3
    for profile in ("exp", "step"):
        assert D.long_tail_counts(10, 321, 1.0, profile) == [321] * 10


@pytest.mark.parametrize("imbalance", [0.5, 0.999, 200.5, 1000])
def test_imbalance_out_of_range_raises(imbalance: float) -> None:
    with pytest.raises(ValueError, match="imbalance_factor"):
        D.long_tail_counts(10, 5000, imbalance)


def test_empty_tail_raises() -> None:
    with pytest.raises(ValueError, match="empty tail"):
        D.long_tail_counts(10, 50, 100)


def balanced_labels(per_class: int = 100, classes: int = 10) -> torch.Tensor:
    labels = torch.arange(classes).repeat_interleave(per_class)
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(5))]


@pytest.mark.parametrize("profile", ["exp", "step"])
def test_make_long_tailed_counts_and_indices(profile: str) -> None:
    labels = balanced_labels()
    lt = D.make_long_tailed(labels, 20, profile=profile, seed=3)
    per_rank = D.long_tail_counts(10, 100, 20, profile)
    assert [lt.counts[c] for c in lt.class_order] == per_rank
    assert sorted(lt.class_order) == list(range(10))
    assert lt.indices.dtype == torch.int64
    assert len(lt.indices.unique()) == len(lt.indices) == sum(per_rank)
    assert torch.bincount(labels[lt.indices], minlength=10).tolist() == lt.counts
    images, kept = lt.apply(torch.arange(len(labels)), labels)
    assert torch.equal(kept, labels[images])


def test_make_long_tailed_seeds() -> None:
    labels = balanced_labels()
    a, b = D.make_long_tailed(labels, 10, seed=0), D.make_long_tailed(labels, 10, seed=0)
    assert a.class_order == b.class_order and torch.equal(a.indices, b.indices)
    assert D.make_long_tailed(labels, 10, seed=1).class_order != a.class_order
    fixed = D.make_long_tailed(labels, 10, seed=1, class_order=list(range(10)))
    assert fixed.class_order == list(range(10)) and fixed.counts[0] == 100
    # per-class picks depend on seed and class only, so subsets nest as IF grows
    mild = D.make_long_tailed(labels, 2, seed=1, class_order=list(range(10)))
    assert set(fixed.indices.tolist()) <= set(mild.indices.tolist())


def test_make_long_tailed_too_few_samples() -> None:
    labels = balanced_labels(per_class=20)
    with pytest.raises(ValueError, match="has 20 samples but the profile needs"):
        D.make_long_tailed(labels, 10, max_count=50)


def test_shot_groups_thresholds_and_thirds() -> None:
    counts = [500, 150, 101, 100, 60, 20, 19, 5]
    groups = D.shot_groups(counts, many_threshold=100, few_threshold=20)
    assert groups == {"many": [0, 1, 2], "medium": [3, 4, 5], "few": [6, 7]}
    lt = D.long_tail_counts(10, 1000, 100)
    order = [4, 1, 7, 5, 3, 9, 0, 8, 6, 2]
    counts = [0] * 10
    for rank, c in enumerate(order):
        counts[c] = lt[rank]
    groups = D.shot_groups(counts)
    assert [len(groups[k]) for k in ("many", "medium", "few")] == [3, 4, 3]
    assert groups["many"] == sorted(order[:3]) and groups["few"] == sorted(order[7:])
    with pytest.raises(ValueError):
        D.shot_groups(counts, many_threshold=100)


def test_balanced_set_gets_the_shot_groups_of_its_long_tailed_versions() -> None:
    labels = torch.arange(10).repeat(30)
    tails = {f: D.make_long_tailed(labels, f, seed=3, max_count=30) for f in (1, 10)}
    groups = {f: D.shot_groups(t.counts, class_order=t.class_order) for f, t in tails.items()}
    assert tails[1].class_order == tails[10].class_order and len(set(tails[1].counts)) == 1
    assert groups[1] == groups[10] == D.shot_groups(tails[10].counts)
    assert groups[1]["few"] == sorted(tails[1].class_order[-3:])
    with pytest.raises(ValueError, match="permutation"):
        D.shot_groups([5] * 3, class_order=[0, 0, 1])


# --------------------------------------------------------------------------- IDX and loaders


@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
def test_idx_round_trip(tmp_path: Path, name: str) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = D.write_idx(tmp_path / name, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    out = D.read_idx(path)
    assert out.dtype == np.uint8 and np.array_equal(out, array)
    floats = np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2)
    assert np.array_equal(D.read_idx(D.write_idx(tmp_path / "f.idx", floats)), floats)


def test_idx_corrupt_files_raise(tmp_path: Path) -> None:
    good = D.write_idx(tmp_path / "good", np.zeros((4, 5), np.uint8)).read_bytes()
    (tmp_path / "short").write_bytes(good[:-3])
    with pytest.raises(ValueError, match="short.*size mismatch"):
        D.read_idx(tmp_path / "short")
    (tmp_path / "magic").write_bytes(b"\x01" + good[1:])
    with pytest.raises(ValueError, match="magic.*not an IDX file"):
        D.read_idx(tmp_path / "magic")
    (tmp_path / "broken.gz").write_bytes(gzip.compress(good)[:-10])
    with pytest.raises(ValueError, match="broken.gz"):
        D.read_idx(tmp_path / "broken.gz")


@pytest.mark.parametrize("layout", ["flat-gz", "torchvision-raw"])
def test_load_fashion_mnist_from_root(no_fashion: Path, layout: str) -> None:
    root = no_fashion / "mine"
    folder = root if layout == "flat-gz" else root / "FashionMNIST" / "raw"
    images, labels = write_fake_fashion(folder, gz=layout == "flat-gz")
    x, y = D.load_fashion_mnist("train", root=root)
    assert x.dtype == torch.uint8 and x.shape == (12, 28, 28)
    assert y.dtype == torch.int64 and torch.equal(y, torch.from_numpy(labels).long())
    assert torch.equal(x, torch.from_numpy(images))
    assert D.load_fashion_mnist("test", root=root)[0].shape == (12, 28, 28)


def test_load_fashion_mnist_from_env_var(no_fashion: Path, monkeypatch) -> None:
    write_fake_fashion(no_fashion / "env")
    monkeypatch.setenv(D.DATA_DIR_ENV, str(no_fashion / "env"))
    assert D.find_fashion_mnist("train") == no_fashion / "env"
    assert len(D.load_fashion_mnist("test")[1]) == 12


def test_missing_fashion_mnist_says_how_to_get_it(no_fashion: Path) -> None:
    with pytest.raises(D.DatasetNotFoundError) as info:
        D.load_fashion_mnist("train")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError) and info.value.__context__ is None
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert "pip install torchvision" in message and "conda install" in message
    assert "download=True" in message and D.DATA_DIR_ENV in message
    assert str(no_fashion / "repo-data" / "fashion-mnist") in message  # where to copy files
    assert str(no_fashion / "debian") in message and str(no_fashion / "repo-data") in message
    assert "No download was tried" in message


def test_fashion_mnist_never_silently_becomes_digits(no_fashion: Path) -> None:
    with pytest.raises(D.DatasetNotFoundError, match="was not found"):
        D.load_classification_data("fashion-mnist")
    with pytest.raises(D.DatasetNotFoundError):  # the scenes need it too
        D.make_fashion_scenes(2, size=32)
    images, _, classes, description = D.load_classification_data("digits", "test")
    assert images.shape[1:] == (8, 8) and classes == D.DIGITS_CLASSES
    assert "digits" in description


class FakeFashionMNIST:
    """Stands in for torchvision's FashionMNIST: "downloads" tiny IDX files, offline."""

    calls: list[tuple[str, bool, bool]] = []

    def __init__(self, root: str, train: bool, download: bool) -> None:
        FakeFashionMNIST.calls.append((root, train, download))
        write_fake_fashion(Path(root) / "FashionMNIST" / "raw", gz=False)


def fake_torchvision(monkeypatch: pytest.MonkeyPatch, dataset: type) -> None:
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", dataset)


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_missing_fashion_mnist_is_downloaded_into_data(no_fashion: Path, monkeypatch,
                                                       how: str) -> None:
    FakeFashionMNIST.calls = []
    fake_torchvision(monkeypatch, FakeFashionMNIST)
    if how == "environment":
        monkeypatch.setenv(D.DOWNLOAD_ENV, "1")
    x, y = D.load_fashion_mnist("test", download=True if how == "argument" else None)
    assert x.shape == (12, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert FakeFashionMNIST.calls == [(str(no_fashion / "repo-data"), False, True)]
    raw = no_fashion / "repo-data" / "FashionMNIST" / "raw"
    assert D.find_fashion_mnist("train") == raw
    _, _, classes, description = D.load_classification_data("fashion-mnist", "train")
    assert classes == D.FASHION_MNIST_CLASSES and str(raw) in description
    assert len(FakeFashionMNIST.calls) == 1  # found on disk the second time


def test_download_goes_to_the_data_dir_variable(no_fashion: Path, monkeypatch) -> None:
    FakeFashionMNIST.calls = []
    fake_torchvision(monkeypatch, FakeFashionMNIST)
    monkeypatch.setenv(D.DATA_DIR_ENV, str(no_fashion / "mine"))
    D.load_fashion_mnist("train", download=True)
    assert FakeFashionMNIST.calls[0][0] == str(no_fashion / "mine")


def test_offline_download_stops_with_one_message(no_fashion: Path, monkeypatch) -> None:
    class Offline:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            import urllib.error

            try:
                raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
            except urllib.error.URLError as err:
                raise RuntimeError("Error downloading train-images-idx3-ubyte.gz") from err

    fake_torchvision(monkeypatch, Offline)
    with pytest.raises(D.DatasetNotFoundError) as info:
        D.load_fashion_mnist("train", download=True)
    message = str(info.value)
    assert "Downloading it failed: RuntimeError: Error downloading" in message
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert info.value.__cause__ is None and info.value.__context__ is None  # no chained trace


def test_download_without_torchvision_says_so(no_fashion: Path, monkeypatch) -> None:
    def no_torchvision(split: str, root: Path) -> None:
        raise ModuleNotFoundError("No module named 'torchvision'")

    monkeypatch.setattr(D.sources, "_download_fashion_mnist", no_torchvision)
    with pytest.raises(D.DatasetNotFoundError, match="torchvision is not installed"):
        D.load_fashion_mnist("train", download=True)


def test_fashion_mnist_in_data_fashion_mnist_folder(no_fashion: Path) -> None:
    images, _ = write_fake_fashion(no_fashion / "repo-data" / "fashion-mnist")
    assert torch.equal(D.load_fashion_mnist("train")[0], torch.from_numpy(images))


def test_fashion_subset_reproduces_the_notebooks_subsets(no_fashion: Path) -> None:
    write_fake_fashion(no_fashion / "repo-data", n=40)
    images, labels, names, _ = D.load_classification_data("fashion-mnist", "train")
    test_images, test_labels, _, _ = D.load_classification_data("fashion-mnist", "test")
    # notebooks 01 and 05: a seeded draw for training, the first test images
    pick = torch.randperm(len(labels), generator=torch.Generator().manual_seed(3))[:16]
    train_set = D.ClassificationDataset(images[pick], labels[pick])
    test_set = D.ClassificationDataset(test_images[:8], test_labels[:8], mean=train_set.mean,
                                       std=train_set.std)
    subset = D.fashion_subset(16, 8, seed=3)
    assert torch.equal(subset.train.images, train_set.images)
    assert torch.equal(subset.train.labels, train_set.labels)
    assert torch.equal(subset.test.images, test_set.images)
    assert subset.class_names == names and "seed 3" in subset.description
    assert "the first 8 test images; each image float32 (1, 28, 28)" in subset.description
    # notebook 02: seed 0 for training, seed 1 for the test draw
    test_pick = torch.randperm(len(test_labels), generator=torch.Generator().manual_seed(1))[:8]
    train, test, _, description = D.fashion_subset(16, 8, seed=0, test_seed=1)
    assert torch.equal(test.labels, test_labels[test_pick])
    assert torch.equal(test.mean, train.mean) and "8 test images drawn with seed 1;" in description
    train_loader, test_loader = subset.loaders(batch_size=4, test_batch_size=5, seed=0)
    assert [len(y) for _, y in test_loader] == [5, 3]
    first = next(iter(train_loader))[1]
    assert torch.equal(first, next(iter(subset.loaders(4, seed=0)[0]))[1])  # seeded order
    with pytest.raises(ValueError, match="train_size"):
        D.fashion_subset(41, 8)


def test_cap_per_class_matches_notebook_03_balanced() -> None:
    labels = torch.tensor([0] * 50 + [1] * 3 + [2] * 20)
    keep = D.cap_per_class(labels, per_class=10, seed=0)
    assert torch.bincount(labels[keep]).tolist() == [10, 3, 10]
    assert len(set(keep.tolist())) == len(keep)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    expected = torch.cat([order[labels[order] == c][:10] for c in labels.unique()])
    assert torch.equal(keep, expected)
    assert not torch.equal(D.cap_per_class(labels, 10, seed=1), keep)
    assert len(D.cap_per_class(torch.zeros(0, dtype=torch.long), 5)) == 0
    with pytest.raises(ValueError, match="per_class"):
        D.cap_per_class(labels, 0)


def test_missing_cifar_raises(no_fashion: Path) -> None:
    with pytest.raises(FileNotFoundError, match="download=True"):
        D.load_cifar("cifar10")


@needs_fashion
def test_real_fashion_mnist_from_debian() -> None:
    x, y = D.load_fashion_mnist("train")
    assert x.shape == (60000, 28, 28) and x.dtype == torch.uint8 and y.shape == (60000,)
    assert torch.bincount(y).tolist() == [6000] * 10
    x_test, y_test = D.load_fashion_mnist("test")
    assert x_test.shape == (10000, 28, 28) and y_test.dtype == torch.int64
    assert len(D.FASHION_MNIST_CLASSES) == 10


def test_digits_split() -> None:
    x_train, y_train = D.load_digits("train")
    x_test, y_test = D.load_digits("test")
    assert x_train.dtype == torch.uint8 and x_train.shape[1:] == (8, 8)
    assert int(x_train.max()) == 255 and y_train.dtype == torch.int64
    assert len(y_train) + len(y_test) == 1797
    assert abs(len(y_test) / 1797 - 0.25) < 0.01
    assert torch.equal(D.load_digits("test")[0], x_test)
    assert not torch.equal(D.load_digits("test", seed=1)[1], y_test)


# --------------------------------------------------------------------------- classification set


def test_classification_dataset_normalises_and_augments() -> None:
    images = torch.randint(0, 256, (50, 3, 12, 12), dtype=torch.uint8)
    labels = torch.arange(50) % 5
    ds = D.ClassificationDataset(images, labels)
    assert torch.allclose(ds.images.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(ds.images.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)
    x, y = ds[3]
    assert x.shape == (3, 12, 12) and x.dtype == torch.float32 and y.dtype == torch.int64
    test = D.ClassificationDataset(images, labels, mean=ds.mean, std=ds.std, augment=True)
    torch.manual_seed(0)
    shifted = [test[0][0] for _ in range(20)]
    assert all(s.shape == (3, 12, 12) for s in shifted)
    assert any(not torch.equal(s, ds[0][0]) for s in shifted)
    grey = D.ClassificationDataset(images[:, 0], labels, augment=True)
    assert grey[0][0].shape == (1, 12, 12) and grey.num_classes == 5


def test_random_shift_pads_with_fill() -> None:
    x = torch.arange(16.0).view(1, 4, 4)
    torch.manual_seed(1)
    for _ in range(10):
        out = D.classification._random_shift(x, 2, torch.full((1, 1, 1), -1.0))
        kept = out[out != -1.0]
        assert set(kept.tolist()) <= set(x.flatten().tolist())


# --------------------------------------------------------------------------- scenes


def rebuild_masks(ds: D.SceneDataset, images: torch.Tensor, size: int) -> torch.Tensor:
    """Paint every scene's items again from their metadata, in order."""
    masks = torch.zeros(len(ds), size, size, dtype=torch.int64)
    for n, items in enumerate(ds.items):
        for item in items:
            _, alpha = D.item_alpha(images[item.source_index], item.side, ds.threshold)
            y0, x0, y1, x1 = item.box
            masks[n, y0:y1, x0:x1][alpha] = item.class_id + 1
    return masks


def test_scene_masks_match_pasted_items() -> None:
    images, labels = fake_sources()
    ds = D.make_fashion_scenes(12, size=48, images=images, labels=labels, seed=4)
    assert ds.images.shape == (12, 3, 48, 48) and ds.images.dtype == torch.float32
    assert ds.masks.shape == (12, 48, 48) and ds.masks.dtype == torch.int64
    assert 0.0 <= float(ds.images.min()) and float(ds.images.max()) <= 1.0
    assert torch.equal(ds.masks, rebuild_masks(ds, images, 48))
    for n, items in enumerate(ds.items):
        assert 2 <= len(items) <= 5
        for item in items:
            assert labels[item.source_index] == item.class_id
        top = items[-1]  # nothing covers the last item: its opaque pixels show its tinted colour
        intensity, alpha = D.item_alpha(images[top.source_index], top.side, ds.threshold)
        y0, x0, y1, x1 = top.box
        colour = intensity * torch.tensor(top.tint).view(-1, 1, 1)
        assert torch.allclose(ds.images[n, :, y0:y1, x0:x1][:, alpha], colour[:, alpha])
    assert ds.class_pixel_counts.sum() == 12 * 48 * 48
    assert torch.equal(ds.class_pixel_counts, torch.bincount(ds.masks.flatten(), minlength=11))
    image, mask = ds[0]
    assert image.shape == (3, 48, 48) and mask.shape == (48, 48)
    assert D.SCENE_CLASSES[0] == "background" and len(D.SCENE_CLASSES) == 11


def test_scenes_are_deterministic_by_seed() -> None:
    images, labels = fake_sources()
    kwargs = {"size": 32, "images": images, "labels": labels, "channels": 1}
    a, b = D.make_fashion_scenes(8, seed=1, **kwargs), D.make_fashion_scenes(8, seed=1, **kwargs)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert a.items == b.items and a.images.shape == (8, 1, 32, 32)
    c = D.make_fashion_scenes(8, seed=2, **kwargs)
    assert not torch.equal(a.masks, c.masks)
    val = D.make_fashion_scenes(8, seed=1, split="val", **kwargs)
    assert val.class_order == a.class_order and not torch.equal(val.masks, a.masks)


def test_scene_class_frequency_follows_long_tail() -> None:
    images, labels = fake_sources(per_class=1)
    ds = D.make_fashion_scenes(
        700, size=32, images=images, labels=labels, items_per_scene=(3, 3), imbalance_factor=10
    )
    freq = ds.class_item_counts.double() / (3 * 700)
    expected = torch.tensor(ds.class_probs, dtype=torch.float64)
    assert torch.allclose(freq, expected, atol=0.035)
    weights = D.long_tail_weights(10, 10.0)
    head, tail = ds.class_order[0], ds.class_order[-1]
    assert expected[head] / expected[tail] == pytest.approx(weights[0] / weights[-1])
    assert freq[head] > 5 * freq[tail]


def test_scene_class_probs_are_those_the_scenes_draw_from() -> None:
    images, labels = fake_sources(per_class=1)
    ds = D.make_fashion_scenes(4, size=32, images=images, labels=labels, imbalance_factor=20,
                               seed=3)
    order, probs = D.scene_class_probs(20, seed=3)
    assert order == ds.class_order and probs.tolist() == ds.class_probs
    assert probs.sum().item() == pytest.approx(1.0)
    assert (probs[order].diff() < 0).all()  # strictly rarer from head to tail
    groups = D.shot_groups(probs.tolist(), class_order=order)
    assert groups["few"] == sorted(order[-3:]) and groups["many"] == sorted(order[:3])
    with pytest.raises(ValueError, match="permutation"):
        D.scene_class_probs(20, class_order=[0] * 10)


@needs_fashion
def test_train_and_val_scenes_use_disjoint_splits() -> None:
    train = D.make_fashion_scenes(6, split="train", seed=0)
    val = D.make_fashion_scenes(6, split="val", seed=0)
    assert train.source_split == "fashion-mnist/train" and val.source_split == "fashion-mnist/test"
    assert train.class_order == val.class_order
    x_train, _ = D.load_fashion_mnist("train")
    x_test, y_test = D.load_fashion_mnist("test")
    assert torch.equal(train.masks, rebuild_masks(train, x_train, 64))
    assert torch.equal(val.masks, rebuild_masks(val, x_test, 64))
    assert all(y_test[it.source_index] == it.class_id for s in val.items for it in s)


# --------------------------------------------------------------------------- segmentation on disk


def save_pair(root: Path, stem: str, size=(6, 4), mask_size=None, suffix=".png") -> np.ndarray:
    w, h = size
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "images" / f"{stem}{suffix}")
    mw, mh = mask_size or size
    mask = (np.arange(mh * mw) % 4).reshape(mh, mw).astype(np.uint8)
    mask[0, 0] = 255
    Image.fromarray(mask, mode="L").save(root / "masks" / f"{stem}.png")
    return mask


def test_segmentation_folder_loads_pairs(tmp_path: Path) -> None:
    mask = save_pair(tmp_path, "a")
    save_pair(tmp_path, "b", suffix=".jpg")
    ds = D.SegmentationFolder(tmp_path)
    assert len(ds) == 2
    image, target = ds[0]
    assert image.shape == (3, 4, 6) and image.dtype == torch.float32
    assert target.dtype == torch.int64 and torch.equal(target, torch.from_numpy(mask).long())
    assert int(target[0, 0]) == 255
    reduced = D.SegmentationFolder(tmp_path, reduce_zero_label=True)[0][1]
    assert int(reduced[0, 0]) == 255 and int(reduced[0, 1]) == 0 and int(reduced[0, 4]) == 255


def test_segmentation_folder_errors_name_files(tmp_path: Path) -> None:
    save_pair(tmp_path, "good")
    save_pair(tmp_path, "lonely")
    (tmp_path / "masks" / "lonely.png").unlink()
    with pytest.raises(FileNotFoundError, match="lonely.png"):
        D.SegmentationFolder(tmp_path)
    (tmp_path / "images" / "lonely.png").unlink()
    save_pair(tmp_path, "orphan")
    (tmp_path / "images" / "orphan.png").unlink()
    with pytest.raises(FileNotFoundError, match="masks without an image.*orphan.png"):
        D.SegmentationFolder(tmp_path)
    (tmp_path / "masks" / "orphan.png").unlink()
    save_pair(tmp_path, "wrong", size=(6, 4), mask_size=(5, 4))
    ds = D.SegmentationFolder(tmp_path)
    with pytest.raises(ValueError, match=r"wrong\.png is 6x4 but mask .*wrong\.png is 5x4"):
        ds[1]


def test_segmentation_transform() -> None:
    image = torch.rand(3, 10, 20)
    mask = torch.randint(0, 3, (10, 20))
    mask[0] = 255
    x, y = D.SegmentationTransform(size=5)(image, mask)
    assert x.shape == (3, 5, 10) and y.shape == (5, 10) and y.dtype == torch.int64
    assert set(y.unique().tolist()) <= {0, 1, 2, 255}
    t = D.SegmentationTransform(crop=(12, 8), hflip=True, mean=None)
    torch.manual_seed(0)
    x, y = t(image, mask)
    assert x.shape == (3, 12, 8) and (y[10:] == 255).all() and (x[:, 10:] == 0).all()
    pil = Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    x, y = D.SegmentationTransform()(pil, Image.fromarray(mask.numpy().astype(np.uint8)))
    red = torch.from_numpy(np.array(pil)[..., 0]).float() / 255
    assert torch.allclose(x[0], (red - 0.485) / 0.229, atol=1e-5) and torch.equal(y, mask)


def test_pascal_voc_keeps_ignore_label(tmp_path: Path) -> None:
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    Image.fromarray(np.full((5, 7, 3), 128, np.uint8)).save(voc / "JPEGImages" / "img1.jpg")
    mask = np.zeros((5, 7), np.uint8)
    mask[1:4, 2:5], mask[1, 2:5] = 15, 255
    palette_mask = Image.fromarray(mask, mode="P")
    palette_mask.putpalette([0, 0, 0] * 256)
    palette_mask.save(voc / "SegmentationClass" / "img1.png")
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("img1\n")
    ds = D.pascal_voc(tmp_path)
    image, target = ds[0]
    assert image.shape == (3, 5, 7) and image.dtype == torch.float32
    assert target.dtype == torch.int64 and torch.equal(target, torch.from_numpy(mask).long())
    assert len(D.pascal_voc(voc)) == 1  # the VOC2012 folder itself works too
    with pytest.raises(FileNotFoundError, match="VOC2012"):
        D.pascal_voc(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="val.txt"):
        D.pascal_voc(tmp_path, image_set="val")


def test_validation_split_is_balanced_disjoint_and_the_same_for_every_factor():
    labels = torch.arange(10).repeat_interleave(50)
    tails = [D.make_long_tailed(labels, factor, seed=3, max_count=30, val_per_class=8)
             for factor in (1, 10, 30)]
    for tail in tails:
        assert torch.bincount(labels[tail.val_indices], minlength=10).tolist() == [8] * 10
        assert not set(tail.val_indices.tolist()) & set(tail.indices.tolist())
    assert all(torch.equal(t.val_indices, tails[0].val_indices) for t in tails)
    plain = D.make_long_tailed(labels, 10, seed=3, max_count=30)
    assert torch.equal(plain.indices, tails[1].indices) and len(plain.val_indices) == 0
    with pytest.raises(ValueError, match=r"needs 30 \(\+ 21 for validation\)"):
        D.make_long_tailed(labels, 10, seed=3, max_count=30, val_per_class=21)
