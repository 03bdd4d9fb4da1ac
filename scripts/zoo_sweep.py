"""Wrap every model of the zoos with sar and check one training step: ok, refused or FAIL.

    OMP_NUM_THREADS=1 python scripts/zoo_sweep.py                  # -> results/zoo_sweep.csv
    python scripts/zoo_sweep.py --library timm --only deit_tiny_distilled_patch16_224
    python scripts/zoo_sweep.py --resume       # keep the rows already in the CSV, do the rest

The zoos: every torchvision classifier (``torchvision.models.list_models(module=
torchvision.models)``), the timm sample in :data:`TIMM_SAMPLE` (every head layout timm has,
the multi-head families included), and every smp architecture on :data:`SMP_ENCODERS` (DPT,
which takes only timm ViT encoders, on :data:`DPT_ENCODERS`). Every model is built without
weights for C = 4 classes and wrapped with :class:`sar.SARClassifier` /
:class:`sar.SARSegmentationModel`. On the smallest square input it accepts (the first of
:data:`SIZES` that an eval forward takes; torchvision's ViTs are built for one patch, their
smallest input), batch 2:

1. ``step``: one training forward and backward of cross-entropy plus the regulariser's loss,
   every loss finite;
2. ``anchor_ce``: the anchor cross-entropy alone gives a non-zero gradient to every head handed
   to the regulariser;
3. ``heads_make_logits``: those heads are the whole route from the features to the logits:
   with their weights and biases zeroed, the logits no longer depend on the input (a head left
   out, e.g. a distillation head, keeps them input-dependent);
4. ``methods.build('sar', model)`` wraps the same heads.

Outcomes: ``ok``; ``refused`` for a TypeError/ValueError at wrapping whose message says what
to do (an instruction: use, pass, build, name, wrap, set, remove); ``FAIL`` for anything else
(a failed check, another exception, an unclear refusal); ``not built`` where the library
itself cannot build the model (smp's DPT with a non-timm encoder, an encoder an architecture
does not take). The CSV has one row per model; nothing in it is timed.
"""

from __future__ import annotations

import argparse
import ast
import csv
import gc
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import sar
from sar import methods

NUM_CLASSES = 4
SIZES = (32, 64, 96, 128, 160, 192, 224, 240, 256, 299)
INSTRUCTION = re.compile(r"\b(use|pass|build|name|wrap|set|remove)\b")
OUT = Path(__file__).resolve().parents[1] / "results" / "zoo_sweep.csv"

# timm 1.0.31: one or more models per head layout; the multi-head families first
TIMM_SAMPLE = (
    # several heads: distillation heads, one head per branch or stage, an auxiliary head
    "deit_tiny_distilled_patch16_224", "deit_small_distilled_patch16_224",
    "levit_128s", "levit_conv_128s", "efficientformer_l1", "efficientformerv2_s0",
    "repvit_m0_9", "repvit_m1_1", "crossvit_tiny_240", "crossvit_9_dagger_240",
    "pit_ti_distilled_224", "swiftformer_xs", "efficientvim_m1", "efficientvim_m1_dist",
    "iformer_t", "iformer_m_distilled", "volo_d1_224", "volo_d1_224:use_aux_head=False",
    # 1x1 conv heads on the pooled (B, D, 1, 1) map
    "resnetv2_50", "resnetv2_50x1_bit", "dla34", "dpn68", "ghostnet_100",
    # one linear head, in the layouts timm has
    "resnet18", "resnet50d", "resnest14d", "res2net50_14w_8s", "selecsls42b", "cspresnet50",
    "darknet53", "ese_vovnet19b_dw", "dm_nfnet_f0", "eca_nfnet_l0", "gernet_s",
    "regnetx_002", "rexnet_100", "efficientnet_b0", "tf_efficientnetv2_b0",
    "mobilenetv3_small_100", "mobilenetv4_conv_small", "densenet121", "vgg11", "inception_v3",
    "hrnet_w18_small", "convnext_atto", "convnextv2_atto", "vit_tiny_patch16_224",
    "deit_tiny_patch16_224", "cait_xxs24_224", "xcit_nano_12_p16_224", "beit_base_patch16_224",
    "eva02_tiny_patch14_224", "swin_tiny_patch4_window7_224", "maxvit_nano_rw_256",
    "coatnet_nano_rw_224", "mixer_s16_224", "poolformer_s12", "mobilevit_xxs",
    "mobilevitv2_050", "fastvit_t8", "edgenext_xx_small", "efficientvit_b0",
    "efficientvit_m0", "hgnetv2_b0", "tiny_vit_5m_224", "pvt_v2_b0", "davit_tiny",
    "mambaout_femto", "starnet_s1", "shvit_s1", "gcvit_xxtiny", "tresnet_m",
    "coat_tiny", "coat_lite_tiny", "nest_tiny_jx", "tnt_s_patch16_224", "mvitv2_tiny",
    "sequencer2d_s", "convit_tiny", "twins_svt_small", "visformer_tiny", "focalnet_tiny_srf",
    "inception_v4", "inception_resnet_v2", "legacy_seresnet18", "xception41", "nasnetalarge",
    "pnasnet5large", "mobileone_s0", "repvgg_a0", "lcnet_050", "inception_next_tiny",
    "caformer_s18", "hiera_tiny_224", "nextvit_small", "fastvit_mci0", "rdnet_tiny",
    "ghostnetv2_100", "efficientvit_l1", "deit3_small_patch16_224", "halonet26t",
    "botnet26t_256", "lambda_resnet26t", "seresnext26d_32x4d",
)
SMP_ARCHS = ("Unet", "UnetPlusPlus", "MAnet", "Linknet", "FPN", "PSPNet", "DeepLabV3",
             "DeepLabV3Plus", "PAN", "UPerNet", "Segformer", "DPT")
