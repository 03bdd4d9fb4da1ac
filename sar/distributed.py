"""Distributed data-parallel glue for :func:`sar.train.fit`, launched by ``torchrun``.

One process per device: :func:`init_distributed` reads torchrun's environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and joins the process group
(NCCL on CUDA, one GPU per local rank; gloo on the CPU). :func:`prepare_model` turns the
network's BatchNorm into synchronised BatchNorm, leaving the SAR projector alone, and wraps the
model in ``DistributedDataParallel``; :func:`distributed_loader` shards the data with a
``DistributedSampler``. Without torchrun every function here degrades to the single-process
case, so the same code runs on a laptop and on a cluster.

Why the SAR state needs no extra communication: the anchors are drawn from a seeded generator
and live in a buffer (DDP also broadcasts buffers from rank 0), the projector's parameters are
kept identical by DDP's gradient all-reduce, so the projected anchors, the gate and the EMA are
computed from rank-identical values on every rank. :func:`assert_in_sync` checks it.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .models import RegularizedModel
from .regularizer import SemanticAnchorRegularizer

T = TypeVar("T")


# ------------------------------------------------------------------------- process group
@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: ``rank`` of ``world_size``, its ``local_rank`` and device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when torchrun (or another env:// launcher) set ``RANK`` and ``WORLD_SIZE``."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _pick_device(local_rank: int, device: str | None) -> torch.device:
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if not use_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was asked for but no CUDA device is visible")
    if local_rank >= torch.cuda.device_count():
        raise RuntimeError(
            f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s) are"
            " visible: start at most that many processes per node (--nproc_per_node)"
        )
    return torch.device("cuda", local_rank)


def init_distributed(device: str | None = None) -> DistEnv:
    """Join the process group that torchrun describes, or describe a single process.

    Args:
        device: ``None`` picks CUDA when visible, else the CPU; ``"cpu"`` forces the CPU
            (gloo) even on a GPU machine; ``"cuda"`` insists on a GPU.

    Returns:
        The :class:`DistEnv` of this process. Under torchrun the backend is NCCL on CUDA (one
        GPU per local rank, made the current device) and gloo on the CPU.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        chosen = _pick_device(0, device)
        if chosen.type == "cuda":
            # a lone process still honours CUDA_VISIBLE_DEVICES and the default device
            chosen = torch.device("cuda", torch.cuda.current_device())
        return DistEnv(device=chosen)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    chosen = _pick_device(local_rank, device)
    backend = "nccl" if chosen.type == "cuda" else "gloo"
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        # device_id binds NCCL to this rank's GPU up front (no guessing at the first barrier)
        dist.init_process_group(backend, device_id=chosen if chosen.type == "cuda" else None)
    return DistEnv(rank, world, local_rank, chosen, backend)


def cleanup() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


@contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. to download weights into a shared cache), then the
    others, so they find the files instead of racing to write them."""
    if not is_main_process():
        barrier()
    try:
        yield
    finally:
        if is_main_process():
            barrier()


# ---------------------------------------------------------------------------- collectives
def _collective_device() -> torch.device:
    """NCCL only moves CUDA tensors; gloo moves CPU ones."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over ranks (a new tensor, same shape, on ``values``'s device)."""
    if get_world_size() == 1:
        return values
    total = values.detach().to(_collective_device(), torch.float64)
    dist.all_reduce(total)  # SUM: gloo has no AVG
    return (total / get_world_size()).to(values.device, values.dtype)


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (one tiny all-reduce)."""
    if get_world_size() == 1:
        return flag
    value = torch.tensor([float(flag)], device=_collective_device())
    dist.all_reduce(value)
    return bool(value.item() > 0)


def gather_objects(obj: T) -> list[T]:
    """``obj`` from every rank, in rank order (pickled: keep it small)."""
    if get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_tensor(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's copy of a same-shaped ``tensor``, in rank order, on its device.

    bool tensors travel as uint8 (gloo has no bool) and come back as bool.
    """
    if get_world_size() == 1:
        return [tensor.detach()]
    sent = tensor.detach().to(_collective_device())
    sent = sent.to(torch.uint8) if sent.dtype == torch.bool else sent.contiguous()
    out = [torch.empty_like(sent) for _ in range(get_world_size())]
    dist.all_gather(out, sent)
    return [t.to(tensor.device, tensor.dtype) for t in out]


