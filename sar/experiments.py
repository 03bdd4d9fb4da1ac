"""The reproduction suite: named experiments that append one CSV row per finished run.

    python -m sar.experiments longtail              # the full grid, resumable
    python -m sar.experiments ablation --seeds 0 1 2
    python -m sar.experiments segmentation --smoke  # a tiny grid (what the tests run)
    python -m sar.experiments overhead
    python -m sar.experiments render longtail       # figures + a markdown table from the CSV

Each run is identified by (experiment, method, setting, seed); a row already in the CSV is
skipped, so a long grid can be run over several sittings. Rows carry the hardware, the wall
time and the git commit, so every number in the README and notebook 04 traces back here.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import data as sar_data
from .baselines import (
    CenterLoss,
    ETFClassifier,
    LogitAdjustedCrossEntropy,
    NoRegularizer,
    PrototypeRegularizer,
)
from .benchmark import CASES as OVERHEAD_CASES
from .benchmark import measure as measure_overhead
from .config import default_device, seed_everything
from .models import RegularizedModel, SARClassifier, SARSegmentationModel, SmallCNN, build_smp_model
from .regularizer import SemanticAnchorRegularizer
from .train import evaluate, fit, gate_opened_step

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"
# run order within a seed: the comparisons that matter most first
CLASSIFICATION_METHODS = ("ce", "sar", "logit_adjusted", "prototype", "center", "etf")
SEGMENTATION_METHODS = ("ce", "sar", "prototype")
KEY = ["experiment", "method", "setting", "seed"]

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
    epochs=1, width=8, feat_dim=16, max_count=60, test_limit=200, imbalance_factors=(1, 10))
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
            for method in CLASSIFICATION_METHODS:
                yield Run("longtail", method, f"if={factor:g}", seed, {"imbalance_factor": factor})


def ablation_grid(setup: ClassificationSetup, seeds: list[int]) -> Iterator[Run]:
    factor = max(setup.imbalance_factors)
    for seed in seeds:
        for name, options in ABLATIONS.items():
            sar_options = {k: v for k, v in options.items() if k != "loss"}
            yield Run("ablation", "sar", name, seed,
                      {"imbalance_factor": factor, "sar_options": sar_options,
                       "loss": options.get("loss", "ce")})


def segmentation_grid(setup: SegmentationSetup, seeds: list[int]) -> Iterator[Run]:
    for seed in seeds:
        for arch in setup.archs:
            for method in SEGMENTATION_METHODS:
                yield Run("segmentation", method, arch, seed, {"arch": arch})


# ------------------------------------------------------------------------- classification
@dataclass
class LongTailData:
    train: sar_data.ClassificationDataset
    test: sar_data.ClassificationDataset
    counts: list[int]
    groups: dict[str, list[int]]
    source: str


def load_longtail_data(setup: ClassificationSetup, factor: float) -> LongTailData:
    """Fashion-MNIST-LT (digits if Fashion-MNIST is missing) with a balanced test split."""
    images, labels, _, source = sar_data.load_classification_data("fashion-mnist", "train")
    test_images, test_labels, _, _ = sar_data.load_classification_data("fashion-mnist", "test")
    if setup.test_limit is not None:
        test_images, test_labels = test_images[: setup.test_limit], test_labels[: setup.test_limit]
    tail = sar_data.make_long_tailed(labels, factor, seed=setup.data_seed,
                                     max_count=setup.max_count)
    train = sar_data.ClassificationDataset(*tail.apply(images, labels), augment=True)
    test = sar_data.ClassificationDataset(test_images, test_labels, train.mean, train.std)
    groups = sar_data.shot_groups(tail.counts, class_order=tail.class_order)
    return LongTailData(train, test, tail.counts, groups, source)


def build_classification_method(
    method: str, num_classes: int, in_channels: int, setup: ClassificationSetup,
    counts: list[int], sar_options: dict[str, Any] | None = None, loss: str = "ce",
) -> tuple[RegularizedModel, nn.Module | None]:
    """A SmallCNN trained by ``method``, and the criterion (None = plain cross-entropy).

    ``loss="logit_adjusted"`` swaps the cross-entropy for the logit-adjusted one under any
    method; the method ``"logit_adjusted"`` is plain training with that loss.
    """
    if loss not in ("ce", "logit_adjusted"):
        raise ValueError(f"unknown loss {loss!r}; choose 'ce' or 'logit_adjusted'")
    net = SmallCNN(num_classes, in_channels, width=setup.width, feat_dim=setup.feat_dim)
    c, d = num_classes, setup.feat_dim
    regularizers: dict[str, Callable[[], nn.Module]] = {
        "ce": NoRegularizer, "logit_adjusted": NoRegularizer,
        "center": lambda: CenterLoss(c, d), "prototype": lambda: PrototypeRegularizer(c, d),
        "sar": lambda: SemanticAnchorRegularizer(c, d, **(sar_options or {})),
    }
    if method not in (*regularizers, "etf"):
        raise ValueError(f"unknown method {method!r}; choose from {CLASSIFICATION_METHODS}")
    rebalance = loss == "logit_adjusted" or method == "logit_adjusted"
    criterion = LogitAdjustedCrossEntropy(counts) if rebalance else None
    if method == "etf":
        net.fc = ETFClassifier(d, c)
        return RegularizedModel(net, net.fc, net.fc, NoRegularizer()), criterion
    return SARClassifier(net, regularizers[method]()), criterion


def run_classification(run: Run, setup: ClassificationSetup, device: torch.device,
                       cache: dict[float, LongTailData]) -> dict[str, Any]:
    factor = run.options["imbalance_factor"]
    if factor not in cache:
        cache[factor] = load_longtail_data(setup, factor)
    lt = cache[factor]
    num_classes, in_channels = len(lt.counts), lt.train.images.shape[1]
    generator = seed_everything(run.seed)
    model, criterion = build_classification_method(
        run.method, num_classes, in_channels, setup, lt.counts, run.options.get("sar_options"),
        run.options.get("loss", "ce"))
    loader = DataLoader(lt.train, batch_size=setup.batch_size, shuffle=True, generator=generator)
    history = fit(model, loader, epochs=setup.epochs, lr=setup.lr,
                  weight_decay=setup.weight_decay, criterion=criterion, device=device,
                  progress=False, log_every=50)
    anchors = getattr(model.regularizer, "semantic_anchors", None)
    scores = evaluate(model, DataLoader(lt.test, batch_size=512), num_classes=num_classes,
                      device=device, groups=lt.groups, features=True, anchors=anchors)
    row = {key: scores[key] for key in ("accuracy", "many_accuracy", "medium_accuracy",
                                        "few_accuracy")}
    row |= {f"acc_class_{k}": v for k, v in enumerate(scores["per_class_accuracy"])}
    row |= {k: scores[k] for k in ("compactness", "separation", "ratio", "nc1") if k in scores}
    row["anchor_cosine"] = scores.get("anchor_cosine", float("nan"))
    row["gate_opened_step"] = gate_opened_step(history)
    row["imbalance_factor"], row["data"] = factor, lt.source
    row["train_size"] = len(lt.train)
    return row


# --------------------------------------------------------------------------- segmentation
def run_segmentation(run: Run, setup: SegmentationSetup, device: torch.device,
                     cache: dict[str, Any]) -> dict[str, Any]:
    if "scenes" not in cache:
        common = {"size": setup.size, "imbalance_factor": setup.imbalance_factor,
                  "seed": setup.scene_seed}
        cache["scenes"] = (
            sar_data.make_fashion_scenes(setup.train_scenes, split="train", **common),
            sar_data.make_fashion_scenes(setup.val_scenes, split="val", **common),
        )
    train, val = cache["scenes"]
    num_classes = len(sar_data.SCENE_CLASSES)
    generator = seed_everything(run.seed)
    net = build_smp_model(run.options["arch"], "resnet18", num_classes, train.images.shape[1])
    feat_dim = net.segmentation_head[0].in_channels
    regularizer = {"ce": NoRegularizer, "sar": lambda: None,
                   "prototype": lambda: PrototypeRegularizer(num_classes, feat_dim)}[run.method]()
    model = SARSegmentationModel(net, regularizer)
    loader = DataLoader(train, batch_size=setup.batch_size, shuffle=True, generator=generator)
    history = fit(model, loader, epochs=setup.epochs, lr=setup.lr, schedule="poly",
                  device=device, progress=False, log_every=20)
    scores = evaluate(model, DataLoader(val, batch_size=32), num_classes=num_classes,
                      task="segmentation", device=device)
    row = {"mIoU": scores["mIoU"], "pixel_accuracy": scores["pixel_accuracy"]}
    row |= {f"iou_class_{k}": v for k, v in enumerate(scores["per_class_iou"])}
    row["gate_opened_step"] = gate_opened_step(history)
    return row


def scene_shot_groups(setup: SegmentationSetup) -> dict[str, list[int]]:
    """Fashion-MNIST class ids the scenes of ``setup`` make frequent ("many", 3 classes),
    medium (4) or rare ("few", 3). Every training seed shares one scene set, hence one grouping."""
    order, probs = sar_data.scene_class_probs(setup.imbalance_factor, seed=setup.scene_seed)
    return sar_data.shot_groups(probs.tolist(), class_order=order)


def add_shot_group_iou(df: pd.DataFrame, groups: dict[str, list[int]]) -> pd.DataFrame:
    """``df`` with a column ``{group}_iou`` per group of Fashion-MNIST class ids (e.g.
    :func:`scene_shot_groups`): the mean IoU over the group's classes (background is in none)."""
    # mask id k + 1 is Fashion-MNIST class k (0 is background)
    return df.assign(**{f"{name}_iou": df[[f"iou_class_{c + 1}" for c in ids]].mean(axis=1)
                        for name, ids in groups.items()})


