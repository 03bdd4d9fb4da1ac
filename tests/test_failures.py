"""One test per entry of ``docs/failures.md``: each failure a user can hit, triggered through
the public API the way a user would meet it (mostly through ``fit``, a dataset or the
``python -m sar.train`` entry point), checking the message the user reads.

The unit tests of the same checks live beside their modules (test_regularizer, test_data,
test_train); these are their end-to-end versions.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sar import data as sar_data
from sar import distributed
from sar.baselines import CenterLoss, PrototypeRegularizer
from sar.models import SARSegmentationModel, bare_state_dict, build_smp_model
from sar.regularizer import SemanticAnchorRegularizer
from sar.train import fit, load_checkpoint, main

CPU = torch.device("cpu")
C = 3  # classes of the tiny segmentation task
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "fashion_scenes_unet.json"
TINY_KWARGS = {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}



# ------------------------------------------------------------------------------ helpers
def tiny_net(num_classes: int = C) -> nn.Module:
    torch.manual_seed(0)
    return build_smp_model("Unet", "resnet18", num_classes=num_classes, encoder_depth=3,
                           decoder_channels=(16, 8, 8))


def masks_and_images(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, 3, 32, 32)`` images that show their ``(n, 32, 32)`` masks (classes 0..2)."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.randint(0, C, (n, 32, 32), generator=g)
    images = nn.functional.one_hot(masks, C).permute(0, 3, 1, 2).float()
    return images, masks


def loader(images: torch.Tensor, masks: torch.Tensor, batch_size: int = 2) -> DataLoader:
    return DataLoader(TensorDataset(images, masks), batch_size=batch_size, shuffle=False)


def quiet_fit(model: nn.Module, train_loader: DataLoader, **kwargs) -> pd.DataFrame:
    return fit(model, train_loader, device=CPU, progress=False, lr=0.01, **kwargs)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_pair(root: Path, stem: str, size: tuple[int, int] = (32, 32),
              mask_size: tuple[int, int] | None = None) -> None:
    """An RGB image and a class-id mask (values 0..2) under ``root/images`` and ``root/masks``."""
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    w, h = size
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(root / "images" / f"{stem}.png")
    mw, mh = mask_size or size
    mask = (np.arange(mw * mh) % C).reshape(mh, mw).astype(np.uint8)
    Image.fromarray(mask, mode="L").save(root / "masks" / f"{stem}.png")


def folder_args(root: Path, out: Path, *extra: str) -> list[str]:
    """The entry point on a SegmentationFolder, tiny model, one epoch."""
    return ["--config", str(CONFIG), "--output-dir", str(out), "--set", "data.name=folder",
            f"data.root={root}", f"data.num_classes={C}", "train.batch_size=2",
            "train.epochs=1", f"model.kwargs={json.dumps(TINY_KWARGS)}", *extra]


# ------------------------------------------------------------------ shapes and label values
def test_features_of_the_wrong_width() -> None:
    """A regulariser built for another feature width than the head's input."""
    model = SARSegmentationModel(tiny_net(), SemanticAnchorRegularizer(C, feat_dim=32))
    with pytest.raises(ValueError, match=r"features have 8 channels but the regulariser was"
                       r" built with feat_dim=32: pass the feature map that enters the classifier"):
        quiet_fit(model, loader(*masks_and_images()))


def test_class_labels_given_to_a_segmentation_model() -> None:
    images, masks = masks_and_images()
    model = SARSegmentationModel(tiny_net())
    with pytest.raises(ValueError, match=r"for \(B, D, H, W\) features labels must be"
                       r" \(B, h, w\), got \(2,\)"):
        quiet_fit(model, loader(images, masks[:, 0, 0]))


def test_labels_out_of_range() -> None:
    images, masks = masks_and_images()
    masks[1, 5:9, 5:9] = C  # one class id too many, e.g. a 21-class mask for a 20-class head
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\) or equal"
                       r" ignore_index=255; found \[3\]"):
        quiet_fit(SARSegmentationModel(tiny_net()), loader(images, masks))


