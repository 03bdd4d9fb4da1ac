"""Side-by-side cost of SAR: train-step time and peak memory, with and without the regulariser.

Plain and SAR steps are timed alternately in one process (ABAB...), so drift in the machine's
speed hits both alike; the reported figure is the median over rounds. :func:`measure` gives
time ratios and, on a GPU, ``torch.cuda.max_memory_allocated``; on the CPU the process's peak
RSS is set by importing PyTorch, so it reports memory as NaN there.

:func:`measure_proxies` gives what does not depend on the hardware, counted with
``torch.profiler`` in one steady-state step (SAR's gate open): host syncs, aten ops and the
step's peak memory (the profiler's allocation trace on the CPU), eager or under
``torch.compile(..., fullgraph=True)``. On a GPU each sync stalls the launch queue and most
ops are a kernel launch, so these predict the GPU overhead on any machine.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from .baselines import NoRegularizer
from .models import (
    RegularizedModel,
    SARClassifier,
    SARSegmentationModel,
    build_classifier,
    build_smp_model,
)
from .regularizer import VALIDATE_FIRST_CALLS


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


class TrainStep:
    """One SGD training step of ``model`` on ``(x, y)``: forward, CE + regulariser, backward,
    update (bf16 autocast on CUDA, none on the CPU). Calling it returns the step's loss dict.

    With ``compile_backend`` (e.g. ``"inductor"``, or ``"aot_eager"`` to test capture alone) the
    forward and loss go through ``torch.compile(..., fullgraph=True)``: one graph or an error at
    the first call (a graph break raises). The backward is the compiled graph's; the optimiser
    step stays eager.
    """

    def __init__(self, model: RegularizedModel, x: torch.Tensor, y: torch.Tensor,
                 compile_backend: str | None = None) -> None:
        self.model, self.x, self.y = model, x, y
        self.optimiser = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        self.criterion = nn.CrossEntropyLoss(ignore_index=255)
        self.forward_loss = (torch.compile(self._forward_loss, fullgraph=True,
                                           backend=compile_backend)
                             if compile_backend else self._forward_loss)

    def _forward_loss(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = self.x, self.y
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
            logits, losses = self.model(x, y)
            return self.criterion(logits, y) + losses["loss"], losses

    def __call__(self) -> dict[str, torch.Tensor]:
        self.optimiser.zero_grad(set_to_none=True)
        loss, losses = self.forward_loss()
        loss.backward()
        self.optimiser.step()
        return losses

    def held_bytes(self) -> int:
        """Bytes of the tensors the step holds between calls: parameters, buffers, gradients,
        optimiser state and the batch (each storage once)."""
        tensors = [*self.model.parameters(), *self.model.buffers(), self.x, self.y]
        tensors += [p.grad for p in self.model.parameters() if p.grad is not None]
        tensors += [t for state in self.optimiser.state.values() for t in state.values()
                    if isinstance(t, torch.Tensor)]
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
        return sum(storages.values())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], steps: int, device: torch.device) -> float:
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
    train = {name: TrainStep(m, x, y) for name, m in models.items()}

    def infer(m: nn.Module) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                m.eval()(x)
            m.train()
        return run

    for fn in train.values():  # warm-up: allocator, cuDNN, the gate's first steps
        _time(fn, 3, device)
    return _alternate({f"{name}_{kind}": fn for name in ("plain", "sar")
                        for kind, fn in (("train", train[name]), ("infer", infer(models[name])))},
                       device, steps, rounds)


def _alternate(fns: dict[str, Callable[[], object]], device: torch.device, steps: int,
               rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in ``rounds`` rounds of ``steps`` calls
    that take the functions in turn (ABAB...), so drift in the machine's speed hits all alike."""
    result: dict[str, list[float]] = {key: [] for key in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            result[key].append(_time(fn, steps, device))
    return {key: statistics.median(values) for key, values in result.items()}


def peak_memory(case: Case, device: torch.device, with_sar: bool, steps: int = 5) -> float:
    """Peak allocated GPU memory in MiB over a few train steps; NaN on the CPU."""
    if device.type != "cuda":
        return float("nan")
    model = build(case, with_sar).to(device).train()
    step = TrainStep(model, *batch(case, device))
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


# ------------------------------------------------------------------ hardware-independent proxies
# Three segmentation cases at the issue tracker's proxy size: the CPU stand-ins for GPU_CASES.
PROXY_CASES = {
    f"{arch.lower()}_resnet18_256": Case(f"smp {arch}-resnet18 (2x3x256x256)", "segmentation",
                                         arch, 2, 256, 3, 21)
    for arch in ("Unet", "FPN", "DeepLabV3Plus")
}

# Ops after which the host waits for the device. `_local_scalar_dense` is what `.item()`,
# `bool(t)`, `if t:` and `float(t)` run; the others size their output by the data, which on
# CUDA means a copy back to the host (on the CPU some of them show no `_local_scalar_dense`).
# Not counted: explicit copies to the host (`.cpu()`, `.tolist()`), which a train step has none of.
HOST_SYNC_OPS = frozenset({
    "aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::equal",
    "aten::nonzero", "aten::masked_select", "aten::bincount", "aten::_unique", "aten::_unique2",
    "aten::unique_dim", "aten::unique_consecutive",
})


def _inside_sync_op(event: Any) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in HOST_SYNC_OPS:
            return True
        parent = parent.cpu_parent
    return False


def count_host_syncs(events: Iterable[Any]) -> int:
    """Host syncs among profiler ``FunctionEvent``s: events of :data:`HOST_SYNC_OPS` that are
    not nested in another (``.item()`` records ``aten::item`` > ``aten::_local_scalar_dense``:
    one sync)."""
    return sum(1 for e in events if e.name in HOST_SYNC_OPS and not _inside_sync_op(e))


def count_aten_ops(events: Iterable[Any]) -> int:
    """Every ``aten::`` event, top-level and nested, forward and backward: the dispatcher calls
    a step makes (a composite op counts with the ops it runs; on a GPU most launch a kernel)."""
    return sum(1 for e in events if e.name.startswith("aten::"))


MEASURED = "sar.benchmark.measured"  # the profiler range of the steps whose peak is taken


def peak_in_window(allocations: Iterable[tuple[int, int]], start: int, end: int) -> int:
    """Highest running total of ``(time, bytes)`` allocation records (a free is negative bytes)
    between ``start`` and ``end``, above the total at ``start``; 0 if it never rises."""
    total = at_start = peak = 0
    for when, nbytes in sorted(allocations):
        if when > end:
            break
        total += nbytes
        if when < start:
            at_start = total
        else:
            peak = max(peak, total - at_start)
    return peak


def _cpu_peak(prof: Any) -> int:
    """The CPU peak inside the :data:`MEASURED` range of a ``profile_memory`` trace."""
    events = prof.profiler.kineto_results.events()
    window = next(e for e in events if e.name() == MEASURED)
    allocations = [(e.start_ns(), e.nbytes()) for e in events
                   if e.name() == "[memory]" and e.device_type() == DeviceType.CPU]
    return peak_in_window(allocations, window.start_ns(),
                          window.start_ns() + window.duration_ns())


@dataclass(frozen=True)
class StepCost:
    """What a step costs, per step: host syncs, aten ops, and memory in bytes: ``held`` between
    steps, ``peak`` the most allocated during a step above what was allocated at its start."""

    host_syncs: float
    aten_ops: float
    held_bytes: int
    peak_bytes: int


def profile_step(step: TrainStep, device: torch.device,
                 steps: int = 1) -> tuple[StepCost, dict[str, torch.Tensor]]:
    """Profile ``1 + steps`` calls of ``step`` (warm it up first) with ``torch.profiler``;
    returns their cost per step and the last call's loss dict.

    Syncs and ops are counted from the CPU-side dispatcher events of every call (the same on
    any device). ``held`` is :meth:`TrainStep.held_bytes`. The peak is that of the last
    ``steps`` calls: on CUDA ``torch.cuda.max_memory_allocated`` less the allocation at their
    start; on the CPU, where PyTorch keeps no allocator statistics, it is rebuilt from the
    profiler's allocation trace (``profile_memory=True``). The first call is there because the
    trace cannot size a free of memory allocated before profiling began (the gradients a step
    frees in ``zero_grad``): it allocates what the measured calls free.
    """
    on_cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU], profile_memory=not on_cuda) as prof:
        step()
        _sync(device)
        if on_cuda:
            start = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        with record_function(MEASURED):
            for _ in range(steps):
                losses = step()
            _sync(device)
    events = prof.events()
    peak = torch.cuda.max_memory_allocated(device) - start if on_cuda else _cpu_peak(prof)
    cost = StepCost(count_host_syncs(events) / (1 + steps),
                    count_aten_ops(events) / (1 + steps), step.held_bytes(), peak)
    return cost, losses