# ------------------------------------------------------------------------------ bookkeeping
def hardware() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU {platform.machine()} x{torch.get_num_threads()} threads"


def git_commit() -> str:
    """The short commit of the code, with ``-dirty`` if ``sar/`` has uncommitted changes."""
    package = Path(__file__).parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              cwd=package).stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--", ".")
        return git("rev-parse", "--short", "HEAD") + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def keys_by_row(df: pd.DataFrame) -> list[tuple]:
    """The ``(experiment, method, setting, seed)`` key of each row of a results frame, in order."""
    return [(e, m, s, int(seed)) for e, m, s, seed in df[KEY].itertuples(index=False)]


def finished_keys(csv: Path) -> set[tuple]:
    return set(keys_by_row(pd.read_csv(csv, usecols=KEY))) if csv.exists() else set()


def merge_rows(csv: Path, sources: list[Path]) -> int:
    """Append to ``csv`` the rows of ``sources`` whose key it lacks; returns how many were added.

    For a grid split across processes or machines, each writing its own ``--out`` folder:
    a key already present is kept as it is, never overwritten.
    """
    known = finished_keys(csv)
    fresh = []
    for source in sources:
        rows = pd.read_csv(source)
        experiments = set(rows["experiment"])
        if experiments != {csv.stem}:
            raise ValueError(f"{source} holds {sorted(experiments)} rows, not {csv.stem!r} ones")
        keys = keys_by_row(rows)
        fresh.append(rows[[key not in known for key in keys]])
        known |= set(keys)
    added = pd.concat(fresh, ignore_index=True)
    append_rows(csv, added)
    return len(added)


