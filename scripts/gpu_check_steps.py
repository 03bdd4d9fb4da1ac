"""The steps of ``scripts/gpu_check.py``, one function each: ``step_<name>(plan) -> StepResult``.

Each step runs in a process of its own (``gpu_check.py --step NAME``), so that a CUDA error,
a hang or a crash in one step cannot take the others down. Sizes come from the plan:
realistic on a GPU, tiny on the CPU (``--cpu-dry-run``, which proves the script itself works).
A step records what it measured in ``figures`` (name -> value) and ``tables`` (CSV name ->
rows); a check that does not hold sets ``status = "failed"`` with a note, and the step goes on.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GPU_CHECK = HERE / "gpu_check.py"
NOTEBOOK = REPO / "notebooks" / "03_sar_on_smp.ipynb"
SANITIZE = REPO / "notebooks" / "sanitize.cfg"
PAYLOAD_DIR = REPO / ".gpu"
# SAR options and a constant lr under which the gate opens within a few dozen steps (step ~35
# for Unet-resnet18 on 8 Fashion scenes of 64 px on the CPU), so that gate decisions are
# compared while they change (the paper's update_conf=0.8, momentum=0.999 take longer)
QUICK_GATE = {"update_conf": 0.5, "momentum": 0.9}
QUICK_GATE_LR = 0.02
# a Unet small enough for the CPU dry run (D = 16 at the head, as the full one has)
TINY_UNET = {"encoder_depth": 3, "decoder_channels": [16, 8, 16]}


@dataclass(frozen=True)
class Plan:
    """How the check runs: on CUDA, or tiny on the CPU; where it writes; this step's limit."""

    dry_run: bool
    out: Path
    limit_s: float = 600.0

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"

    @property
    def work(self) -> Path:
        """Scratch files (JUnit XML, the ranks' reports, run folders); not in the report."""
        return self.out / "work"


@dataclass
class StepResult:
    status: str = "ok"  # "ok", "failed" or "skipped"
    figures: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def fail(self, why: str) -> None:
        self.status = "failed"
        self.notes.append(why)

    def skip(self, why: str) -> StepResult:
        self.status = "skipped"
        self.notes.append(why)
        return self


def say(step: str, message: str) -> None:
    print(f"[{step}] {message}", flush=True)


def run_command(cmd: Sequence[str], env: dict[str, str] | None = None) -> int:
    """Run ``cmd`` with this step's stdout (the step's log); return its exit status."""
    say("run", " ".join(str(c) for c in cmd))
    return subprocess.run(list(map(str, cmd)), env={**os.environ, **(env or {})}, cwd=REPO,
                          stdout=sys.stdout, stderr=subprocess.STDOUT).returncode


def pytest_command(junit: Path, *args: str) -> list[str]:
    """pytest without the repository's addopts (they name nbval, which a step may not need)."""
    return [sys.executable, "-m", "pytest", "-o", "addopts=", "-p", "no:cacheprovider", "-q",
            "-rfE", f"--junitxml={junit}", *args]


def junit_rows(path: Path) -> list[dict[str, Any]]:
    """One row per test case of a JUnit XML file: test, outcome, seconds, message."""
    if not path.is_file():
        return []
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            if (child := case.find(tag)) is not None:
                outcome, message = tag, (child.get("message") or "")[:300]
        name = f"{case.get('classname', '')}::{case.get('name', '')}".strip(":")
        rows.append({"test": name, "outcome": outcome, "seconds": float(case.get("time", 0)),
                     "message": message})
    return rows


def fashion_mnist_found() -> bool:
    from sar.data import find_fashion_mnist

    return find_fashion_mnist("train") is not None and find_fashion_mnist("test") is not None


# ------------------------------------------------------------------------------------ env
def step_env(plan: Plan) -> StepResult:
    """Versions and hardware: the report's header."""
    import torch

    import sar

    result = StepResult()
    result.figures.update({"python": platform.python_version(), "torch": torch.__version__,
                           "sar": sar.__version__, "git commit": git_commit(),
                           "cuda visible": torch.cuda.is_available()})
    if torch.cuda.is_available():
        result.figures.update(gpu_facts())
    else:
        result.figures.update({"cpu": platform.processor() or platform.machine(),
                               "cpu cores": os.cpu_count()})
    if not plan.dry_run and not torch.cuda.is_available():
        result.fail("no CUDA device is visible: run on a GPU machine, or pass --cpu-dry-run")
    return result