def open_gate(model: RegularizedModel, x: torch.Tensor, y: torch.Tensor,
              max_steps: int = 1000, lr: float = 0.05) -> int:
    """Train the anchor branch alone (anchor CE on the projector and classifier) until SAR's
    gate opens, so that a measured step is a steady-state one; returns the steps it took.

    The gate depends on the anchors and the classifier only, so features of a single position
    suffice and this costs a few seconds, not the hundreds of full steps that training at the
    benchmark's learning rate takes. A regulariser without a gate (no ``"gate_opened"`` in its
    loss dict, e.g. :class:`NoRegularizer`) is left alone: 0 steps.

    Raises:
        RuntimeError: if the gate is still closed after ``max_steps`` steps.
    """
    model.eval()
    with torch.no_grad():  # eval: no batch-norm statistics of the network change
        features, _ = model.features_and_logits(x)
    model.train()
    features = features[..., :1, :1] if features.dim() == 4 else features
    regularizer, classifier = model.regularizer, model.classifier
    optimiser = torch.optim.SGD([*regularizer.parameters(), *classifier.parameters()], lr=lr,
                                momentum=0.9)
    for taken in range(max_steps + 1):
        losses = regularizer(features, y, classifier)
        if "gate_opened" not in losses or bool(losses["gate_opened"]):
            return taken
        optimiser.zero_grad(set_to_none=True)
        losses["anchor_ce"].backward()
        optimiser.step()
    raise RuntimeError(f"SAR's gate did not open in {max_steps} anchor-only steps at lr={lr}")