def append_row(csv: Path, row: dict[str, Any]) -> None:
    append_rows(csv, pd.DataFrame([row]))


def append_rows(csv: Path, rows: pd.DataFrame) -> None:
    """Append ``rows``, widening the CSV's columns if they bring new ones. Written to a
    temporary file first, so a process killed mid-write never leaves half a CSV."""
    csv.parent.mkdir(parents=True, exist_ok=True)
    if csv.exists():
        rows = pd.concat([pd.read_csv(csv), rows], ignore_index=True)
    tmp = csv.with_suffix(".tmp")
    rows.to_csv(tmp, index=False)
    tmp.replace(csv)


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
    grid = longtail_grid if experiment == "longtail" else ablation_grid
    return list(grid(cls_setup, seeds))


def grid_status(seeds: list[int], out_dir: Path) -> str:
    """Markdown: how much of each grid ``out_dir`` holds, where it ran and how long a run took."""
    lines = ["| experiment | runs done | hardware | minutes per run (median, range) |",
             "|---|---|---|---|"]
    for experiment in EXPERIMENTS:
        runs = grid_runs(experiment, seeds, smoke=False)
        df = load_results(experiment, out_dir)
        done = 0 if df is None else len(set(keys_by_row(df)) & {run.key for run in runs})
        if not done:
            lines.append(f"| {experiment} | 0 of {len(runs)} | – | – |")
            continue
        minutes = df["wall_time_s"] / 60
        machines = ", ".join(sorted(df["hardware"].unique()))
        lines.append(f"| {experiment} | {done} of {len(runs)} | {machines} | {minutes.median():.1f}"
                     f" ({minutes.min():.1f}-{minutes.max():.1f}) |")
    return "\n".join(lines)


