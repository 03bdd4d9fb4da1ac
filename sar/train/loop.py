"""The training loop, :func:`fit`: cross-entropy plus the regulariser's loss, logged, checkpointed,
resumable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler
from tqdm.auto import tqdm

from .. import distributed
from ..config import default_device, show_progress
from ..distributed import unwrap
from ..labels import AUTO, resolve_ignore_index
from ..models import RegularizedModel
from .checkpoint import PathLike, _records, _rng_state, load_checkpoint, save_checkpoint
from .evaluation import _batch, input_dtype
from .optim import OPTIMIZERS, SCHEDULES, _amp_dtype, _make_optimizer, _total_steps, lr_factor

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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
        self.input_dtype = input_dtype(model)  # a .half()/.bfloat16() model gets its own dtype

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
        x, y = _batch(batch, self.device, self.input_dtype)
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
    ignore_index: int | None | str = AUTO,
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
    ``criterion(model(x), y)``. Labels are integer class ids, ``(B,)`` for classification or
    ``(B, H, W)`` (or ``(B, 1, H, W)``) for segmentation; floating-point labels are refused.

    Args:
        epochs, max_steps: the run lasts ``min(epochs * len(train_loader), max_steps)`` steps.
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adamw"``, over all trainable
            parameters, the regulariser's projector included.
        schedule: per-step ``"cosine"``, ``"poly"`` (power 0.9) or ``"constant"``, after a
            linear warm-up of ``warmup_steps`` (see :func:`lr_factor`).
        criterion: defaults to :class:`IgnoreSafeCrossEntropy` with ``ignore_index`` (a batch
            with only ignored labels adds 0, not NaN), or e.g.
            :class:`~sar.baselines.LogitAdjustedCrossEntropy`.
        ignore_index: ``"auto"`` takes the wrapped regulariser's (255 for a model without
            one); an explicit value must agree with it; ``None`` ignores nothing.
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
        TypeError: floating-point labels (e.g. masks through ``ToTensor``).
        ValueError: an ``ignore_index`` that disagrees with the regulariser's, or that is a
            class id under the default criterion.
    """
    ignore_index = resolve_ignore_index(model, ignore_index)
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
    trainer.bar = tqdm(total=trainer.total_steps, initial=trainer.step, desc="fit", unit="step",
                       disable=not show_progress(progress), dynamic_ncols=True)
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
