"""The JSON run configuration of ``python -m sar.train``: dataclasses, overrides, and what they
build.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..models import SARSegmentationModel, build_smp_model
from .checkpoint import PathLike
from .criterion import CE_MEAN_OVER

# ------------------------------------------------------------------------- the entry point
BENCHMARKS = ("cityscapes", "ade20k", "pascal_context")
DATASETS = ("fashion_scenes", "folder", "voc", *BENCHMARKS)


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class DataConfig:
    """Which dataset to train on, and its transforms.

    ``name``: ``"fashion_scenes"`` (built in, offline: :func:`sar.data.make_fashion_scenes`
    with ``num_train``/``num_val`` scenes of ``size`` pixels), ``"folder"`` (a
    :class:`sar.data.SegmentationFolder` under ``root``, with ``num_classes`` given; the
    validation pair ``val_image_dir``/``val_mask_dir`` is optional; ``label_map`` renames mask
    values, e.g. ``{"255": 1}`` for binary masks saved as 0/255) or ``"voc"``
    (:func:`sar.data.pascal_voc` under ``root``, splits ``train_split``/``val_split``).
    The paper's benchmarks, in their standard layouts and label encodings under ``root``
    (``train_split``/``val_split`` as for VOC): ``"cityscapes"`` (:func:`sar.data.cityscapes`,
    19 train ids), ``"ade20k"`` (:func:`sar.data.ade20k`, 150 classes) and
    ``"pascal_context"`` (:func:`sar.data.pascal_context`, 59 classes); ``num_classes``,
    ``reduce_zero_label`` and ``label_map`` are fixed by the benchmark.
    On-disk images go through :class:`sar.data.SegmentationTransform`: ``resize`` (shorter
    side, capped at ``max_size`` on the longer side, or ``[h, w]``), a random rescale by a
    ratio in ``scale_range`` (mmsegmentation's ``ratio_range``), then a random ``crop`` and
    ``hflip`` for training; ``val_resize`` for validation (smp models need sides divisible
    by 32).
    """

    name: str = "fashion_scenes"
    root: str | None = None
    num_classes: int | None = None
    ignore_index: int = 255
    num_train: int = 2000
    num_val: int = 500
    size: int = 64
    imbalance_factor: float = 10.0
    seed: int = 0
    image_dir: str = "images"
    mask_dir: str = "masks"
    val_image_dir: str | None = None
    val_mask_dir: str | None = None
    reduce_zero_label: bool = False
    label_map: dict[str, int] | None = None
    train_split: str = "train"
    val_split: str = "val"
    resize: int | list[int] | None = None
    max_size: int | None = None
    scale_range: list[float] | None = None
    crop: int | list[int] | None = None
    hflip: bool = True
    val_resize: int | list[int] | None = None
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            raise ValueError(f"data.name must be one of {DATASETS}, got {self.name!r}")
        if self.name != "fashion_scenes" and self.root is None:
            raise ValueError(f"data.name={self.name!r} needs data.root (the folder on disk)")
        if self.name == "folder" and self.num_classes is None:
            raise ValueError("data.name='folder' needs data.num_classes")
        if self.name in BENCHMARKS:
            from ..data import BENCHMARK_NUM_CLASSES

            fixed = BENCHMARK_NUM_CLASSES[self.name]
            if self.num_classes not in (None, fixed):
                raise ValueError(f"data.name={self.name!r} has {fixed} classes, got"
                                 f" data.num_classes={self.num_classes}")
            if self.reduce_zero_label or self.label_map:
                raise ValueError(f"data.name={self.name!r} fixes its label encoding: leave"
                                 " data.reduce_zero_label and data.label_map unset")


@dataclass
class ModelConfig:
    """An smp model: ``arch``, ``encoder``, ``encoder_weights`` (``null`` offline,
    ``"imagenet"`` downloads once, a path such as ``"data/encoders/resnet18_fashion.pt"``
    loads a file made by ``python -m sar.pretrain``) and extra ``kwargs`` for
    ``smp.create_model``."""

    arch: str = "Unet"
    encoder: str = "resnet18"
    encoder_weights: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    sync_batchnorm: bool = True
    find_unused_parameters: bool = False


@dataclass
class TrainConfig:
    """The optimisation: ``batch_size`` is per rank (global batch = ranks x batch_size) and
    ``lr`` is used as given, whatever the number of ranks. ``amp``: ``null`` (bf16 on a GPU
    that has it, else fp16), ``true``, ``false``, ``"bf16"`` or ``"fp16"``; CUDA only.
    ``ce_mean_over``: the cross-entropy's mean over the ``"labelled"`` pixels (PyTorch's, the
    default) or over ``"all"`` pixels, void ones included (mmsegmentation 0.29's, the SAR
    authors' task loss: the paper configs use it); see :class:`sar.train.IgnoreSafeCrossEntropy`.
    """

    epochs: int = 1
    batch_size: int = 8
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "poly"
    warmup_steps: int = 0
    max_steps: int | None = None
    amp: bool | str | None = None
    seed: int = 0
    log_every: int = 1
    device: str | None = None
    resume: bool = True
    eval_batch_size: int | None = None
    ce_mean_over: str = "labelled"

    def __post_init__(self) -> None:
        if self.ce_mean_over not in CE_MEAN_OVER:
            raise ValueError(f"train.ce_mean_over must be one of {list(CE_MEAN_OVER)}, got"
                             f" {self.ce_mean_over!r}")
        if isinstance(self.amp, str) and self.amp not in AMP_DTYPES:
            raise ValueError(f"train.amp must be null, true, false or one of {list(AMP_DTYPES)},"
                             f" got {self.amp!r}")
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class RunConfig:
    """A whole run, as read from a JSON file: see ``configs/`` for examples.

    ``sar`` holds :class:`~sar.regularizer.SemanticAnchorRegularizer` options plus
    ``"enabled"`` (``false`` trains the plain network, the baseline).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sar: dict[str, Any] = field(default_factory=lambda: {"enabled": True})
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str = "runs/default"

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "config") -> RunConfig:
        """Build from nested dicts; an unknown key is an error naming the valid ones."""
        _check_keys(raw, cls, source)
        parts = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
        values: dict[str, Any] = dict(raw)
        for name, part in parts.items():
            _check_keys(raw.get(name, {}), part, f"{source}: {name}")
            values[name] = part(**raw.get(name, {}))
        _check_sar_options(raw.get("sar", {}), f"{source}: sar")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_keys(raw: Any, cls: type, where: str) -> None:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    valid = [f.name for f in fields(cls)]
    if unknown := sorted(set(raw) - set(valid)):
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {valid}")


