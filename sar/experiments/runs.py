"""One run of a grid: train a method on its data, evaluate it, return one result row."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.data import DataLoader

from .. import data as sar_data
from .. import methods
from ..cache import cached_in_processes
from ..config import seed_everything
from ..encoder_weights import sha256_of, verify_encoder_weights
from ..metrics import classifier_weights, logit_statistics
from ..models import SmallCNN, build_smp_model
from ..train import evaluate, fit, gate_opened_step
from .grids import ClassificationSetup, Run, SegmentationSetup
from .store import git_commit

LOG_EVERY = 20  # optimiser steps between a scene run's logged rows


# ------------------------------------------------------------------------- classification
@dataclass
class LongTailData:
    train: sar_data.ClassificationDataset
    test: sar_data.ClassificationDataset
    val: sar_data.ClassificationDataset  # balanced, from training images the tail left out
    counts: list[int]
    groups: dict[str, list[int]]
    source: str


def load_longtail_data(setup: ClassificationSetup, factor: float) -> LongTailData:
    """Fashion-MNIST-LT (downloaded into data/ when not on disk) with balanced test and validation
    splits; the validation images are training images the long tail left out."""
    images, labels, _, source = sar_data.load_classification_data("fashion-mnist", "train")
    test_images, test_labels, _, _ = sar_data.load_classification_data("fashion-mnist", "test")
    if setup.test_limit is not None:
        test_images, test_labels = test_images[: setup.test_limit], test_labels[: setup.test_limit]
    tail = sar_data.make_long_tailed(labels, factor, seed=setup.data_seed,
                                     max_count=setup.max_count, val_per_class=setup.val_per_class)
    train = sar_data.ClassificationDataset(*tail.apply(images, labels), augment=True)
    test = sar_data.ClassificationDataset(test_images, test_labels, train.mean, train.std)
    val = sar_data.ClassificationDataset(images[tail.val_indices], labels[tail.val_indices],
                                         train.mean, train.std)
    groups = sar_data.shot_groups(tail.counts, class_order=tail.class_order)
    return LongTailData(train, test, val, tail.counts, groups, source)


# Every committed grid row was trained with PyTorch's default init of SAR's projector, the
# library's default until it took the authors' init (SemanticAnchorRegularizer's
# projector_init); the grids keep it, so their rows rerun as committed.
GRID_PROJECTOR_INIT = "torch"


def build_method(name: str, net: torch.nn.Module, **options: Any
                 ) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """:func:`sar.methods.build` with the grids' projector init for the SAR methods."""
    if name in methods.SAR_METHODS:
        options.setdefault("projector_init", GRID_PROJECTOR_INIT)
    return methods.build(name, net, **options)


def method_name(run: Run) -> str:
    """The :mod:`sar.methods` name a run trains with: ``options["method"]`` (else the row's
    method); the ablation's ``loss`` option swaps the cross-entropy for the logit-adjusted one."""
    name = run.options.get("method", run.method)
    if run.options.get("loss", "ce") == "ce":
        return name
    if run.options["loss"] != "logit_adjusted":
        raise ValueError(f"unknown loss {run.options['loss']!r}; choose 'ce' or 'logit_adjusted'")
    return {"ce": "logit_adjusted", "sar": "sar_logit_adjusted"}[name]


def build_classification_model(run: Run, setup: ClassificationSetup, counts: list[int],
                               in_channels: int = 1
                               ) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """The untrained wrapped SmallCNN and criterion of a long-tail run (``counts``: training
    images per class), initialised from the global seed (the caller seeds it); what
    :func:`train_classification` trains, and the shell to load a trained state dict into."""
    net = SmallCNN(len(counts), in_channels, width=setup.width, feat_dim=setup.feat_dim)
    options = run.options.get("method_options", {})
    return build_method(method_name(run), net, counts=counts, **options)