@dataclass
class Proxies:
    """One row of the proxies table: SAR against plain (NoRegularizer) in one train step.

    ``*_syncs`` and ``*_ops`` are per step (see :func:`count_host_syncs`,
    :func:`count_aten_ops`); ``*_peak_mib`` is the step's peak memory, held tensors included
    (:class:`StepCost`), in MiB, ``extra_peak_fraction`` SAR's extra peak over plain's peak and
    ``memory_ratio`` their ratio; times are medians in milliseconds. ``gate_opened`` and
    ``gate_passed`` are SAR's gate in the profiled step. ``compiled`` is the ``torch.compile``
    backend ("" for eager); when compiling failed, ``error`` holds why and the figures are NaN.
    """

    case: str
    device: str
    compiled: str
    gate_opened: bool
    gate_passed: bool
    plain_syncs: float
    sar_syncs: float
    extra_syncs: float
    plain_ops: float
    sar_ops: float
    extra_ops: float
    plain_peak_mib: float
    sar_peak_mib: float
    extra_peak_mib: float
    extra_peak_fraction: float
    memory_ratio: float
    plain_ms: float
    sar_ms: float
    train_ratio: float
    error: str = ""


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def _failed_row(name: str, device: torch.device, backend: str, error: str) -> Proxies:
    nan = math.nan
    return Proxies(name, str(device), backend, False, False, *[nan] * 14, error=error)