def run_grid(experiment: str, seeds: list[int], smoke: bool, out_dir: Path,
             device: torch.device, settings: list[str] | None = None) -> Path:
    """Run every unfinished cell of ``experiment``'s grid, appending rows to its CSV.

    ``settings`` restricts the grid to those settings (a factor such as ``if=1``, an ablation
    name, a segmentation architecture), e.g. to finish one architecture before the next.
    """
    csv = out_dir / f"{experiment}.csv"
    runs = grid_runs(experiment, seeds, smoke)
    if settings is not None:
        unknown = set(settings) - {run.setting for run in runs}
        if unknown:
            raise ValueError(f"{experiment} has no setting {sorted(unknown)}; its settings are "
                             f"{sorted({run.setting for run in runs})}")
        runs = [run for run in runs if run.setting in settings]
    cls_setup, seg_setup = setups(smoke)
    done = finished_keys(csv)
    todo = [run for run in runs if run.key not in done]
    print(f"{experiment}: {len(runs) - len(todo)} of {len(runs)} runs already in {csv}")
    cache: dict[Any, Any] = {}
    commit = git_commit()  # the code this process loaded, even if the checkout moves on
    for run in tqdm(todo, desc=experiment, unit="run"):
        start = time.perf_counter()
        if experiment == "overhead":
            steps = 2 if smoke else 10
            row = vars(measure_overhead(run.setting, device, steps=steps, rounds=2 if smoke else 7))
        elif experiment == "segmentation":
            row = run_segmentation(run, seg_setup, device, cache)
        else:
            row = run_classification(run, cls_setup, device, cache)
        meta = dict(zip(KEY, run.key, strict=True))
        append_row(csv, meta | row | {
            "smoke": smoke, "hardware": hardware(), "device": str(device),
            "wall_time_s": round(time.perf_counter() - start, 1), "git_commit": commit,
        })
    return csv


# ---------------------------------------------------------------------------- summaries
def summarise(df: pd.DataFrame, metrics: list[str], by: list[str]) -> pd.DataFrame:
    """Mean and std over seeds of ``metrics`` for each group ``by``; adds the seed count."""
    grouped = df.groupby(by, sort=False)[metrics]
    table = pd.concat([grouped.mean(), grouped.std(ddof=1).add_suffix("_std")], axis=1)
    table["seeds"] = df.groupby(by, sort=False)["seed"].nunique()
    return table.reset_index()


