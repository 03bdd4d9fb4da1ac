"""Training and evaluation loops for SAR-wrapped (or plain) models.

:func:`fit` trains any ``nn.Module`` with cross-entropy; when the model is a
:class:`~sar.models.RegularizedModel` it adds the regulariser's loss and logs every entry of
its loss dict. It checkpoints atomically at the end of each epoch (weights, regulariser
buffers, optimiser, schedule and every RNG state), so ``resume=True`` continues exactly where
the checkpoint left off. :func:`evaluate` computes accuracy or IoU and, optionally, the
geometry of the head-input features (:func:`collect_features`).
"""

from __future__ import annotations

import math
import os
import random
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler
from tqdm.auto import tqdm

from . import metrics
from .config import default_device
from .models import RegularizedModel

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "poly", "constant")
TASKS = ("classification", "segmentation")
CHECKPOINT_VERSION = 1
POLY_POWER = 0.9

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PathLike = str | os.PathLike[str]


# ------------------------------------------------------------------------------ schedule
def lr_factor(
    step: int, total_steps: int, schedule: str = "cosine", warmup_steps: int = 0
) -> float:
    """Multiplier of the base lr used at (0-based) ``step`` of a ``total_steps``-step run.

    A linear warm-up ``(step + 1) / warmup_steps`` is followed by the schedule over the
    remaining steps, with progress ``t = (step - warmup) / (total - warmup)`` in ``[0, 1)``:
    ``cosine`` ``0.5 (1 + cos(pi t))``, ``poly`` ``(1 - t) ** 0.9``, ``constant`` ``1``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    t = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "poly":
        return (1.0 - t) ** POLY_POWER
    return 1.0


def _make_optimizer(
    model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _amp_dtype(device: torch.device, amp: bool | torch.dtype | None) -> torch.dtype | None:
    """The autocast dtype: only on CUDA; bf16 where supported, else fp16."""
    if device.type != "cuda" or amp is False:
        return None
    if isinstance(amp, torch.dtype):
        return amp
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _total_steps(loader: Iterable, epochs: int, max_steps: int | None) -> int:
    try:
        planned = epochs * len(loader)  # type: ignore[arg-type]
    except TypeError:
        if max_steps is None:
            raise TypeError("the loader has no len(); pass max_steps") from None
        return max_steps
    return planned if max_steps is None else min(planned, max_steps)


# ---------------------------------------------------------------------------- checkpoints
def _rng_state(loader: Any = None) -> dict[str, Any]:
    """Python, NumPy, torch (CPU, CUDA) and loader-generator RNG states, torch-loadable."""
    # the legacy global NumPy RNG is what user code and seed_everything drive
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    state: dict[str, Any] = {
        "python": random.getstate(),
        # as plain tensors/ints so the checkpoint loads with weights_only=True
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                  float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    generator = getattr(loader, "generator", None)
    if isinstance(generator, torch.Generator):
        state["loader"] = generator.get_state()
    return state


def _set_rng_state(state: Mapping[str, Any], loader: Any = None) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    numpy_state = (kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
    np.random.set_state(numpy_state)  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
    generator = getattr(loader, "generator", None)
    if "loader" in state and isinstance(generator, torch.Generator):
        generator.set_state(state["loader"])


def _records(history: pd.DataFrame | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(history, pd.DataFrame):
        return history.to_dict("records")
    return [dict(row) for row in history]


def _atomic_save(payload: Mapping[str, Any], path: Path) -> None:
    """Write to a temporary file beside ``path`` then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_checkpoint(
    path: PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler | None,
    step: int,
    epoch: int,
    history: pd.DataFrame | Sequence[Mapping[str, Any]],
    loader: Any = None,
    *,
    scaler: torch.amp.GradScaler | None = None,
) -> Path:
    """Atomically save everything needed to resume training exactly.

    Holds the model ``state_dict`` (for a SAR model: anchors, projector, semantic-anchor EMA
    and gate buffers), optimiser, scheduler and GradScaler states, ``step`` (optimiser steps
    done), ``epoch`` (epochs done), the history rows, and the Python/NumPy/torch/CUDA RNG
    states plus the state of ``loader.generator`` when it has one.
    """
    payload = {
        "version": CHECKPOINT_VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "step": int(step),
        "epoch": int(epoch),
        "history": _records(history),
        "rng": _rng_state(loader),
    }
    path = Path(path)
    _atomic_save(payload, path)
    return path


