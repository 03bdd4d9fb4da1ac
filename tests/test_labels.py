"""Labels as real users pass them: float masks, 0/255 binary masks, (B, 1, H, W) masks, an
ignore index given to the wrapper only. Each is refused clearly or handled right."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from sar import data as sar_data
from sar.labels import class_labels, resolve_ignore_index
from sar.models import SARSegmentationModel, build_smp_model
from sar.train import collect_features, evaluate, fit

C = 3


def wrapped(**sar_options) -> SARSegmentationModel:
    torch.manual_seed(0)
    return SARSegmentationModel(build_smp_model("FPN", "resnet18", C), **sar_options)


def scenes(n: int = 4, ignore: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    masks = torch.randint(0, C, (n, 64, 64), generator=gen)
    masks[:, :4] = ignore
    return torch.rand(n, 3, 64, 64, generator=gen), masks


def loader(images: torch.Tensor, masks: torch.Tensor) -> DataLoader:
    return DataLoader(TensorDataset(images, masks), batch_size=2)


def quiet_fit(model, batches, **kwargs):
    return fit(model, batches, epochs=1, lr=0.01, device="cpu", progress=False, **kwargs)


# --------------------------------------------------------------------------- float masks
def to_tensor_masks(masks: torch.Tensor) -> torch.Tensor:
    """What torchvision's ToTensor() makes of uint8 masks: k / 255."""
    return masks.to(torch.uint8).float() / 255


@pytest.mark.parametrize("entry", ["fit", "evaluate", "collect_features", "wrapper"])
def test_float_masks_are_refused_with_the_cause_and_the_fix(entry):
    images, masks = scenes()
    model, floats = wrapped(), to_tensor_masks(masks)
    with pytest.raises(TypeError, match=r"(?s)torch\.float32.*ToTensor\(\).*dtype=torch\.long"):
        if entry == "fit":
            quiet_fit(model, loader(images, floats))
        elif entry == "evaluate":
            evaluate(model, loader(images, floats), num_classes=C, task="segmentation",
                     device="cpu")
        elif entry == "collect_features":
            collect_features(model, loader(images, floats), device="cpu")
        else:
            model.train()(images, floats)


def test_float_mask_tensors_are_refused_by_the_segmentation_transform():
    with pytest.raises(TypeError, match="ToTensor"):
        sar_data.SegmentationTransform(crop=16)(torch.rand(3, 32, 32), torch.rand(32, 32))


# ---------------------------------------------------------------------- (B, 1, H, W) masks
def test_masks_with_a_channel_axis_train_and_score_like_plain_masks():
    images, masks = scenes()
    plain = quiet_fit(wrapped(), loader(images, masks))
    channel = quiet_fit(wrapped(), loader(images, masks[:, None]))
    assert np.allclose(plain["loss"], channel["loss"])
    scores = [evaluate(wrapped(), loader(images, m), num_classes=C, task="segmentation",
                       device="cpu")["mIoU"] for m in (masks, masks[:, None])]
    assert scores[0] == scores[1]
    assert class_labels(masks[:, None]).shape == masks.shape


# ------------------------------------------------------------------------- ignore_index
def test_fit_and_evaluate_take_the_ignore_index_from_the_wrapper():
    images, masks = scenes(ignore=-1)
    model = wrapped(ignore_index=-1)
    history = quiet_fit(model, loader(images, masks))  # used to die in PyTorch's CE on -1
    assert np.isfinite(history["loss"]).all()
    scores = evaluate(model, loader(images, masks), num_classes=C, task="segmentation",
                      device="cpu")
    assert 0 <= scores["pixel_accuracy"] <= 1


def test_an_ignore_index_that_disagrees_with_the_wrapper_names_both():
    images, masks = scenes(ignore=-1)
    with pytest.raises(ValueError, match=r"ignore_index=255 disagrees.*ignores -1.*"
                                         r"pass ignore_index=-1"):
        quiet_fit(wrapped(ignore_index=-1), loader(images, masks), ignore_index=255)
    with pytest.raises(ValueError, match="ignore_index=255 disagrees"):
        evaluate(wrapped(ignore_index=-1), loader(images, masks), num_classes=C,
                 task="segmentation", device="cpu", ignore_index=255)


def test_a_model_without_regulariser_keeps_255_by_default():
    net = build_smp_model("FPN", "resnet18", C)
    assert resolve_ignore_index(net, "auto") == 255
    assert resolve_ignore_index(net, None) is None
    with pytest.raises(ValueError, match="'auto'"):
        resolve_ignore_index(net, "none")


# -------------------------------------------------------------------- binary 0/255 masks
def save_binary_pairs(root: Path, n: int = 3) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = np.zeros((32, 32), np.uint8)
        mask[8:20, 8:20] = 255  # the object, saved the common way for binary masks
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
        Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(root / "images" / f"{i}.png")


def test_binary_masks_saved_as_0_and_255_warn_once_with_the_mapping(tmp_path):
    save_binary_pairs(tmp_path)
    with pytest.warns(UserWarning, match=r"only 0 and 255.*label_map=\{255: 1\}") as caught:
        sar_data.SegmentationFolder(tmp_path)
    assert len(caught) == 1
    fixed = sar_data.SegmentationFolder(tmp_path, label_map={255: 1})
    assert set(fixed[0][1].unique().tolist()) == {0, 1}


def test_masks_with_real_classes_do_not_warn(tmp_path, recwarn):
    save_binary_pairs(tmp_path)
    sar_data.SegmentationFolder(tmp_path, label_map={255: 1})
    assert not [w for w in recwarn if "only 0 and 255" in str(w.message)]


def test_classification_data_refuses_float_labels_instead_of_truncating():
    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(TypeError, match="integer tensor of class ids"):
        sar_data.ClassificationDataset(images, torch.tensor([0.0, 0.5, 1.0, 1.5]))
    with pytest.raises(TypeError, match="integer tensor of class ids"):
        sar_data.make_long_tailed(torch.tensor([0.0, 1.0, 1.0]), 2.0)

