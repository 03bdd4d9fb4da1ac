"""The training loop, :func:`fit`: cross-entropy plus the regulariser's loss, logged, checkpointed,
resumable.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack
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
from ..labels import AUTO, regularizer_ignore_index, resolve_ignore_index
from ..models import RegularizedModel
from ..regularizer import no_anchor_update
from .checkpoint import (
    PathLike,
    _length,
    _records,
    _rng_state,
    _set_rng_state,
    check_resumable,
    load_checkpoint,
    save_checkpoint,
)
from .criterion import Criterion, task_criterion
from .evaluation import _batch, input_dtype
from .modes import FreezeBN, frozen_batchnorms, modes_kept, set_training, warn_unfrozen_bn
from .optim import OPTIMIZERS, SCHEDULES, _amp_dtype, _make_optimizer, _total_steps, lr_factor

_END = object()  # what next() gives for a loader that has run out


# --------------------------------------------------------------------------------- fitting
def _history_key(name: str) -> str:
    # the regulariser's own "loss" would collide with the total loss column
    return "reg_loss" if name == "loss" else name


def _check_logits(logits: Any) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"the model returned a {type(logits).__name__}, not one logits tensor, so fit cannot"
            " score it: a model with several outputs (timm's set_distilled_training(True), an"
            " auxiliary head) needs its own training loop, or set it to return one tensor"
            " (set_distilled_training(False), aux_logits=False)"
        )


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
        self.accumulate = 1
        self.bar: tqdm | None = None
        self.checkpoint: Path | None = None
        self.epoch_rng: dict[str, Any] | None = None  # the RNG states as this epoch began
        # fit accepts a wrapped model (DDP, torch.compile, ...): the regulariser is inside
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
            _check_logits(logits)
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

    def train_step(self, micro_batches: list[Any], epoch: int) -> None:
        """One optimiser step over ``micro_batches`` (one batch, or ``accumulate`` of them):
        their gradients summed with each loss divided by their number, SAR's gate and EMA
        advanced on the first only (:func:`~sar.no_anchor_update`), DDP's gradient sync on the
        last only (``no_sync``). The logged values are the micro-batches' mean."""
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        count, logged = len(micro_batches), None
        for index, batch in enumerate(micro_batches):
            x, y = _batch(batch, self.device, self.input_dtype)
            with self._micro_batch(index, count):
                task, loss, reg = self._finite_losses(x, y, epoch, lr)
                self.scaler.scale(loss / count if count > 1 else loss).backward()
            values = torch.stack([v.detach().float() for v in (task, loss, *reg.values())])
            logged = values if logged is None else logged + values
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.step % self.log_every == 0:
            self._log(epoch, lr, list(reg), logged / count if count > 1 else logged)
        self.step += 1
        if self.bar is not None:
            self.bar.update(1)

    def _micro_batch(self, index: int, count: int) -> ExitStack:
        stack = ExitStack()
        if index > 0:
            stack.enter_context(no_anchor_update(self.model))
        if index < count - 1 and hasattr(self.model, "no_sync"):
            stack.enter_context(self.model.no_sync())  # DDP: sync once, on the last
        return stack

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

    def _log(self, epoch: int, lr: float, reg_keys: list[str], stacked: torch.Tensor) -> None:
        """One history row from ``stacked``: the task loss, the total loss and the
        regulariser's ``reg_keys`` values, in that order."""
        names = ["task_loss", "loss", *(_history_key(k) for k in reg_keys)]
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

    def epoch_batches(self, loader: Iterable,
                      resumed: Mapping[str, Any] | None) -> tuple[Iterator, int]:
        """This epoch's batches and how many of them are already trained.

        On a resume inside the epoch: the RNG states of the epoch's start again, so the loader
        draws the same order (and worker seeds), the trained batches read and skipped, then
        the RNG states of the stop, so the rest runs as in an uninterrupted run.
        """
        skip = resumed["batches_into_epoch"] if resumed is not None else 0
        if skip:
            _set_rng_state(resumed["epoch_rng"], loader)
        self.epoch_rng = _rng_state(loader)
        batches = iter(loader)
        for done in range(skip):
            if next(batches, _END) is _END:
                raise ValueError(
                    f"the loader ran out after {done} batches, but the checkpoint stopped"
                    f" {skip} batches into this epoch: resume with the loader it was written"
                    " with (same dataset, batch_size, drop_last and ranks)"
                )
        if skip:
            _set_rng_state(resumed["rng"], loader)
        return batches, skip

    def run_epoch(self, batches: Iterator, epoch: int, done: int,
                  length: int | None) -> tuple[int, bool]:
        """Train until the batches or the step budget run out; return the batches done in
        this epoch and whether the epoch ended.

        No batch is drawn past the budget (drawing one would move the RNG that a resumed run
        must find as the stop left it), except after the epoch's last: the loader is then
        drawn once more to end, as an uninterrupted run ends it (a shuffling sampler draws
        from its generator there). With ``accumulate`` each step takes that many batches; the
        epoch's last step takes the batches that are left.
        """
        while self.step < self.total_steps:
            micro_batches = []
            while len(micro_batches) < self.accumulate:
                batch = next(batches, _END)
                if batch is _END:
                    break
                micro_batches.append(batch)
            if micro_batches:
                self.train_step(micro_batches, epoch)
                done += len(micro_batches)
            if len(micro_batches) < self.accumulate:
                return done, True
        return done, done == length and next(batches, _END) is _END


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
    freeze_bn: FreezeBN = False,
    ce_mean_over: str = "labelled",
    accumulate: int = 1,
) -> pd.DataFrame:
    """Train ``model`` on ``(inputs, labels)`` batches; return the history.

    For a :class:`~sar.models.RegularizedModel` the loss is ``criterion(logits, y) +
    losses["loss"]`` with ``logits, losses = model(x, y)``; for any other module it is
    ``criterion(model(x), y)``. Labels are integer class ids, ``(B,)`` for classification or
    ``(B, H, W)`` (or ``(B, 1, H, W)``) for segmentation; floating-point labels are refused.

    Args:
        epochs, max_steps: the run lasts ``min(epochs * len(train_loader), max_steps)`` steps
            (with ``accumulate``, ``ceil(len(train_loader) / accumulate)`` steps an epoch).
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adamw"``, over all trainable
            parameters, the regulariser's projector included.
        schedule: per-step ``"cosine"``, ``"poly"`` (power 0.9) or ``"constant"``, after a
            linear warm-up of ``warmup_steps`` (see :func:`lr_factor`).
        criterion: defaults to :class:`~sar.train.IgnoreSafeCrossEntropy` with
            ``ignore_index`` (a batch with only ignored labels adds 0, not NaN), or e.g.
            :class:`~sar.baselines.LogitAdjustedCrossEntropy`. A criterion with an
            ``ignore_index`` attribute must agree with the regulariser's (or the explicit
            ``ignore_index``).
        ignore_index: ``"auto"`` takes the wrapped regulariser's (255 for a model without
            one); an explicit value must agree with it; ``None`` ignores nothing.
        ce_mean_over: the default criterion's mean: ``"labelled"`` (PyTorch's, the default)
            or ``"all"`` pixels, void ones included (mmsegmentation 0.29's, which the paper
            configs use); see :class:`~sar.train.IgnoreSafeCrossEntropy`.
        device: defaults to :func:`sar.config.default_device`; the model moves there.
        amp: autocast on CUDA only: ``None``/``True`` bf16 where supported, else fp16 with a
            GradScaler; a dtype forces it; ``False`` off. The CPU always runs in float32.
        checkpoint: file saved atomically at the end of each epoch (and when the run ends).
        resume: continue from ``checkpoint`` if it exists. With the same arguments the
            result equals an uninterrupted run, also with loader workers (when they do not
            persist across epochs: ``persistent_workers=False``, as
            :func:`sar.distributed.distributed_loader` builds them, else a warning). A
            ``max_steps`` stop inside an epoch is recorded as such: a resume with a larger
            budget reads that epoch's trained batches again (same order), skips them and
            trains the rest, as the longer run would have. A different ``epochs`` or
            ``max_steps`` re-plans the schedule over the new length. A loader with another
            number of batches per epoch is refused inside an epoch and warned about at an
            epoch's end.
        progress: show a tqdm bar over steps with the current loss.
        log_every: log one history row every this many steps.
        on_epoch_end: called as ``on_epoch_end(epoch, model)`` after each epoch (1-based
            epoch count, model in training mode), e.g. to snapshot features for a plot; also
            after a last epoch cut short by ``max_steps``.
        freeze_bn: BatchNorm layers kept in eval mode throughout (their running statistics
            stay as loaded; e.g. fine-tuning with a frozen encoder, mmsegmentation's
            ``norm_eval``). ``False``: every module trains. ``True``: every BatchNorm whose
            weight and bias have ``requires_grad=False``. A module or list of modules: every
            BatchNorm inside them. The regulariser's own BatchNorm always trains. Without it,
            a BatchNorm put in eval by hand is warned about: ``model.train()`` would update
            it. Each module's train/eval mode is restored when ``fit`` returns.
        accumulate: batches per optimiser step (gradient accumulation): their gradients are
            summed with each loss divided by their number, so ``accumulate=4`` with batches of
            16 steps like batches of 64 would (BatchNorm aside, which normalises each batch
            of 16). A step is one optimiser step: ``max_steps``, the schedule, ``log_every``
            and the history count steps, and an epoch has ``ceil(len(loader) / accumulate)``
            of them (the last takes the batches left). SAR's gate and EMA advance once per
            step, on its first batch, as in the authors' code (the other batches run under
            :func:`~sar.no_anchor_update`); under DDP the gradients sync on the last batch.

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
        ValueError: an ``ignore_index`` that disagrees with the regulariser's or the
            criterion's, or that is a class id under the default criterion; ``ce_mean_over``
            with a criterion of your own; ``freeze_bn`` that selects no BatchNorm; a resume
            inside an epoch with a loader of another length.
    """
    binding = ignore_index != AUTO or regularizer_ignore_index(model) is not None
    ignore_index = resolve_ignore_index(model, ignore_index)
    _check_fit_args(optimizer, schedule, epochs, log_every, warmup_steps, checkpoint, resume)
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise ValueError(f"accumulate must be an int >= 1 (batches per optimiser step), got"
                         f" {accumulate!r}")
    frozen = frozen_batchnorms(model, freeze_bn)
    warn_unfrozen_bn(model, frozen)
    device = torch.device(device) if device is not None else default_device()
    model.to(device)
    criterion = task_criterion(criterion, ignore_index, ce_mean_over, binding)
    if isinstance(criterion, nn.Module):
        criterion.to(device)
    total = _total_steps(train_loader, epochs, max_steps, accumulate)
    opt = _make_optimizer(model, optimizer, lr, momentum, weight_decay)
    sched = LambdaLR(opt, lambda s: lr_factor(s, total, schedule, warmup_steps))
    amp_dtype = _amp_dtype(device, amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    default_ce = isinstance(criterion, nn.CrossEntropyLoss) and ignore_index is not None
    trainer = _Trainer(model, opt, sched, scaler, criterion, device, amp_dtype, total, log_every,
                       ignore_index if default_ce else None)
    trainer.checkpoint = Path(checkpoint) if checkpoint is not None else None
    trainer.accumulate = accumulate

    resumed = None
    if resume and trainer.checkpoint.exists():
        resumed = load_checkpoint(trainer.checkpoint, model, opt, sched, scaler=scaler,
                                  restore_rng=False)
        check_resumable(resumed, train_loader)
        trainer.step, trainer.history = resumed["step"], _records(resumed["history"])
    with modes_kept(model):
        _train(trainer, train_loader, resumed, epochs,
               progress and distributed.is_main_process(), on_epoch_end, frozen)
    _warn_if_cut_short(trainer)
    return pd.DataFrame(trainer.history)


def _train(trainer: _Trainer, loader: Iterable, resumed: Mapping[str, Any] | None,
           epochs: int, progress: bool, on_epoch_end: Callable[[int, nn.Module], None] | None,
           frozen: list[nn.Module]) -> None:
    model = trainer.model
    start_epoch = resumed["epoch"] if resumed is not None else 0
    if resumed is not None and not resumed["batches_into_epoch"]:
        _set_rng_state(resumed["rng"], loader)  # inside an epoch: see epoch_batches
    set_training(model, frozen)
    trainer.bar = tqdm(total=trainer.total_steps, initial=trainer.step, desc="fit", unit="step",
                       disable=not show_progress(progress), dynamic_ncols=True)
    try:
        for epoch in range(start_epoch, epochs):
            if trainer.step >= trainer.total_steps:
                break
            _set_epoch(loader, epoch)
            batches, done = trainer.epoch_batches(loader,
                                                  resumed if epoch == start_epoch else None)
            done, ended = trainer.run_epoch(batches, epoch, done, _length(loader))
            del batches  # its workers, if any, end here
            if trainer.checkpoint is not None:
                _save_on_main(trainer, loader, epoch + 1 if ended else epoch,
                              0 if ended else done)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, model)
                set_training(model, frozen)
    finally:
        trainer.bar.close()