def _check_sar_options(raw: Any, where: str) -> None:
    """The ``sar`` section: regulariser keyword options plus ``enabled``."""
    import inspect

    from ..regularizer import SemanticAnchorRegularizer

    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    params = inspect.signature(SemanticAnchorRegularizer).parameters
    valid = ["enabled", *(name for name, p in params.items() if p.kind is p.KEYWORD_ONLY)]
    if unknown := sorted(set(raw) - set(valid)):
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {valid}")


def _set_dotted(raw: dict[str, Any], assignment: str) -> None:
    """Apply ``"train.epochs=3"``; the value is parsed as JSON, else kept as a string."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise ValueError(f"--set expects KEY=VALUE (e.g. train.epochs=3), got {assignment!r}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def load_run_config(
    path: PathLike, overrides: Sequence[str] = (), output_dir: str | None = None
) -> RunConfig:
    """Read a JSON run config, apply ``--set``-style ``overrides`` and ``output_dir``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    for assignment in overrides:
        _set_dotted(raw, assignment)
    if output_dir is not None:
        raw["output_dir"] = output_dir
    return RunConfig.from_dict(raw, str(path))


def _segmentation_transform(cfg: DataConfig, train: bool) -> Any:
    from ..data import SegmentationTransform

    if train:
        return SegmentationTransform(size=cfg.resize, crop=cfg.crop, hflip=cfg.hflip,
                                     ignore_index=cfg.ignore_index, max_size=cfg.max_size,
                                     scale_range=cfg.scale_range)
    return SegmentationTransform(size=cfg.val_resize, ignore_index=cfg.ignore_index)


def build_datasets(cfg: DataConfig) -> tuple[Any, Any | None, int]:
    """``(train_set, val_set or None, num_classes)`` for a :class:`DataConfig`.

    Items are ``(float32 (3, H, W), int64 (H, W))`` with ``cfg.ignore_index`` as the ignore
    label.
    """
    from .. import data

    if cfg.name == "fashion_scenes":
        flip = data.SegmentationTransform(hflip=True, mean=None) if cfg.hflip else None
        common = dict(size=cfg.size, imbalance_factor=cfg.imbalance_factor, seed=cfg.seed)
        train = data.make_fashion_scenes(cfg.num_train, split="train", transform=flip, **common)
        val = data.make_fashion_scenes(cfg.num_val, split="val", **common) if cfg.num_val else None
        return train, val, train.num_classes
    if cfg.name == "voc":
        train = data.pascal_voc(cfg.root, cfg.train_split, _segmentation_transform(cfg, True))
        val = data.pascal_voc(cfg.root, cfg.val_split, _segmentation_transform(cfg, False))
        return train, val, 21
    if cfg.name in BENCHMARKS:
        train = data.benchmark_dataset(cfg.name, cfg.root, cfg.train_split,
                                       _segmentation_transform(cfg, True))
        val = data.benchmark_dataset(cfg.name, cfg.root, cfg.val_split,
                                     _segmentation_transform(cfg, False))
        return train, val, data.BENCHMARK_NUM_CLASSES[cfg.name]
    relabel = {"reduce_zero_label": cfg.reduce_zero_label, "label_map": cfg.label_map}
    train = data.SegmentationFolder(cfg.root, cfg.image_dir, cfg.mask_dir,
                                    _segmentation_transform(cfg, True), **relabel)
    val = None
    if cfg.val_image_dir is not None and cfg.val_mask_dir is not None:
        val = data.SegmentationFolder(cfg.root, cfg.val_image_dir, cfg.val_mask_dir,
                                      _segmentation_transform(cfg, False), **relabel)
    return train, val, int(cfg.num_classes)


def build_model(
    cfg: ModelConfig, sar_options: Mapping[str, Any], num_classes: int, ignore_index: int = 255
) -> nn.Module:
    """The smp network, wrapped in :class:`~sar.models.SARSegmentationModel` unless
    ``sar_options["enabled"]`` is false. Rank 0 builds first: it may download weights."""
    options = dict(sar_options)
    enabled = options.pop("enabled", True)
    options.setdefault("ignore_index", ignore_index)
    with distributed.main_process_first():
        net = build_smp_model(cfg.arch, cfg.encoder, num_classes,
                              encoder_weights=cfg.encoder_weights, **cfg.kwargs)
    return SARSegmentationModel(net, **options) if enabled else net


def _amp_option(amp: bool | str | None) -> bool | torch.dtype | None:
    return AMP_DTYPES[amp] if isinstance(amp, str) else amp