def git_commit() -> str:
    """HEAD here; the device machine gets the files without .git, so there the commit that
    prepare_gpu_payload.sh wrote into .gpu/commit."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        recorded = PAYLOAD_DIR / "commit"
        if recorded.is_file():
            return f"{recorded.read_text().strip()} (when .gpu/ was prepared)"
        return "unknown (no git here)"


def gpu_facts() -> dict[str, Any]:
    import torch

    props = torch.cuda.get_device_properties(0)
    return {"gpu": props.name, "gpu count": torch.cuda.device_count(),
            "gpu memory (GiB)": round(props.total_memory / 2**30, 1),
            "compute capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "cuda (torch build)": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "nccl": nccl_version(),
            "bf16 supported": torch.cuda.is_bf16_supported(), "tf32": tf32_settings(),
            "driver": nvidia_smi("driver_version")}


def nccl_version() -> str:
    import torch

    try:
        version = torch.cuda.nccl.version()
    except Exception as err:  # noqa: BLE001 - a fact for the report, never a reason to stop
        return f"unknown ({err})"
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def tf32_settings() -> str:
    """Whether float32 convs and matmuls may run in TF32 (this changes 'float32' numbers)."""
    import torch

    matmul = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    if matmul is None:
        matmul = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    return f"cuDNN allow_tf32={torch.backends.cudnn.allow_tf32}, matmul {matmul}"


def nvidia_smi(query: str) -> str:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                             text=True, capture_output=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown (nvidia-smi failed)"
    return out.strip().splitlines()[0] if out.strip() else "unknown"


# -------------------------------------------------------------------------------- payload
# module -> distribution: what the GPU run imports, from the image or from the payload
RUN_IMPORTS = {
    "torch": "torch", "torchvision": "torchvision", "timm": "timm", "numpy": "numpy",
    "pandas": "pandas", "matplotlib": "matplotlib", "seaborn": "seaborn",
    "sklearn": "scikit-learn", "tqdm": "tqdm", "pytest": "pytest",
    "segmentation_models_pytorch": "segmentation-models-pytorch", "nbval": "nbval",
    "nbformat": "nbformat", "nbclient": "nbclient", "jupyter_client": "jupyter-client",
    "ipykernel": "ipykernel", "zmq": "pyzmq", "tornado": "tornado",
}


def step_payload(plan: Plan) -> StepResult:
    """The wheels that travel (when .gpu/ is here) and the imports the other steps need."""
    result = StepResult()
    if (PAYLOAD_DIR / "wheels").is_dir():
        check_payload_folder(result)
        if plan.dry_run:
            cross_install(result)
        check_installed_requirements(result)
    else:
        result.notes.append(f"wheel check skipped: {PAYLOAD_DIR} is absent (CI has no time to"
                            " download it; scripts/prepare_gpu_payload.sh makes it)")
    result.tables["imports"] = [import_row(module, dist) for module, dist in RUN_IMPORTS.items()]
    check_imports(result)
    return result


def check_payload_folder(result: StepResult) -> None:
    import gpu_payload

    problems, unverified = gpu_payload.check(PAYLOAD_DIR)
    wheels = sorted((PAYLOAD_DIR / "wheels").glob("*.whl"))
    result.figures["payload wheels"] = len(wheels)
    result.figures["payload MiB"] = round(sum(w.stat().st_size for w in wheels) / 2**20, 1)
    result.figures["requirements on image packages of unrecorded version"] = len(unverified)
    for problem in problems:
        result.fail(f"payload: {problem}")


def cross_install(result: StepResult) -> None:
    """pip installs the wheels as it would on the GPU machine (CPython 3.12, manylinux)."""
    import tempfile

    import gpu_payload

    platforms = [f"--platform={p}" for p in gpu_payload.TARGET_PLATFORMS]
    with tempfile.TemporaryDirectory() as target:
        status = run_command([sys.executable, "-m", "pip", "install", "-q", "--no-index",
                              "--no-deps", "--no-compile", "--only-binary=:all:",
                              "--python-version=3.12", "--implementation=cp", *platforms,
                              f"--target={target}",
                              *sorted((PAYLOAD_DIR / "wheels").glob("*.whl"))])
    result.figures["pip install --target for CPython 3.12 manylinux"] = (
        "ok" if status == 0 else f"exit {status}")
    if status != 0:
        result.fail("pip could not install the wheels for CPython 3.12 manylinux x86_64")


def check_installed_requirements(result: StepResult) -> None:
    """Each wheel's requirements against the versions this interpreter has: on the GPU
    machine this is the check that the payload's closure could not make here."""
    import gpu_payload
    from packaging.version import Version

    unmet = []
    for wheel in sorted((PAYLOAD_DIR / "wheels").glob("*.whl")):
        for req in gpu_payload.wheel_requirements(wheel):
            try:
                version = Version(metadata.version(req.name))
            except metadata.PackageNotFoundError:
                unmet.append(f"{wheel.name} needs {req}: not installed")
                continue
            if not req.specifier.contains(version, prereleases=True):
                unmet.append(f"{wheel.name} needs {req}, found {version}")
    result.figures["wheel requirements unmet in this environment"] = len(unmet)
    for line in unmet:
        result.fail(line)


