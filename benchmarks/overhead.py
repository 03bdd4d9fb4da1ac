"""Print SAR's train-step time and peak-memory overhead over plain training, measured side by side.

    python benchmarks/overhead.py                 # all cases on the default device
    python benchmarks/overhead.py --cases unet_resnet18 --steps 20 --rounds 7

Targets from the issue tracker: train-step ratio SAR/plain <= 1.05 on a CPU, <= 1.03 on a GPU;
inference is the bare model, so its ratio should be 1 within timing noise.
"""

from __future__ import annotations

import argparse
import platform

import torch

from sar.benchmark import CASES, measure
from sar.config import default_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--device", default=str(default_device()))
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=5, help="alternating plain/SAR rounds")
    args = parser.parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    hardware = torch.cuda.get_device_name(device) if on_gpu else platform.processor()
    print(f"torch {torch.__version__}, {device} ({hardware or platform.machine()}),"
          f" {torch.get_num_threads()} threads;"
          f" median of {args.rounds} rounds x {args.steps} steps")
    header = (f"{'case':30s} {'plain ms':>9s} {'SAR ms':>9s} {'ratio':>6s}"
              f" {'infer ratio':>11s} {'plain MiB':>10s} {'SAR MiB':>9s} {'mem ratio':>9s}")
    if not on_gpu:
        print("memory: measured on a GPU only (nan here); see sar/benchmark.py")
    print(header)
    for key in args.cases:
        r = measure(key, device, args.steps, args.rounds)
        print(f"{r.case:30s} {r.plain_ms:9.1f} {r.sar_ms:9.1f} {r.train_ratio:6.3f}"
              f" {r.infer_ratio:11.3f} {r.plain_mib:10.0f} {r.sar_mib:9.0f} {r.memory_ratio:9.3f}")


if __name__ == "__main__":
    main()
