"""The experiments' grids: the setups (data, network, schedule) and the runs each grid holds."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..benchmark import CASES as OVERHEAD_CASES

# run order within a seed: the comparisons that matter most first
CLASSIFICATION_METHODS = ("ce", "sar", "logit_adjusted", "prototype", "center", "etf", "etf_dr")


# Long-tail rows that are not a registry method at its defaults: label -> (sar.methods name,
# fixed options). "sar_tuned" takes its options from the tuning grid (see TUNED).
LONGTAIL_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "sar_tuned": ("sar", {}),
    "sar_logit_adjusted": ("sar_logit_adjusted", {}),
    "sar_anchor_ce_only": ("sar", {"trade_off": 0.0}),
}
LONGTAIL_METHODS = ("ce", "sar", "sar_tuned", "logit_adjusted", "sar_logit_adjusted", "prototype",
                    "center", "etf", "etf_dr", "sar_anchor_ce_only")
# long-tail labels whose options are the setting the tuning grid chose for a tuning method
TUNED = {"sar_tuned": "sar", "logit_adjusted": "logit_adjusted", "prototype": "prototype",
         "center": "center"}


SEGMENTATION_METHODS = ("ce", "sar", "prototype")


# SAR's own knobs at imbalance factor 100, as options of SemanticAnchorRegularizer. The two
# "off" rows separate its mechanisms; the last row adds classifier rebalancing on top (the
# "loss" key picks the classification loss instead of a SAR option).
ABLATIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "filter off": {"filter_conf": 1.0},
    "gate off": {"use_gate": False},
    "pull after open": {"pull_after_open": True},
    "momentum 0.9": {"momentum": 0.9},
    "momentum 0.99": {"momentum": 0.99},
    "trade_off 0.01": {"trade_off": 0.01},
    "trade_off 1": {"trade_off": 1.0},
    "trade_off_ce 0.1": {"trade_off_ce": 0.1},
    "anchors orthogonal": {"anchor_init": "orthogonal"},
    "anchors etf": {"anchor_init": "etf"},
    "anchors hypersphere": {"anchor_init": "hypersphere"},
    "cosine pull": {"distance": "cosine"},
    "detached weights": {"detach_weights": True},
    "pull off (anchor CE only)": {"trade_off": 0.0},
    "anchor CE off (pull only)": {"trade_off_ce": 0.0, "use_gate": False},
    "with logit-adjusted CE": {"loss": "logit_adjusted"},
}


# Each method's main knob, chosen the same way for every method: about four values, trained at
# the largest imbalance factor and scored on the balanced validation split. The values bracket
# each method's published default (SAR 0.1 / 1, Menon et al.'s tau = 1).
TUNING: dict[str, dict[str, dict[str, Any]]] = {
    "sar": {"trade_off 0.01": {"trade_off": 0.01}, "trade_off 0.1": {},
            "trade_off 1": {"trade_off": 1.0}, "trade_off 10": {"trade_off": 10.0},
            "trade_off_ce 0.3": {"trade_off_ce": 0.3}, "trade_off_ce 3": {"trade_off_ce": 3.0}},
    "logit_adjusted": {"tau 0.5": {"tau": 0.5}, "tau 1": {}, "tau 1.5": {"tau": 1.5},
                       "tau 2": {"tau": 2.0}},
    "prototype": {"weight 0.03": {"weight": 0.03}, "weight 0.1": {}, "weight 0.3": {"weight": 0.3},
                  "weight 1": {"weight": 1.0}},
    "center": {"weight 0.001": {"weight": 0.001}, "weight 0.003": {"weight": 0.003},
               "weight 0.01": {}, "weight 0.03": {"weight": 0.03}},
    # the ETF knob is the variant: each is a method of its own, compared on the same split
    "etf": {"variant ce": {}},
    "etf_dr": {"variant dr": {}},
}


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class ClassificationSetup:
    """Network, schedule and data of the Fashion-MNIST-LT runs (shared by every method)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    weight_decay: float = 5e-4
    width: int = 16
    feat_dim: int = 64
    max_count: int | None = 2000  # images of the head class (the tail has max_count / IF)
    test_limit: int | None = None  # evaluate on the first N test images; None = all 10000
    data_seed: int = 0  # fixes which classes are head and tail, for every training seed
    val_per_class: int = 200  # balanced validation split from images the tail left out
    imbalance_factors: tuple[float, ...] = (1, 10, 50, 100)