def train_classification(run: Run, setup: ClassificationSetup, device: torch.device,
                         cache: dict[float, LongTailData]
                         ) -> tuple[torch.nn.Module, list[dict[str, Any]], LongTailData]:
    """Train the model of one long-tail grid cell exactly as the grid does.

    ``cache`` keeps the data of each imbalance factor between calls (filled when missing).

    Returns:
        ``(model, history, data)``: the trained wrapped model, :func:`~sar.train.fit`'s
        history and the run's :class:`LongTailData`.
    """
    factor = run.options["imbalance_factor"]
    if factor not in cache:
        cache[factor] = load_longtail_data(setup, factor)
    lt = cache[factor]
    generator = seed_everything(run.seed)
    model, criterion = build_classification_model(run, setup, lt.counts,
                                                  lt.train.images.shape[1])
    loader = DataLoader(lt.train, batch_size=setup.batch_size, shuffle=True, generator=generator)
    history = fit(model, loader, epochs=setup.epochs, lr=setup.lr,
                  weight_decay=setup.weight_decay, criterion=criterion, device=device,
                  progress=False, log_every=50)
    return model, history, lt


def inspect_classification(run: Run, setup: ClassificationSetup,
                           device: torch.device | str = "cpu",
                           cache: dict[float, LongTailData] | None = None) -> dict[str, Any]:
    """Train one long-tail grid cell as the grid does (:func:`train_classification`) and keep
    what notebook 04 looks at: the weights, the test scores and the classifier's per-class state.

    Returns:
        ``state`` (the model's state dict, on the CPU), ``counts`` (training images per class),
        ``weight_norm``, ``bias``, ``mean_logit`` and ``predicted_share`` per class
        (:func:`sar.metrics.classifier_weights`, :func:`sar.metrics.logit_statistics` on the
        balanced test set), ``accuracy``, ``few_accuracy``, ``per_class_accuracy``,
        ``wall_time_s`` and ``git_commit``. Module-level, so it pickles into the worker
        processes of :func:`sar.cache.cached_in_processes`.
    """
    start = time.perf_counter()
    device = torch.device(device)
    model, _, lt = train_classification(run, setup, device, {} if cache is None else cache)
    test = DataLoader(lt.test, batch_size=512)
    scores = evaluate(model, test, num_classes=len(lt.counts), device=device, groups=lt.groups)
    inspected = (classifier_weights(model.classifier)
                 | logit_statistics(model, test, len(lt.counts), device))
    return {"state": model.cpu().state_dict(), "counts": lt.counts, **inspected,
            **{k: scores[k] for k in ("accuracy", "few_accuracy", "per_class_accuracy")},
            "wall_time_s": time.perf_counter() - start, "git_commit": git_commit()}


def run_classification(run: Run, setup: ClassificationSetup, device: torch.device,
                       cache: dict[float, LongTailData]) -> dict[str, Any]:
    """One long-tail grid cell: :func:`train_classification`, then its result row (test
    scores; validation scores for the tuning grid)."""
    model, history, lt = train_classification(run, setup, device, cache)
    factor, num_classes = run.options["imbalance_factor"], len(lt.counts)
    options = run.options.get("method_options", {})
    if run.experiment == "tuning":  # knobs are chosen on validation data, never on the test
        return _validation_row(model, lt, device) | {"imbalance_factor": factor}
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
    row["method_options"] = json.dumps(options, sort_keys=True)
    row["train_size"] = len(lt.train)
    return row


def _validation_row(model: torch.nn.Module, lt: LongTailData,
                    device: torch.device) -> dict[str, Any]:
    scores = evaluate(model, DataLoader(lt.val, batch_size=512), num_classes=len(lt.counts),
                      device=device, groups=lt.groups)
    return {f"val_{key}": scores[key] for key in ("accuracy", "many_accuracy",
                                                  "medium_accuracy", "few_accuracy")}


# --------------------------------------------------------------------------- segmentation
def load_scenes(setup: SegmentationSetup) -> tuple[sar_data.SceneDataset, sar_data.SceneDataset]:
    """The training scenes (items from Fashion-MNIST train) and validation scenes (items from
    its test split) of ``setup``."""
    common = {"size": setup.size, "imbalance_factor": setup.imbalance_factor,
              "seed": setup.scene_seed, "item_scale": setup.item_scale,
              "items_per_scene": setup.items_per_scene}
    return (sar_data.make_fashion_scenes(setup.train_scenes, split="train", **common),
            sar_data.make_fashion_scenes(setup.val_scenes, split="val", **common))


