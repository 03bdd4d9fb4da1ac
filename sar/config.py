"""Run-time switches shared by the package, the notebooks and the experiments.

Smoke mode is read here and nowhere else: it is on when ``SAR_SMOKE`` or ``CI`` is set
to anything but an empty string, ``0`` or ``false``. Notebooks shrink their work inline,
e.g. ``EPOCHS = 1 if SMOKE else 30``.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

_FALSE = {"", "0", "false", "no", "off"}


def smoke_mode() -> bool:
    """True when ``SAR_SMOKE`` or ``CI`` asks for a short run (read each time it is called)."""
    values = (os.environ.get(name, "") for name in ("SAR_SMOKE", "CI"))
    return any(value.strip().lower() not in _FALSE for value in values)


SMOKE: bool = smoke_mode()


def show_progress(progress: bool) -> bool:
    """``progress``, unless ``TQDM_DISABLE`` is set: tqdm ignores that variable when a caller
    passes ``disable`` itself, so executing a notebook with it would still store the bars."""
    return progress and os.environ.get("TQDM_DISABLE", "").strip().lower() in _FALSE


def seed_everything(seed: int, deterministic: bool = True) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (CPU and CUDA); return a ``torch.Generator`` seeded alike.

    With ``deterministic=True`` cuDNN autotuning is switched off so runs repeat on a GPU too.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - libraries still draw from the global state
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return torch.Generator().manual_seed(seed)


def default_device() -> torch.device:
    """CUDA when a GPU is visible, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