def test_labels_out_of_range_with_a_baseline() -> None:
    """-100 (PyTorch's ignore value) where the baseline ignores 255: it indexed the last class."""
    images, masks = masks_and_images()
    masks[0, :4] = -100
    for baseline in (CenterLoss(C, 8), PrototypeRegularizer(C, 8)):
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\) or equal"
                           r" ignore_index=255; found \[-100\]"):
            quiet_fit(SARSegmentationModel(tiny_net(), baseline), loader(images, masks))


def test_a_batch_of_only_ignored_labels_is_not_an_error() -> None:
    images, masks = masks_and_images()
    masks[2:] = 255  # the second batch has no labelled pixel
    history = quiet_fit(SARSegmentationModel(tiny_net(), use_gate=False), loader(images, masks),
                        epochs=2)
    assert len(history) == 4 and np.isfinite(history["loss"]).all()
    ignored = history[history["step"] % 2 == 1]
    assert (ignored["pull"] == 0).all() and (ignored["task_loss"] == 0).all()
    assert (history[history["step"] % 2 == 0]["pull"] > 0).all()  # the gate is off: pull on


# ------------------------------------------------------------------------ non-finite values
def test_non_finite_features_stop_training_and_keep_the_last_checkpoint(tmp_path: Path) -> None:
    images, masks = masks_and_images()
    ckpt = tmp_path / "seg.pt"
    model = SARSegmentationModel(tiny_net())
    quiet_fit(model, loader(images, masks), epochs=1, checkpoint=ckpt)
    before = digest(ckpt)
    images[3, 0, 0, 0] = math.nan
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 3 \(epoch 1, lr .*\):"
                       r" features contain NaN or Inf.*Training stopped\. The last good state is"
                       r" in .*seg\.pt \(untouched\); resume from it\."):
        quiet_fit(model, loader(images, masks), epochs=2, checkpoint=ckpt, resume=True)
    assert digest(ckpt) == before
    assert load_checkpoint(ckpt, SARSegmentationModel(tiny_net()))["epoch"] == 1


def test_non_finite_loss_stops_training() -> None:
    """Without SAR nothing checks the features: the loss itself is checked."""
    images, masks = masks_and_images()
    images[0] = math.inf
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 0 \(epoch 0, lr"
                       r" 0\.01\): the loss is nan\. Training stopped\. Try a lower lr"):
        quiet_fit(tiny_net(), loader(images, masks))


# -------------------------------------------------------------------------- the classifier
def test_classifier_with_another_number_of_classes() -> None:
    model = SARSegmentationModel(tiny_net(num_classes=C), SemanticAnchorRegularizer(5, 8))
    with pytest.raises(ValueError, match=r"the classifier must map \(C, D\) = \(5, 8\) anchors to"
                       r" \(C, C\) = \(5, 5\) logits, got \(5, 3\): does it output"
                       r" num_classes=5 classes\?"):
        quiet_fit(model, loader(*masks_and_images()))


def test_conv_head_whose_padding_shrinks_a_1x1_anchor() -> None:
    net = tiny_net()
    net.segmentation_head[0] = nn.Conv2d(8, C, kernel_size=3, padding=0)
    with pytest.raises(ValueError, match=r"the classifier conv \(kernel \(3, 3\), padding"
                       r" \(0, 0\)\) cannot map a 1x1 anchor to 1x1 logits; SAR needs an odd"
                       r" kernel with padding = kernel_size // 2"):
        quiet_fit(SARSegmentationModel(net), loader(*masks_and_images()))


