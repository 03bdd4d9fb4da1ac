"""sar: Semantic Anchor Regularization (Ge et al., AAAI 2024) for modern PyTorch.

The core is :class:`SemanticAnchorRegularizer`; :mod:`sar.models` wraps smp segmentation
models and image classifiers with it (:mod:`sar.heads` finds a classifier's heads, several
in timm's distilled models), :mod:`sar.baselines` holds the methods it is compared
with, and :mod:`sar.anchors` makes and inspects pre-defined anchors. :mod:`sar.methods` builds
any of them by name.

The heavier parts load on first use, so ``import sar`` stays quick: ``sar.train`` (fit,
evaluate, the run command), ``sar.data``, ``sar.metrics``, ``sar.plots`` (matplotlib),
``sar.experiments``, ``sar.distributed``, ``sar.benchmark``, ``sar.cache`` (load a notebook's
result if present, else compute it) and ``sar.pretrain`` (an smp encoder pretrained here on
Fashion-MNIST, the offline stand-in for ImageNet weights).
"""

import importlib

from . import anchors, baselines, config, heads, models
from .anchors import anchor_geometry, make_anchors
from .baselines import (
    CenterLoss,
    DotRegressionLoss,
    ETFClassifier,
    LogitAdjustedCrossEntropy,
    NoRegularizer,
    PrototypeRegularizer,
)
from .config import SMOKE, default_device, seed_everything
from .heads import HeadsRegularizer, find_heads
from .models import (
    RegularizedModel,
    SARClassifier,
    SARSegmentationModel,
    SmallCNN,
    bare_state_dict,
    build_classifier,
    build_smp_model,
    find_linear_head,
)
from .regularizer import SemanticAnchorRegularizer, no_anchor_update

__version__ = "0.1.0"

_LAZY_MODULES = ("benchmark", "cache", "data", "distributed", "encoder_weights", "experiments",
                 "methods", "metrics", "notebook", "plots", "pretrain", "train")


def __getattr__(name: str):
    # PEP 562: import a submodule the first time ``sar.<name>`` is looked up
    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'sar' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY_MODULES])

__all__ = [
    "SMOKE",
    "CenterLoss",
    "DotRegressionLoss",
    "ETFClassifier",
    "HeadsRegularizer",
    "LogitAdjustedCrossEntropy",
    "NoRegularizer",
    "PrototypeRegularizer",
    "RegularizedModel",
    "SARClassifier",
    "SARSegmentationModel",
    "SemanticAnchorRegularizer",
    "SmallCNN",
    "__version__",
    "anchor_geometry",
    "anchors",
    "bare_state_dict",
    "baselines",
    "build_classifier",
    "build_smp_model",
    "config",
    "default_device",
    "find_heads",
    "find_linear_head",
    "heads",
    "make_anchors",
    "models",
    "no_anchor_update",
    "seed_everything",
]
