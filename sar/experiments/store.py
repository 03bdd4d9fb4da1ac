"""Result rows in CSV files: append, merge, find finished runs; where and on what they ran."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import torch

RESULTS_DIR = Path(__file__).resolve().parents[2] / "results"


KEY = ["experiment", "method", "setting", "seed"]


# ------------------------------------------------------------------------------ bookkeeping
def hardware() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU {platform.machine()} x{torch.get_num_threads()} threads"


def git_commit() -> str:
    """The short commit of the code, with ``-dirty`` if ``sar/`` has uncommitted changes."""
    package = Path(__file__).parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              cwd=package).stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--", ".")
        return git("rev-parse", "--short", "HEAD") + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def keys_by_row(df: pd.DataFrame) -> list[tuple]:
    """The ``(experiment, method, setting, seed)`` key of each row of a results frame, in order."""
    return [(e, m, s, int(seed)) for e, m, s, seed in df[KEY].itertuples(index=False)]


def finished_keys(csv: Path) -> set[tuple]:
    return set(keys_by_row(pd.read_csv(csv, usecols=KEY))) if csv.exists() else set()


def merge_rows(csv: Path, sources: list[Path]) -> int:
    """Append to ``csv`` the rows of ``sources`` whose key it lacks; returns how many were added.

    For a grid split across processes or machines, each writing its own ``--out`` folder:
    a key already present is kept as it is, never overwritten.
    """
    known = finished_keys(csv)
    fresh = []
    for source in sources:
        rows = pd.read_csv(source)
        experiments = set(rows["experiment"])
        if experiments != {csv.stem}:
            raise ValueError(f"{source} holds {sorted(experiments)} rows, not {csv.stem!r} ones")
        keys = keys_by_row(rows)
        fresh.append(rows[[key not in known for key in keys]])
        known |= set(keys)
    added = pd.concat(fresh, ignore_index=True)
    append_rows(csv, added)
    return len(added)


def append_row(csv: Path, row: dict[str, Any]) -> None:
    append_rows(csv, pd.DataFrame([row]))


def append_rows(csv: Path, rows: pd.DataFrame) -> None:
    """Append ``rows``, widening the CSV's columns if they bring new ones. Written to a
    temporary file first, so a process killed mid-write never leaves half a CSV."""
    csv.parent.mkdir(parents=True, exist_ok=True)
    if csv.exists():
        rows = pd.concat([pd.read_csv(csv), rows], ignore_index=True)
    tmp = csv.with_suffix(".tmp")
    rows.to_csv(tmp, index=False)
    tmp.replace(csv)


def load_results(experiment: str, out_dir: Path = RESULTS_DIR) -> pd.DataFrame | None:
    """The rows of ``experiment``'s CSV, or None when it has not been run."""
    csv = Path(out_dir) / f"{experiment}.csv"
    return pd.read_csv(csv) if csv.exists() else None
