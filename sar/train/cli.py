"""One configured training run, :func:`run`, and the command line ``python -m sar.train --config``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import distributed
from ..config import seed_everything
from ..distributed import DistEnv, unwrap
from .evaluation import evaluate
from .loop import fit
from .run_config import RunConfig, _amp_option, build_datasets, build_model, load_run_config


@dataclass
class RunResult:
    """What :func:`run` returns: the history, the validation metrics (``None`` without a
    validation set) and the folder holding ``config.json``, ``checkpoint.pt``,
    ``history.csv`` and ``metrics.json``."""

    history: pd.DataFrame
    metrics: dict[str, Any] | None
    output_dir: Path


def _say(message: str) -> None:
    if distributed.is_main_process():
        tqdm.write(f"[sar.train] {message}")  # below a running progress bar, not inside it


def _epoch_reporter(epochs: int) -> Callable[[int, nn.Module], None]:
    start = time.perf_counter()

    def report(epoch: int, model: nn.Module) -> None:
        reg = getattr(unwrap(model), "regularizer", None)
        gate = ""
        if hasattr(reg, "gate_opened"):
            state = "open" if bool(reg.gate_opened) else "closed"
            gate = f", SAR gate {state} ({int(reg.num_updates)} EMA updates)"
        _say(f"epoch {epoch}/{epochs} done, {time.perf_counter() - start:.0f}s{gate}")

    return report


def _check_regularizer_in_sync(model: nn.Module) -> None:
    """Verify (not assume) that every rank ended with the same anchors, projector, EMA, gate."""
    reg = getattr(unwrap(model), "regularizer", None)
    if reg is not None and distributed.get_world_size() > 1:
        distributed.assert_in_sync(reg.state_dict(), "the SAR regulariser's state")


def run(config: RunConfig, env: DistEnv | None = None) -> RunResult:
    """Train and evaluate as ``config`` says, in this process or as one rank of many.

    Every rank builds the data and the model from the same seed, trains its shard with
    :func:`fit` (resuming from ``output_dir/checkpoint.pt`` when ``train.resume`` and the
    file exists), then rank 0 alone scores the validation set and writes the files.
    """
    env = env or distributed.init_distributed(config.train.device)
    out, cfg = Path(config.output_dir), config.train
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    seed_everything(cfg.seed)  # the same initial weights on every rank (DDP re-broadcasts)
    train_set, val_set, num_classes = build_datasets(config.data)
    model = build_model(config.model, config.sar, num_classes, config.data.ignore_index)
    model = distributed.prepare_model(model, env, sync_batchnorm=config.model.sync_batchnorm,
                                      find_unused_parameters=config.model.find_unused_parameters)
    seed_everything(cfg.seed + env.rank)  # each rank its own augmentation stream
    loader = distributed.distributed_loader(train_set, cfg.batch_size, env=env, seed=cfg.seed,
                                            num_workers=config.data.num_workers)
    _say(f"{env.world_size} process(es) on {env.device.type} ({env.backend or 'no backend'}),"
         f" global batch {env.world_size * cfg.batch_size}, {len(loader)} steps per epoch")
    history = fit(model, loader, epochs=cfg.epochs, max_steps=cfg.max_steps,
                  optimizer=cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum,
                  weight_decay=cfg.weight_decay, schedule=cfg.schedule,
                  warmup_steps=cfg.warmup_steps, ignore_index=config.data.ignore_index,
                  device=env.device, amp=_amp_option(cfg.amp), checkpoint=out / "checkpoint.pt",
                  resume=cfg.resume, log_every=cfg.log_every, ce_mean_over=cfg.ce_mean_over,
                  on_epoch_end=_epoch_reporter(cfg.epochs))
    _check_regularizer_in_sync(model)
    metrics = None
    if env.is_main:
        history.to_csv(out / "history.csv", index=False)
        if val_set is not None:
            metrics = _validate(model, val_set, num_classes, config, env.device)
            (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    distributed.barrier()  # the others wait while rank 0 scores, so none exits early
    return RunResult(history, metrics, out)


def _validate(model: nn.Module, val_set: Any, num_classes: int, config: RunConfig,
              device: torch.device) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    batch = config.train.eval_batch_size or config.train.batch_size
    loader = DataLoader(val_set, batch_size=batch, num_workers=config.data.num_workers)
    metrics = evaluate(model, loader, num_classes=num_classes, task="segmentation",
                       device=device, ignore_index=config.data.ignore_index)
    _say(f"validation mIoU {metrics['mIoU']:.4f}, pixel accuracy"
         f" {metrics['pixel_accuracy']:.4f}")
    return metrics


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sar.train",
        description="Train an smp segmentation model with SAR from a JSON config, in one"
        " process or under torchrun (torchrun --nproc_per_node=N -m sar.train --config ...).",
    )
    parser.add_argument("--config", required=True, help="JSON run config, e.g. configs/*.json")
    parser.add_argument("--output-dir", help="overrides output_dir of the config")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config values, e.g. --set train.epochs=2 data.size=32")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = load_run_config(args.config, args.set, args.output_dir)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    env = distributed.init_distributed(config.train.device)
    try:
        run(config, env)
    finally:
        distributed.cleanup()
    return 0
