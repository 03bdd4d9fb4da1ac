"""Run a grid, skipping the rows its CSV already holds, and report how far each grid is."""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..benchmark import measure as measure_overhead
from ..config import default_device
from .grids import (
    EXPERIMENTS,
    SEGMENTATION_SETUPS,
    TUNED,
    TUNING,
    Run,
    grid_runs,
    segmentation_setup,
    setups,
)
from .report import chosen_settings
from .runs import run_classification, run_segmentation
from .store import (
    KEY,
    RESULTS_DIR,
    append_row,
    finished_keys,
    git_commit,
    hardware,
    keys_by_row,
    load_results,
)


def grid_status(seeds: list[int], out_dir: Path) -> str:
    """Markdown: how much of each grid ``out_dir`` holds, where it ran and how long a run took."""
    lines = ["| experiment | runs done | hardware | minutes per run (median, range) |",
             "|---|---|---|---|"]
    for experiment in EXPERIMENTS:
        runs = grid_runs(experiment, seeds, smoke=False)
        df = load_results(experiment, out_dir)
        done = 0 if df is None else len(set(keys_by_row(df)) & {run.key for run in runs})
        if not done:
            lines.append(f"| {experiment} | 0 of {len(runs)} | – | – |")
            continue
        minutes = df["wall_time_s"] / 60
        machines = ", ".join(sorted(df["hardware"].unique()))
        lines.append(f"| {experiment} | {done} of {len(runs)} | {machines} | {minutes.median():.1f}"
                     f" ({minutes.min():.1f}-{minutes.max():.1f}) |")
    return "\n".join(lines)


def run_grid(experiment: str, seeds: list[int], smoke: bool, out_dir: Path,
             device: torch.device, settings: list[str] | None = None,
             encoder_weights: str | None = None, methods: list[str] | None = None) -> Path:
    """Run every unfinished cell of ``experiment``'s grid, appending rows to its CSV.

    ``settings`` restricts the grid to those settings (a factor such as ``if=1``, an ablation
    name, a segmentation architecture), e.g. to finish one architecture before the next.
    ``methods`` restricts it to those method labels (the ``method`` column), e.g. to split
    one grid between two processes. ``encoder_weights`` replaces a segmentation setup's
    encoder weights file (a path).

    Raises:
        ValueError: a setting or method the grid does not have (the message lists its own).
    """
    csv = out_dir / f"{experiment}.csv"
    runs = grid_runs(experiment, seeds, smoke)
    runs = _only(runs, "setting", settings, experiment)
    runs = _only(runs, "method", methods, experiment)
    if experiment == "longtail":
        runs = with_tuned_options(runs, out_dir, smoke)
    cls_setup, _ = setups(smoke)
    seg_setup = None
    if experiment in SEGMENTATION_SETUPS:
        seg_setup = segmentation_setup(experiment, smoke)
        if encoder_weights is not None:
            seg_setup = replace(seg_setup, encoder_weights=str(Path(encoder_weights).resolve()))
    elif encoder_weights is not None:
        raise ValueError(f"--encoder-weights is for the segmentation experiments, not"
                         f" {experiment!r}")
    done = finished_keys(csv)
    todo = [run for run in runs if run.key not in done]
    print(f"{experiment}: {len(runs) - len(todo)} of {len(runs)} runs already in {csv}")
    cache: dict[Any, Any] = {}
    commit = git_commit()  # the code this process loaded, even if the checkout moves on
    for run in tqdm(todo, desc=experiment, unit="run"):
        start = time.perf_counter()
        if experiment == "overhead":
            steps = 2 if smoke else 10
            row = vars(measure_overhead(run.setting, device, steps=steps, rounds=2 if smoke else 7))
        elif seg_setup is not None:
            row = run_segmentation(run, seg_setup, device, cache)
        else:
            row = run_classification(run, cls_setup, device, cache)
        meta = dict(zip(KEY, run.key, strict=True))
        append_row(csv, meta | row | {
            "smoke": smoke, "hardware": hardware(), "device": str(device),
            "wall_time_s": round(time.perf_counter() - start, 1), "git_commit": commit,
            "torch": torch.__version__,  # the same code can round differently on another torch
        })
    return csv


def _only(runs: list[Run], field: str, wanted: list[str] | None, experiment: str) -> list[Run]:
    """The runs whose ``field`` is one of ``wanted`` (all of them when ``wanted`` is None)."""
    if wanted is None:
        return runs
    known = {getattr(run, field) for run in runs}
    if unknown := set(wanted) - known:
        raise ValueError(f"{experiment} has no {field} {sorted(unknown)}; its {field}s are"
                         f" {sorted(known)}")
    return [run for run in runs if getattr(run, field) in wanted]


def with_tuned_options(runs: list[Run], out_dir: Path, smoke: bool) -> list[Run]:
    """``runs`` with the options the tuning grid chose (``out_dir/tuning.csv``) for the methods
    in :data:`TUNED`; a smoke grid without tuning rows keeps the defaults.

    Raises:
        FileNotFoundError: a full grid whose tuning rows are missing for a tuned method.
    """
    tuning = load_results("tuning", out_dir)
    chosen = {} if tuning is None else dict(
        chosen_settings(tuning)[["method", "setting"]].itertuples(index=False))
    tuned = []
    for run in runs:
        source = TUNED.get(run.method)
        if source is not None and source not in chosen and not smoke:
            raise FileNotFoundError(
                f"{run.method} trains with the setting the tuning grid chooses for {source}, and"
                f" {out_dir / 'tuning.csv'} has none: run `python -m sar.experiments tuning`"
                " first")
        if source is not None and source in chosen:
            options = {**run.options["method_options"], **TUNING[source][chosen[source]]}
            run = replace(run, options={**run.options, "method_options": options})
        tuned.append(run)
    return tuned


def results_or_reduced_grid(experiment: str, device: torch.device | None = None,
                            out_dir: Path = RESULTS_DIR) -> tuple[pd.DataFrame, str]:
    """The committed results of ``experiment``, else a freshly run smoke grid; and which it was."""
    df = load_results(experiment, out_dir)
    if df is not None:
        seeds = sorted(int(s) for s in df["seed"].unique())
        return df, (f"{experiment}: {len(df)} runs from {out_dir.name}/{experiment}.csv"
                    f" (seeds {seeds}; {', '.join(sorted(df['hardware'].unique()))})")
    scratch = Path(tempfile.mkdtemp(prefix="sar-results-"))
    run_grid(experiment, [0], smoke=True, out_dir=scratch, device=device or default_device())
    return load_results(experiment, scratch), (
        f"{experiment}: no {out_dir.name}/{experiment}.csv, so a reduced smoke grid was run"
        " (tiny network, one epoch, one seed): a demonstration, not a result")