def encoder_weights_path(setup: SegmentationSetup) -> Path | None:
    """``setup.encoder_weights`` as a path (relative ones are relative to the repository), or
    ``None`` for a randomly initialised encoder."""
    if setup.encoder_weights is None:
        return None
    path = Path(setup.encoder_weights)
    return path if path.is_absolute() else sar_data.REPO_DATA_DIR.parent / path


def encoder_record(setup: SegmentationSetup) -> dict[str, str]:
    """The encoder columns of a row: name, weights file and its SHA-256 (checked now).

    Raises:
        FileNotFoundError: the weights file is missing (the message says how to make it).
        ValueError: the file fails its checksum or was made for another encoder.
    """
    path = encoder_weights_path(setup)
    if path is None:
        return {"encoder": setup.encoder, "encoder_weights": "random init", "encoder_sha256": ""}
    verify_encoder_weights(path, setup.encoder)
    return {"encoder": setup.encoder, "encoder_weights": path.name,
            "encoder_sha256": sha256_of(path)}


def scene_pixel_counts(scenes: sar_data.SceneDataset) -> list[int]:
    """Pixels of each scene class (background first) in ``scenes``, at least 1 each: the prior
    of the logit-adjusted methods (a class absent from tiny smoke scenes keeps a finite one)."""
    return scenes.class_pixel_counts.clamp(min=1).tolist()


# the fields that decide the scenes and the encoder a cache dict holds (not the schedule)
_SCENE_FIELDS = ("size", "imbalance_factor", "scene_seed", "item_scale", "items_per_scene",
                 "train_scenes", "val_scenes", "encoder", "encoder_weights")


def _scene_cache(cache: dict[str, Any] | None, setup: SegmentationSetup) -> dict[str, Any]:
    """``cache`` (a new dict if None) holding ``setup``'s encoder record and scenes, made when
    missing (the encoder first, so a missing file fails before the scenes are built). It is
    marked with the scene and encoder fields of ``setup``: one filled under other fields would
    train on the wrong scenes and save the result under this setup's name."""
    cache = {} if cache is None else cache
    key = {name: getattr(setup, name) for name in _SCENE_FIELDS}
    if cache.setdefault("scene_fields", key) != key:
        raise ValueError("this cache dict holds the scenes and encoder of another setup; pass"
                         " a fresh dict (or None) for each set of scenes")
    if "encoder" not in cache:
        cache["encoder"] = encoder_record(setup)
    if "scenes" not in cache:
        cache["scenes"] = load_scenes(setup)
    return cache


def build_scene_model(method: str, arch: str, setup: SegmentationSetup,
                      train: sar_data.SceneDataset, **options: Any
                      ) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """``arch`` with ``setup``'s encoder (its weights file loaded, if any), wrapped for
    ``method`` by :func:`sar.methods.build` with ``options``; the logit-adjusted methods take
    their prior from ``train``'s pixel counts. Returns ``(wrapped model, criterion)``."""
    net = build_smp_model(arch, setup.encoder, len(sar_data.SCENE_CLASSES),
                          train.images.shape[1], encoder_weights=encoder_weights_path(setup))
    return build_method(method, net, counts=scene_pixel_counts(train), **options)


def train_on_scenes(method: str, arch: str, setup: SegmentationSetup, seed: int,
                    device: torch.device | str, cache: dict[str, Any] | None = None, *,
                    progress: bool = False, options: dict[str, Any] | None = None,
                    log_every: int = LOG_EVERY) -> dict[str, Any]:
    """Train ``method`` (a :mod:`sar.methods` name) on ``arch`` with the scenes and schedule of
    ``setup``, from seed ``seed``; score it on the validation scenes. What a grid cell runs,
    for a notebook that wants the model too.

    ``cache`` keeps the scenes and the encoder record between calls on the same scenes (a
    fresh dict if None; a dict may come with ``"scenes"`` already made by :func:`load_scenes`
    for this setup). ``options`` go to the method's regulariser (e.g.
    ``{"update_conf": 0.5}`` for SAR). ``log_every``: optimiser steps between logged rows of
    the history (1 logs every step, e.g. to see when the gate first opens).

    Returns:
        ``{"model", "history", "scores", "encoder"}``: the trained wrapped model (eval mode),
        :func:`~sar.train.fit`'s history, :func:`~sar.train.evaluate`'s scores on the
        validation scenes (IoUs as fractions) and the encoder columns of
        :func:`encoder_record`.

    Raises:
        FileNotFoundError: ``setup.encoder_weights`` names a file that does not exist (before
            any scene is built).
        ValueError: ``cache`` was filled by a call with another setup.
    """
    cache = _scene_cache(cache, setup)
    train, val = cache["scenes"]
    generator = seed_everything(seed)
    model, criterion = build_scene_model(method, arch, setup, train, **(options or {}))
    loader = DataLoader(train, batch_size=setup.batch_size, shuffle=True, generator=generator)
    history = fit(model, loader, epochs=setup.epochs, max_steps=setup.max_steps, lr=setup.lr,
                  schedule="poly", criterion=criterion, device=device, progress=progress,
                  log_every=log_every)
    scores = evaluate(model, DataLoader(val, batch_size=32), num_classes=train.num_classes,
                      task="segmentation", device=device)
    return {"model": model.eval(), "history": history, "scores": scores,
            "encoder": cache["encoder"]}