def test_head_replaced_with_another_shape_after_wrapping() -> None:
    net = tiny_net()
    model = SARSegmentationModel(net)
    net.segmentation_head[0] = nn.Conv2d(8, C + 1, 3, padding=1)  # e.g. one more class
    with pytest.raises(RuntimeError, match=r"the classifier 'segmentation_head\.0' changed after"
                       r" wrapping: it mapped 8 -> 3 and now maps 8 -> 4, but the regulariser"
                       r" was built for the old one\. Wrap the model again after changing its"
                       r" head"):
        quiet_fit(model, loader(*masks_and_images()))


def test_head_that_does_not_run() -> None:
    """A head left in the model but no longer called by its forward (bypassed)."""
    net = tiny_net()
    model = SARSegmentationModel(net)
    net.forward = lambda x: net.segmentation_head[0](net.decoder(net.encoder(x)))
    with pytest.raises(RuntimeError, match=r"the head 'segmentation_head' \(SegmentationHead\)"
                       r" did not run in the model's forward, so there is no feature to"
                       r" regularise: was the head replaced under another name, or is it"
                       r" bypassed\? Wrap the model after changing its head"):
        quiet_fit(model, loader(*masks_and_images()))


# -------------------------------------------------------------------- the kind of model
def test_binary_segmentation_with_one_class() -> None:
    with pytest.raises(ValueError, match=r"num_classes must be >= 2, got 1: for a binary task use"
                       r" two classes \(background and object\) with cross-entropy, e\.g\. an"
                       r" smp model with classes=2 and masks of 0/1, instead of one logit with a"
                       r" sigmoid"):
        SARSegmentationModel(tiny_net(num_classes=1))


def test_smp_model_with_aux_params() -> None:
    net = build_smp_model("Unet", "resnet18", num_classes=C, encoder_depth=3,
                          decoder_channels=(16, 8, 8), aux_params={"classes": C})
    with pytest.raises(ValueError, match=r"this smp model was built with aux_params, so it"
                       r" returns \(mask, label\) and sar\.train\.fit cannot train it: build"
                       r" it without aux_params"):
        SARSegmentationModel(net)


def test_a_checkpoint_loads_into_the_bare_model(tmp_path: Path) -> None:
    """Deployment: the checkpoint holds the wrapper's keys; bare_state_dict gives the model's."""
    ckpt = tmp_path / "seg.pt"
    model = SARSegmentationModel(tiny_net())
    quiet_fit(model, loader(*masks_and_images()), checkpoint=ckpt)
    bare = tiny_net()
    payload = torch.load(ckpt, weights_only=True)
    with pytest.raises(RuntimeError, match=r"(?s)Missing key\(s\) in state_dict:"
                       r" \"encoder\.conv1\.weight\".*Unexpected key\(s\) in state_dict:"
                       r" \"model\.encoder\.conv1\.weight\""):
        bare.load_state_dict(payload["model"])
    bare.load_state_dict(bare_state_dict(ckpt), strict=True)
    x = masks_and_images(seed=1)[0]
    with torch.no_grad():
        assert torch.equal(bare.eval()(x), model.eval()(x))
    for state in (payload, payload["model"], model.state_dict()):
        assert bare_state_dict(state).keys() == model.bare_state_dict().keys()
    with pytest.raises(ValueError, match=r"not the state of a RegularizedModel \(SARClassifier,"
                       r" SARSegmentationModel\), whose entries are model\.\* and regularizer"
                       r"\.\*: its top-level names are \['decoder', 'encoder',"
                       r" 'segmentation_head'\]\. A bare model's own state_dict loads as it is"):
        bare_state_dict(bare.state_dict())


