"""The command line ``python -m sar.experiments``."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..config import default_device
from .grids import EXPERIMENTS
from .report import render, update_readme
from .runner import grid_status, run_grid
from .store import RESULTS_DIR, merge_rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sar.experiments",
                                     description="Run or render the reproduction grids.")
    parser.add_argument("action", choices=[*EXPERIMENTS, "render", "merge", "status"],
                        help="run a grid, render its CSV, merge rows run elsewhere into it, or"
                             " show how much of each grid is done")
    parser.add_argument("experiment", nargs="?", choices=EXPERIMENTS,
                        help="with render or merge: which CSV")
    parser.add_argument("sources", nargs="*", type=Path,
                        help="with merge: CSVs of the same experiment written with another --out")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--smoke", action="store_true", help="a tiny grid, for tests")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default results/, or results/smoke with --smoke)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--settings", nargs="+", default=None,
                        help="run only these settings of the grid, e.g. --settings Unet")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="run only these methods of the grid (the CSV's method column),"
                             " e.g. to split a grid between two processes")
    parser.add_argument("--encoder-weights", default=None,
                        help="segmentation grids: start from this encoder file (made by"
                             " python -m sar.pretrain) instead of the setup's")
    parser.add_argument("--readme", type=Path, default=None,
                        help="with render or status: also write the output into this"
                             " README's block")
    args = parser.parse_args(argv)
    out = args.out or (RESULTS_DIR / "smoke" if args.smoke else RESULTS_DIR)
    if args.action == "status":
        table = grid_status(args.seeds, out)
        if args.readme is not None:
            update_readme("status", table, args.readme)
        print(table)
        return
    if args.action in ("render", "merge") and args.experiment is None:
        parser.error(f"{args.action} needs the experiment name, e.g. {args.action} longtail")
    if (args.action == "merge") != bool(args.sources):
        parser.error("only merge takes CSV paths, and it needs at least one,"
                     " e.g. merge segmentation elsewhere/segmentation.csv")
    if args.action == "merge":
        csv = out / f"{args.experiment}.csv"
        print(f"added {merge_rows(csv, args.sources)} rows to {csv}")
        return
    if args.action == "render":
        summary = render(args.experiment, out).read_text()
        if args.readme is not None:
            update_readme(args.experiment, summary, args.readme)
        print(summary)
        return
    device = torch.device(args.device) if args.device else default_device()
    csv = run_grid(args.action, args.seeds, args.smoke, out, device, args.settings,
                   args.encoder_weights, args.methods)
    print(f"wrote {csv}")
