"""Encoder weights made in this repository: a ``state_dict`` file and a JSON sidecar beside it.

``python -m sar.pretrain`` writes ``data/encoders/<name>.pt`` (the smp encoder's
``state_dict``, loadable with ``torch.load(..., weights_only=True)``) and
``data/encoders/<name>.pt.json``: the file's SHA-256, the command that made it, the torch and
smp versions, the training budget and the final train accuracy.
:func:`sar.models.build_smp_model` loads such a file when ``encoder_weights`` is its path,
after checking the checksum against the sidecar (when there is one), so a result row that
names the checksum names the exact weights it started from.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from .files import atomic_torch_save

WEIGHT_SUFFIXES = (".pt", ".pth")
PathLike = str | os.PathLike


def is_weights_path(value: object) -> bool:
    """True when ``encoder_weights`` names a file rather than an smp weight set.

    A ``Path``, or a string that contains a path separator or ends in ``.pt``/``.pth``, is a
    file; any other string (``"imagenet"``, ``"ssl"``, ...) is an smp weight-set name.
    """
    if isinstance(value, os.PathLike):
        return True
    if not isinstance(value, str):
        return False
    return "/" in value or os.sep in value or value.endswith(WEIGHT_SUFFIXES)


def sidecar_path(path: PathLike) -> Path:
    """The JSON sidecar of a weights file: ``<file>.json`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def sha256_of(path: PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pretrain_command(encoder_name: str, path: PathLike) -> str:
    """The command that makes the weights file ``path`` for ``encoder_name``."""
    return f"python -m sar.pretrain --encoder {encoder_name} --out {path}"


def save_encoder_weights(
    state_dict: dict[str, torch.Tensor], path: PathLike, metadata: dict[str, Any]
) -> dict[str, Any]:
    """Write ``state_dict`` to ``path`` and its sidecar; return the sidecar's content.

    The file is written to a temporary name first and renamed, so a killed process never
    leaves a half-written file. The sidecar holds ``metadata`` plus ``file`` (the name) and
    ``sha256``.
    """
    path = atomic_torch_save({k: v.detach().cpu() for k, v in state_dict.items()}, path)
    record = {**metadata, "file": path.name, "sha256": sha256_of(path)}
    sidecar_path(path).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def read_sidecar(path: PathLike) -> dict[str, Any] | None:
    """The sidecar of weights file ``path`` as a dict, or ``None`` when there is none."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return None
    try:
        return json.loads(sidecar.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"the sidecar {sidecar} is not valid JSON ({err}); delete it and"
                         f" {Path(path).name} and make them again") from err


def verify_encoder_weights(path: PathLike, encoder_name: str | None = None
                           ) -> dict[str, Any] | None:
    """Check a weights file before use; return its sidecar (``None`` without one).

    Raises:
        FileNotFoundError: no such file; the message gives the command that makes it.
        ValueError: the file's SHA-256 differs from the sidecar's (changed or corrupted after
            it was made), or the sidecar names another encoder than ``encoder_name``.
    """
    path = Path(path)
    if not path.is_file():
        name = encoder_name or "resnet18"
        raise FileNotFoundError(
            f"no encoder weights at {path}. Make them (about 20 minutes on a 2-core CPU) with\n"
            f"  {pretrain_command(name, path)}\n"
            "or pass encoder_weights=None for a randomly initialised encoder"
        )
    record = read_sidecar(path)
    if record is None:
        return None
    actual = sha256_of(path)
    if actual != record.get("sha256"):
        remake = pretrain_command(record.get("encoder") or encoder_name or "resnet18", path)
        made_by = f" (it was made by `{record['command']}`)" if record.get("command") else ""
        raise ValueError(
            f"{path} does not match its sidecar {sidecar_path(path).name}: SHA-256 {actual}"
            f" but the sidecar records {record.get('sha256')}. The file changed after it was"
            f" made; make it again with `{remake}`{made_by}"
        )
    made_for = record.get("encoder")
    if encoder_name is not None and made_for is not None and made_for != encoder_name:
        raise ValueError(
            f"{path} holds a {made_for} encoder, but the model asks for {encoder_name}:"
            f" build it with encoder_name={made_for!r} or pretrain a {encoder_name}"
        )
    return record


def load_encoder_weights(
    path: PathLike, encoder_name: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The ``state_dict`` in ``path`` and its sidecar (``None`` without one), checked first by
    :func:`verify_encoder_weights` (whose errors it raises).

    Raises:
        ValueError: also when the file is not a readable ``state_dict`` (truncated, or not
            made by ``torch.save``).
    """
    record = verify_encoder_weights(path, encoder_name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch's message (chained) suggests weights_only=False: not here
        remake = pretrain_command(encoder_name or "resnet18", path)
        raise ValueError(f"{path} is not a readable weights file ({type(err).__name__}); delete"
                         f" it and make it again with `{remake}`") from err
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state_dict")
    return state, record