def out_of_sync(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the tensors whose value differs (bitwise) between ranks; ``[]`` when in sync.

    Gathers whole tensors: meant for small state such as a regulariser's anchors, EMA and
    gate, not a whole network. Every rank must pass the same names in the same order.
    """
    return [name for name, tensor in tensors.items()
            if not all(torch.equal(other, tensor.detach()) for other in gather_tensor(tensor))]


def assert_in_sync(tensors: Mapping[str, torch.Tensor], what: str = "state") -> None:
    """Raise ``RuntimeError`` on every rank if any of ``tensors`` differs between ranks."""
    if bad := out_of_sync(tensors):
        raise RuntimeError(f"{what} differs between ranks: {', '.join(bad)}")


# ----------------------------------------------------------------------------- BatchNorm
class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks: ``y = sum_r x_r`` on every rank, so the gradient of
    ``x_r`` is the sum over ranks of the gradients of ``y`` (each rank's loss uses ``y``)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


class CPUSyncBatchNorm(_BatchNorm):
    """Synchronised BatchNorm for CPU tensors (gloo), for CPU-only DDP and its tests.

    PyTorch's ``nn.SyncBatchNorm`` has kernels only for accelerators (and DDP refuses it on
    the CPU). This computes the global batch statistics with two differentiable all-reduces
    (the sums, then the squared deviations from the global mean, more accurate than
    ``E[x^2] - E[x]^2``); the all-reduce's backward sums every rank's gradient, which is what
    the global mean and variance need. In eval mode or in one process it is plain BatchNorm;
    parameters, buffers and state_dict keys are BatchNorm's. Input ``(B, C, *)``.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or get_world_size() == 1:
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        shape = (1, -1) + (1,) * (input.dim() - 2)
        count = torch.full((1,), input.numel() / input.shape[1], dtype=input.dtype)
        sums = _AllReduceSum.apply(torch.cat([input.sum(dims), count]))
        n = sums[-1].detach()
        mean = sums[:-1] / n
        centred = input - mean.view(shape)
        var = _AllReduceSum.apply(centred.pow(2).sum(dims)) / n
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * n / max(float(n) - 1, 1))
        return out

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        """The same update as ``F.batch_norm`` (running var from the unbiased variance)."""
        self.num_batches_tracked.add_(1)
        factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                  else self.momentum)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), factor)


def _to_sync(bn: _BatchNorm, cls: type[_BatchNorm]) -> _BatchNorm:
    """A ``cls`` sharing ``bn``'s parameters and buffers (so its state_dict keys match)."""
    sync = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    if bn.affine:
        sync.weight, sync.bias = bn.weight, bn.bias
    sync.running_mean, sync.running_var = bn.running_mean, bn.running_var
    sync.num_batches_tracked = bn.num_batches_tracked
    sync.train(bn.training)
    return sync


def convert_sync_batchnorm(module: nn.Module, device: torch.device | None = None) -> nn.Module:
    """Replace the BatchNorm layers of ``module`` by synchronised ones, in place.

    ``nn.SyncBatchNorm`` for a CUDA ``device``, :class:`CPUSyncBatchNorm` otherwise. A
    :class:`~sar.models.RegularizedModel` has only its network converted, and a
    :class:`~sar.regularizer.SemanticAnchorRegularizer` anywhere is left as it is: the
    projector's BatchNorm normalises the C anchor rows, which are the same on every rank, so
    its local statistics already are the global ones. Syncing them would add six collectives
    per step for nothing, and the anchor branch must stay free of collectives so that a rank
    that stops in it (e.g. on a bad input) cannot leave the others waiting.

    Returns ``module`` (a new object only when ``module`` itself is a BatchNorm).
    """
    cls = nn.SyncBatchNorm if device is not None and device.type == "cuda" else CPUSyncBatchNorm
    if isinstance(module, RegularizedModel):
        module.model = convert_sync_batchnorm(module.model, device)
        return module
    if isinstance(module, SemanticAnchorRegularizer | nn.SyncBatchNorm | CPUSyncBatchNorm):
        return module
    if isinstance(module, _BatchNorm):
        return _to_sync(module, cls)
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, device))
    return module


