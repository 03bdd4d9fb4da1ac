"""The ``configs`` step of ``scripts/gpu_check.py``: GPU memory and time per 1k iterations of
every paper-scale config, so the README can say what a user's GPU run will cost.

Each config's own model (SAR on), crop and per-GPU batch train for a few SGD steps on random
images and labels under bf16 autocast (what ``fit`` uses on a GPU that has it). The model is
built without pretrained weights (the machine is offline; weights do not change the cost).
The dry run swaps in small encoders and 64-pixel crops on the CPU: it proves the code path.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gpu_check_steps import REPO, Plan, StepResult, say

WARMUP_STEPS, TIMED_STEPS = 3, 10
# the dry run's stand-ins for the heavy encoders (one CPU step of HRNet-W48 takes ~20 s)
SMALL_ENCODERS = {"tu-hrnet_w48": "tu-hrnet_w18_small", "resnet101": "resnet18"}


def paper_configs() -> list[Path]:
    """Every config of a dataset on disk (not the built-in offline scenes)."""
    from sar.train import load_run_config

    return [p for p in sorted((REPO / "configs").glob("*.json"))
            if load_run_config(p).data.name != "fashion_scenes"]


def step_configs(plan: Plan) -> StepResult:
    result = StepResult()
    rows = []
    for path in paper_configs():
        say("configs", path.name)
        try:
            rows.append(measure_config(path, plan))
        except Exception as err:  # noqa: BLE001 - one config failing leaves the others
            result.fail(f"{path.name}: {type(err).__name__}: {err}")
    result.tables["configs"] = rows
    if rows:
        result.figures["largest peak memory (GiB)"] = max(r["peak_memory_gib"] for r in rows)
    return result


def measure_config(path: Path, plan: Plan) -> dict[str, Any]:
    """Milliseconds per training step and peak memory of ``path``'s model, crop and batch."""
    import torch

    from sar.data import BENCHMARK_NUM_CLASSES
    from sar.train import build_model, load_run_config

    cfg = load_run_config(path, ["model.encoder_weights=null"])
    if plan.dry_run:
        cfg.model.encoder = SMALL_ENCODERS.get(cfg.model.encoder, cfg.model.encoder)
    height, width = (64, 64) if plan.dry_run else crop_size(cfg.data.crop)
    batch, num_classes = cfg.train.batch_size, BENCHMARK_NUM_CLASSES.get(cfg.data.name, 21)
    device = torch.device(plan.device)
    model = build_model(cfg.model, cfg.sar, num_classes, cfg.data.ignore_index).to(device)
    images = torch.randn(batch, 3, height, width, device=device)
    masks = torch.randint(0, num_classes, (batch, height, width), device=device)
    step = training_step(model, images, masks, cfg.train.lr)
    warmup, timed = (1, 2) if plan.dry_run else (WARMUP_STEPS, TIMED_STEPS)
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(timed):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    ms = 1000 * (time.perf_counter() - start) / timed
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"config": path.stem, "model": f"{cfg.model.arch} / {cfg.model.encoder}",
            "crop": f"{height}x{width}", "batch_per_gpu": batch, "ms_per_step": round(ms, 1),
            "minutes_per_1k_iterations": round(ms / 60, 2), "peak_memory_gib": round(peak, 2),
            "max_steps": cfg.train.max_steps}


def crop_size(crop: int | list[int] | None) -> tuple[int, int]:
    if crop is None:
        raise ValueError("a paper config needs data.crop")
    return (crop, crop) if isinstance(crop, int) else (int(crop[0]), int(crop[1]))


def training_step(model: Any, images: Any, masks: Any, lr: float) -> Any:
    """One SGD step of CE + SAR under bf16 autocast on CUDA (float32 on the CPU)."""
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    cuda = images.device.type == "cuda"
    model.train()

    def step() -> None:
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=cuda):
            logits, losses = model(images, masks)
            loss = F.cross_entropy(logits, masks, ignore_index=255) + losses["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step
