"""The command line ``python -m sar.experiments``."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..config import default_device
from .grids import EXPERIMENTS
from .headline import HEADLINE_GAPS, render_headline
from .report import fill_block, render
from .runner import grid_status, run_grid
from .store import RESULTS_DIR, merge_rows

RENDER_ONLY = ("headline", "all")  # names render takes besides the experiments


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sar.experiments",
                                     description="Run or render the reproduction grids.")
    parser.add_argument("action", choices=[*EXPERIMENTS, "render", "merge", "status"],
                        help="run a grid, render its CSV, merge rows run elsewhere into it, or"
                             " show how much of each grid is done")
    parser.add_argument("experiment", nargs="?", choices=[*EXPERIMENTS, *RENDER_ONLY],
                        help="with render or merge: which CSV; render also takes headline (the"
                             " README's findings at a glance) and all (every CSV there is, the"
                             " headline and the status table)")
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
    parser.add_argument("--into", type=Path, nargs="+", default=[], metavar="DOCUMENT",
                        help="with render or status: also write each output into the"
                             " <!-- results:NAME --> block of whichever of these documents"
                             " holds it, e.g. --into README.md docs/results.md docs/cost.md")
    args = parser.parse_args(argv)
    out = args.out or (RESULTS_DIR / "smoke" if args.smoke else RESULTS_DIR)
    if args.action == "status":
        table = grid_status(args.seeds, out)
        _fill("status", table, args.into)
        print(table)
        return
    if args.action in ("render", "merge") and args.experiment is None:
        parser.error(f"{args.action} needs the experiment name, e.g. {args.action} longtail")
    if args.action == "merge" and args.experiment in RENDER_ONLY:
        parser.error(f"merge takes one experiment's name, not {args.experiment}")
    if (args.action == "merge") != bool(args.sources):
        parser.error("only merge takes CSV paths, and it needs at least one,"
                     " e.g. merge segmentation elsewhere/segmentation.csv")
    if args.action == "merge":
        csv = out / f"{args.experiment}.csv"
        print(f"added {merge_rows(csv, args.sources)} rows to {csv}")
        return
    if args.action == "render" and args.experiment == "all":
        render_all(out, args.seeds, args.into)
        return
    if args.action == "render":
        summary = (render_headline(out) if args.experiment == "headline"
                   else render(args.experiment, out))
        _fill(args.experiment, summary.read_text(), args.into)
        print(summary.read_text())
        return
    device = torch.device(args.device) if args.device else default_device()
    csv = run_grid(args.action, args.seeds, args.smoke, out, device, args.settings,
                   args.encoder_weights, args.methods)
    print(f"wrote {csv}")


def render_all(out: Path, seeds: list[int], documents: list[Path], figures: bool = True) -> None:
    """Render every experiment whose CSV ``out`` holds, the headline when its grids are there,
    and the status table; write each into the ``documents`` that hold its block. ``figures``
    false writes the tables alone (what the documents' blocks hold)."""
    done = [name for name in EXPERIMENTS if (out / f"{name}.csv").exists()]
    for name in done:
        _fill(name, render(name, out, figures).read_text(), documents)
    if {gap.experiment for gap in HEADLINE_GAPS} <= set(done):
        _fill("headline", render_headline(out, figures).read_text(), documents)
        done.append("headline")
    _fill("status", grid_status(seeds, out), documents)
    print(f"rendered {', '.join(done)} and the status table from {out}"
          + (f" into {', '.join(map(str, documents))}" if documents else ""))


def _fill(name: str, text: str, documents: list[Path]) -> None:
    if documents:
        fill_block(name, text, documents)
