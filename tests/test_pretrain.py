"""The pretrained encoder: made from the train split only, saved with a checksum, loaded exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sar import data as D
from sar import pretrain
from sar.encoder_weights import is_weights_path, sha256_of, sidecar_path
from sar.models import build_smp_model

TINY = ["--steps", "2", "--batch-size", "4", "--size", "32", "--eval-size", "8",
        "--no-progress"]


def write_split(folder: Path, prefix: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    D.write_idx(folder / f"{prefix}-images-idx3-ubyte.gz",
                rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8))
    D.write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))


@pytest.fixture(scope="module")
def fake_fashion(tmp_path_factory):
    """Both Fashion-MNIST splits as tiny files, the only ones the loader can find; every file
    the loader opens is recorded."""
    folder = tmp_path_factory.mktemp("fashion")
    write_split(folder, "train", 30, seed=0)
    write_split(folder, "t10k", 20, seed=1)
    opened: list[str] = []
    real_read_idx = D.sources.read_idx

    def recording_read_idx(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real_read_idx(path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(D.DATA_DIR_ENV, str(folder))
        mp.setattr(D.sources, "REPO_DATA_DIR", folder / "none")
        mp.setattr(D.sources, "DEBIAN_FASHION_MNIST_DIR", folder / "none")
        mp.setattr(D.sources, "read_idx", recording_read_idx)
        yield opened


@pytest.fixture(scope="module")
def made(fake_fashion, tmp_path_factory):
    """A 2-step pretraining run through the command line: (weights path, opened files)."""
    fake_fashion.clear()
    out = tmp_path_factory.mktemp("encoders") / "r18.pt"
    pretrain.main(["--encoder", "resnet18", "--out", str(out), *TINY])
    return out, list(fake_fashion)


def test_pretraining_reads_only_the_train_split(made):
    _, opened = made
    assert opened == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]


def test_sidecar_records_checksum_command_versions_budget_and_accuracy(made):
    path, _ = made
    record = json.loads(sidecar_path(path).read_text())
    assert record["sha256"] == sha256_of(path)
    assert record["command"] == "python -m sar.pretrain --encoder resnet18 --out " + str(path) + (
        " " + " ".join(TINY))
    assert record["torch"] == torch.__version__ and "segmentation_models_pytorch" in record
    assert record["budget"]["steps"] == 2 and record["budget"]["batch_size"] == 4
    assert 0.0 <= record["final_train_accuracy"] <= 1.0
    assert record["encoder"] == "resnet18" and record["in_channels"] == 3


def test_encoder_round_trips_bit_for_bit_into_fresh_models(fake_fashion, tmp_path):
    from sar.encoder_weights import save_encoder_weights

    encoder, record = pretrain.pretrain_encoder(
        "resnet18", max_steps=2, batch_size=4, size=32, eval_size=4, progress=False)
    path = tmp_path / "r18.pt"
    save_encoder_weights(encoder.state_dict(), path, record)
    trained = encoder.state_dict()
    fresh = build_smp_model("Unet", "resnet18", 11).encoder.state_dict()
    assert not torch.equal(fresh["conv1.weight"], trained["conv1.weight"])
    for arch in ("Unet", "DeepLabV3Plus"):  # DeepLabV3+ dilates the same weights
        loaded = build_smp_model(arch, "resnet18", 11, encoder_weights=path).encoder.state_dict()
        assert loaded.keys() == trained.keys()
        for key, value in trained.items():
            assert torch.equal(loaded[key], value), (arch, key)
    # a string path works as a Path does
    loaded = build_smp_model("FPN", "resnet18", 11, encoder_weights=str(path)).encoder
    assert torch.equal(loaded.state_dict()["layer4.1.conv2.weight"],
                       trained["layer4.1.conv2.weight"])


def test_a_tampered_file_is_refused(made, tmp_path):
    path, _ = made
    copy = tmp_path / path.name
    state = torch.load(path, weights_only=True)
    state["conv1.weight"][0, 0, 0, 0] += 1e-3
    torch.save(state, copy)
    sidecar_path(copy).write_text(sidecar_path(path).read_text())
    with pytest.raises(ValueError, match="does not match its sidecar"):
        build_smp_model("Unet", "resnet18", 11, encoder_weights=copy)
    sidecar_path(copy).unlink()  # without a sidecar there is nothing to check against
    encoder = build_smp_model("Unet", "resnet18", 11, encoder_weights=copy).encoder
    assert torch.equal(encoder.conv1.weight, state["conv1.weight"])


def test_a_missing_file_says_the_command_that_makes_it(tmp_path):
    missing = tmp_path / "encoders" / "r34.pt"
    with pytest.raises(FileNotFoundError,
                       match=f"python -m sar.pretrain --encoder resnet34 --out {missing}"):
        build_smp_model("Unet", "resnet34", 11, encoder_weights=missing)


def test_a_file_for_another_encoder_or_channel_count_is_refused(made):
    path, _ = made
    with pytest.raises(ValueError, match="holds a resnet18 encoder, but the model asks for"):
        build_smp_model("Unet", "resnet34", 11, encoder_weights=path)
    with pytest.raises(ValueError, match="does not fit the resnet18 encoder with in_channels=1"):
        build_smp_model("Unet", "resnet18", 11, in_channels=1, encoder_weights=path)


def test_weight_names_go_to_smp_and_paths_are_loaded_here(monkeypatch):
    import segmentation_models_pytorch as smp

    asked = []
    monkeypatch.setattr(smp, "create_model",
                        lambda *a, encoder_weights, **k: asked.append(encoder_weights))
    build_smp_model(encoder_weights="imagenet")
    build_smp_model(encoder_weights=None)
    assert asked == ["imagenet", None]
    assert all(map(is_weights_path, ["data/encoders/a.pt", "a.pth", Path("a")]))
    assert not any(map(is_weights_path, ["imagenet", "ssl", None]))


def test_composed_items_look_like_the_scenes_items():
    n, size = 6, 40
    blank = torch.zeros(n, 28, 28, dtype=torch.uint8)
    solid = torch.full((n, 28, 28), 255, dtype=torch.uint8)
    gen = torch.Generator().manual_seed(3)
    background = D.compose_single_items(blank, size, generator=gen)
    items = D.compose_single_items(solid, size, generator=torch.Generator().manual_seed(3))
    assert items.shape == (n, 3, size, size) and items.dtype == torch.float32
    assert 0.05 <= float(background.min()) and float(background.max()) <= 0.6  # scene noise
    for k in range(n):
        changed = (items[k] != background[k]).any(dim=0)
        side = int(changed.sum()) ** 0.5
        assert side == int(side) and round(0.6 * 28) <= side <= round(1.2 * 28)  # one square
        colour = items[k][:, changed]
        assert torch.allclose(colour, colour[:, :1].expand_as(colour), atol=1e-5)  # one tint
        assert ((0.35 <= colour) & (colour <= 1.0)).all()


def test_balanced_subset_takes_the_same_count_of_every_class():
    labels = torch.arange(100) % 10
    chosen = pretrain.balanced_subset(labels, 3)
    assert torch.equal(torch.bincount(labels[chosen]), torch.full((10,), 3))
    assert torch.equal(pretrain.balanced_subset(labels, None), torch.arange(100))


def test_both_optimizers_train_and_others_are_refused(fake_fashion):
    encoder, record = pretrain.pretrain_encoder(
        optimizer="sgd", max_steps=1, batch_size=4, size=32, eval_size=4, progress=False)
    assert record["budget"]["optimizer"] == "sgd" and record["budget"]["momentum"] == 0.9
    with pytest.raises(ValueError, match="optimizer must be 'adamw' or 'sgd'"):
        pretrain.pretrain_encoder(optimizer="adam", max_steps=1, batch_size=4, progress=False)


def test_ensure_encoder_pretrains_once_then_loads(fake_fashion, tmp_path, monkeypatch):
    real = pretrain.pretrain_encoder
    calls = []

    def tiny(encoder_name, **options):  # the defaults' budget would take 20 minutes
        calls.append(options | {"threads": torch.get_num_threads()})
        return real(encoder_name, **{**options, "max_steps": 2, "batch_size": 4, "size": 32,
                                     "eval_size": 4})

    monkeypatch.setattr(pretrain, "pretrain_encoder", tiny)
    path = tmp_path / "encoders" / "r18.pt"
    callers_threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the caller's setting must not change the file's bits
    try:
        made = pretrain.ensure_encoder(path, device="cpu", progress=False)
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(callers_threads)
    assert path.is_file() and len(calls) == 1
    assert calls[0]["threads"] == pretrain.PRETRAIN_THREADS == 1
    assert made["sha256"] == sha256_of(path)
    assert made["command"] == (f"python -m sar.pretrain --encoder resnet18 --device cpu"
                               f" --threads 1 --out {path}")
    assert pretrain.ensure_encoder(path) == made and len(calls) == 1  # loaded, not retrained
    with pytest.raises(ValueError, match="holds a resnet18 encoder"):
        pretrain.ensure_encoder(path, "resnet34")
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="does not match its sidecar"):
        pretrain.ensure_encoder(path)
    assert len(calls) == 1


def test_ensure_encoder_refuses_a_broken_file_folder_or_sidecar(made, tmp_path):
    path, _ = made
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable weights file.*delete it"):
        pretrain.ensure_encoder(garbage)  # no sidecar to check it against
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="does not hold a resnet18 encoder's state_dict"):
        pretrain.ensure_encoder(foreign)
    with pytest.raises(ValueError, match="is not a file"):
        pretrain.ensure_encoder(tmp_path)
    copy = tmp_path / "copy.pt"
    copy.write_bytes(path.read_bytes())
    sidecar_path(copy).write_text("{ not json")
    with pytest.raises(ValueError, match="sidecar .* is not valid JSON"):
        pretrain.ensure_encoder(copy)
    sidecar_path(copy).write_text(sidecar_path(path).read_text())
    assert pretrain.ensure_encoder(copy)["sha256"] == sha256_of(path)  # a faithful copy loads
    copy.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ValueError, match=f"make it again with `python -m sar.pretrain"
                                         f" --encoder resnet18 --out {copy}`"):
        pretrain.ensure_encoder(copy)  # the fix names the failing file, not where it was made


def test_building_a_model_from_an_unreadable_file_says_so(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable weights file .*python -m sar.pretrain"):
        build_smp_model("Unet", "resnet18", 11, encoder_weights=garbage)