def import_row(module: str, dist: str) -> dict[str, Any]:
    site = os.environ.get("SAR_SITE")
    try:
        imported = importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - recorded, the step goes on
        return {"module": module, "version": "", "from": "", "error": repr(err)[:200]}
    location = str(getattr(imported, "__file__", "") or "")
    source = "payload" if site and location.startswith(site) else "environment"
    return {"module": module, "version": distribution_version(dist), "from": source,
            "error": ""}


def distribution_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def check_imports(result: StepResult) -> None:
    rows = result.tables["imports"]
    for row in rows:
        if row["error"]:
            result.fail(f"import {row['module']} failed: {row['error']}")
    torch_row = next(row for row in rows if row["module"] == "torch")
    if torch_row["from"] == "payload":
        result.fail("torch was imported from the payload: the machine's own PyTorch is shadowed")
    result.figures["imports ok"] = sum(not row["error"] for row in rows)
    result.figures["imports from the payload"] = sum(row["from"] == "payload" for row in rows)


# ---------------------------------------------------------------------------------- tests
def step_tests(plan: Plan) -> StepResult:
    """The unit tests that take the ``device`` fixture, on this plan's device."""
    result = StepResult()
    junit = plan.work / "tests_junit.xml"
    status = run_command(pytest_command(junit, "-m", "device", *device_test_files()),
                         {"SAR_TEST_DEVICE": plan.device})
    rows = junit_rows(junit)
    result.tables["tests"] = rows
    for outcome in ("passed", "failure", "error", "skipped"):
        result.figures[f"tests {outcome}"] = sum(r["outcome"] == outcome for r in rows)
    result.figures["tests seconds"] = round(sum(r["seconds"] for r in rows), 1)
    for row in rows:
        if row["outcome"] in ("failure", "error"):
            result.fail(f"{row['test']}: {row['message']}")
    if status != 0 and result.status == "ok":
        result.fail(f"pytest exited with {status}")
    if not rows:
        result.fail("no test ran (is the device marker registered in tests/conftest.py?)")
    return result


def device_test_files() -> list[Path]:
    """The test files with a test that takes the ``device`` fixture: collecting only these
    saves importing the whole suite (the marker still selects the tests)."""
    uses_device = re.compile(r"^def test_\w+\([^)]*\bdevice\b", re.MULTILINE)
    return [path.relative_to(REPO) for path in sorted((REPO / "tests").glob("test_*.py"))
            if uses_device.search(path.read_text())]


# ------------------------------------------------------------------------- data and model
@dataclass(frozen=True)
class Sizes:
    """Scene side (pixels), batch size (images), optimiser steps, smp Unet keyword options."""

    size: int
    batch: int
    steps: int
    unet: dict[str, Any]


def amp_sizes(plan: Plan) -> Sizes:
    return Sizes(32, 2, 4, TINY_UNET) if plan.dry_run else Sizes(128, 16, 60, {})


def ddp_sizes(plan: Plan) -> Sizes:
    return Sizes(32, 2, 3, TINY_UNET) if plan.dry_run else Sizes(128, 16, 40, {})


def scene_data(num: int, size: int) -> tuple[Any, int, str]:
    """``(dataset, num_classes, description)``: Fashion scenes, or synthetic ones without the
    data (items are ``(float32 (3, size, size), int64 (size, size))``)."""
    from sar.data import make_fashion_scenes

    if fashion_mnist_found():
        scenes = make_fashion_scenes(num, size=size, split="train", imbalance_factor=20.0, seed=0)
        return scenes, scenes.num_classes, f"{num} Fashion scenes of {size}x{size} px"
    return synthetic_scenes(num, size), 11, f"{num} synthetic scenes (no Fashion-MNIST here)"


