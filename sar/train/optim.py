"""Optimisers, learning-rate schedules (cosine, poly, constant, with linear warm-up) and the mixed-
precision dtype.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adamw")


SCHEDULES = ("cosine", "poly", "constant")


POLY_POWER = 0.9


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


def _total_steps(loader: Iterable, epochs: int, max_steps: int | None,
                 accumulate: int = 1) -> int:
    """Optimiser steps of a run: ``epochs`` of ``ceil(len(loader) / accumulate)``, at most
    ``max_steps``."""
    try:
        planned = epochs * -(-len(loader) // accumulate)  # type: ignore[arg-type]
    except TypeError:
        if max_steps is None:
            raise TypeError("the loader has no len(); pass max_steps") from None
        return max_steps
    return planned if max_steps is None else min(planned, max_steps)