def measure_proxies(case: str | Case, device: torch.device, *, compile_backend: str | None = None,
                    warmup: int = VALIDATE_FIRST_CALLS, profiled: int = 1, steps: int = 1,
                    rounds: int = 5) -> Proxies:
    """Hardware-independent cost of SAR in one steady-state train step of a case (a key of
    PROXY_CASES, CASES or GPU_CASES, or a Case), beside time ratios: :func:`compare_proxies`
    of the case's plain and SAR models (seed 0) on its batch (seed 0)."""
    if isinstance(case, str):
        case = {**PROXY_CASES, **CASES, **GPU_CASES}[case]
    models = {name: build(case, name == "sar").to(device).train() for name in ("plain", "sar")}
    return compare_proxies(case.name, models["plain"], models["sar"], *batch(case, device),
                           compile_backend=compile_backend, warmup=warmup, profiled=profiled,
                           steps=steps, rounds=rounds)


def compare_proxies(name: str, plain: RegularizedModel, sar: RegularizedModel, x: torch.Tensor,
                    y: torch.Tensor, *, compile_backend: str | None = None,
                    warmup: int = VALIDATE_FIRST_CALLS, profiled: int = 1, steps: int = 1,
                    rounds: int = 5) -> Proxies:
    """SAR's model against plain's, trained on the same batch in this process (on ``x``'s device).

    SAR's gate is opened first (:func:`open_gate`); each :class:`TrainStep` is warmed up
    ``warmup`` times (the first call compiles, with ``compile_backend``; the default,
    :data:`~sar.regularizer.VALIDATE_FIRST_CALLS`, also takes SAR past the first calls whose
    value checks read tensors back to the host); ``profiled`` steps
    of each are profiled (:func:`profile_step`), then ``rounds`` alternating blocks of
    ``steps`` steps are timed (median). A failure to compile is returned as a row whose
    ``error`` names the model (``plain`` or ``sar``, plain first) and the error's first line,
    not raised.
    """
    device = x.device
    if compile_backend:
        torch._dynamo.reset()  # each comparison compiles afresh, within dynamo's recompile limit
    open_gate(sar, x, y)
    train = {"plain": TrainStep(plain, x, y, compile_backend),
             "sar": TrainStep(sar, x, y, compile_backend)}
    for role, step in train.items():
        try:
            for _ in range(warmup):
                step()
        except Exception as err:  # noqa: BLE001 - a compile error is a result here
            if not compile_backend:
                raise
            return _failed_row(name, device, compile_backend, f"{role}: {_first_line(err)}")
    (plain_cost, _), (sar_cost, losses) = (profile_step(step, device, profiled)
                                           for step in train.values())
    gate = {k: bool(v) for k, v in losses.items() if k.startswith("gate_")}
    times = _alternate(train, device, steps, rounds)
    plain_peak = plain_cost.held_bytes + plain_cost.peak_bytes
    sar_peak = sar_cost.held_bytes + sar_cost.peak_bytes
    return Proxies(
        case=name, device=str(device), compiled=compile_backend or "",
        gate_opened=gate.get("gate_opened", False), gate_passed=gate.get("gate_passed", False),
        plain_syncs=plain_cost.host_syncs, sar_syncs=sar_cost.host_syncs,
        extra_syncs=sar_cost.host_syncs - plain_cost.host_syncs,
        plain_ops=plain_cost.aten_ops, sar_ops=sar_cost.aten_ops,
        extra_ops=sar_cost.aten_ops - plain_cost.aten_ops,
        plain_peak_mib=plain_peak / 2**20, sar_peak_mib=sar_peak / 2**20,
        extra_peak_mib=(sar_peak - plain_peak) / 2**20,
        extra_peak_fraction=(sar_peak - plain_peak) / plain_peak,
        memory_ratio=sar_peak / plain_peak,
        plain_ms=1e3 * times["plain"], sar_ms=1e3 * times["sar"],
        train_ratio=times["sar"] / times["plain"],
    )
