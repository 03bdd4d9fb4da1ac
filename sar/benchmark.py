"""Side-by-side cost of SAR: train-step time and peak memory, with and without the regulariser.

Plain and SAR steps are timed alternately in one process (ABAB...), so drift in the machine's
speed hits both alike; the reported figure is the median over rounds. Peak memory is
``torch.cuda.max_memory_allocated`` on a GPU. On the CPU PyTorch keeps no allocator
statistics and the process's peak RSS is set by importing PyTorch before any step runs, so
memory is reported as NaN there rather than as a number that measures nothing.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .baselines import NoRegularizer
from .models import (
    RegularizedModel,
    SARClassifier,
    SARSegmentationModel,
    build_classifier,
    build_smp_model,
)


@dataclass(frozen=True)
class Case:
    """One workload: a model family, its input size and batch size."""

    name: str
    kind: str  # "segmentation" or "classification"
    arch: str
    batch: int
    size: int
    channels: int
    num_classes: int
    encoder: str = "resnet18"  # the smp encoder of a segmentation case


CASES = {
    "unet_resnet18": Case("smp Unet-resnet18", "segmentation", "Unet", 8, 64, 3, 11),
    "small_cnn": Case("SmallCNN (28x28)", "classification", "small_cnn", 128, 28, 1, 10),
    "resnet18": Case("ResNet-18 classifier (32x32)", "classification", "resnet18", 64, 32, 3, 10),
}

# Realistic GPU workloads (Pascal-VOC-sized batches), kept out of CASES: that is the grid which
# ``python -m sar.experiments overhead`` runs on any machine, a CPU included.
GPU_CASES = {
    f"{arch.lower()}_{encoder}_512": Case(f"smp {arch}-{encoder} (8x3x512x512)", "segmentation",
                                         arch, 8, 512, 3, 21, encoder)
    for arch in ("Unet", "FPN", "DeepLabV3Plus")
    for encoder in ("resnet18", "resnet50")
}


def build(case: Case, with_sar: bool, seed: int = 0) -> RegularizedModel:
    """The case's model wrapped with SAR, or with :class:`NoRegularizer` (plain CE)."""
    torch.manual_seed(seed)
    if case.kind == "segmentation":
        net = build_smp_model(case.arch, case.encoder, case.num_classes, case.channels)
        return SARSegmentationModel(net, None if with_sar else NoRegularizer())
    net = build_classifier(case.arch, case.num_classes, case.channels)
    return SARClassifier(net, None if with_sar else NoRegularizer())


def batch(case: Case, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(case.batch, case.channels, case.size, case.size, generator=g)
    shape = (case.batch, case.size, case.size) if case.kind == "segmentation" else (case.batch,)
    y = torch.randint(0, case.num_classes, shape, generator=g)
    return x.to(device), y.to(device)


def make_step(model: RegularizedModel, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One SGD training step (forward, CE + regulariser, backward, update)."""
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    criterion = nn.CrossEntropyLoss(ignore_index=255)
    amp = x.device.type == "cuda"

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits, losses = model(x, y)
            loss = criterion(logits, y) + losses["loss"]
        loss.backward()
        optimiser.step()

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], None], steps: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / steps


def time_steps(case: Case, device: torch.device, steps: int, rounds: int) -> dict[str, float]:
    """Median train-step and inference times (seconds) of plain vs SAR, measured alternately."""
    models = {name: build(case, name == "sar").to(device).train() for name in ("plain", "sar")}
    x, y = batch(case, device)
    train = {name: make_step(m, x, y) for name, m in models.items()}

    def infer(m: nn.Module) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                m.eval()(x)
            m.train()
        return run

    for fn in train.values():  # warm-up: allocator, cuDNN, the gate's first steps
        _time(fn, 3, device)
    result: dict[str, list[float]] = {k: [] for k in
                                      ("plain_train", "sar_train", "plain_infer", "sar_infer")}
    for _ in range(rounds):
        for name in ("plain", "sar"):
            result[f"{name}_train"].append(_time(train[name], steps, device))
            result[f"{name}_infer"].append(_time(infer(models[name]), steps, device))
    return {key: statistics.median(values) for key, values in result.items()}


def peak_memory(case: Case, device: torch.device, with_sar: bool, steps: int = 5) -> float:
    """Peak allocated GPU memory in MiB over a few train steps; NaN on the CPU."""
    if device.type != "cuda":
        return float("nan")
    model = build(case, with_sar).to(device).train()
    step = make_step(model, *batch(case, device))
    step()
    torch.cuda.reset_peak_memory_stats(device)
    for _ in range(steps):
        step()
    return torch.cuda.max_memory_allocated(device) / 2**20


@dataclass
class Overhead:
    """One row of the benchmark: times in milliseconds per step, memory in MiB."""

    case: str
    device: str
    plain_ms: float
    sar_ms: float
    train_ratio: float
    plain_infer_ms: float
    sar_infer_ms: float
    infer_ratio: float
    plain_mib: float
    sar_mib: float
    memory_ratio: float

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def images_per_second(batch_size: int, ms_per_step: float) -> float:
    """Throughput in images per second of a step that takes ``ms_per_step`` milliseconds."""
    return 1e3 * batch_size / ms_per_step


def measure(case: str | Case, device: torch.device, steps: int = 10, rounds: int = 5) -> Overhead:
    """Time and memory of one case (a key of CASES or GPU_CASES, or a Case), SAR against plain,
    as ratios SAR / plain."""
    if isinstance(case, str):
        case = {**CASES, **GPU_CASES}[case]
    times = time_steps(case, device, steps, rounds)
    plain_mib = peak_memory(case, device, with_sar=False)
    sar_mib = peak_memory(case, device, with_sar=True)
    return Overhead(
        case=case.name,
        device=str(device),
        plain_ms=1e3 * times["plain_train"],
        sar_ms=1e3 * times["sar_train"],
        train_ratio=times["sar_train"] / times["plain_train"],
        plain_infer_ms=1e3 * times["plain_infer"],
        sar_infer_ms=1e3 * times["sar_infer"],
        infer_ratio=times["sar_infer"] / times["plain_infer"],
        plain_mib=plain_mib,
        sar_mib=sar_mib,
        memory_ratio=sar_mib / plain_mib if plain_mib > 0 else math.nan,
    )