SMP_ENCODERS = ("resnet18", "mobilenet_v2", "efficientnet-b0", "mit_b0")
DPT_ENCODERS = ("tu-vit_tiny_patch16_224", "tu-deit_tiny_patch16_224",
                "tu-vit_small_patch16_224")


@dataclass
class Row:
    library: str
    model: str
    outcome: str = ""
    wrapper: str = ""
    heads: str = ""
    feat_dims: str = ""
    input: str = ""
    params_m: str = ""
    detail: str = ""


class Refused(Exception):
    """The wrapper refused the model with a TypeError/ValueError (kept as the cause)."""


# ------------------------------------------------------------------------------- the models
def parse(spec: str) -> tuple[str, dict[str, object]]:
    """``"name:key=value,key=value"`` -> ``(name, kwargs)`` (values: Python literals)."""
    name, _, options = spec.partition(":")
    kwargs = {}
    for item in filter(None, options.split(",")):
        key, _, value = item.partition("=")
        kwargs[key] = ast.literal_eval(value)
    return name, kwargs


def torchvision_models() -> Iterator[tuple[str, str, Callable[[], nn.Module]]]:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    # the fix the aux_logits refusal names, checked as a model of its own
    names += ["googlenet:aux_logits=False,init_weights=True", "inception_v3:aux_logits=False"]
    for spec in names:
        name, kwargs = parse(spec)
        if name.startswith("vit_"):  # a fixed image size: the smallest, one patch
            kwargs.setdefault("image_size", int(re.search(r"_(\d+)$", name).group(1)))
        yield "torchvision", spec, lambda n=name, k=kwargs: torchvision.models.get_model(
            n, weights=None, num_classes=NUM_CLASSES, **k)


def timm_models() -> Iterator[tuple[str, str, Callable[[], nn.Module]]]:
    import timm

    for spec in TIMM_SAMPLE:
        name, kwargs = parse(spec)
        yield "timm", spec, lambda n=name, k=kwargs: timm.create_model(
            n, pretrained=False, num_classes=NUM_CLASSES, **k)


def smp_models() -> Iterator[tuple[str, str, Callable[[], nn.Module]]]:
    for arch in SMP_ARCHS:
        for encoder in DPT_ENCODERS if arch == "DPT" else SMP_ENCODERS:
            yield "smp", f"{arch}/{encoder}", lambda a=arch, e=encoder: sar.build_smp_model(
                a, e, num_classes=NUM_CLASSES)
    yield "smp", "Unet/resnet18:aux_params", lambda: sar.build_smp_model(
        "Unet", "resnet18", num_classes=NUM_CLASSES, aux_params={"classes": NUM_CLASSES})


ZOOS = {"torchvision": torchvision_models, "timm": timm_models, "smp": smp_models}


# ------------------------------------------------------------------------------- the checks
def heads_of(wrapped: sar.RegularizedModel) -> tuple[str, ...]:
    return getattr(wrapped, "head_names", (wrapped.classifier_name,))


def wrap(net: nn.Module, segmentation: bool) -> sar.RegularizedModel:
    try:
        return sar.SARSegmentationModel(net) if segmentation else sar.SARClassifier(net)
    except (TypeError, ValueError) as err:
        raise Refused(str(err)) from err


def smallest_input(net: nn.Module) -> torch.Tensor:
    """The first of :data:`SIZES` that the model's eval forward takes, as a batch of 2; a
    torchvision ViT's ``image_size`` first (it takes no other)."""
    net.eval()
    errors = []
    fixed = getattr(net, "image_size", None)
    for size in ((fixed,) if isinstance(fixed, int) else ()) + SIZES:
        x = torch.randn(2, 3, size, size)
        try:
            with torch.no_grad():
                net(x)
            return x
        except Exception as err:  # noqa: BLE001 - too small an input fails in many ways
            errors.append(f"{size}: {type(err).__name__}")
    raise RuntimeError(f"no input size in {SIZES} runs: {errors[-1]}")


def labels_for(x: torch.Tensor, segmentation: bool) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    shape = (2, *x.shape[2:]) if segmentation else (2,)
    labels = torch.randint(0, NUM_CLASSES, shape, generator=generator)
    if not segmentation:
        labels[:] = torch.tensor([0, 3])  # two classes, whatever the seed
    return labels


