"""The paper-scale configs (``configs/{cityscapes,ade20k,pascal_context}_*.json``) hold the
authors' recipe, build their networks, and run end to end on tiny synthetic copies of each
benchmark's on-disk layout and raw label encoding, so a first GPU run cannot die on a path or
a label mapping.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from sar import data as sar_data
from sar.train import build_model, load_run_config, main
from sar.train.run_config import DataConfig, build_datasets

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
BENCHMARK_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.json")
                           if p.name.split("_")[0] in ("cityscapes", "ade20k", "pascal"))
AUTHORS_SAR = {"enabled": True, "trade_off": 0.1, "trade_off_ce": 1.0, "filter_conf": 0.9,
               "update_conf": 0.8, "momentum": 0.999}
# the authors' mmseg configs (SAR_SPEC.md and geyanqi/SAR report_cfgs): classes, crop (h, w),
# iterations, per-GPU batch, lr, weight decay
RECIPES = {
    "cityscapes": (19, [512, 1024], 80_000, 2, 0.01, 5e-4),
    "ade20k": (150, 512, 160_000, 4, 0.01, 5e-4),
    "pascal_context": (59, 480, 40_000, 2, 0.004, 1e-4),
}
MODELS = {"fpn_hrnet_w48": ("FPN", "tu-hrnet_w48"),
          "deeplabv3plus_r101": ("DeepLabV3Plus", "resnet101")}
# small stand-ins for the 2-step runs (the true encoders are built in their own test)
SMALL_ENCODER = {"FPN": "tu-hrnet_w18_small", "DeepLabV3Plus": "resnet18"}
CITYSCAPES_IDS = [0, 1, 4, 7, 8, 11, 21, 23, 24, 26, 33]  # incl. ids that map to 255


def dataset_of(config: str) -> str:
    return next(name for name in RECIPES if config.startswith(name))


# ------------------------------------------------------- synthetic copies of the layouts
def save_image(path: Path, h: int, w: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)  # .jpg or .png by suffix


def save_mask(path: Path, values: list[int], h: int, w: int, seed: int) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = np.random.default_rng(seed).choice(np.array(values, np.uint8), size=(h, w))
    raw.flat[: len(values)] = values  # every value appears at least once
    Image.fromarray(raw, mode="L").save(path)
    return raw


def make_layout(name: str, root: Path, splits: dict[str, int] | None = None) -> Path:
    """``root`` laid out as the benchmark ``name`` is on disk; returns ``data.root``."""
    splits = {"train": 4, "val": 2} if splits is None else splits
    for split, count in splits.items():
        for i in range(count):
            seed = 100 * len(split) + i
            if name == "cityscapes":
                city = ("aachen", "bochum")[i % 2]
                stem = f"{city}_{i:06d}_000019"
                save_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                           64, 128, seed)
                save_mask(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
                          CITYSCAPES_IDS, 64, 128, seed)
            elif name == "ade20k":
                folder = {"train": "training", "val": "validation"}[split]
                stem = f"ADE_{split}_{i + 1:08d}"
                base = root / "ADEChallengeData2016"
                save_image(base / "images" / folder / f"{stem}.jpg", 64, 64, seed)
                save_mask(base / "annotations" / folder / f"{stem}.png", list(range(151)), 64,
                          64, seed)
            else:
                stem = f"2008_{i:06d}"
                voc = root / "VOCdevkit" / "VOC2010"
                save_image(voc / "JPEGImages" / f"{stem}.jpg", 64, 64, seed)
                save_mask(voc / "SegmentationClassContext" / f"{stem}.png", list(range(60)),
                          64, 64, seed)
                split_file = voc / "ImageSets" / "SegmentationContext" / f"{split}.txt"
                split_file.parent.mkdir(parents=True, exist_ok=True)
                with split_file.open("a") as f:
                    f.write(f"{stem}\n")
    return {"cityscapes": root, "ade20k": root / "ADEChallengeData2016",
            "pascal_context": root / "VOCdevkit" / "VOC2010"}[name]


# ------------------------------------------------------------------------ the recipes
@pytest.mark.parametrize("config", BENCHMARK_CONFIGS)
def test_config_holds_the_authors_recipe(config: str) -> None:
    cfg = load_run_config(CONFIGS / config)
    name = dataset_of(config)
    classes, crop, steps, batch, lr, wd = RECIPES[name]
    assert cfg.data.name == name and cfg.data.crop == crop and cfg.data.hflip
    assert cfg.data.scale_range == [0.5, 2.0]  # mmseg's ratio_range
    assert cfg.train.max_steps == steps and cfg.train.epochs * 300 >= steps  # max_steps ends it
    assert (cfg.train.batch_size, cfg.train.lr, cfg.train.weight_decay) == (batch, lr, wd)
    assert (cfg.train.optimizer, cfg.train.momentum, cfg.train.schedule) == ("sgd", 0.9, "poly")
    assert cfg.train.warmup_steps == 0 and cfg.sar == AUTHORS_SAR
    assert cfg.train.ce_mean_over == "all"  # mmseg 0.29's CE: the mean over every pixel
    arch, encoder = MODELS[config.removeprefix(f"{name}_").removesuffix(".json")]
    assert (cfg.model.arch, cfg.model.encoder) == (arch, encoder)
    assert cfg.model.encoder_weights == "imagenet" and cfg.output_dir == f"runs/{config[:-5]}"
    offline = load_run_config(CONFIGS / config, ["model.encoder_weights=null"])
    assert offline.model.encoder_weights is None


@pytest.mark.parametrize("config", ["cityscapes_fpn_hrnet_w48.json",
                                    "cityscapes_deeplabv3plus_r101.json"])
def test_the_true_networks_build_and_segment(config: str) -> None:
    """HRNet-W48 (FPN) and ResNet-101 (DeepLabV3+), untrained: build, SAR wrap, one forward."""
    cfg = load_run_config(CONFIGS / config, ["model.encoder_weights=null"])
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.sar, num_classes=19).eval()
    if cfg.model.arch == "FPN":  # HRNetV2's own four branches feed the decoder, as in mmseg
        assert model.model.encoder.out_channels[2:] == [48, 96, 192, 384]
    feat_dim = {"FPN": 128, "DeepLabV3Plus": 256}[cfg.model.arch]
    assert model.regularizer.anchors.shape == (19, feat_dim)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 19, 64, 64)


# ------------------------------------------------------------------ the raw encodings
def test_label_encodings_follow_mmsegmentation(tmp_path: Path) -> None:
    expected = {  # raw value -> class id
        "cityscapes": {0: 255, 1: 255, 4: 255, 7: 0, 8: 1, 26: 13, 33: 18},
        "ade20k": {0: 255, 1: 0, 2: 1, 150: 149},
        "pascal_context": {0: 255, 1: 0, 2: 1, 59: 58},
    }
    for name, mapping in expected.items():
        root = make_layout(name, tmp_path / name)
        train, val, num_classes = build_datasets(DataConfig(name=name, root=str(root)))
        assert (len(train), len(val), num_classes) == (4, 2, RECIPES[name][0])
        image, mask = sar_data.benchmark_dataset(name, root, "train")[0]  # no transform
        assert image.dtype == torch.float32 and mask.dtype == torch.int64
        raw_path = {"cityscapes": "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png",
                    "ade20k": "annotations/training/ADE_train_00000001.png",
                    "pascal_context": "SegmentationClassContext/2008_000000.png"}[name]
        raw = torch.from_numpy(np.array(Image.open(root / raw_path)).astype(np.int64))
        for value, class_id in mapping.items():
            assert (raw == value).any() and (mask[raw == value] == class_id).all(), (name, value)
        assert set(mask.unique().tolist()) <= set(range(num_classes)) | {255}
    assert sar_data.cityscapes_classes()[0] == "road" and len(sar_data.cityscapes_classes()) == 19


def test_keep_ratio_resize_and_random_rescale_follow_mmsegmentation() -> None:
    image, mask = torch.rand(3, 40, 100), torch.arange(4000).reshape(40, 100) % 7
    x, y = sar_data.SegmentationTransform(size=20, max_size=40, mean=None)(image, mask)
    assert x.shape == (3, 16, 40) and y.shape == (16, 40)  # min(20/40, 40/100) = 0.4
    torch.manual_seed(0)
    scaled = sar_data.SegmentationTransform(size=20, scale_range=(0.5, 2.0), mean=None)
    heights = {scaled(image, mask)[1].shape[0] for _ in range(20)}
    assert len(heights) > 5 and 10 <= min(heights) and max(heights) <= 40
    assert set(scaled(image, mask)[1].unique().tolist()) <= set(range(7))  # nearest: no new ids
    with pytest.raises(ValueError, match="max_size caps the longer side"):
        sar_data.SegmentationTransform(size=[20, 20], max_size=40)


@pytest.mark.parametrize("name, expected", [
    ("cityscapes", r"cityscapes/leftImg8bit/train does not exist\. Expected .*"
                   r"cityscapes-dataset\.com"),
    ("ade20k", r"images/training does not exist\. Expected .*ADEChallengeData2016\.zip"),
    ("pascal_context", r"JPEGImages does not exist\. Expected .*SegmentationContext/train\.txt"),
])
def test_a_missing_dataset_names_its_layout_and_download(tmp_path: Path, name: str,
                                                         expected: str) -> None:
    (tmp_path / name).mkdir()
    with pytest.raises(FileNotFoundError, match=expected):
        build_datasets(DataConfig(name=name, root=str(tmp_path / name)))


def test_a_missing_validation_split_is_named(tmp_path: Path) -> None:
    root = make_layout("cityscapes", tmp_path, {"train": 2})
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit/val does not exist"):
        build_datasets(DataConfig(name="cityscapes", root=str(root)))
    with pytest.raises(ValueError, match="has 19 classes, got data.num_classes=20"):
        DataConfig(name="cityscapes", root=str(root), num_classes=20)


# --------------------------------------------------------------------- end to end
SHRINK = {  # the images are 64x128 (Cityscapes) or 64x64: scaled, cropped, evaluated small
    "cityscapes": ["data.resize=64", "data.max_size=128", "data.crop=[32,64]",
                   "data.val_resize=null"],
    "ade20k": ["data.resize=32", "data.max_size=128", "data.crop=32", "data.val_resize=[32,32]"],
    "pascal_context": ["data.resize=32", "data.max_size=32", "data.crop=32",
                       "data.val_resize=[32,32]"],
}


@pytest.mark.parametrize("config", BENCHMARK_CONFIGS)
def test_config_trains_two_steps_on_its_layout(config: str, tmp_path: Path) -> None:
    name = dataset_of(config)
    root = make_layout(name, tmp_path / "data")
    arch = load_run_config(CONFIGS / config).model.arch
    out = tmp_path / "run"
    args = ["--config", str(CONFIGS / config), "--output-dir", str(out), "--set",
            f"data.root={root}", *SHRINK[name], "data.num_workers=0", "train.max_steps=2",
            "train.batch_size=2", "train.eval_batch_size=2", "train.device=cpu",
            "train.amp=false", "train.log_every=1", "model.encoder_weights=null",
            f"model.encoder={SMALL_ENCODER[arch]}"]
    assert main(args) == 0
    history = pd.read_csv(out / "history.csv")
    assert history["step"].tolist() == [0, 1]
    assert {"anchor_ce", "pull", "gate_opened"} <= set(history.columns)
    assert np.isfinite(history["loss"]).all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["per_class_iou"]) == RECIPES[name][0]
    saved = json.loads((out / "config.json").read_text())
    assert saved["data"]["name"] == name and saved["train"]["max_steps"] == 2
