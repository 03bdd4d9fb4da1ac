"""Pretrain an smp encoder on balanced Fashion-MNIST classification: the offline ImageNet.

Segmentation models are usually fine-tuned from an ImageNet encoder; here nothing can be
downloaded, so this module makes the analogue on the spot. The encoder is built exactly as
:func:`sar.models.build_smp_model` builds it (3 input channels; the same encoder serves Unet,
FPN and DeepLabV3+, whose dilation changes no weight), topped with global average pooling and
a linear head, and trained to classify the **balanced Fashion-MNIST train split** (60000
images, 6000 per class, every image once per epoch): no class is long-tailed here, as no
ImageNet class is rare for a segmentation benchmark built on it.

Inputs look like the scenes' items, so the features transfer: each 28x28 grey image is pasted
as one item on a ``size`` x ``size`` scene background by
:func:`sar.data.scenes.compose_single_items`, with the scenes' own noise background, random
RGB tint, opacity threshold, random position and item sides ``round(28 * scale)``. The default
``item_scale`` (0.6, 1.6) covers both the from-scratch benchmark's (0.6, 1.2) and larger items.
Pixel values stay in [0, 1], unnormalised, as the scenes reach the segmentation model.

No leak: the scenes' validation and test items come from Fashion-MNIST's *test* split
(:func:`sar.data.make_fashion_scenes` with ``split="val"``), and this module only ever loads
the *train* split (``tests/test_pretrain.py`` checks which files it reads).

    python -m sar.pretrain --encoder resnet18 --epochs 4 --steps 3000 --threads 1 \
        --out data/encoders/resnet18_fashion.pt

On a CPU the file's bits depend on the number of torch threads (a 20-step probe: the same
checksum on every run at one thread count, another at another), so
:func:`ensure_encoder` always pretrains with ``PRETRAIN_THREADS`` (1) on a CPU, whatever the
caller's setting: the file then depends on the machine and the library versions only (another
CPU's vector instructions or another torch may still change its bits).

writes the encoder's ``state_dict`` and a JSON sidecar (:mod:`sar.encoder_weights`); then
``build_smp_model(..., encoder_weights="data/encoders/resnet18_fashion.pt")`` starts from it.
"""

from __future__ import annotations

import argparse
import math
import platform
import shlex
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .config import show_progress
from .data import sources
from .data.constants import FASHION_MNIST_CLASSES
from .data.scenes import compose_single_items
from .encoder_weights import load_encoder_weights, save_encoder_weights, sha256_of
from .models import build_smp_model

# where the segmentation_pretrained grid looks (sar.experiments.grids.PRETRAINED_ENCODER)
DEFAULT_OUT = sources.REPO_DATA_DIR / "encoders" / "resnet18_fashion.pt"
# The budget (2-core x86_64 CPU, --threads 2): 1400 steps (89600 composed images, 1.5 passes
# over the train split) took 8.7 minutes on the idle machine and reached 80.1% train accuracy;
# 3000 steps (3.2 passes) took 39 minutes while other jobs shared the cores (about 19 minutes
# idle, at the 1400-step pace) and reached 83.8%: the scene benchmark's rare classes need the
# better encoder. With --threads 1 (ensure_encoder's setting), 3000 steps took 35 minutes beside
# other jobs and reached 84.0% (sha256 d4767cc1..., 2026-12-04); the grid's rows used the
# --threads 2 file (8276cc7a..., made 2026-11-29), which a rerun no longer makes bit for bit.
DEFAULT_EPOCHS = 4
DEFAULT_MAX_STEPS = 3000
# the CPU thread count ensure_encoder pretrains with (the CLI's default; see the module docstring)
PRETRAIN_THREADS = 1


