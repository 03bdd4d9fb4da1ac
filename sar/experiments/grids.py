"""The experiments' grids: the setups (data, network, schedule) and the runs each grid holds."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..benchmark import CASES as OVERHEAD_CASES
from ..config import smoke_mode

# Grid rows that are not a registry method at its defaults, in every grid: label ->
# (sar.methods name, options of sar.methods.build). "sar_tuned" takes its options from the
# tuning grid (see TUNED). The tau rows are logit adjustment on the segmentation scenes:
# Menon et al.'s tau = 1 was validated on classification only, and where background is 73% of
# the pixels it shifts every item class by up to log(146) ~ 5 logits; SAR runs on top of tau
# 0.5, the better one on seeds 0 and 1 (scored on the validation scenes the grid reports: a
# choice that can only flatter the baseline).
METHOD_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "sar_tuned": ("sar", {}),
    "sar_anchor_ce_only": ("sar", {"trade_off": 0.0}),
    "logit_adjusted_tau0.25": ("logit_adjusted", {"tau": 0.25}),
    "logit_adjusted_tau0.5": ("logit_adjusted", {"tau": 0.5}),
    "sar_logit_adjusted_tau0.5": ("sar_logit_adjusted", {"tau": 0.5}),
}
# run order within a seed: the comparisons that matter most first
LONGTAIL_METHODS = ("ce", "sar", "sar_tuned", "logit_adjusted", "sar_logit_adjusted", "prototype",
                    "center", "etf", "etf_dr", "sar_anchor_ce_only")
# long-tail labels whose options are the setting the tuning grid chose for a tuning method
TUNED = {"sar_tuned": "sar", "logit_adjusted": "logit_adjusted", "prototype": "prototype",
         "center": "center"}


SEGMENTATION_METHODS = ("ce", "sar", "prototype")
# the pretrained-encoder grid adds SAR with a class-balanced pull on every architecture, and
# the logit-adjusted pair (which rebalances the classifier, not the features) on one
PRETRAINED_SEGMENTATION_METHODS = ("ce", "sar", "prototype", "sar_class_pull")
LOGIT_ADJUSTED_SEGMENTATION_METHODS = ("logit_adjusted", "sar_logit_adjusted")
# logit adjustment at weaker strengths than tau = 1, alone and under SAR (see METHOD_VARIANTS)
TAU_SEGMENTATION_METHODS = ("logit_adjusted_tau0.25", "logit_adjusted_tau0.5",
                            "sar_logit_adjusted_tau0.5")
# made by `python -m sar.pretrain` (35 minutes on one thread of a 2-core CPU); repo-relative
PRETRAINED_ENCODER = "data/encoders/resnet18_fashion.pt"


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
    """Scene benchmark, network and schedule of the segmentation runs.

    The defaults are the from-scratch benchmark of the committed ``results/segmentation.csv``
    rows, sized for a CPU: the scenes of notebook 03 (1200 train, 300 val, 64x64, items of
    side 17-34 px, item imbalance 20), a randomly initialised ResNet-18 encoder, and 900
    optimizer steps per run (6 epochs of batch 8), twice notebook 03's schedule.

    Fields added later default to those values, so the committed rows stay reproducible:
    ``encoder`` (smp encoder name) and ``encoder_weights`` (``None``: random init; a path to a
    file made by ``python -m sar.pretrain``, relative to the repository unless absolute),
    ``item_scale`` and ``items_per_scene`` (see :func:`sar.data.make_fashion_scenes`),
    ``max_steps`` (stop after this many optimizer steps; ``None``: ``epochs`` full passes),
    ``methods`` (run on every architecture, :mod:`sar.methods` names or
    :data:`METHOD_VARIANTS` labels; the pull reduction is chosen through them: ``sar`` pulls
    per pixel as the paper, ``sar_class_pull`` per class) and ``one_arch_methods``, run on
    ``one_arch`` only. Those four fields say which runs the grid holds, not how one run
    trains, so :meth:`run_fields` leaves them out.
    """

    epochs: int = 6
    batch_size: int = 8
    lr: float = 0.02
    size: int = 64
    train_scenes: int = 1200
    val_scenes: int = 300
    imbalance_factor: float = 20.0  # head/tail item frequency
    scene_seed: int = 0  # fixes which classes are head and tail, for every training seed
    archs: tuple[str, ...] = ("Unet", "FPN", "DeepLabV3Plus")
    encoder: str = "resnet18"
    encoder_weights: str | None = None
    item_scale: tuple[float, float] = (0.6, 1.2)
    items_per_scene: tuple[int, int] = (2, 5)
    max_steps: int | None = None
    methods: tuple[str, ...] = SEGMENTATION_METHODS
    one_arch_methods: tuple[str, ...] = ()
    one_arch: str = "DeepLabV3Plus"

    def __post_init__(self) -> None:
        if self.one_arch_methods and self.one_arch not in self.archs:
            raise ValueError(f"one_arch {self.one_arch!r} is not among archs {self.archs}")
        if not 1.0 <= self.imbalance_factor:
            raise ValueError(f"imbalance_factor must be >= 1, got {self.imbalance_factor}")

    def run_fields(self) -> dict[str, Any]:
        """The fields one run depends on (scenes, encoder, schedule): every field but the
        grid's membership (``archs``, ``methods``, ``one_arch_methods``, ``one_arch``), so a
        row added to the grid leaves the runs already made, and their caches, as they were."""
        membership = {"archs", "methods", "one_arch_methods", "one_arch"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in membership}

    @property
    def steps(self) -> int:
        """Optimizer steps per run: ``epochs`` passes of ``ceil(train_scenes / batch_size)``
        batches, capped at ``max_steps``."""
        total = self.epochs * -(-self.train_scenes // self.batch_size)
        return total if self.max_steps is None else min(total, self.max_steps)


SMOKE_CLASSIFICATION = ClassificationSetup(
    epochs=1, width=8, feat_dim=16, max_count=60, test_limit=200, val_per_class=20,
    imbalance_factors=(1, 10))


SMOKE_SEGMENTATION = SegmentationSetup(
    epochs=1, batch_size=8, size=32, train_scenes=16, val_scenes=8, archs=("Unet",))


# The benchmark that can tell methods apart on rare classes (issue 16): the encoder pretrained
# here on balanced Fashion-MNIST (the analogue of ImageNet weights, `python -m sar.pretrain`,
# 3000 steps), larger and fewer-overlapping items (side 25-42 px on 64x64 scenes, 2-4 per
# scene), 1600 scenes, 2400 steps (12 epochs of 200 batches of 8) at lr 0.04. The item
# imbalance stays 20 and the head-to-tail order is scene_seed 0's. Its knobs were chosen with
# plain CE on seed 0 (one-off probe runs, scored on the validation scenes), never with SAR:
# the paper's lr 0.01 and 1200 steps left CE's rare Pullover at 1.5-5% IoU; lr 0.04 with 2400
# steps lifted it to 16.7% / 17.8% (DeepLabV3+ / Unet; the grid's seed-0 CE rows). Shirt,
# the class Fashion-MNIST classifiers confuse most with T-shirt, Pullover and Coat, stayed at
# 0-1% in every probe: the one class this benchmark cannot score.
PRETRAINED_SEGMENTATION = SegmentationSetup(
    epochs=12, batch_size=8, lr=0.04, train_scenes=1600, val_scenes=400,
    encoder_weights=PRETRAINED_ENCODER, item_scale=(0.9, 1.5), items_per_scene=(2, 4),
    methods=PRETRAINED_SEGMENTATION_METHODS,
    one_arch_methods=(*LOGIT_ADJUSTED_SEGMENTATION_METHODS, *TAU_SEGMENTATION_METHODS),
    one_arch="DeepLabV3Plus")


# the smoke grid runs every method on one architecture; a random encoder unless the command
# line names weights (--encoder-weights), so it runs where no encoder was pretrained
SMOKE_PRETRAINED_SEGMENTATION = replace(
    PRETRAINED_SEGMENTATION, epochs=1, size=32, train_scenes=16, val_scenes=8,
    archs=("Unet",), one_arch="Unet", encoder_weights=None)


# experiment name -> (full setup, smoke setup); each writes its own CSV
SEGMENTATION_SETUPS: dict[str, tuple[SegmentationSetup, SegmentationSetup]] = {
    "segmentation": (SegmentationSetup(), SMOKE_SEGMENTATION),
    "segmentation_pretrained": (PRETRAINED_SEGMENTATION, SMOKE_PRETRAINED_SEGMENTATION),
}


def segmentation_setup(experiment: str = "segmentation", smoke: bool | None = None
                       ) -> SegmentationSetup:
    """The setup of a segmentation experiment (see :data:`SEGMENTATION_SETUPS`): the full one,
    or its smoke version when ``smoke`` is true (``None``: :func:`sar.config.smoke_mode`,
    i.e. ``SAR_SMOKE`` or ``CI`` set).

    Raises:
        ValueError: ``experiment`` is not a segmentation experiment.
    """
    if experiment not in SEGMENTATION_SETUPS:
        raise ValueError(f"{experiment!r} is not a segmentation experiment; choose one of"
                         f" {', '.join(SEGMENTATION_SETUPS)}")
    return SEGMENTATION_SETUPS[experiment][int(smoke_mode() if smoke is None else smoke)]


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
                name, options = METHOD_VARIANTS.get(method, (method, {}))
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


def segmentation_grid(setup: SegmentationSetup, seeds: list[int],
                      experiment: str = "segmentation") -> Iterator[Run]:
    """Every architecture x ``setup.methods`` (then ``setup.one_arch_methods`` on
    ``setup.one_arch``), seed by seed; the setting of a row is its architecture, its method
    the label (a :mod:`sar.methods` name or a :data:`METHOD_VARIANTS` label)."""
    for seed in seeds:
        for arch in setup.archs:
            extra = setup.one_arch_methods if arch == setup.one_arch else ()
            for method in (*setup.methods, *extra):
                name, options = METHOD_VARIANTS.get(method, (method, {}))
                yield Run(experiment, method, arch, seed,
                          {"arch": arch, "method": name, "method_options": options})


def setups(smoke: bool) -> tuple[ClassificationSetup, SegmentationSetup]:
    if smoke:
        return SMOKE_CLASSIFICATION, SMOKE_SEGMENTATION
    return ClassificationSetup(), SegmentationSetup()


def grid_runs(experiment: str, seeds: list[int], smoke: bool) -> list[Run]:
    """Every cell of ``experiment``'s grid, in the order they run."""
    cls_setup, _ = setups(smoke)
    if experiment == "overhead":
        return [Run("overhead", "sar_vs_plain", key, 0) for key in OVERHEAD_CASES]
    if experiment in SEGMENTATION_SETUPS:
        return list(segmentation_grid(segmentation_setup(experiment, smoke), seeds, experiment))
    grid = {"longtail": longtail_grid, "ablation": ablation_grid,
            "tuning": tuning_grid}[experiment]
    return list(grid(cls_setup, seeds))


# ---------------------------------------------------------------------------------- CLI
EXPERIMENTS = ("longtail", "ablation", "tuning", "segmentation", "segmentation_pretrained",
               "overhead")