def _warn_if_cut_short(trainer: _Trainer) -> None:
    if trainer.step < trainer.total_steps:
        warnings.warn(
            f"fit trained {trainer.step} of the {trainer.total_steps} steps it planned: the"
            " loader gave fewer batches than len(loader) x epochs (or max_steps) promised (a"
            " one-shot iterator, or an IterableDataset shorter than its len), so the lr"
            " schedule stopped before its end; give epochs or max_steps that the loader fills",
            stacklevel=3)


def _set_epoch(loader: Iterable, epoch: int) -> None:
    """Reshuffle a ``DistributedSampler`` (it draws its order from seed + epoch)."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def _save_on_main(trainer: _Trainer, loader: Iterable, epochs_done: int,
                  batches_into_epoch: int) -> None:
    """Rank 0 writes the checkpoint, with every rank's RNG states (and, inside an epoch,
    those of the epoch's start); all wait until it exists."""
    epoch_rng = trainer.epoch_rng if batches_into_epoch else None
    rank_rng = rank_epoch_rng = None
    if distributed.get_world_size() > 1:
        states = distributed.gather_objects((_rng_state(loader), epoch_rng))
        rank_rng = [rng for rng, _ in states]
        rank_epoch_rng = [rng for _, rng in states] if batches_into_epoch else None
    if distributed.is_main_process():
        save_checkpoint(trainer.checkpoint, trainer.model, trainer.optimizer, trainer.scheduler,
                        trainer.step, epochs_done, trainer.history, loader,
                        scaler=trainer.scaler, rank_rng=rank_rng,
                        batches_into_epoch=batches_into_epoch, epoch_rng=epoch_rng,
                        rank_epoch_rng=rank_epoch_rng)
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