# ------------------------------------------------------------------------- model and data
def prepare_model(
    model: nn.Module,
    env: DistEnv,
    *,
    sync_batchnorm: bool = True,
    find_unused_parameters: bool = False,
    sync_buffers: bool = True,
) -> nn.Module:
    """Move ``model`` to ``env.device``; when distributed, sync its BN and wrap it in DDP.

    Args:
        sync_batchnorm: global BN statistics over all ranks (see
            :func:`convert_sync_batchnorm`), so a per-rank batch ``b`` on ``N`` ranks trains
            like one batch of ``N * b``.
        find_unused_parameters: needed when the model holds parameters that its forward
            never uses (e.g. an smp encoder built with ``encoder_depth < 5`` keeps its deeper
            stages); DDP names them in its error otherwise.
        sync_buffers: DDP copies rank 0's buffers (BN statistics, SAR anchors, EMA and gate)
            to every rank before each forward. They are computed identically anyway; this
            guards against ranks on different hardware rounding a gate decision apart. With
            ``False`` nothing but the seeds makes the buffers agree (the tests use it to show
            that they do).

    Returns:
        The model itself in a single process, else ``DistributedDataParallel(model)``:
        calling it with ``(x, labels)`` passes both through to a ``RegularizedModel``, and
        :func:`sar.train.fit` looks through ``.module`` for the regulariser.
    """
    model.to(env.device)
    if not env.distributed:
        return model
    if sync_batchnorm:
        model = convert_sync_batchnorm(model, env.device)
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids,
                                   find_unused_parameters=find_unused_parameters,
                                   **_buffer_sync_option(sync_buffers))


def _buffer_sync_option(sync: bool) -> dict[str, bool]:
    """DDP's per-forward buffer sync flag under its current name (renamed in torch 2.14)."""
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        return {"forward_sync_buffers": sync}
    return {"broadcast_buffers": sync}


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside every wrapper around it; a model without one as it is.

    Looks through ``DistributedDataParallel``, ``nn.DataParallel``,
    ``torch.optim.swa_utils.AveragedModel`` (``.module``) and ``torch.compile``'s
    ``OptimizedModule`` (``._orig_mod``), nested in any order, e.g. ``DDP(torch.compile(m))``.
    The one place where :func:`sar.train.fit`, ``evaluate``, the checkpoints and
    ``resolve_ignore_index`` find the :class:`~sar.models.RegularizedModel` and the state.
    """
    while True:
        if isinstance(model, DistributedDataParallel | nn.DataParallel | AveragedModel):
            model = model.module
        elif _is_compiled(model):
            model = model._orig_mod
        else:
            return model


def _is_compiled(model: nn.Module) -> bool:
    """``torch.compile(model)``'s wrapper; checked without importing dynamo (over 1 s)."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # no wrapper exists before it
    return eval_frame is not None and isinstance(model, eval_frame.OptimizedModule)


def distributed_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    env: DistEnv | None = None,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = True,
    num_workers: int = 0,
) -> DataLoader:
    """A loader over this rank's shard of ``dataset``, ``batch_size`` items per step.

    Always a ``DistributedSampler`` (one replica in a single process), so a run on ``N``
    ranks with batch ``b`` sees the same global batches, in the same order, as one process
    with batch ``N * b``. The order depends on ``seed`` and the epoch; :func:`sar.train.fit`
    calls ``sampler.set_epoch`` at each epoch. ``drop_last`` drops a final short batch (BN
    cannot train on a batch of one). Workers (``num_workers > 0``) start afresh each epoch,
    seeded from the RNG that a checkpoint saves: persistent workers would carry their random
    streams from epoch to epoch in an uninterrupted run but not across a resume, so a resumed
    run's augmentations would differ.
    """
    env = env or DistEnv()
    per_step = env.world_size * batch_size
    if drop_last and len(dataset) < per_step:
        raise ValueError(
            f"the dataset has {len(dataset)} items, fewer than one step needs"
            f" ({env.world_size} rank(s) x batch_size {batch_size}): use a smaller batch_size"
            " or fewer processes"
        )
    sampler = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank,
                                 shuffle=shuffle, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      num_workers=num_workers, pin_memory=env.device.type == "cuda",
                      persistent_workers=False)