# -------------------------------------------------------------------------- ignore_index
def test_ignore_index_that_is_a_class_id() -> None:
    with pytest.raises(ValueError, match=r"ignore_index=0 is a real class id with num_classes=3;"
                       r" pass an ignore_index outside \[0, num_classes\), e\.g\. -100"):
        SARSegmentationModel(tiny_net(), ignore_index=0)
    for baseline in (CenterLoss, PrototypeRegularizer):  # the baselines refuse it the same way
        with pytest.raises(ValueError, match=r"ignore_index=0 is a real class id"):
            baseline(C, 8, ignore_index=0)
    # fit's default loss checks it too, for a model without SAR with >= 256 classes
    with pytest.raises(ValueError, match=r"ignore_index=255 is a class id of this 300-class"
                       r" model, so the loss would skip that class: pass ignore_index=-100"):
        quiet_fit(tiny_net(num_classes=300), loader(*masks_and_images()))


# ------------------------------------------------------------------------- data on disk
def test_folder_with_an_image_without_mask(tmp_path: Path) -> None:
    save_pair(tmp_path / "data", "a")
    save_pair(tmp_path / "data", "b")
    (tmp_path / "data" / "masks" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"images without a mask in .*images: b\.png"):
        main(folder_args(tmp_path / "data", tmp_path / "run"))


def test_folder_with_a_mask_without_image(tmp_path: Path) -> None:
    save_pair(tmp_path, "a")
    save_pair(tmp_path, "b")
    (tmp_path / "images" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"masks without an image in .*masks: b\.png"):
        sar_data.SegmentationFolder(tmp_path)


def test_image_and_mask_of_different_sizes(tmp_path: Path) -> None:
    root = tmp_path / "data"
    save_pair(root, "a")
    save_pair(root, "b", size=(32, 32), mask_size=(32, 24))
    with pytest.raises(ValueError, match=r"size mismatch: image .*b\.png is 32x32 but mask"
                       r" .*b\.png is 32x24 \(width x height\)"):
        main(folder_args(root, tmp_path / "run"))


def test_transform_given_an_image_and_mask_of_different_sizes() -> None:
    transform = sar_data.SegmentationTransform(crop=16)
    with pytest.raises(ValueError, match=r"image size \(32, 32\) != mask size \(32, 24\)"):
        transform(torch.rand(3, 32, 32), torch.zeros(32, 24, dtype=torch.long))


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sar_data.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(sar_data.sources, "REPO_DATA_DIR", tmp_path / "repo-data")
    monkeypatch.setattr(sar_data.sources, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")
    with pytest.raises(FileNotFoundError, match=r"(?s)Fashion-MNIST \(train split.*was not"
                       r" found.*sudo apt-get install dataset-fashion-mnist.*download=True"):
        main(["--config", str(CONFIG), "--output-dir", str(tmp_path / "run")])


# ---------------------------------------------------------------------------- the devices
def test_more_processes_than_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(RuntimeError, match=r"LOCAL_RANK=3 but only 2 CUDA device\(s\) are"
                       r" visible: start at most that many processes per node"
                       r" \(--nproc_per_node\)"):
        distributed.init_distributed()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_asked_for_without_a_gpu(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"device='cuda' was asked for but no CUDA device is"
                       r" visible"):
        main(["--config", str(CONFIG), "--output-dir", str(tmp_path), "--set",
              "train.device=cuda"])


# -------------------------------------------------------------------- the run configuration
def test_config_with_an_unknown_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(CONFIG), "--set", "sar.trade_of=0.1"])
    assert exit_info.value.code == 2
    assert "sar: unknown key(s) ['trade_of']; valid keys: ['enabled'," in capsys.readouterr().err


def test_config_that_is_not_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"train": {"epochs": 2,}}')
    with pytest.raises(SystemExit):
        main(["--config", str(bad)])
    assert "bad.json is not valid JSON: " in capsys.readouterr().err  # then json's own words


def test_too_few_items_for_one_step(tmp_path: Path) -> None:
    root = tmp_path / "data"
    save_pair(root, "a")
    with pytest.raises(ValueError, match=r"the dataset has 1 items, fewer than one step needs"
                       r" \(1 rank\(s\) x batch_size 2\): use a smaller batch_size or fewer"
                       r" processes"):
        main(folder_args(root, tmp_path / "run"))
