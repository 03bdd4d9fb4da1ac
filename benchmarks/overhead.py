"""Print SAR's train-step overhead over plain training, measured side by side: time and peak
memory ratios, and the hardware-independent proxies (host syncs, aten ops, extra peak memory).

    python benchmarks/overhead.py                 # both tables on the default device
    python benchmarks/overhead.py --cases unet_resnet18 --steps 20 --rounds 7
    python benchmarks/overhead.py --tables proxies --compile --out proxies.csv

Targets from the issue tracker: train-step ratio SAR/plain <= 1.05 on a CPU, <= 1.03 on a GPU;
inference is the bare model, so its ratio should be 1 within timing noise. Proxies (issue 24):
0 host syncs per SAR step, extra peak memory <= 1% of the plain step, a fullgraph compile.
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
from dataclasses import asdict
from pathlib import Path

import torch

from sar.benchmark import CASES, PROXY_CASES, Proxies, measure, measure_proxies
from sar.config import default_device
from sar.regularizer import VALIDATE_FIRST_CALLS


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", nargs="+", default=["times", "proxies"],
                        choices=["times", "proxies"], help="which tables to measure and print")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES),
                        help="cases of the times table")
    parser.add_argument("--proxy-cases", nargs="+", default=list(PROXY_CASES),
                        choices=list(PROXY_CASES), help="cases of the proxies table")
    parser.add_argument("--device", default=str(default_device()))
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block (times)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (times)")
    parser.add_argument("--proxy-steps", type=int, default=1,
                        help="steps per timed block (proxies)")
    parser.add_argument("--proxy-rounds", type=int, default=5,
                        help="alternating rounds (proxies)")
    parser.add_argument("--compile", action="store_true",
                        help="also measure the proxies under torch.compile(fullgraph=True)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend for --compile (aot_eager: capture only)")
    parser.add_argument("--out", type=Path, help="write the proxies table to this CSV")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    hardware = torch.cuda.get_device_name(device) if on_gpu else platform.processor()
    print(f"torch {torch.__version__}, {device} ({hardware or platform.machine()}),"
          f" {torch.get_num_threads()} threads")
    if "times" in args.tables:
        print_times(args, device)
    if "proxies" in args.tables:
        rows = measure_all_proxies(args, device)
        if args.out:
            write_csv(args.out, rows)
            print(f"wrote {args.out}")


def print_times(args: argparse.Namespace, device: torch.device) -> None:
    print(f"\ntimes: median of {args.rounds} rounds x {args.steps} steps")
    if device.type != "cuda":
        print("memory: measured on a GPU only (nan here); the proxies table has the CPU's")
    print(f"{'case':30s} {'plain ms':>9s} {'SAR ms':>9s} {'ratio':>6s}"
          f" {'infer ratio':>11s} {'plain MiB':>10s} {'SAR MiB':>9s} {'mem ratio':>9s}")
    for key in args.cases:
        r = measure(key, device, args.steps, args.rounds)
        print(f"{r.case:30s} {r.plain_ms:9.1f} {r.sar_ms:9.1f} {r.train_ratio:6.3f}"
              f" {r.infer_ratio:11.3f} {r.plain_mib:10.0f} {r.sar_mib:9.0f} {r.memory_ratio:9.3f}",
              flush=True)


def measure_all_proxies(args: argparse.Namespace, device: torch.device) -> list[Proxies]:
    print(f"\nproxies: one profiled steady-state step (SAR's gate open) after"
          f" {VALIDATE_FIRST_CALLS} warm-up steps (past SAR's first-call value checks);"
          f" times: median of {args.proxy_rounds} rounds x {args.proxy_steps} steps")
    print(f"{'case':34s} {'compiled':>9s} {'gate':>4s} {'syncs':>9s} {'extra ops':>9s}"
          f" {'extra MiB':>9s} {'extra %':>7s} {'plain ms':>9s} {'SAR ms':>9s} {'ratio':>6s}")
    backends = [None, args.compile_backend] if args.compile else [None]
    rows = []
    for backend in backends:
        for key in args.proxy_cases:
            row = measure_proxies(key, device, compile_backend=backend,
                                  steps=args.proxy_steps, rounds=args.proxy_rounds)
            print(proxies_line(row), flush=True)
            rows.append(row)
    return rows


def proxies_line(r: Proxies) -> str:
    head = f"{r.case:34s} {r.compiled or 'no':>9s}"
    if r.error:
        return f"{head} failed: {r.error[:200]}"
    gate = "open" if r.gate_opened else "SHUT"  # a shut gate: the measured step is not steady
    syncs = f"{r.plain_syncs:g} / {r.sar_syncs:g}"
    return (f"{head} {gate:>4s} {syncs:>9s} {r.extra_ops:9.0f} {r.extra_peak_mib:9.2f}"
            f" {100 * r.extra_peak_fraction:7.2f} {r.plain_ms:9.1f} {r.sar_ms:9.1f}"
            f" {r.train_ratio:6.3f}")


def write_csv(path: Path, rows: list[Proxies]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows({k: round(v, 6) if isinstance(v, float) and not math.isnan(v) else v
                          for k, v in asdict(r).items()} for r in rows)


if __name__ == "__main__":
    main()