@dataclass(frozen=True)
class SegmentationSetup:
    """Scene benchmark and schedule of the segmentation runs.

    Sized for a CPU: the scenes of notebook 03 (1200 train, 300 val, 64x64, item imbalance 20)
    and 900 optimizer steps per run, twice notebook 03's schedule.
    """

    epochs: int = 6
    batch_size: int = 8
    lr: float = 0.02
    size: int = 64
    train_scenes: int = 1200
    val_scenes: int = 300
    imbalance_factor: float = 20.0
    scene_seed: int = 0  # fixes which classes are head and tail, for every training seed
    archs: tuple[str, ...] = ("Unet", "FPN", "DeepLabV3Plus")


SMOKE_CLASSIFICATION = ClassificationSetup(
    epochs=1, width=8, feat_dim=16, max_count=60, test_limit=200, val_per_class=20,
    imbalance_factors=(1, 10))


SMOKE_SEGMENTATION = SegmentationSetup(
    epochs=1, batch_size=8, size=32, train_scenes=16, val_scenes=8, archs=("Unet",))


@dataclass(frozen=True)
class Run:
    """One cell of a grid: what to train and how to label its row."""

    experiment: str
    method: str
    setting: str
    seed: int
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.experiment, self.method, self.setting, self.seed)


# ----------------------------------------------------------------------------- grids
# Grids run seed by seed, so a grid stopped halfway still holds complete, paired comparisons.
def longtail_grid(setup: ClassificationSetup, seeds: list[int]) -> Iterator[Run]:
    # most imbalanced first: the cheapest runs and the claims that matter most come first
    for factor in sorted(setup.imbalance_factors, reverse=True):
        for seed in seeds:
            for method in LONGTAIL_METHODS:
                name, options = LONGTAIL_VARIANTS.get(method, (method, {}))
                yield Run("longtail", method, f"if={factor:g}", seed,
                          {"imbalance_factor": factor, "method": name, "method_options": options})


def ablation_grid(setup: ClassificationSetup, seeds: list[int]) -> Iterator[Run]:
    factor = max(setup.imbalance_factors)
    for seed in seeds:
        for name, options in ABLATIONS.items():
            sar_options = {k: v for k, v in options.items() if k != "loss"}
            yield Run("ablation", "sar", name, seed,
                      {"imbalance_factor": factor, "method_options": sar_options,
                       "loss": options.get("loss", "ce")})


def tuning_grid(setup: ClassificationSetup, seeds: list[int]) -> Iterator[Run]:
    """Each method's knob grid at the largest imbalance factor, scored on the validation split
    (one seed: the grid chooses a setting, the long-tail grid then measures it)."""
    factor = max(setup.imbalance_factors)
    for seed in seeds[:1]:
        for method, grid in TUNING.items():
            for name, options in grid.items():
                yield Run("tuning", method, name, seed,
                          {"imbalance_factor": factor, "method_options": options})


def segmentation_grid(setup: SegmentationSetup, seeds: list[int]) -> Iterator[Run]:
    for seed in seeds:
        for arch in setup.archs:
            for method in SEGMENTATION_METHODS:
                yield Run("segmentation", method, arch, seed, {"arch": arch})


def setups(smoke: bool) -> tuple[ClassificationSetup, SegmentationSetup]:
    if smoke:
        return SMOKE_CLASSIFICATION, SMOKE_SEGMENTATION
    return ClassificationSetup(), SegmentationSetup()


def grid_runs(experiment: str, seeds: list[int], smoke: bool) -> list[Run]:
    """Every cell of ``experiment``'s grid, in the order they run."""
    cls_setup, seg_setup = setups(smoke)
    if experiment == "overhead":
        return [Run("overhead", "sar_vs_plain", key, 0) for key in OVERHEAD_CASES]
    if experiment == "segmentation":
        return list(segmentation_grid(seg_setup, seeds))
    grid = {"longtail": longtail_grid, "ablation": ablation_grid,
            "tuning": tuning_grid}[experiment]
    return list(grid(cls_setup, seeds))


# ---------------------------------------------------------------------------------- CLI
EXPERIMENTS = ("longtail", "ablation", "tuning", "segmentation", "overhead")
