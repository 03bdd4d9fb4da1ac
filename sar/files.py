"""Atomic writes: a file is written under a temporary name beside its target and then renamed,
so a crash or a killed process never leaves half a checkpoint, cache entry or weights file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj, path)``, atomically (the old file, if any, stays intact on failure).

    Raises whatever ``torch.save`` or the file system raises; the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