def load_checkpoint(
    path: PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: LRScheduler | None = None,
    loader: Any = None,
    *,
    scaler: torch.amp.GradScaler | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load a :func:`save_checkpoint` file into the given objects (those passed, in place).

    Returns:
        ``{"step": int, "epoch": int, "history": DataFrame}``.
    """
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path} is not a sar.train checkpoint (version {payload.get('version')})")
    model.load_state_dict(payload["model"])
    if optimizer is not None:
        optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None and payload["scheduler"] is not None:
        scheduler.load_state_dict(payload["scheduler"])
    if scaler is not None and scaler.is_enabled() and payload["scaler"] is not None:
        scaler.load_state_dict(payload["scaler"])
    if restore_rng:
        _set_rng_state(payload["rng"], loader)
    return {"step": payload["step"], "epoch": payload["epoch"],
            "history": pd.DataFrame(payload["history"])}


# --------------------------------------------------------------------------------- fitting
def _history_key(name: str) -> str:
    # the regulariser's own "loss" would collide with the total loss column
    return "reg_loss" if name == "loss" else name


def _batch(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch[0], batch[1]
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True).long()


class _Trainer:
    """The state of one :func:`fit` call, so that the step and epoch functions stay short."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: LRScheduler, scaler: torch.amp.GradScaler, criterion: Criterion,
                 device: torch.device, amp_dtype: torch.dtype | None, total_steps: int,
                 log_every: int, check_ignore: int | None) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.scaler = scaler
        self.criterion, self.device, self.amp_dtype = criterion, device, amp_dtype
        self.total_steps, self.log_every, self.check_ignore = total_steps, log_every, check_ignore
        self.step, self.history = 0, []
        self.bar: tqdm | None = None
        self.checkpoint: Path | None = None

    def losses(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Task loss, total loss and the regulariser's loss dict (empty for a plain model)."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype,
                            enabled=self.amp_dtype is not None):
            if isinstance(self.model, RegularizedModel):
                logits, reg = self.model(x, y)
            else:
                logits, reg = self.model(x), {}
            self._check_ignore_index(logits)
            task = self.criterion(logits, y)
        return task, (task + reg["loss"] if reg else task), reg

    def _check_ignore_index(self, logits: torch.Tensor) -> None:
        if self.check_ignore is not None and 0 <= self.check_ignore < logits.shape[1]:
            raise ValueError(
                f"ignore_index={self.check_ignore} is a class id of this {logits.shape[1]}-class"
                " model, so the loss would skip that class: pass ignore_index=-100"
            )
        self.check_ignore = None  # once is enough

    def train_step(self, batch: Any, epoch: int) -> None:
        x, y = _batch(batch, self.device)
        lr = self.optimizer.param_groups[0]["lr"]
        try:
            task, loss, reg = self.losses(x, y)
        except FloatingPointError as err:  # raised by the regulariser's input check
            raise self._diverged(epoch, lr, str(err)) from err
        if not bool(torch.isfinite(loss)):
            raise self._diverged(epoch, lr, f"the loss is {loss.item()}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.step % self.log_every == 0:
            self._log(epoch, lr, task, loss, reg)
        self.step += 1
        if self.bar is not None:
            self.bar.update(1)

    def _log(self, epoch: int, lr: float, task: torch.Tensor, loss: torch.Tensor,
             reg: Mapping[str, torch.Tensor]) -> None:
        names = ["task_loss", "loss", *(_history_key(k) for k in reg)]
        # one host transfer for all the scalars
        values = torch.stack([v.detach().float() for v in (task, loss, *reg.values())]).tolist()
        self.history.append({"epoch": epoch, "step": self.step, "lr": lr,
                             **dict(zip(names, values, strict=True))})
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{values[1]:.4f}", refresh=False)

    def _diverged(self, epoch: int, lr: float, detail: str) -> FloatingPointError:
        kept = (f" The last good state is in {self.checkpoint} (untouched); resume from it."
                if self.checkpoint is not None and self.checkpoint.exists() else "")
        return FloatingPointError(
            f"non-finite loss at step {self.step} (epoch {epoch}, lr {lr:.3g}): {detail}."
            f" Training stopped.{kept} Try a lower lr or a longer warm-up, amp=False, and check"
            " the inputs and labels for NaN/Inf or out-of-range values."
        )

    def run_epoch(self, loader: Iterable, epoch: int) -> None:
        for batch in loader:
            if self.step >= self.total_steps:
                break
            self.train_step(batch, epoch)


def fit(
    model: nn.Module,
    train_loader: Iterable,
    *,
    epochs: int = 1,
    max_steps: int | None = None,
    optimizer: str = "sgd",
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    schedule: str = "cosine",
    warmup_steps: int = 0,
    criterion: Criterion | None = None,
    ignore_index: int | None = 255,
    device: str | torch.device | None = None,
    amp: bool | torch.dtype | None = None,
    checkpoint: PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    log_every: int = 1,
    on_epoch_end: Callable[[int, nn.Module], None] | None = None,
) -> pd.DataFrame:
    """Train ``model`` on ``(inputs, labels)`` batches; return the history.

    For a :class:`~sar.models.RegularizedModel` the loss is ``criterion(logits, y) +
    losses["loss"]`` with ``logits, losses = model(x, y)``; for any other module it is
    ``criterion(model(x), y)``. Labels are ``(B,)`` for classification or ``(B, H, W)`` for
    segmentation.

    Args:
        epochs, max_steps: the run lasts ``min(epochs * len(train_loader), max_steps)`` steps.
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adamw"``, over all trainable
            parameters, the regulariser's projector included.
        schedule: per-step ``"cosine"``, ``"poly"`` (power 0.9) or ``"constant"``, after a
            linear warm-up of ``warmup_steps`` (see :func:`lr_factor`).
        criterion: defaults to ``nn.CrossEntropyLoss(ignore_index=ignore_index)``
            (``None``: ignore nothing), e.g. :class:`~sar.baselines.LogitAdjustedCrossEntropy`.
        device: defaults to :func:`sar.config.default_device`; the model moves there.
        amp: autocast on CUDA only: ``None``/``True`` bf16 where supported, else fp16 with a
            GradScaler; a dtype forces it; ``False`` off. The CPU always runs in float32.
        checkpoint: file saved atomically at the end of each epoch (and when the run ends).
        resume: continue from ``checkpoint`` if it exists (epoch-granular). With the same
            arguments the result equals an uninterrupted run; a different ``epochs`` re-plans
            the schedule over the new length.
        progress: show a tqdm bar over steps with the current loss.
        log_every: log one history row every this many steps.
        on_epoch_end: called as ``on_epoch_end(epoch, model)`` after each epoch (1-based
            epoch count, model in training mode), e.g. to snapshot features for a plot.

    Returns:
        One row per logged step: ``epoch``, ``step`` (0-based, global), ``lr`` (used by that
        step), ``task_loss``, ``loss`` (total) and each key of the regulariser's loss dict as a
        float (its ``loss`` entry renamed ``reg_loss``), e.g. ``anchor_ce``, ``pull``,
        ``gate_passed``, ``gate_opened``.

    Raises:
        FloatingPointError: on a non-finite loss, before the optimiser step; the last
            checkpoint keeps the last good state.
    """
    _check_fit_args(optimizer, schedule, epochs, log_every, warmup_steps, checkpoint, resume)
    device = torch.device(device) if device is not None else default_device()
    model.to(device)
    if criterion is None:
        criterion = nn.CrossEntropyLoss(ignore_index=-100 if ignore_index is None else ignore_index)
    if isinstance(criterion, nn.Module):
        criterion.to(device)
    total = _total_steps(train_loader, epochs, max_steps)
    opt = _make_optimizer(model, optimizer, lr, momentum, weight_decay)
    sched = LambdaLR(opt, lambda s: lr_factor(s, total, schedule, warmup_steps))
    amp_dtype = _amp_dtype(device, amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    default_ce = isinstance(criterion, nn.CrossEntropyLoss) and ignore_index is not None
    trainer = _Trainer(model, opt, sched, scaler, criterion, device, amp_dtype, total, log_every,
                       ignore_index if default_ce else None)
    trainer.checkpoint = Path(checkpoint) if checkpoint is not None else None

    start_epoch = 0
    if resume and trainer.checkpoint.exists():
        state = load_checkpoint(trainer.checkpoint, model, opt, sched, train_loader,
                                scaler=scaler)
        trainer.step, start_epoch = state["step"], state["epoch"]
        trainer.history = _records(state["history"])
    _train(trainer, train_loader, start_epoch, epochs, progress, on_epoch_end)
    return pd.DataFrame(trainer.history)


def _train(trainer: _Trainer, loader: Iterable, start_epoch: int, epochs: int,
           progress: bool, on_epoch_end: Callable[[int, nn.Module], None] | None) -> None:
    model, was_training = trainer.model, trainer.model.training
    model.train()
    trainer.bar = tqdm(total=trainer.total_steps, initial=trainer.step, disable=not progress,
                       desc="fit", unit="step", dynamic_ncols=True)
    try:
        for epoch in range(start_epoch, epochs):
            if trainer.step >= trainer.total_steps:
                break
            trainer.run_epoch(loader, epoch)
            if trainer.checkpoint is not None:
                save_checkpoint(trainer.checkpoint, model, trainer.optimizer, trainer.scheduler,
                                trainer.step, epoch + 1, trainer.history, loader,
                                scaler=trainer.scaler)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, model)
                model.train()
    finally:
        trainer.bar.close()
        model.train(was_training)


def _check_fit_args(optimizer: str, schedule: str, epochs: int, log_every: int,
                    warmup_steps: int, checkpoint: PathLike | None, resume: bool) -> None:
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if epochs < 1 or log_every < 1 or warmup_steps < 0:
        raise ValueError(f"need epochs >= 1, log_every >= 1 and warmup_steps >= 0; got"
                         f" {epochs}, {log_every}, {warmup_steps}")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint= (the file to resume from)")


# ------------------------------------------------------------------------------ evaluation
@contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """``eval()`` + ``no_grad`` for the block, then the previous train/eval mode again."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _features_and_logits(
    model: nn.Module, x: torch.Tensor, with_features: bool
) -> tuple[torch.Tensor | None, torch.Tensor]:
    if not with_features:
        return None, model(x)
    if not hasattr(model, "features_and_logits"):
        raise TypeError(
            f"{type(model).__name__} has no features_and_logits(x): wrap it in a"
            " RegularizedModel (e.g. SARClassifier(model, regularizer=NoRegularizer()))"
        )
    return model.features_and_logits(x)


def _flatten_points(
    features: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, D)``/``(B,)`` as is; ``(B, D, h, w)`` with labels ``(B, [1,] H, W)``
    nearest-resized to ``(h, w)`` -> ``(B*h*w, D)`` and ``(B*h*w,)``."""
    if features.dim() == 2:
        return features, labels.reshape(-1)
    if labels.dim() == 4:
        labels = labels[:, 0]
    if labels.shape[1:] != features.shape[2:]:
        labels = F.interpolate(labels[:, None].float(), size=features.shape[2:],
                               mode="nearest")[:, 0].long()
    return features.movedim(1, -1).reshape(-1, features.shape[1]), labels.reshape(-1)


class _PointSampler:
    """At most ``max_points`` labelled feature vectors drawn uniformly from a stream.

    Bottom-k sampling: every valid point gets a key from a fixed-seed generator and the
    points with the smallest keys are kept, so the sample is reproducible, memory stays
    bounded, and at most ``max_points`` rows of a batch ever leave its device.
    """

    def __init__(self, max_points: int | None, ignore_index: int | None, seed: int = 0) -> None:
        self.max_points, self.ignore_index = max_points, ignore_index
        self.generator = torch.Generator().manual_seed(seed)
        self.keys: list[torch.Tensor] = []
        self.features: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        feats, labels = _flatten_points(features, labels)
        if self.ignore_index is not None:
            index = (labels != self.ignore_index).nonzero().squeeze(1)
            feats, labels = feats[index], labels[index]
        keys = torch.rand(len(labels), generator=self.generator)
        if self.max_points is not None and len(keys) > self.max_points:
            # only the batch's own bottom-k can enter the overall bottom-k
            keep = keys.topk(self.max_points, largest=False).indices.sort().values
            keys, index = keys[keep], keep.to(labels.device)
            feats, labels = feats[index], labels[index]
        self.keys.append(keys)
        self.features.append(feats.detach().float().cpu())
        self.labels.append(labels.long().cpu())
        if self.max_points is not None and sum(map(len, self.keys)) > self.max_points:
            self._shrink()

    def _shrink(self) -> None:
        keys = torch.cat(self.keys)
        keep = keys.topk(self.max_points, largest=False).indices.sort().values
        feats, labels = self.result()
        self.keys, self.features, self.labels = [keys[keep]], [feats[keep]], [labels[keep]]

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.features:
            return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
        return torch.cat(self.features), torch.cat(self.labels)


class _Scores:
    """Accumulates predictions for the task's metrics."""

    def __init__(self, task: str, num_classes: int, ignore_index: int | None) -> None:
        self.task, self.num_classes, self.ignore_index = task, num_classes, ignore_index
        self.meter = metrics.ConfusionMeter(num_classes, ignore_index)
        self.preds: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        if self.task == "classification":
            self.preds.append(logits.argmax(dim=1))
            self.labels.append(labels)
            return
        if labels.dim() == 4:
            labels = labels[:, 0]
        if logits.shape[2:] != labels.shape[1:]:
            logits = F.interpolate(logits.float(), size=labels.shape[1:], mode="bilinear",
                                   align_corners=False)
        self.meter.update(logits.argmax(dim=1), labels)

    def result(self, groups: Mapping[str, Sequence[int]] | None) -> dict[str, Any]:
        if self.task == "segmentation":
            return {"mIoU": self.meter.mean_iou(),
                    "per_class_iou": self.meter.iou_per_class().tolist(),
                    "pixel_accuracy": self.meter.pixel_accuracy()}
        preds, labels = torch.cat(self.preds).cpu(), torch.cat(self.labels).cpu()
        per_class = metrics.per_class_accuracy(preds, labels, self.num_classes,
                                               ignore_index=self.ignore_index)
        out: dict[str, Any] = {
            "accuracy": metrics.accuracy(preds, labels, ignore_index=self.ignore_index),
            "per_class_accuracy": per_class.tolist(),
        }
        for name, acc in metrics.shot_accuracy(per_class, groups or {}).items():
            out[f"{name}_accuracy"] = acc
        return out


def _resolve(model: nn.Module, device: str | torch.device | None) -> torch.device:
    device = torch.device(device) if device is not None else default_device()
    model.to(device)
    return device


def _check_ignore_index(ignore_index: int | None, num_classes: int) -> None:
    if ignore_index is not None and 0 <= ignore_index < num_classes:
        raise ValueError(f"ignore_index={ignore_index} is a class id of a {num_classes}-class"
                         " task: pass ignore_index=None (or -100)")


def evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    num_classes: int,
    task: str = "classification",
    device: str | torch.device | None = None,
    ignore_index: int | None = 255,
    groups: Mapping[str, Sequence[int]] | None = None,
    features: bool = False,
    anchors: torch.Tensor | None = None,
    max_feature_points: int | None = 20000,
) -> dict[str, Any]:
    """Score ``model`` on ``(inputs, labels)`` batches, in eval mode and without gradients.

    The model moves to ``device`` (default :func:`sar.config.default_device`); its previous
    train/eval mode is restored afterwards. Labels equal to ``ignore_index`` are skipped.

    Returns:
        classification: ``accuracy``, ``per_class_accuracy`` (list of C, NaN for absent
        classes) and ``{name}_accuracy`` for each group of ``groups`` (e.g. ``many``,
        ``medium``, ``few`` -> class ids). Segmentation: ``mIoU``, ``per_class_iou`` (list of
        C) and ``pixel_accuracy``, from a streaming confusion matrix (logits at another size
        than the labels are resized bilinearly). All fractions in ``[0, 1]``.
        With ``features=True`` (needs ``model.features_and_logits``), also
        :func:`sar.metrics.representation_metrics` of the head-input features sampled as in
        :func:`collect_features`, measured against ``anchors`` ``(C, D)`` if given (e.g.
        ``model.regularizer.semantic_anchors``).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    _check_ignore_index(ignore_index, num_classes)
    device = _resolve(model, device)
    scores = _Scores(task, num_classes, ignore_index)
    sampler = _PointSampler(max_feature_points, ignore_index) if features else None
    with _inference(model):
        for batch in loader:
            x, y = _batch(batch, device)
            feats, logits = _features_and_logits(model, x, features)
            scores.update(logits, y)
            if sampler is not None:
                sampler.update(feats, y)
    result = scores.result(groups)
    if sampler is not None:
        feats, labels = sampler.result()
        anchors = anchors.detach().cpu() if anchors is not None else None
        result.update(metrics.representation_metrics(feats, labels, num_classes, anchors))
    return result


def collect_features(
    model: nn.Module,
    loader: Iterable,
    *,
    device: str | torch.device | None = None,
    max_points: int | None = 20000,
    ignore_index: int | None = 255,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Head-input features and their labels, e.g. to plot an embedding.

    Uses ``model.features_and_logits`` in eval mode. Segmentation maps ``(B, D, h, w)`` give
    one point per pixel at the feature resolution, with labels nearest-downsampled to it.
    Points labelled ``ignore_index`` are dropped and at most ``max_points`` are kept, drawn
    uniformly and reproducibly (``None``: keep all).

    Returns:
        features ``(N, D)`` float32 and labels ``(N,)`` int64, on the CPU.
    """
    device = _resolve(model, device)
    sampler = _PointSampler(max_points, ignore_index)
    with _inference(model):
        for batch in loader:
            x, y = _batch(batch, device)
            sampler.update(_features_and_logits(model, x, True)[0], y)
    return sampler.result()
