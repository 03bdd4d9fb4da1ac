"""Atomic checkpoints that resume exactly: weights, optimiser, schedule, history and every RNG
state.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from .. import distributed
from ..distributed import unwrap
from ..files import atomic_torch_save

CHECKPOINT_VERSION = 1


PathLike = str | os.PathLike[str]


# ---------------------------------------------------------------------------- checkpoints
def _rng_state(loader: Any = None) -> dict[str, Any]:
    """Python, NumPy, torch (CPU, CUDA) and loader (and sampler) generator RNG states,
    torch-loadable."""
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
    for name, generator in _loader_generators(loader).items():
        state[name] = generator.get_state()
    return state


def _loader_generators(loader: Any) -> dict[str, torch.Generator]:
    """The loader's generator, and its sampler's when that has one of its own (e.g.
    ``WeightedRandomSampler(..., generator=g)``): both draw the order of the batches."""
    found = {"loader": getattr(loader, "generator", None)}
    batch_sampler = getattr(loader, "batch_sampler", None)
    for owner in (getattr(loader, "sampler", None), getattr(batch_sampler, "sampler", None)):
        sampler_generator = getattr(owner, "generator", None)
        if sampler_generator is not found["loader"]:
            found.setdefault("sampler", sampler_generator)
    return {name: g for name, g in found.items() if isinstance(g, torch.Generator)}


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
    for name, generator in _loader_generators(loader).items():
        if name in state:
            generator.set_state(state[name])


def _own_rng_state(payload: Mapping[str, Any], key: str = "rng",
                   warn: bool = True) -> Mapping[str, Any] | None:
    """This rank's RNG states ``payload[key]`` (``"rng"``: at the save; ``"epoch_rng"``: at the
    start of the epoch it stopped in) from a checkpoint payload."""
    ranks, world = payload.get(f"{key}_ranks"), distributed.get_world_size()
    if ranks is not None and len(ranks) == world:
        return ranks[distributed.get_rank()]
    if warn and (world > 1 or ranks is not None):
        warnings.warn(f"the checkpoint holds RNG states of {len(ranks or [0])} rank(s), this run"
                      f" has {world}: every rank restarts from rank 0's, so the resumed run is"
                      " not bit-exact", stacklevel=3)
    return payload.get(key)


def _records(history: pd.DataFrame | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(history, pd.DataFrame):
        return history.to_dict("records")
    return [dict(row) for row in history]


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
    batches_into_epoch: int = 0,
    epoch_rng: Mapping[str, Any] | None = None,
    rank_epoch_rng: Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    """Atomically save everything needed to resume training exactly.

    Holds the model ``state_dict`` (for a SAR model: anchors, projector, semantic-anchor EMA
    and gate buffers; every wrapper, DDP or ``torch.compile``, is looked through, so the keys
    are the same with or without one), optimiser, scheduler and GradScaler states, ``step``
    (optimiser steps done), ``epoch`` (epochs done), the history rows, ``len(loader)`` when it
    has one, and the Python/NumPy/torch/CUDA RNG states plus the states of
    ``loader.generator`` and of its sampler's own generator, when they exist. ``rank_rng``
    holds every rank's RNG states in a distributed run (rank ``r`` restores entry ``r``).

    A run stopped inside an epoch (``max_steps``) also records ``batches_into_epoch``, the
    batches of epoch ``epoch`` (0-based) already trained, and ``epoch_rng``, the RNG states
    from just before that epoch's loader was iterated (``rank_epoch_rng``: every rank's), so
    that a resume can draw the same batch order again and continue after those batches.
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
        "batches_into_epoch": int(batches_into_epoch),
        "batches_per_epoch": _length(loader),
        "epoch_rng": epoch_rng,
        "epoch_rng_ranks": list(rank_epoch_rng) if rank_epoch_rng is not None else None,
    }
    path = Path(path)
    atomic_torch_save(payload, path)
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
        ``{"step": int, "epoch": int, "history": DataFrame}`` plus the position inside an
        epoch (see :func:`save_checkpoint`): ``"batches_into_epoch"`` (0 at an epoch's end),
        ``"batches_per_epoch"`` (``None`` if unknown), and this rank's RNG states ``"rng"``
        (at the save) and ``"epoch_rng"`` (``None`` at an epoch's end).
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
    rng = _own_rng_state(payload)
    if restore_rng:
        _set_rng_state(rng, loader)
    return {"step": payload["step"], "epoch": payload["epoch"],
            "history": pd.DataFrame(payload["history"]),
            # checkpoints from before mid-epoch positions were recorded hold none
            "batches_into_epoch": payload.get("batches_into_epoch", 0),
            "batches_per_epoch": payload.get("batches_per_epoch"),
            "rng": rng, "epoch_rng": _own_rng_state(payload, "epoch_rng", warn=False)}


def _length(loader: Any) -> int | None:
    """``len(loader)``; ``None`` for a loader without one (an IterableDataset's)."""
    try:
        return len(loader)
    except TypeError:
        return None


def check_resumable(state: Mapping[str, Any], loader: Iterable) -> None:
    """Refuse (inside an epoch) or warn about (at an epoch's end) a loader of another length,
    and warn about workers that persist across epochs: neither resumes exactly."""
    written, now = state["batches_per_epoch"], _length(loader)
    if written is not None and now is not None and written != now:
        changed = (f"the checkpoint was written with a loader of {written} batches per epoch,"
                   f" this one has {now} (another batch_size, dataset, drop_last or number of"
                   " ranks?)")
        if state["batches_into_epoch"]:
            raise ValueError(
                f"{changed}; it stopped {state['batches_into_epoch']} batches into epoch"
                f" {state['epoch'] + 1}, and another loader cannot continue that epoch where it"
                " stopped: resume with the loader it was written with"
            )
        warnings.warn(f"{changed}: steps and the lr schedule count this loader's batches, so"
                      " the resumed run is not the one that was planned", stacklevel=3)
    if getattr(loader, "num_workers", 0) > 0 and getattr(loader, "persistent_workers", False):
        warnings.warn(
            "the loader's workers persist across epochs (persistent_workers=True): their"
            " random streams run on in an uninterrupted run but start afresh after a resume,"
            " so random augmentations differ and the resumed run is not bit-exact; build the"
            " loader with persistent_workers=False (sar.distributed.distributed_loader does)",
            stacklevel=3)