def training_step(wrapped: sar.RegularizedModel, x: torch.Tensor, y: torch.Tensor) -> None:
    wrapped.train()
    logits, losses = wrapped(x, y)
    if not isinstance(logits, torch.Tensor):
        raise AssertionError(f"step: training-mode logits are a {type(logits).__name__}")
    task = F.cross_entropy(logits, y)
    bad = [key for key, value in losses.items() if not torch.isfinite(value).all()]
    if bad or not torch.isfinite(task):
        raise AssertionError(f"step: non-finite {bad or 'task loss'}")
    (task + losses["loss"]).backward()


def anchor_ce_reaches_heads(wrapped: sar.RegularizedModel, x: torch.Tensor,
                            y: torch.Tensor) -> None:
    wrapped.zero_grad(set_to_none=True)
    wrapped.train()(x, y).losses["anchor_ce"].backward()
    for name in heads_of(wrapped):
        grad = wrapped.model.get_submodule(name).weight.grad
        if grad is None or not bool(grad.abs().sum() > 0):
            raise AssertionError(f"anchor_ce: no gradient reaches the head {name!r}")


@torch.no_grad()
def heads_make_logits(wrapped: sar.RegularizedModel, x: torch.Tensor) -> None:
    for name in heads_of(wrapped):
        for param in wrapped.model.get_submodule(name).parameters(recurse=False):
            param.zero_()
    logits = wrapped.eval()(x)
    spread = float((logits - logits.flatten()[0]).abs().max())
    if spread > 1e-6:
        raise AssertionError(
            f"heads_make_logits: with the heads {list(heads_of(wrapped))} zeroed the logits"
            f" still vary by {spread:.3g}: another layer adds to the logits")


def same_heads_through_methods(net: nn.Module, wrapped: sar.RegularizedModel) -> None:
    built, _ = methods.build("sar", net)
    if heads_of(built) != heads_of(wrapped):
        raise AssertionError(f"methods.build wraps {heads_of(built)}, SARClassifier"
                             f" {heads_of(wrapped)}")


def sweep_one(library: str, spec: str, build: Callable[[], nn.Module]) -> Row:
    row = Row(library, spec)
    try:
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = build()
    except Exception as err:  # noqa: BLE001 - recorded: the library cannot build it
        row.outcome, row.detail = "not built", f"{type(err).__name__}: {err}"[:300]
        return row
    row.params_m = f"{sum(p.numel() for p in net.parameters()) / 1e6:.1f}"
    segmentation = library == "smp"
    try:
        wrapped = wrap(net, segmentation)
        row.wrapper = type(wrapped).__name__
        row.heads = ";".join(heads_of(wrapped))
        row.feat_dims = ";".join(str(wrapped.model.get_submodule(n).weight.shape[1])
                                 for n in heads_of(wrapped))
        x = smallest_input(net)
        row.input = "x".join(map(str, x.shape))
        y = labels_for(x, segmentation)
        training_step(wrapped, x, y)
        anchor_ce_reaches_heads(wrapped, x, y)
        same_heads_through_methods(net, wrapped)
        heads_make_logits(wrapped, x)
        row.outcome = "ok"
    except Refused as err:
        message = str(err)
        clear = len(message) > 40 and INSTRUCTION.search(message)
        row.outcome = "refused" if clear else "FAIL"
        row.detail = message if clear else f"unclear refusal: {message}"
    except Exception as err:  # noqa: BLE001 - every other failure is a FAIL, recorded
        row.outcome, row.detail = "FAIL", f"{type(err).__name__}: {err}"[:500]
    return row


# ------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", nargs="+", choices=list(ZOOS), default=list(ZOOS))
    parser.add_argument("--only", nargs="+", help="model specs to run (as in the CSV)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--resume", action="store_true", help="keep the rows already there")
    args = parser.parse_args(argv)
    done = {}
    if args.resume and args.out.exists():
        with args.out.open() as f:
            done = {(r["library"], r["model"]): Row(**r) for r in csv.DictReader(f)}
    rows = []
    for library in args.library:
        for _, spec, build in ZOOS[library]():
            if args.only and spec not in args.only:
                continue
            start = time.perf_counter()
            row = done.get((library, spec)) or sweep_one(library, spec, build)
            rows.append(row)
            gc.collect()
            print(f"{library:12s} {spec:45s} {row.outcome:9s} {time.perf_counter() - start:6.1f}s"
                  f" {row.detail[:150]}", flush=True)
            write(args.out, rows, done)
    tally(rows)
    return int(any(row.outcome == "FAIL" for row in rows))


def write(path: Path, rows: list[Row], done: dict[tuple[str, str], Row]) -> None:
    """The rows swept so far, plus the kept rows not swept again, atomically."""
    swept = {(row.library, row.model) for row in rows}
    kept = [row for key, row in done.items() if key not in swept]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with partial.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(Row("", ""))))
        writer.writeheader()
        writer.writerows(asdict(row) for row in rows + kept)
    partial.replace(path)


def tally(rows: list[Row]) -> None:
    for library in dict.fromkeys(row.library for row in rows):
        counts: dict[str, int] = {}
        for row in rows:
            if row.library == library:
                counts[row.outcome] = counts.get(row.outcome, 0) + 1
        print(library, ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    sys.exit(main())