class EncoderClassifier(nn.Module):
    """An smp encoder, global average pooling of its deepest map, and a linear head.

    ``(B, 3, H, W)`` float32 -> ``(B, num_classes)`` logits.
    """

    def __init__(self, encoder: nn.Module, num_classes: int = len(FASHION_MNIST_CLASSES)):
        super().__init__()
        self.encoder = encoder
        self.fc = nn.Linear(encoder.out_channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deepest = self.encoder(x)[-1]  # (B, C_last, H / 32, W / 32)
        return self.fc(deepest.mean(dim=(2, 3)))


def make_encoder(encoder_name: str = "resnet18") -> nn.Module:
    """The encoder of ``build_smp_model("Unet", encoder_name, in_channels=3)``, randomly
    initialised (its ``state_dict`` keys are those of every smp architecture's encoder)."""
    return build_smp_model("Unet", encoder_name, num_classes=2, in_channels=3).encoder


def balanced_subset(labels: torch.Tensor, per_class: int | None) -> torch.Tensor:
    """int64 indices of the first ``per_class`` images of each class (all when ``None``)."""
    if per_class is None:
        return torch.arange(len(labels))
    chosen = [torch.nonzero(labels == c).flatten()[:per_class]
              for c in range(len(FASHION_MNIST_CLASSES))]
    return torch.sort(torch.cat(chosen)).values


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 over the rest."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


@torch.no_grad()
def composed_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      size: int, item_scale: tuple[float, float], seed: int,
                      device: torch.device, batch_size: int = 256) -> float:
    """Eval-mode accuracy of ``model`` on ``images`` composed as in training (fixed ``seed``)."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    correct = 0
    for start in range(0, len(images), batch_size):
        x = compose_single_items(images[start:start + batch_size], size, item_scale,
                                 generator=gen)
        correct += int((model(x.to(device)).argmax(1).cpu() == labels[start:start + batch_size])
                       .sum())
    model.train(was_training)
    return correct / max(len(images), 1)


def pretrain_encoder(
    encoder_name: str = "resnet18",
    *,
    epochs: int = DEFAULT_EPOCHS,
    max_steps: int | None = DEFAULT_MAX_STEPS,
    batch_size: int = 64,
    optimizer: str = "adamw",
    lr: float = 1e-3,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    warmup_steps: int = 50,
    size: int = 64,
    item_scale: tuple[float, float] = (0.6, 1.6),
    per_class: int | None = None,
    eval_size: int = 2000,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a fresh encoder and linear head on composed Fashion-MNIST **train** images.

    Args:
        epochs, max_steps: the run lasts ``min(epochs * (n // batch_size), max_steps)`` SGD
            steps; every epoch visits each training image once, in a fresh order and a fresh
            composition (background, tint, size, position).
        optimizer: ``"adamw"`` (default) or ``"sgd"`` (Nesterov, with ``momentum``). In short
            probes (120 steps of 32 composed images) AdamW at lr 1e-3 reached 35% train
            accuracy while SGD at lr 0.01, 0.05 or 0.1 stayed at chance (10-14%) for 240 steps:
            finding a tinted item on a noisy background is a slow start for SGD from scratch.
        lr, weight_decay: the peak learning rate (after ``warmup_steps`` of linear warm-up,
            then cosine decay to 0) and the (decoupled, for AdamW) weight decay.
        per_class: use only the first ``per_class`` images of each class (balanced; for tests).
        eval_size: images of the train split (composed with a fixed seed) on which the final
            eval-mode train accuracy is measured.
        size, item_scale: the composed images' side (pixels) and item scale range.

    Returns:
        ``(encoder, record)``: the trained encoder (eval mode, on the CPU) and a dict for the
        sidecar: the budget, the data, the final train accuracy and the wall time in seconds.

    Raises:
        FileNotFoundError: Fashion-MNIST's train split is missing (the message says how to get
            it); the test split is never read.
    """
    device = torch.device(device)
    images, labels = sources.load_fashion_mnist("train")  # the train split only: no leak
    keep = balanced_subset(labels, per_class)
    images, labels = images[keep], labels[keep]
    steps_per_epoch = len(images) // batch_size
    total = epochs * steps_per_epoch if max_steps is None else min(
        epochs * steps_per_epoch, max_steps)
    if total < 1:
        raise ValueError(f"no training step: {len(images)} images, batch_size {batch_size},"
                         f" epochs {epochs}, max_steps {max_steps}")
    torch.manual_seed(seed)
    model = EncoderClassifier(make_encoder(encoder_name)).to(device).train()
    if optimizer not in ("adamw", "sgd"):
        raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {optimizer!r}")
    opt = (torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
           if optimizer == "adamw" else
           torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                           weight_decay=weight_decay, nesterov=True))
    gen = torch.Generator().manual_seed(seed)
    start, step, recent = time.perf_counter(), 0, []
    bar = tqdm(total=total, desc=f"pretrain {encoder_name}", unit="step",
               disable=not show_progress(progress))
    while step < total:
        order = torch.randperm(len(images), generator=gen)
        for b in range(steps_per_epoch):
            if step >= total:
                break
            idx = order[b * batch_size:(b + 1) * batch_size]
            x = compose_single_items(images[idx], size, item_scale, generator=gen).to(device)
            y = labels[idx].to(device)
            for group in opt.param_groups:
                group["lr"] = lr * _lr_factor(step, total, warmup_steps)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            recent = [*recent[-199:], float((logits.argmax(1) == y).float().mean())]
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{sum(recent) / len(recent):.3f}",
                            refresh=False)
    bar.close()
    train_seconds = time.perf_counter() - start
    probe = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed + 1))
    probe = probe[:eval_size]
    accuracy = composed_accuracy(model, images[probe], labels[probe], size, item_scale,
                                 seed + 1, device)
    record = {
        "encoder": encoder_name, "in_channels": 3,
        "data": f"Fashion-MNIST train split, {len(images)} images, balanced"
                f" ({int(torch.bincount(labels).min())}-{int(torch.bincount(labels).max())}"
                " per class); the scenes' validation items come from the test split",
        "composition": {"size": size, "item_scale": list(item_scale),
                        "background": "scene noise", "tint": "random RGB",
                        "normalisation": "none, pixels in [0, 1] as the scenes"},
        "budget": {"steps": total, "epochs": epochs, "max_steps": max_steps,
                   "batch_size": batch_size, "images_seen": total * batch_size,
                   "optimizer": optimizer, "lr": lr,
                   "momentum": momentum if optimizer == "sgd" else None,
                   "weight_decay": weight_decay, "warmup_steps": warmup_steps,
                   "schedule": "cosine", "seed": seed},
        "final_train_accuracy": accuracy,
        "final_train_accuracy_on": f"{len(probe)} train images, eval mode, fixed composition",
        "running_train_accuracy_last_steps": sum(recent) / len(recent),
        "train_seconds": round(train_seconds, 1),
        "device": str(device), "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    return model.encoder.cpu().eval(), record


def versions() -> dict[str, str]:
    """torch and segmentation-models-pytorch versions, for the sidecar."""
    import segmentation_models_pytorch as smp

    return {"torch": torch.__version__, "segmentation_models_pytorch": smp.__version__}


def pretrain_and_save(out: str | Path, encoder_name: str = "resnet18", *, command: str,
                      **options: Any) -> dict[str, Any]:
    """:func:`pretrain_encoder` with ``options``, then the encoder saved to ``out`` with a sidecar
    recording ``command`` (how to make the file again) and the library versions.

    Returns:
        The sidecar's content (:func:`sar.encoder_weights.save_encoder_weights`).
    """
    encoder, record = pretrain_encoder(encoder_name, **options)
    record |= {"command": command, **versions()}
    return save_encoder_weights(encoder.state_dict(), out, record)


def ensure_encoder(path: str | Path = DEFAULT_OUT, encoder_name: str = "resnet18", *,
                   device: str | torch.device = "cpu", progress: bool = True) -> dict[str, Any]:
    """The encoder weights at ``path``: checked and described if the file exists, else
    pretrained now with the defaults of ``python -m sar.pretrain`` and saved there (load if
    present, else train; once per machine: 3000 steps with ``PRETRAIN_THREADS`` CPU threads,
    whatever ``torch.get_num_threads()`` is, so that the notebook's thread setting does not
    change the file; the caller's thread count is restored afterwards).

    Returns:
        The file's sidecar (``file``, ``sha256``, ``budget``, ``final_train_accuracy``,
        ``command``, ...); ``{"file", "sha256"}`` only for a file saved without a sidecar.

    Raises:
        ValueError: the file exists but fails its checksum, holds another encoder
            (:func:`sar.encoder_weights.verify_encoder_weights`; the message says how to
            remake it) or is not a readable state dict of ``encoder_name``; ``path`` is a
            folder.
    """
    path = Path(path)
    if path.is_file():
        state, record = load_encoder_weights(path, encoder_name)  # checksum, encoder, readable
        _check_fits(state, path, encoder_name)  # a file without a sidecar is checked here too
        return record or {"file": path.name, "sha256": sha256_of(path)}
    if path.exists():
        raise ValueError(f"{path} exists but is not a file: name a weights file")
    path.parent.mkdir(parents=True, exist_ok=True)  # fail now, not after 20 minutes
    on_cpu = torch.device(device).type == "cpu"
    threads = PRETRAIN_THREADS if on_cpu else torch.get_num_threads()
    command = (f"python -m sar.pretrain --encoder {encoder_name} --device {device} "
               f"--threads {threads} --out {shlex.quote(str(path))}")
    callers_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # the same bits on every machine (module docstring)
    try:
        return pretrain_and_save(path, encoder_name, command=command, device=device,
                                 progress=progress)
    finally:
        torch.set_num_threads(callers_threads)


def _check_fits(state: dict[str, torch.Tensor], path: Path, encoder_name: str) -> None:
    """Raise ValueError unless ``state`` loads strictly into a fresh ``encoder_name`` encoder."""
    try:
        make_encoder(encoder_name).load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path} does not hold a {encoder_name} encoder's state_dict; delete"
                         " it to pretrain again, or name the encoder it was made for") from err


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m sar.pretrain``: pretrain, save the encoder and its sidecar, print both."""
    import sys

    parser = argparse.ArgumentParser(prog="python -m sar.pretrain", description=__doc__.split(
        "\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--encoder", default="resnet18", help="smp encoder name")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                        help="passes over the 60000 train images")
    parser.add_argument("--steps", type=int, default=DEFAULT_MAX_STEPS,
                        help="stop after this many steps (0: no limit but --epochs)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--size", type=int, default=64, help="side of the composed images")
    parser.add_argument("--per-class", type=int, default=None,
                        help="only the first N train images of each class (smoke runs)")
    parser.add_argument("--eval-size", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-progress", action="store_true")
    args_list = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(args_list)
    torch.set_num_threads(args.threads)
    record = pretrain_and_save(
        args.out, args.encoder, command="python -m sar.pretrain " + shlex.join(args_list),
        epochs=args.epochs, max_steps=args.steps or None, batch_size=args.batch_size,
        optimizer=args.optimizer, lr=args.lr, size=args.size, per_class=args.per_class,
        eval_size=args.eval_size, seed=args.seed, device=args.device,
        progress=not args.no_progress)
    print(f"wrote {args.out} (sha256 {record['sha256'][:16]}...), final train accuracy"
          f" {record['final_train_accuracy']:.3f} after {record['budget']['steps']} steps")
    return record


if __name__ == "__main__":
    main()