def cached_scene_run(method: str, arch: str, setup: SegmentationSetup, seed: int,
                     device: torch.device | str, cache: dict[str, Any] | None = None, *,
                     progress: bool = True, options: dict[str, Any] | None = None,
                     name: str = "scene_run", verbose: bool = True,
                     log_every: int = LOG_EVERY) -> dict[str, Any]:
    """:func:`train_on_scenes` through :func:`sar.cache.cached`: loaded when the same run
    (method, architecture, the setup's :meth:`~SegmentationSetup.run_fields`, seed, options,
    encoder checksum, device type) was saved before, trained and saved otherwise: a method
    added to the grid does not retrain the runs already cached. ``SAR_CACHE=0`` retrains.
    ``verbose=False`` drops the cache's "loaded from" line; ``log_every`` as for
    :func:`train_on_scenes`.

    Returns:
        As :func:`train_on_scenes`, the model rebuilt from the saved state on ``device``.

    Raises:
        FileNotFoundError, ValueError: as :func:`train_on_scenes`.
    """
    return cached_scene_runs([(method, options)], arch, setup, seed, device, cache,
                             processes=1, progress=progress, name=name, verbose=verbose,
                             log_every=log_every)[0]


def cached_scene_runs(requests: Sequence[tuple[str, dict[str, Any] | None]], arch: str,
                      setup: SegmentationSetup, seed: int, device: torch.device | str,
                      cache: dict[str, Any] | None = None, *, processes: int = 2,
                      progress: bool = True, name: str = "scene_run", verbose: bool = True,
                      log_every: int = LOG_EVERY) -> list[dict[str, Any]]:
    """:func:`cached_scene_run` for each ``(method, options)`` of ``requests``, the cache
    misses trained ``processes`` at a time in one-thread worker processes
    (:func:`sar.cache.cached_in_processes`) when ``device`` is the CPU; on a GPU they train
    one after another in this process. Same cache entries as :func:`cached_scene_run`, and a
    worker computes what a one-thread run here would (seeded code, same numbers).

    Returns:
        One run per request, in order, each as :func:`train_on_scenes` gives it.

    Raises:
        FileNotFoundError, ValueError: as :func:`train_on_scenes`; whatever a worker raised.
    """
    cache = _scene_cache(cache, setup)  # the scenes rebuild the models below, loaded or not
    device = torch.device(device)
    jobs = []
    for method, options in requests:
        config = {"method": method, "arch": arch, "setup": setup.run_fields(), "seed": seed,
                  "options": options or {}, "encoder_sha256": cache["encoder"]["encoder_sha256"],
                  "device": device.type}
        if log_every != LOG_EVERY:  # so runs logged at the default keep their cache keys
            config["log_every"] = log_every
        here = device.type != "cpu" or processes == 1  # a worker rebuilds its own scenes
        train = partial(_train_scene_state, method, arch, setup, seed, device.type, options,
                        cache if here else None, progress and here, log_every)
        jobs.append((f"{name}_{method}_{arch}_seed{seed}", config, train))
    stored = cached_in_processes(jobs, processes=processes if device.type == "cpu" else 1,
                                 progress=progress, desc="scene runs", verbose=verbose)
    runs = []
    for (method, options), run in zip(requests, stored, strict=True):
        model, _ = build_scene_model(method, arch, setup, cache["scenes"][0], **(options or {}))
        model.load_state_dict(run["model"])
        runs.append({**run, "model": model.to(device).eval()})
    return runs


