"""Training and evaluation loops for SAR-wrapped (or plain) models.

:func:`fit` trains any ``nn.Module`` with cross-entropy; when the model is a
:class:`~sar.models.RegularizedModel` it adds the regulariser's loss and logs every entry of
its loss dict. It checkpoints atomically at the end of each epoch (weights, regulariser
buffers, optimiser, schedule and every RNG state), so ``resume=True`` continues exactly where
the checkpoint left off. :func:`evaluate` computes accuracy or IoU and, optionally, the
geometry of the head-input features (:func:`collect_features`).

``fit`` also trains a ``DistributedDataParallel`` model (see :mod:`sar.distributed`): it
calls ``set_epoch`` on a ``DistributedSampler``, averages the logged values over ranks, stops
every rank together on a non-finite loss, and only rank 0 writes the checkpoint (with every
rank's RNG state). :func:`main` is the command-line entry point, for one process or torchrun::

    python -m sar.train --config configs/fashion_scenes_unet.json
    torchrun --nproc_per_node=4 -m sar.train --config configs/voc_deeplabv3plus.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler
from tqdm.auto import tqdm

from . import distributed, metrics
from .config import default_device, seed_everything
from .distributed import DistEnv, unwrap
from .models import RegularizedModel, SARSegmentationModel, build_smp_model

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


def _own_rng_state(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    """This rank's RNG states from a checkpoint payload."""
    ranks, world = payload.get("rng_ranks"), distributed.get_world_size()
    if ranks is not None and len(ranks) == world:
        return ranks[distributed.get_rank()]
    if world > 1 or ranks is not None:
        warnings.warn(f"the checkpoint holds RNG states of {len(ranks or [0])} rank(s), this run"
                      f" has {world}: every rank restarts from rank 0's, so the resumed run is"
                      " not bit-exact", stacklevel=3)
    return payload["rng"]


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
    rank_rng: Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    """Atomically save everything needed to resume training exactly.

    Holds the model ``state_dict`` (for a SAR model: anchors, projector, semantic-anchor EMA
    and gate buffers; a DDP wrapper is looked through, so the keys are the same with or
    without one), optimiser, scheduler and GradScaler states, ``step`` (optimiser steps
    done), ``epoch`` (epochs done), the history rows, and the Python/NumPy/torch/CUDA RNG
    states plus the state of ``loader.generator`` when it has one. ``rank_rng`` holds every
    rank's RNG states in a distributed run (rank ``r`` restores entry ``r``).
    """
    payload = {
        "version": CHECKPOINT_VERSION,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "step": int(step),
        "epoch": int(epoch),
        "history": _records(history),
        "rng": _rng_state(loader),
        "rng_ranks": list(rank_rng) if rank_rng is not None else None,
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

    In a distributed run each rank restores its own RNG states when the checkpoint was
    written by as many ranks; otherwise rank 0's (with a warning: not bit-exact then).

    Returns:
        ``{"step": int, "epoch": int, "history": DataFrame}``.
    """
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path} is not a sar.train checkpoint (version {payload.get('version')})")
    unwrap(model).load_state_dict(payload["model"])
    if optimizer is not None:
        optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None and payload["scheduler"] is not None:
        scheduler.load_state_dict(payload["scheduler"])
    if scaler is not None and scaler.is_enabled() and payload["scaler"] is not None:
        scaler.load_state_dict(payload["scaler"])
    if restore_rng:
        _set_rng_state(_own_rng_state(payload), loader)
    return {"step": payload["step"], "epoch": payload["epoch"],
            "history": pd.DataFrame(payload["history"])}


# --------------------------------------------------------------------------------- fitting
def _history_key(name: str) -> str:
    # the regulariser's own "loss" would collide with the total loss column
    return "reg_loss" if name == "loss" else name


class IgnoreSafeCrossEntropy(nn.CrossEntropyLoss):
    """``nn.CrossEntropyLoss`` that gives 0, not NaN, on a batch with no labelled position.

    A segmentation batch whose masks are all ``ignore_index`` (a crop of pure boundary or
    void) is legitimate: it contributes no task gradient and training goes on. PyTorch's mean
    divides by zero valid targets there; this keeps its value bit for bit on every other batch.
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = super().forward(input, target)
        if self.reduction != "mean" or target.dtype.is_floating_point:
            return loss
        # a where, not a branch: no host sync; its backward gives the NaN branch zero gradient
        return torch.where((target != self.ignore_index).any(), loss, 0.0)


def _batch(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch[0], batch[1]
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True).long()


def _first_failure(detail: str | None) -> str:
    """The first failing rank's message, the same on every rank (as is in one process)."""
    details = distributed.gather_objects(detail)
    if len(details) == 1:
        return str(detail)
    rank = next(r for r, d in enumerate(details) if d is not None)
    return f"on rank {rank}, {details[rank]}"


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
        # fit accepts a DDP-wrapped model: the regulariser lives in ``.module``
        self.regularized = isinstance(unwrap(model), RegularizedModel)

    def losses(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Task loss, total loss and the regulariser's loss dict (empty for a plain model)."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype,
                            enabled=self.amp_dtype is not None):
            if self.regularized:
                logits, reg = self.model(x, y)  # through DDP's forward, so gradients sync
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
        task, loss, reg = self._finite_losses(x, y, epoch, lr)
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

    def _finite_losses(
        self, x: torch.Tensor, y: torch.Tensor, epoch: int, lr: float
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`losses`, stopping every rank at the same step if one sees a non-finite loss.

        Only divergence is agreed on: it is detected after the forward pass, where no rank
        waits in a collective. Any other error ends its own process and torchrun stops the rest.
        """
        cause: FloatingPointError | None = None
        try:
            task, loss, reg = self.losses(x, y)
        except FloatingPointError as err:  # raised by the regulariser's input check
            cause = err
        if cause is not None:
            detail = str(cause)
        else:
            detail = None if bool(torch.isfinite(loss)) else f"the loss is {loss.item()}"
        if distributed.any_rank(detail is not None):
            raise self._diverged(epoch, lr, _first_failure(detail)) from cause
        return task, loss, reg

    def _log(self, epoch: int, lr: float, task: torch.Tensor, loss: torch.Tensor,
             reg: Mapping[str, torch.Tensor]) -> None:
        names = ["task_loss", "loss", *(_history_key(k) for k in reg)]
        stacked = torch.stack([v.detach().float() for v in (task, loss, *reg.values())])
        # the mean over ranks: the loss of the global batch when ranks see equal-sized batches
        values = distributed.all_reduce_mean(stacked).tolist()  # one host transfer
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
        criterion: defaults to :class:`IgnoreSafeCrossEntropy` with ``ignore_index``
            (``None``: ignore nothing; a batch with only ignored labels adds 0, not NaN), or
            e.g. :class:`~sar.baselines.LogitAdjustedCrossEntropy`.
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

    Distributed: pass the model from :func:`sar.distributed.prepare_model` (DDP) and a loader
    from :func:`sar.distributed.distributed_loader`, on every rank with the same arguments.
    The history is the same on every rank (logged values averaged over ranks); the progress
    bar and the checkpoint file belong to rank 0, and every rank resumes from that file.

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
        criterion = IgnoreSafeCrossEntropy(ignore_index=-100 if ignore_index is None
                                           else ignore_index)
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
    _train(trainer, train_loader, start_epoch, epochs, progress and distributed.is_main_process(),
           on_epoch_end)
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
            _set_epoch(loader, epoch)
            trainer.run_epoch(loader, epoch)
            if trainer.checkpoint is not None:
                _save_on_main(trainer, loader, epoch + 1)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, model)
                model.train()
    finally:
        trainer.bar.close()
        model.train(was_training)


def _set_epoch(loader: Iterable, epoch: int) -> None:
    """Reshuffle a ``DistributedSampler`` (it draws its order from seed + epoch)."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def _save_on_main(trainer: _Trainer, loader: Iterable, epochs_done: int) -> None:
    """Rank 0 writes the checkpoint, with every rank's RNG states; all wait until it exists."""
    rank_rng = (distributed.gather_objects(_rng_state(loader))
                if distributed.get_world_size() > 1 else None)
    if distributed.is_main_process():
        save_checkpoint(trainer.checkpoint, trainer.model, trainer.optimizer, trainer.scheduler,
                        trainer.step, epochs_done, trainer.history, loader,
                        scaler=trainer.scaler, rank_rng=rank_rng)
    distributed.barrier()


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
    model = unwrap(model)  # this rank scores on its own: no DDP forward, no collective
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


def gate_opened_step(history: pd.DataFrame) -> int | None:
    """First logged step at which the SAR gate had opened; None if it never did, or if
    ``history`` has no gate (a run without SAR).

    Only as precise as ``fit``'s ``log_every``: the gate opened at this step or at one of the
    unlogged steps just before it.
    """
    if "gate_opened" not in history:
        return None
    opened = history.loc[history["gate_opened"] > 0, "step"]
    return int(opened.iloc[0]) if len(opened) else None


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
    model = unwrap(model)
    device = _resolve(model, device)
    sampler = _PointSampler(max_points, ignore_index)
    with _inference(model):
        for batch in loader:
            x, y = _batch(batch, device)
            sampler.update(_features_and_logits(model, x, True)[0], y)
    return sampler.result()


# ------------------------------------------------------------------------- the entry point
DATASETS = ("fashion_scenes", "folder", "voc")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class DataConfig:
    """Which dataset to train on, and its transforms.

    ``name``: ``"fashion_scenes"`` (built in, offline: :func:`sar.data.make_fashion_scenes`
    with ``num_train``/``num_val`` scenes of ``size`` pixels), ``"folder"`` (a
    :class:`sar.data.SegmentationFolder` under ``root``, with ``num_classes`` given; the
    validation pair ``val_image_dir``/``val_mask_dir`` is optional) or ``"voc"``
    (:func:`sar.data.pascal_voc` under ``root``, splits ``train_split``/``val_split``).
    On-disk images go through :class:`sar.data.SegmentationTransform`: ``resize`` (shorter
    side, or ``[h, w]``), then a random ``crop`` and ``hflip`` for training; ``val_resize``
    for validation (smp models need sides divisible by 32).
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
    train_split: str = "train"
    val_split: str = "val"
    resize: int | list[int] | None = None
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


@dataclass
class ModelConfig:
    """An smp model: ``arch``, ``encoder``, ``encoder_weights`` (``null`` offline,
    ``"imagenet"`` downloads once) and extra ``kwargs`` for ``smp.create_model``."""

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
    that has it, else fp16), ``true``, ``false``, ``"bf16"`` or ``"fp16"``; CUDA only."""

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

    def __post_init__(self) -> None:
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

    from .regularizer import SemanticAnchorRegularizer

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
    from .data import SegmentationTransform

    if train:
        return SegmentationTransform(size=cfg.resize, crop=cfg.crop, hflip=cfg.hflip,
                                     ignore_index=cfg.ignore_index)
    return SegmentationTransform(size=cfg.val_resize, ignore_index=cfg.ignore_index)


def build_datasets(cfg: DataConfig) -> tuple[Any, Any | None, int]:
    """``(train_set, val_set or None, num_classes)`` for a :class:`DataConfig`.

    Items are ``(float32 (3, H, W), int64 (H, W))`` with ``cfg.ignore_index`` as the ignore
    label.
    """
    from . import data

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
    train = data.SegmentationFolder(cfg.root, cfg.image_dir, cfg.mask_dir,
                                    _segmentation_transform(cfg, True), cfg.reduce_zero_label)
    val = None
    if cfg.val_image_dir is not None and cfg.val_mask_dir is not None:
        val = data.SegmentationFolder(cfg.root, cfg.val_image_dir, cfg.val_mask_dir,
                                      _segmentation_transform(cfg, False), cfg.reduce_zero_label)
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


@dataclass
class RunResult:
    """What :func:`run` returns: the history, the validation metrics (``None`` without a
    validation set) and the folder holding ``config.json``, ``checkpoint.pt``,
    ``history.csv`` and ``metrics.json``."""

    history: pd.DataFrame
    metrics: dict[str, Any] | None
    output_dir: Path


def _say(message: str) -> None:
    if distributed.is_main_process():
        tqdm.write(f"[sar.train] {message}")  # below a running progress bar, not inside it


def _epoch_reporter(epochs: int) -> Callable[[int, nn.Module], None]:
    start = time.perf_counter()

    def report(epoch: int, model: nn.Module) -> None:
        reg = getattr(unwrap(model), "regularizer", None)
        gate = ""
        if hasattr(reg, "gate_opened"):
            state = "open" if bool(reg.gate_opened) else "closed"
            gate = f", SAR gate {state} ({int(reg.num_updates)} EMA updates)"
        _say(f"epoch {epoch}/{epochs} done, {time.perf_counter() - start:.0f}s{gate}")

    return report


def _check_regularizer_in_sync(model: nn.Module) -> None:
    """Verify (not assume) that every rank ended with the same anchors, projector, EMA, gate."""
    reg = getattr(unwrap(model), "regularizer", None)
    if reg is not None and distributed.get_world_size() > 1:
        distributed.assert_in_sync(reg.state_dict(), "the SAR regulariser's state")


def run(config: RunConfig, env: DistEnv | None = None) -> RunResult:
    """Train and evaluate as ``config`` says, in this process or as one rank of many.

    Every rank builds the data and the model from the same seed, trains its shard with
    :func:`fit` (resuming from ``output_dir/checkpoint.pt`` when ``train.resume`` and the
    file exists), then rank 0 alone scores the validation set and writes the files.
    """
    env = env or distributed.init_distributed(config.train.device)
    out, cfg = Path(config.output_dir), config.train
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    seed_everything(cfg.seed)  # the same initial weights on every rank (DDP re-broadcasts)
    train_set, val_set, num_classes = build_datasets(config.data)
    model = build_model(config.model, config.sar, num_classes, config.data.ignore_index)
    model = distributed.prepare_model(model, env, sync_batchnorm=config.model.sync_batchnorm,
                                      find_unused_parameters=config.model.find_unused_parameters)
    seed_everything(cfg.seed + env.rank)  # each rank its own augmentation stream
    loader = distributed.distributed_loader(train_set, cfg.batch_size, env=env, seed=cfg.seed,
                                            num_workers=config.data.num_workers)
    _say(f"{env.world_size} process(es) on {env.device.type} ({env.backend or 'no backend'}),"
         f" global batch {env.world_size * cfg.batch_size}, {len(loader)} steps per epoch")
    history = fit(model, loader, epochs=cfg.epochs, max_steps=cfg.max_steps,
                  optimizer=cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum,
                  weight_decay=cfg.weight_decay, schedule=cfg.schedule,
                  warmup_steps=cfg.warmup_steps, ignore_index=config.data.ignore_index,
                  device=env.device, amp=_amp_option(cfg.amp), checkpoint=out / "checkpoint.pt",
                  resume=cfg.resume, log_every=cfg.log_every,
                  on_epoch_end=_epoch_reporter(cfg.epochs))
    _check_regularizer_in_sync(model)
    metrics = None
    if env.is_main:
        history.to_csv(out / "history.csv", index=False)
        if val_set is not None:
            metrics = _validate(model, val_set, num_classes, config, env.device)
            (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    distributed.barrier()  # the others wait while rank 0 scores, so none exits early
    return RunResult(history, metrics, out)


def _validate(model: nn.Module, val_set: Any, num_classes: int, config: RunConfig,
              device: torch.device) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    batch = config.train.eval_batch_size or config.train.batch_size
    loader = DataLoader(val_set, batch_size=batch, num_workers=config.data.num_workers)
    metrics = evaluate(model, loader, num_classes=num_classes, task="segmentation",
                       device=device, ignore_index=config.data.ignore_index)
    _say(f"validation mIoU {metrics['mIoU']:.4f}, pixel accuracy"
         f" {metrics['pixel_accuracy']:.4f}")
    return metrics


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sar.train",
        description="Train an smp segmentation model with SAR from a JSON config, in one"
        " process or under torchrun (torchrun --nproc_per_node=N -m sar.train --config ...).",
    )
    parser.add_argument("--config", required=True, help="JSON run config, e.g. configs/*.json")
    parser.add_argument("--output-dir", help="overrides output_dir of the config")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config values, e.g. --set train.epochs=2 data.size=32")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = load_run_config(args.config, args.set, args.output_dir)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    env = distributed.init_distributed(config.train.device)
    try:
        run(config, env)
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