def synthetic_scenes(num: int, size: int, num_classes: int = 11, block: int = 8) -> Any:
    """Blocks of ``block`` pixels, each of a random class painted in that class's colour."""
    import torch
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(0)
    cells = torch.randint(0, num_classes, (num, size // block, size // block), generator=g)
    masks = cells.repeat_interleave(block, 1).repeat_interleave(block, 2)
    colours = torch.rand(num_classes, 3, generator=g)
    images = colours[masks].permute(0, 3, 1, 2) + 0.1 * torch.randn(num, 3, size, size,
                                                                    generator=g)
    return TensorDataset(images, masks)


def sar_unet(num_classes: int, sizes: Sizes) -> Any:
    """Unet-resnet18 wrapped in SAR (quick-gate options), built from seed 0."""
    from sar.config import seed_everything
    from sar.train import ModelConfig, build_model

    seed_everything(0)
    return build_model(ModelConfig(arch="Unet", encoder="resnet18", kwargs=sizes.unet),
                       {"enabled": True, **QUICK_GATE}, num_classes)


# ------------------------------------------------------------------------------------ amp
def step_amp(plan: Plan) -> StepResult:
    """``fit`` with SAR in float32, bf16 and fp16 (GradScaler): same data, seed and steps."""
    import torch

    result = StepResult()
    sizes = amp_sizes(plan)
    data, num_classes, source = scene_data(sizes.batch * sizes.steps, sizes.size)
    result.figures.update({"data": source, "batch": sizes.batch, "steps": sizes.steps,
                           "sar options": json.dumps(QUICK_GATE),
                           "lr (constant, SGD)": QUICK_GATE_LR})
    if plan.dry_run:
        result.notes.append("CPU: fit runs in float32 whatever amp says (autocast is CUDA-only"
                            " in fit), so this dry run checks the plumbing, not the numerics")
    histories = {}
    for name, amp in (("float32", False), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        say("amp", f"fit with amp={name}")
        try:
            histories[name] = fit_once(plan, sizes, data, num_classes, amp)
        except Exception as err:  # noqa: BLE001 - a non-finite loss raises; record it
            result.fail(f"{name}: {type(err).__name__}: {err}")
    result.tables["amp"] = [amp_row(name, h, histories.get("float32"))
                            for name, h in histories.items()]
    judge_amp(result)
    return result


def fit_once(plan: Plan, sizes: Sizes, data: Any, num_classes: int, amp: Any) -> Any:
    from torch.utils.data import DataLoader

    from sar.config import seed_everything
    from sar.train import fit

    model = sar_unet(num_classes, sizes)
    generator = seed_everything(0)  # the same batches in the same order for every dtype
    loader = DataLoader(data, batch_size=sizes.batch, shuffle=True, drop_last=True,
                        generator=generator)
    return fit(model, loader, epochs=1, max_steps=sizes.steps, lr=QUICK_GATE_LR,
               schedule="constant", device=plan.device, amp=amp, progress=False)


def amp_row(name: str, history: Any, reference: Any) -> dict[str, Any]:
    import numpy as np

    gates = history["gate_passed"].tolist()
    opened = history.loc[history["gate_passed"] > 0, "step"]
    row = {"dtype": name, "steps": len(history),
           "losses finite": bool(np.isfinite(history["loss"]).all()),
           "first loss": history["loss"].iloc[0], "last loss": history["loss"].iloc[-1],
           "gate first passed at step": int(opened.iloc[0]) if len(opened) else None,
           "steps with gate passed": int(sum(gates))}
    if reference is not None:
        ref = reference["gate_passed"].tolist()
        differ = [step for step, (a, b) in enumerate(zip(gates, ref, strict=False)) if a != b]
        row["gate decisions equal to float32"] = not differ and len(gates) == len(ref)
        row["first step differing from float32"] = differ[0] if differ else None
    return row


def judge_amp(result: StepResult) -> None:
    rows = result.tables["amp"]
    for row in rows:
        if not row["losses finite"]:
            result.fail(f"{row['dtype']}: a non-finite loss was logged")
        if not row.get("gate decisions equal to float32", True):
            result.fail(f"{row['dtype']}: the gate decided differently from float32 from step"
                        f" {row['first step differing from float32']} on")
    reference = next((row for row in rows if row["dtype"] == "float32"), None)
    if reference is not None and reference["gate first passed at step"] is None:
        result.notes.append("the gate never passed in float32: only 'closed' decisions were"
                            " compared")


# ------------------------------------------------------------------------------- torchrun
def step_torchrun(plan: Plan) -> StepResult:
    """torchrun, one rank per GPU (at most 2; 2 gloo ranks on the CPU): every rank trains SAR
    under DDP, then the ranks compare their regulariser state over NCCL (gloo)."""
    result = StepResult()
    ranks = launch_ranks(plan)
    result.figures["ranks"] = ranks
    for path in plan.work.glob("ddp_rank*.json"):
        path.unlink()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={ranks}", GPU_CHECK, "--ddp-worker", "--out", plan.out]
    # NCCL_DEBUG=WARN: an NCCL failure says why in the log
    status = run_command(command + (["--cpu-dry-run"] if plan.dry_run else []),
                         {"NCCL_DEBUG": "WARN"})
    reports = [json.loads(p.read_text()) for p in sorted(plan.work.glob("ddp_rank*.json"))]
    result.tables["torchrun"] = reports
    judge_ranks(result, reports, ranks, status)
    return result


def launch_ranks(plan: Plan) -> int:
    if plan.dry_run:
        return 2
    import torch

    return max(1, min(2, torch.cuda.device_count()))


def judge_ranks(result: StepResult, reports: list[dict[str, Any]], ranks: int,
                status: int) -> None:
    if status != 0:
        result.fail(f"torchrun exited with {status}")
    if len(reports) != ranks:
        result.fail(f"{len(reports)} of {ranks} rank(s) reported")
        return
    first = reports[0]
    result.figures.update({"backend": first["backend"], "ddp": first["ddp"],
                           "data": first["data"], "steps": first["steps"],
                           "gate opened": first["gate opened"],
                           "ema updates": first["ema updates"]})
    differ = sorted({name for r in reports for name in r["differ (all_gather)"]
                     + r["differ (sar out_of_sync)"]})
    result.figures["regulariser state differs between ranks"] = ", ".join(differ) or "no"
    if differ:
        result.fail(f"the ranks disagree on {', '.join(differ)}")
    if ranks == 1:
        result.notes.append("one GPU, so one rank: NCCL, DDP and the all_gather ran, but"
                            " agreement between ranks is trivially true (2 GPUs test it)")


def ddp_worker(plan: Plan) -> None:
    """One rank under torchrun: join the group, train, compare the SAR state with the others."""
    from sar import distributed

    env = join_process_group(plan)
    try:
        report = train_one_rank(plan, env)
        (plan.work / f"ddp_rank{env.rank}.json").write_text(json.dumps(report, indent=1))
    finally:
        distributed.cleanup()


def join_process_group(plan: Plan) -> Any:
    """The rank's :class:`sar.distributed.DistEnv`, with a process group even for one rank
    (``init_distributed`` treats ``WORLD_SIZE=1`` as a plain process: no NCCL at all)."""
    import torch
    import torch.distributed as dist

    from sar import distributed

    torch.set_num_threads(1 if plan.dry_run else torch.get_num_threads())
    if int(os.environ["WORLD_SIZE"]) > 1:
        return distributed.init_distributed(plan.device)  # sar's own path
    device = torch.device("cuda", 0) if plan.device == "cuda" else torch.device("cpu")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return distributed.DistEnv(0, 1, 0, device, backend)


def wrap_for_ddp(model: Any, env: Any) -> Any:
    """sar's prepare_model (SyncBN + DDP) for several ranks; DDP by hand for one rank, which
    prepare_model leaves unwrapped, so that NCCL still carries the gradients."""
    from torch.nn.parallel import DistributedDataParallel

    from sar import distributed

    if env.world_size > 1:
        return distributed.prepare_model(model, env, find_unused_parameters=True)
    model = distributed.convert_sync_batchnorm(model.to(env.device), env.device)
    ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def train_one_rank(plan: Plan, env: Any) -> dict[str, Any]:
    from sar import distributed
    from sar.train import fit

    sizes = ddp_sizes(plan)
    data, num_classes, source = scene_data(sizes.batch * sizes.steps * env.world_size,
                                           sizes.size)
    model = wrap_for_ddp(sar_unet(num_classes, sizes), env)
    loader = distributed.distributed_loader(data, sizes.batch, env=env, seed=0)
    history = fit(model, loader, epochs=1, max_steps=sizes.steps, lr=QUICK_GATE_LR,
                  schedule="constant", device=env.device, progress=False)
    reg = distributed.unwrap(model).regularizer
    state = reg.state_dict()
    return {"rank": env.rank, "world size": env.world_size, "backend": env.backend,
            "device": str(env.device), "ddp": type(model).__name__, "data": source,
            "steps": len(history), "final loss": float(history["loss"].iloc[-1]),
            "gate opened": bool(reg.gate_opened), "ema updates": int(reg.num_updates),
            "differ (all_gather)": differing_across_ranks(state),
            "differ (sar out_of_sync)": distributed.out_of_sync(state)}


def differing_across_ranks(state: dict[str, Any]) -> list[str]:
    """Names of the tensors that are not bitwise equal on every rank, by a plain all_gather
    (NCCL on CUDA), so that it runs even for one rank, where sar's helpers short-cut."""
    import torch
    import torch.distributed as dist

    differ = []
    for name, tensor in state.items():
        sent = tensor.detach().to(torch.float64 if tensor.is_floating_point() else torch.int64)
        gathered = [torch.empty_like(sent) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, sent.contiguous())
        if not all(torch.equal(other, sent) for other in gathered):
            differ.append(name)
    return differ


# ------------------------------------------------------------------------------ benchmark
# the proxies table: warm-up steps, steps per timed block, rounds, torch.compile's backend and
# what a compiled case is assumed to take before one has been timed (s). On a GPU every case,
# inductor; in the dry run one case, and dynamo's fullgraph capture alone ("eager" backend),
# which proves the compiled path without minutes of code generation on a CPU
PROXY_PLAN = {"gpu": {"warmup": 3, "steps": 10, "rounds": 3, "backend": "inductor",
                      "first_compile_s": 90.0},
              "dry_run": {"warmup": 2, "steps": 1, "rounds": 1, "backend": "eager",
                          "first_compile_s": 20.0}}
LIMIT_MARGIN_S = 15.0  # kept back from the step's limit for writing its result


def step_benchmark(plan: Plan) -> StepResult:
    """SAR against plain: train-step time, inference time and peak memory, side by side; then
    the proxies (host syncs, aten ops, extra peak memory) with time and memory ratios, eager
    and under torch.compile(fullgraph=True), while the step's time limit allows."""
    import torch

    from sar.benchmark import measure

    deadline = time.monotonic() + plan.limit_s - LIMIT_MARGIN_S
    result = StepResult()
    steps, rounds = (1, 1) if plan.dry_run else (10, 5)
    result.figures.update({"steps per timed block": steps, "rounds": rounds,
                           "autocast": "bf16" if plan.device == "cuda" else "off (CPU)",
                           "cudnn.benchmark": torch.backends.cudnn.benchmark})
    rows = []
    for case in benchmark_cases(plan):
        say("benchmark", f"{case.arch}-{case.encoder}, {case.batch}x3x{case.size}x{case.size}")
        try:
            rows.append(benchmark_row(case, measure(case, torch.device(plan.device), steps,
                                                    rounds)))
        except Exception as err:  # noqa: BLE001 - one case failing leaves the others
            result.fail(f"{case.arch}-{case.encoder}: {type(err).__name__}: {err}")
    result.tables["benchmark"] = rows
    if rows:
        result.figures["largest train-step ratio SAR/plain"] = max(r["train_ratio"] for r in rows)
        result.figures["largest peak-memory ratio SAR/plain"] = max(r["memory_ratio"]
                                                                   for r in rows)
    proxies = proxy_rows(plan, result, deadline)
    result.tables["benchmark_proxies"] = proxies
    summarise_proxies(result, proxies)
    return result


def proxy_rows(plan: Plan, result: StepResult, deadline: float) -> list[dict[str, Any]]:
    """The proxies of every case eager, then compiled (resnet18 cases first), each run only if
    1.5x the longest one of its kind so far still fits before ``deadline``: a step killed at its
    limit would lose every table."""
    import torch

    from sar.benchmark import measure_proxies

    sizes = dict(PROXY_PLAN["dry_run" if plan.dry_run else "gpu"])
    backend, first_compile_s = sizes.pop("backend"), sizes.pop("first_compile_s")
    cases = sorted(benchmark_cases(plan), key=lambda c: c.encoder != "resnet18")
    cases = cases[:1] if plan.dry_run else cases
    runs = [(c, None) for c in cases] + [(c, backend) for c in cases]
    took: dict[str | None, list[float]] = {None: [], backend: []}  # seconds per run so far
    rows = []
    for case, compiled in runs:
        label = f"{case.arch}-{case.encoder} " + (f"torch.compile({compiled})" if compiled
                                                  else "eager")
        expected = (1.5 * max(took[compiled]) if took[compiled]
                    else first_compile_s if compiled else 0.0)
        if time.monotonic() + expected > deadline:
            result.notes.append(f"proxies of {label} not run: the step's time limit")
            continue
        say("benchmark", f"proxies, {label}")
        started = time.monotonic()
        try:
            proxies = measure_proxies(case, torch.device(plan.device), compile_backend=compiled,
                                      **sizes)
        except Exception as err:  # noqa: BLE001 - one case failing leaves the others
            result.fail(f"proxies of {label}: {type(err).__name__}: {err}")
            continue
        took[compiled].append(time.monotonic() - started)
        rows.append({"arch": case.arch, "encoder": case.encoder,
                     "input": f"{case.batch}x{case.channels}x{case.size}x{case.size}",
                     **{k: v for k, v in asdict(proxies).items() if k != "case"},
                     "seconds": round(took[compiled][-1], 1)})
    return rows


def summarise_proxies(result: StepResult, rows: list[dict[str, Any]]) -> None:
    """The proxies' worst cases as figures; a shut gate or a failed compile as a note."""
    for row in rows:
        if row["error"]:
            result.notes.append(f"{row['arch']}-{row['encoder']} torch.compile({row['compiled']}):"
                                f" {row['error']}")
        elif not row["gate_opened"]:
            result.fail(f"{row['arch']}-{row['encoder']}: SAR's gate was shut when profiled")
    for kind in ("eager", "compiled"):
        done = [r for r in rows if not r["error"] and bool(r["compiled"]) == (kind == "compiled")]
        if done:
            result.figures[f"{kind}: most host syncs per SAR step"] = max(r["sar_syncs"]
                                                                          for r in done)
            result.figures[f"{kind}: most extra aten ops per step"] = max(r["extra_ops"]
                                                                          for r in done)
            for name, key in (("train-step ratio", "train_ratio"),
                              ("peak-memory ratio", "memory_ratio")):
                result.figures[f"{kind}: largest {name} SAR/plain"] = max(r[key] for r in done)


def benchmark_cases(plan: Plan) -> list[Any]:
    """GPU_CASES; in the dry run the resnet18 ones at 2x3x32x32 (the code path is the same)."""
    from sar.benchmark import GPU_CASES

    if not plan.dry_run:
        return list(GPU_CASES.values())
    return [replace(c, batch=2, size=32) for c in GPU_CASES.values() if c.encoder == "resnet18"]


def benchmark_row(case: Any, overhead: Any) -> dict[str, Any]:
    from sar.benchmark import images_per_second

    row = {"arch": case.arch, "encoder": case.encoder,
           "input": f"{case.batch}x{case.channels}x{case.size}x{case.size}"}
    row.update({k: v for k, v in asdict(overhead).items() if k != "case"})
    row["plain train images/s"] = images_per_second(case.batch, overhead.plain_ms)
    row["plain inference images/s"] = images_per_second(case.batch, overhead.plain_infer_ms)
    return row


# ------------------------------------------------------------------------------- notebook
GPU_HEADING = re.compile(r"^##\s.*\bGPU\b")
GPU_FLAG = re.compile(r"^GPU\s*=", re.MULTILINE)
MARK = "# gpu_check:"
DRY_RUN_SCENES = 32  # per make_fashion_scenes call in the GPU section, in the dry run only


def step_notebook(plan: Plan) -> StepResult:
    """Notebook 03 under nbval (lax), in smoke mode but for its GPU section, which runs in full
    mode on a GPU (smoke mode, forced onto the CPU, in the dry run); each cell timed."""
    result = StepResult()
    if not fashion_mnist_found():
        return result.skip("Fashion-MNIST not found: notebook 03 needs it (.gpu/fashion-mnist"
                           " on the GPU machine, dataset-fashion-mnist here)")
    copy, sections = lifted_copy(NOTEBOOK, plan)
    if "GPU" not in sections:
        result.fail(f"no '## ... GPU' section in {NOTEBOOK.name}: nothing was lifted")
    junit = plan.work / "notebook_junit.xml"
    timeout = max(30, int(plan.limit_s) - 15)
    status = run_command(pytest_command(junit, "--nbval-lax", "--nbval-current-env",
                                        f"--nbval-cell-timeout={timeout}",
                                        f"--nbval-sanitize-with={SANITIZE}", copy),
                         {"SAR_SMOKE": "1", "JUPYTER_RUNTIME_DIR": str(plan.work / "jupyter")})
    rows = notebook_rows(junit_rows(junit), sections)
    result.tables["notebook"] = rows
    summarise_notebook(result, rows, status, plan)
    return result


def lifted_copy(source: Path, plan: Plan) -> tuple[Path, list[str]]:
    """A copy of ``source`` whose GPU section runs: NBVAL_SKIP lifted, full mode switched on
    for that section only (on the CPU: GPU forced on, smoke mode kept). Returns the copy and
    the section of each code cell ("GPU", "gpu_check" for the added cells, or "other")."""
    notebook = json.loads(source.read_text())
    cells, sections, in_gpu = [], [], False
    for cell in notebook["cells"]:
        heading = section_heading(cell)
        if heading is not None and in_gpu:
            add_cell(cells, sections, leave_cell())
        if heading is not None:
            in_gpu = bool(GPU_HEADING.match(heading))
        add_cell(cells, sections, lift(cell) if in_gpu else cell, "GPU" if in_gpu else "other")
        if heading is not None and in_gpu:
            add_cell(cells, sections, enter_cell(plan))
        if in_gpu and plan.dry_run and cell["cell_type"] == "code" and GPU_FLAG.search(
                source_text(cell)):
            add_cell(cells, sections, code_cell(f"{MARK} --cpu-dry-run runs this section on the"
                                                " CPU\nGPU = True"))
    if in_gpu:
        add_cell(cells, sections, leave_cell())
    copy = plan.work / f"{source.stem}.gpu_check.ipynb"
    copy.write_text(json.dumps({**notebook, "cells": cells}, indent=1))
    return copy, sections


def add_cell(cells: list[dict[str, Any]], sections: list[str], cell: dict[str, Any],
             section: str = "gpu_check") -> None:
    if "id" not in cell:  # an added cell: nbformat 4.5 wants a unique id
        cell = {"id": f"gpu-check-{len(cells)}", **cell}
    cells.append(cell)
    if cell["cell_type"] == "code":
        sections.append(section)


def source_text(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def section_heading(cell: dict[str, Any]) -> str | None:
    """The first line of a markdown cell that opens a ``## `` section, else None."""
    first = source_text(cell).lstrip().split("\n", 1)[0]
    return first if cell["cell_type"] == "markdown" and first.startswith("## ") else None


def lift(cell: dict[str, Any]) -> dict[str, Any]:
    """The cell without its NBVAL_SKIP comment or nbval-skip tag."""
    if cell["cell_type"] != "code":
        return cell
    lines = [line for line in source_text(cell).splitlines(keepends=True)
             if line.strip() != "# NBVAL_SKIP"]
    tags = [t for t in cell.get("metadata", {}).get("tags", []) if t != "nbval-skip"]
    return {**cell, "source": "".join(lines), "metadata": {**cell.get("metadata", {}),
                                                           "tags": tags}}


def code_cell(source: str) -> dict[str, Any]:
    return {"cell_type": "code", "execution_count": None, "metadata": {"tags": ["gpu-check"]},
            "outputs": [], "source": source}


def enter_cell(plan: Plan) -> dict[str, Any]:
    if plan.dry_run:
        return code_cell(DRY_RUN_ENTER)
    return code_cell(f"{MARK} this section in full mode, the rest in smoke mode\n"
                     "_gpu_check_smoke, SMOKE = SMOKE, False")


DRY_RUN_ENTER = f"""{MARK} --cpu-dry-run: smoke mode here too, and at most
# {DRY_RUN_SCENES} scenes per call, so that the section's code runs on the CPU in seconds
_gpu_check_smoke = SMOKE
if "make_fashion_scenes" in globals():
    _gpu_check_make_scenes = make_fashion_scenes

    def make_fashion_scenes(num_scenes, *args, **kwargs):
        return _gpu_check_make_scenes(min(num_scenes, {DRY_RUN_SCENES}), *args, **kwargs)
"""


def leave_cell() -> dict[str, Any]:
    return code_cell(f"{MARK} back to the mode of the rest of the notebook\n"
                     "SMOKE = _gpu_check_smoke\n"
                     "if \"_gpu_check_make_scenes\" in globals():\n"
                     "    make_fashion_scenes = _gpu_check_make_scenes")


def notebook_rows(rows: list[dict[str, Any]], sections: list[str]) -> list[dict[str, Any]]:
    """JUnit rows ("Cell N") with the section of cell N."""
    out = []
    for row in rows:
        match = re.search(r"Cell (\d+)", row["test"])
        index = int(match.group(1)) if match else -1
        section = sections[index] if 0 <= index < len(sections) else "?"
        out.append({"cell": index, "section": section, **{k: row[k] for k in
                                                          ("outcome", "seconds", "message")}})
    return out


def summarise_notebook(result: StepResult, rows: list[dict[str, Any]], status: int,
                       plan: Plan) -> None:
    gpu_rows = [r for r in rows if r["section"] == "GPU"]
    result.figures.update({
        "cells run": len(rows), "cells failed": sum(r["outcome"] != "passed" for r in rows),
        "notebook seconds": round(sum(r["seconds"] for r in rows), 1),
        "GPU section seconds": round(sum(r["seconds"] for r in gpu_rows), 1),
        "GPU section mode": "smoke, on the CPU" if plan.dry_run else "full",
    })
    for row in rows:
        if row["outcome"] != "passed":
            result.fail(f"cell {row['cell']} ({row['section']}): {row['outcome']}"
                        f" {row['message']}")
    if status != 0 and result.status == "ok":
        result.fail(f"nbval exited with {status}")
    if not gpu_rows:
        result.fail("no cell of the GPU section ran")


STEPS = {"env": step_env, "payload": step_payload, "tests": step_tests, "amp": step_amp,
         "torchrun": step_torchrun, "benchmark": step_benchmark, "notebook": step_notebook}