def _train_scene_state(method: str, arch: str, setup: SegmentationSetup, seed: int,
                       device: str, options: dict[str, Any] | None,
                       cache: dict[str, Any] | None, progress: bool, log_every: int
                       ) -> dict[str, Any]:
    """:func:`train_on_scenes` with the model as a CPU state dict (what the cache stores);
    module-level, so it pickles into a worker process."""
    out = train_on_scenes(method, arch, setup, seed, device, cache, progress=progress,
                          options=options, log_every=log_every)
    return {**out, "model": out["model"].cpu().state_dict()}


def run_segmentation(run: Run, setup: SegmentationSetup, device: torch.device,
                     cache: dict[str, Any]) -> dict[str, Any]:
    """One grid cell: :func:`train_on_scenes` for :func:`method_name` of ``run`` with its
    ``"method_options"`` (if any) on ``run.options["arch"]``.

    Returns:
        A row: ``mIoU``, ``pixel_accuracy`` and ``iou_class_k`` (fractions; mask id k, 0 =
        background, k = Fashion-MNIST class k - 1), ``gate_opened_step``, the encoder columns
        of :func:`encoder_record` and ``steps``.
    """
    out = train_on_scenes(method_name(run), run.options["arch"], setup, run.seed, device,
                          cache, options=run.options.get("method_options"))
    row = _scores_row(out["scores"])
    row["gate_opened_step"] = gate_opened_step(out["history"])
    row |= out["encoder"] | {"steps": setup.steps}
    return row


def _scores_row(scores: Mapping[str, Any]) -> dict[str, float]:
    """``mIoU``, ``pixel_accuracy`` and ``iou_class_k`` of a run's ``scores``: the CSV's columns."""
    row = {"mIoU": scores["mIoU"], "pixel_accuracy": scores["pixel_accuracy"]}
    return row | {f"iou_class_{k}": v for k, v in enumerate(scores["per_class_iou"])}


def scene_rows(runs: Mapping[str, Mapping[str, Any]], seed: int) -> pd.DataFrame:
    """Trained scene runs as rows shaped like the segmentation CSVs (:func:`run_segmentation`),
    so that a notebook's own runs and committed rows (:func:`~sar.experiments.load_results`)
    can be concatenated and paired by seed.

    Args:
        runs: method name (``"ce"``, ``"sar"``, ...) -> a result of :func:`cached_scene_run`
            or :func:`cached_scene_runs` (anything with its ``"scores"``).
        seed: the training seed of these runs, written in every row.

    Returns:
        One row per method: ``method``, ``seed``, ``mIoU``, ``pixel_accuracy`` and
        ``iou_class_k`` (fractions; mask id k, 0 = background).
    """
    return pd.DataFrame([{"method": method, "seed": seed, **_scores_row(run["scores"])}
                         for method, run in runs.items()])


def scene_shot_groups(setup: SegmentationSetup) -> dict[str, list[int]]:
    """Fashion-MNIST class ids the scenes of ``setup`` make frequent ("many", 3 classes),
    medium (4) or rare ("few", 3), each group head first (in the order the scenes draw them
    from most to least often). Every training seed shares one scene set, hence one grouping."""
    order, probs = sar_data.scene_class_probs(setup.imbalance_factor, seed=setup.scene_seed)
    groups = sar_data.shot_groups(probs.tolist(), class_order=order)
    return {name: sorted(ids, key=order.index) for name, ids in groups.items()}


def add_shot_group_iou(df: pd.DataFrame, groups: dict[str, list[int]]) -> pd.DataFrame:
    """``df`` with a column ``{group}_iou`` per group of Fashion-MNIST class ids (e.g.
    :func:`scene_shot_groups`): the mean IoU over the group's classes (background is in none)."""
    # mask id k + 1 is Fashion-MNIST class k (0 is background)
    return df.assign(**{f"{name}_iou": df[[f"iou_class_{c + 1}" for c in ids]].mean(axis=1)
                        for name, ids in groups.items()})
