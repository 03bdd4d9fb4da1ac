"""Atomic checkpoints that resume exactly: weights, optimiser, schedule, history and every RNG
state.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Mapping, Sequence
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