def markdown_table(df: pd.DataFrame, rows: str, columns: str, metric: str,
                   scale: float = 100.0, higher_is_better: bool = True) -> str:
    """A ``rows x columns`` table of ``mean ± std`` of ``metric``, the best of each column bold.

    Rows and columns keep their order of first appearance in ``df``. A cell averaged over fewer
    seeds than the fullest cell says how many (``n=2``); a column with a single filled cell, or
    one where all cells tie, has no winner to bold; a cell not run yet shows "–".
    """
    stats = summarise(df, [metric], [rows, columns])
    pivot = {key: stats.pivot(index=rows, columns=columns, values=value)
             for key, value in (("mean", metric), ("std", f"{metric}_std"), ("n", "seeds"))}
    order, column_order = list(dict.fromkeys(df[rows])), list(dict.fromkeys(df[columns]))
    mean, std, n = (pivot[key].loc[order, column_order] for key in ("mean", "std", "n"))
    best = mean.max() if higher_is_better else mean.min()
    contested = (mean.notna().sum() > 1) & (mean.max() > mean.min())  # someone must lead
    full = n.max().max()
    lines = [f"| {rows} | " + " | ".join(str(c) for c in mean.columns) + " |",
             "|---" * (len(mean.columns) + 1) + "|"]
    for name in mean.index:
        cells = []
        for col in mean.columns:
            m, s = mean.loc[name, col] * scale, std.loc[name, col] * scale
            if pd.isna(m):  # a cell of the grid not run yet
                cells.append("–")
                continue
            text = f"{m:.2f} ± {s:.2f}" if pd.notna(s) else f"{m:.2f}"
            if contested[col] and mean.loc[name, col] == best[col]:
                text = f"**{text}**"
            if n.loc[name, col] < full:
                text += f" (n={int(n.loc[name, col])})"
            cells.append(text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_results(experiment: str, out_dir: Path = RESULTS_DIR) -> pd.DataFrame | None:
    """The rows of ``experiment``'s CSV, or None when it has not been run."""
    csv = Path(out_dir) / f"{experiment}.csv"
    return pd.read_csv(csv) if csv.exists() else None


def results_or_reduced_grid(experiment: str, device: torch.device | None = None,
                            out_dir: Path = RESULTS_DIR) -> tuple[pd.DataFrame, str]:
    """The committed results of ``experiment``, else a freshly run smoke grid; and which it was."""
    df = load_results(experiment, out_dir)
    if df is not None:
        seeds = sorted(int(s) for s in df["seed"].unique())
        return df, (f"{experiment}: {len(df)} runs from {out_dir.name}/{experiment}.csv"
                    f" (seeds {seeds}; {', '.join(sorted(df['hardware'].unique()))})")
    scratch = Path(tempfile.mkdtemp(prefix="sar-results-"))
    run_grid(experiment, [0], smoke=True, out_dir=scratch, device=device or default_device())
    return load_results(experiment, scratch), (
        f"{experiment}: no {out_dir.name}/{experiment}.csv, so a reduced smoke grid was run"
        " (tiny network, one epoch, one seed): a demonstration, not a result")


def paired_differences(df: pd.DataFrame, metric: str, reference: str,
                       by: str = "method") -> pd.DataFrame:
    """Per-seed ``metric`` of every level of ``by`` minus that of ``reference`` on the same seed.

    Returns columns ``[by, "seed", metric]``, one row per (level, seed) both ran. Pairing by
    seed cancels the data order and initialisation noise the two runs share.
    """
    ref = df[df[by] == reference].set_index("seed")[metric]
    parts = [pd.DataFrame({by: level, "seed": diff.index, metric: diff.to_numpy()})
             for level, group in df[df[by] != reference].groupby(by, sort=False)
             if len(diff := (group.set_index("seed")[metric] - ref).dropna())]
    return (pd.concat(parts, ignore_index=True) if parts
            else pd.DataFrame({by: [], "seed": [], metric: []}))


def paired_gap(df: pd.DataFrame, metric: str, a: str, b: str,
               by: str = "method") -> tuple[float, float, int]:
    """Mean and std (ddof=1; NaN for one seed) over seeds of ``metric`` where ``by == a`` minus
    where ``by == b``, and the number of seeds both ran."""
    paired = paired_differences(df[df[by].isin([a, b])], metric, b, by)[metric]
    return float(paired.mean()), float(paired.std(ddof=1)), len(paired)


def paired_gap_table(df: pd.DataFrame, by: str, reference: str, metrics: list[str],
                     columns: str | None = None, scale: float = 100.0) -> str:
    """Markdown: for each level of ``by``, its paired gap to ``reference`` on each metric,
    computed separately within each level of ``columns`` when given (e.g. per setting)."""
    groups = list(df.groupby(columns, sort=False)) if columns else [(None, df)]
    header = [f"Δ {m}" if level is None else (str(level) if len(metrics) == 1
                                              else f"{level} Δ {m}")
              for level, _ in groups for m in metrics]
    lines = [f"| {by} | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for row in dict.fromkeys(df[by]):
        if row == reference:
            continue
        cells = []
        for _, part in groups:
            for metric in metrics:
                mean, std, n = paired_gap(part, metric, row, reference, by)
                spread = f" ± {std * scale:.2f}" if n > 1 else ""
                cells.append(f"{mean * scale:+.2f}{spread} (n={n})" if n else "–")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_paired_differences(df: pd.DataFrame, metric: str, reference: str, by: str,
                            ax: Any = None, title: str | None = None) -> Any:
    """Horizontal bars of each level's paired difference to ``reference`` (percentage points),
    mean ± std over seeds, with the zero line: which changes matter beyond seed noise."""
    from . import plots

    diffs = paired_differences(df, metric, reference, by)
    ax = plots.plot_bars(diffs.assign(**{metric: diffs[metric] * 100}), by, metric, ax=ax,
                         horizontal=True, ylabel=f"percentage points vs {reference}",
                         title=title or f"Δ {metric} vs {reference} (paired by seed)")
    ax.axvline(0, color="0.3", linewidth=1)
    return ax


def plot_ablation(df: pd.DataFrame) -> Any:
    """Figure: each ablation's paired difference to the default SAR, overall and few-shot."""
    import matplotlib.pyplot as plt  # matplotlib only when plotting

    factor = df["imbalance_factor"].iloc[0]
    fig, axes = plt.subplots(1, 2, figsize=(14, 0.45 * df["setting"].nunique() + 1.5),
                             sharey=True)
    for ax, metric in zip(axes, ("accuracy", "few_accuracy"), strict=True):
        plot_paired_differences(df, metric, "default", "setting", ax=ax,
                                title=f"Δ {metric} vs default SAR (same seed), IF {factor:g}")
    fig.tight_layout()
    return fig


def plot_segmentation_shot_groups(df: pd.DataFrame) -> Any:
    """Figure: one panel per architecture, mIoU and the IoU of each shot group, one bar per
    method (mean ± std over seeds). ``df`` needs the columns of :func:`add_shot_group_iou`."""
    import matplotlib.pyplot as plt  # matplotlib only when plotting

    from . import plots

    groups = ["mIoU", *(c for c in df.columns if c.endswith("_iou"))]
    long = df.melt(id_vars=["method", "setting", "seed"], value_vars=groups, var_name="group",
                   value_name="IoU")
    archs = list(dict.fromkeys(df["setting"]))
    fig, axes = plt.subplots(1, len(archs), figsize=(5 * len(archs), 4.2), sharey=True,
                             squeeze=False)
    for ax, arch in zip(axes[0], archs, strict=True):
        plots.plot_bars(long[long["setting"] == arch], "group", "IoU", hue="method", ax=ax,
                        ylabel="validation IoU (fraction)", title=f"{arch}: IoU by shot group")
        ax.get_legend().remove()  # one legend for all panels, beside the last
    fig.legend(*axes[0][-1].get_legend_handles_labels(), loc="upper left",
               bbox_to_anchor=(1.0, 0.95), frameon=False,
               title=f"method (mean ± std over {df['seed'].nunique()} seeds)")
    fig.tight_layout()
    return fig


def render(experiment: str, out_dir: Path) -> Path:
    """Figures (PNG) and a markdown summary of ``experiment``'s CSV, written beside it."""
    from . import plots  # matplotlib only when rendering

    df = load_results(experiment, out_dir)
    if df is None:
        raise FileNotFoundError(f"no {experiment}.csv in {out_dir}: run the experiment first")
    figures = out_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    plots.use_style()
    tables = [f"<!-- generated by `python -m sar.experiments render {experiment}` -->"]
    seeds = sorted(int(s) for s in df["seed"].unique())
    machines = ", ".join(sorted(df["hardware"].unique()))
    tables.append(f"Hardware: {machines}." if experiment == "overhead"
                  else f"Seeds {seeds}; hardware: {machines}.")
    if experiment == "longtail":
        df = df.sort_values("imbalance_factor", kind="stable")
        for metric in ("accuracy", "many_accuracy", "medium_accuracy", "few_accuracy"):
            tables += [f"\n**{metric}** (%, mean ± std over seeds)\n",
                       markdown_table(df, "method", "setting", metric)]
            ax = plots.plot_sweep(df, "imbalance_factor", metric, "method", logx=True,
                                  ylabel=f"{metric} (fraction)", xlabel="imbalance factor")
            _save(ax.figure, figures / f"longtail_{metric}.png")
        for metric in ("accuracy", "few_accuracy"):
            tables += [f"\n**Paired gain over CE, {metric}** (percentage points, mean ± std over"
                       " seeds of the per-seed difference)\n",
                       paired_gap_table(df, "method", "ce", [metric], columns="setting")]
        for metric in ("nc1", "ratio"):
            tables += [f"\n**{metric}** (lower is more collapsed; mean ± std)\n",
                       markdown_table(df, "method", "setting", metric, 1.0, False)]
    elif experiment == "ablation":
        factor = df["imbalance_factor"].iloc[0]
        for metric in ("accuracy", "few_accuracy"):
            tables += [f"\n**{metric}** (%, imbalance factor {factor:g}, mean ± std over seeds)\n",
                       markdown_table(df, "setting", "method", metric)]
        tables += ["\n**Paired difference to the default SAR** (percentage points, mean ± std "
                   "over seeds of the per-seed difference)\n",
                   paired_gap_table(df, "setting", "default", ["accuracy", "few_accuracy"])]
        _save(plot_ablation(df), figures / "ablation.png")
    elif experiment == "segmentation":
        for metric in ("mIoU", "pixel_accuracy"):
            tables += [f"\n**{metric}** (%, mean ± std over seeds)\n",
                       markdown_table(df, "method", "setting", metric)]
        tables += ["\n**Paired gain over CE, mIoU** (percentage points, mean ± std over seeds of"
                   " the per-seed difference)\n",
                   paired_gap_table(df, "method", "ce", ["mIoU"], columns="setting")]
        groups = scene_shot_groups(SegmentationSetup())  # the committed rows' scenes
        df = add_shot_group_iou(df, groups)
        for group, ids in groups.items():
            names = ", ".join(sar_data.FASHION_MNIST_CLASSES[c] for c in ids)
            tables += [f"\n**IoU of the {group}-shot classes** ({names}; %, mean over these"
                       " classes, then mean ± std over seeds)\n",
                       markdown_table(df, "method", "setting", f"{group}_iou")]
        ax = plots.plot_bars(df, "setting", "mIoU", hue="method", ylabel="validation mIoU",
                             title="Long-tailed scenes: mIoU by architecture")
        _save(ax.figure, figures / "segmentation_miou.png")
        _save(plot_segmentation_shot_groups(df), figures / "segmentation_shot_groups.png")
    else:
        columns = {"case": "case", "device": "device", "plain_ms": "plain ms/step",
                   "sar_ms": "SAR ms/step", "train_ratio": "train SAR/plain",
                   "infer_ratio": "inference SAR/plain", "memory_ratio": "peak memory SAR/plain"}
        table = df[list(columns)].rename(columns=columns).round(3).astype(object)
        table = table.fillna("not measured (GPU only)")
        tables += ["\nTrain and inference steps timed alternately in one process, median over "
                   "rounds (`sar/benchmark.py`).\n", _markdown(table)]
    summary = out_dir / f"{experiment}.md"
    summary.write_text("\n".join(tables) + "\n")
    return summary


def update_readme(experiment: str, text: str, readme: Path) -> None:
    """Replace the block between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``."""
    start, end = f"<!-- results:{experiment} -->", f"<!-- /results:{experiment} -->"
    content = readme.read_text()
    if start not in content or end not in content:
        raise ValueError(f"{readme} has no {start} ... {end} block to fill")
    head, rest = content.split(start, 1)
    readme.write_text(f"{head}{start}\n{text.strip()}\n{end}{rest.split(end, 1)[1]}")


def _markdown(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(df.columns) + " |", "|---" * len(df.columns) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _save(figure: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


# ---------------------------------------------------------------------------------- CLI
EXPERIMENTS = ("longtail", "ablation", "segmentation", "overhead")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sar.experiments",
                                     description="Run or render the reproduction grids.")
    parser.add_argument("action", choices=[*EXPERIMENTS, "render", "merge", "status"],
                        help="run a grid, render its CSV, merge rows run elsewhere into it, or"
                             " show how much of each grid is done")
    parser.add_argument("experiment", nargs="?", choices=EXPERIMENTS,
                        help="with render or merge: which CSV")
    parser.add_argument("sources", nargs="*", type=Path,
                        help="with merge: CSVs of the same experiment written with another --out")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--smoke", action="store_true", help="a tiny grid, for tests")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default results/, or results/smoke with --smoke)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--settings", nargs="+", default=None,
                        help="run only these settings of the grid, e.g. --settings Unet")
    parser.add_argument("--readme", type=Path, default=None,
                        help="with render or status: also write the output into this"
                             " README's block")
    args = parser.parse_args(argv)
    out = args.out or (RESULTS_DIR / "smoke" if args.smoke else RESULTS_DIR)
    if args.action == "status":
        table = grid_status(args.seeds, out)
        if args.readme is not None:
            update_readme("status", table, args.readme)
        print(table)
        return
    if args.action in ("render", "merge") and args.experiment is None:
        parser.error(f"{args.action} needs the experiment name, e.g. {args.action} longtail")
    if (args.action == "merge") != bool(args.sources):
        parser.error("only merge takes CSV paths, and it needs at least one,"
                     " e.g. merge segmentation elsewhere/segmentation.csv")
    if args.action == "merge":
        csv = out / f"{args.experiment}.csv"
        print(f"added {merge_rows(csv, args.sources)} rows to {csv}")
        return
    if args.action == "render":
        summary = render(args.experiment, out).read_text()
        if args.readme is not None:
            update_readme(args.experiment, summary, args.readme)
        print(summary)
        return
    device = torch.device(args.device) if args.device else default_device()
    csv = run_grid(args.action, args.seeds, args.smoke, out, device, args.settings)
    print(f"wrote {csv}")


if __name__ == "__main__":
    main()
