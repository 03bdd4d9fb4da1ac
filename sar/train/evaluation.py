"""Evaluation: accuracy or IoU of a model, and the head-input features it produces."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import metrics
from ..config import default_device
from ..distributed import unwrap
from ..labels import AUTO, class_labels, resolve_ignore_index
from ..metrics.history import gate_opened_step  # noqa: F401  (re-exported by sar.train)
from .modes import modes_kept

TASKS = ("classification", "segmentation")


def input_dtype(model: nn.Module) -> torch.dtype | None:
    """The floating dtype of the network's parameters (the wrapped network's for a wrapper,
    whose regulariser stays float32): what inputs must be cast to for a ``.half()`` or
    ``.bfloat16()`` model. None for a model without floating parameters."""
    network = getattr(unwrap(model), "model", unwrap(model))
    return next((p.dtype for p in network.parameters() if p.is_floating_point()), None)


def _batch(batch: Any, device: torch.device,
           dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)`` on ``device``; floating inputs cast to ``dtype`` when given."""
    x, y = batch[0], class_labels(batch[1])  # refuses float masks before any cast
    x = x.to(device, non_blocking=True)
    if dtype is not None and x.is_floating_point():
        x = x.to(dtype)
    return x, y.to(device, non_blocking=True)


# ------------------------------------------------------------------------------ evaluation
@contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """``eval()`` + ``no_grad`` for the block, then every submodule's previous mode again (a
    frozen BatchNorm in eval inside a training model stays in eval)."""
    with modes_kept(model), torch.no_grad():
        model.eval()
        yield


def _features_and_logits(
    model: nn.Module, x: torch.Tensor, with_features: bool
) -> tuple[torch.Tensor | None, torch.Tensor]:
    if not with_features:
        return None, model(x)
    if not hasattr(model, "features_and_logits"):
        raise TypeError(
            f"{type(model).__name__} has no features_and_logits(x): wrap it in a"
            " RegularizedModel (e.g. SARClassifier(model, regularizer=NoRegularizer()))"
        )
    return model.features_and_logits(x)


def _flatten_points(
    features: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, D)``/``(B,)`` as is; ``(B, D, h, w)`` with labels ``(B, [1,] H, W)``
    nearest-resized to ``(h, w)`` -> ``(B*h*w, D)`` and ``(B*h*w,)``."""
    if features.dim() == 2:
        return features, labels.reshape(-1)
    if labels.dim() == 4:
        labels = labels[:, 0]
    if labels.shape[1:] != features.shape[2:]:
        labels = F.interpolate(labels[:, None].float(), size=features.shape[2:],
                               mode="nearest")[:, 0].long()
    return features.movedim(1, -1).reshape(-1, features.shape[1]), labels.reshape(-1)


class _PointSampler:
    """At most ``max_points`` labelled feature vectors drawn uniformly from a stream.

    Bottom-k sampling: every valid point gets a key from a fixed-seed generator and the
    points with the smallest keys are kept, so the sample is reproducible, memory stays
    bounded, and at most ``max_points`` rows of a batch ever leave its device.
    """

    def __init__(self, max_points: int | None, ignore_index: int | None, seed: int = 0) -> None:
        self.max_points, self.ignore_index = max_points, ignore_index
        self.generator = torch.Generator().manual_seed(seed)
        self.keys: list[torch.Tensor] = []
        self.features: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        feats, labels = _flatten_points(features, labels)
        if self.ignore_index is not None:
            index = (labels != self.ignore_index).nonzero().squeeze(1)
            feats, labels = feats[index], labels[index]
        keys = torch.rand(len(labels), generator=self.generator)
        if self.max_points is not None and len(keys) > self.max_points:
            # only the batch's own bottom-k can enter the overall bottom-k
            keep = keys.topk(self.max_points, largest=False).indices.sort().values
            keys, index = keys[keep], keep.to(labels.device)
            feats, labels = feats[index], labels[index]
        self.keys.append(keys)
        self.features.append(feats.detach().float().cpu())
        self.labels.append(labels.long().cpu())
        if self.max_points is not None and sum(map(len, self.keys)) > self.max_points:
            self._shrink()

    def _shrink(self) -> None:
        keys = torch.cat(self.keys)
        keep = keys.topk(self.max_points, largest=False).indices.sort().values
        feats, labels = self.result()
        self.keys, self.features, self.labels = [keys[keep]], [feats[keep]], [labels[keep]]

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.features:
            return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
        return torch.cat(self.features), torch.cat(self.labels)


class _Scores:
    """Accumulates predictions for the task's metrics."""

    def __init__(self, task: str, num_classes: int, ignore_index: int | None) -> None:
        self.task, self.num_classes, self.ignore_index = task, num_classes, ignore_index
        self.meter = metrics.ConfusionMeter(num_classes, ignore_index)
        self.preds: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        if self.task == "classification":
            self.preds.append(logits.argmax(dim=1))
            self.labels.append(labels)
            return
        if labels.dim() == 4:
            labels = labels[:, 0]
        if logits.shape[2:] != labels.shape[1:]:
            logits = F.interpolate(logits.float(), size=labels.shape[1:], mode="bilinear",
                                   align_corners=False)
        self.meter.update(logits.argmax(dim=1), labels)

    def result(self, groups: Mapping[str, Sequence[int]] | None) -> dict[str, Any]:
        if self.task == "segmentation":
            return {"mIoU": self.meter.mean_iou(),
                    "per_class_iou": self.meter.iou_per_class().tolist(),
                    "pixel_accuracy": self.meter.pixel_accuracy()}
        preds, labels = torch.cat(self.preds).cpu(), torch.cat(self.labels).cpu()
        per_class = metrics.per_class_accuracy(preds, labels, self.num_classes,
                                               ignore_index=self.ignore_index)
        out: dict[str, Any] = {
            "accuracy": metrics.accuracy(preds, labels, ignore_index=self.ignore_index),
            "per_class_accuracy": per_class.tolist(),
        }
        for name, acc in metrics.shot_accuracy(per_class, groups or {}).items():
            out[f"{name}_accuracy"] = acc
        return out


def _resolve(model: nn.Module, device: str | torch.device | None) -> torch.device:
    device = torch.device(device) if device is not None else default_device()
    model.to(device)
    return device


def _check_ignore_index(ignore_index: int | None, num_classes: int) -> None:
    if ignore_index is not None and 0 <= ignore_index < num_classes:
        raise ValueError(f"ignore_index={ignore_index} is a class id of a {num_classes}-class"
                         " task: pass ignore_index=None (or -100)")


def evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    num_classes: int,
    task: str = "classification",
    device: str | torch.device | None = None,
    ignore_index: int | None | str = AUTO,
    groups: Mapping[str, Sequence[int]] | None = None,
    features: bool = False,
    anchors: torch.Tensor | None = None,
    max_feature_points: int | None = 20000,
) -> dict[str, Any]:
    """Score ``model`` on ``(inputs, labels)`` batches, in eval mode and without gradients.

    The model moves to ``device`` (default :func:`sar.config.default_device`); the previous
    train/eval mode of each of its modules is restored afterwards. Labels equal to
    ``ignore_index`` are skipped: ``"auto"`` takes the wrapped regulariser's (255 for a model
    without one), ``None`` skips nothing. Labels are integer ``(B,)``, ``(B, H, W)`` or
    ``(B, 1, H, W)``.

    Returns:
        classification: ``accuracy``, ``per_class_accuracy`` (list of C, NaN for absent
        classes) and ``{name}_accuracy`` for each group of ``groups`` (e.g. ``many``,
        ``medium``, ``few`` -> class ids). Segmentation: ``mIoU``, ``per_class_iou`` (list of
        C) and ``pixel_accuracy``, from a streaming confusion matrix (logits at another size
        than the labels are resized bilinearly). All fractions in ``[0, 1]``.
        With ``features=True`` (needs ``model.features_and_logits``), also
        :func:`sar.metrics.representation_metrics` of the head-input features sampled as in
        :func:`collect_features`, measured against ``anchors`` ``(C, D)`` if given (e.g.
        ``model.regularizer.semantic_anchors``).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    ignore_index = resolve_ignore_index(model, ignore_index)
    _check_ignore_index(ignore_index, num_classes)
    model = unwrap(model)  # this rank scores on its own: no DDP forward, no collective
    device = _resolve(model, device)
    scores = _Scores(task, num_classes, ignore_index)
    sampler = _PointSampler(max_feature_points, ignore_index) if features else None
    with _inference(model):
        for batch in loader:
            x, y = _batch(batch, device, input_dtype(model))
            feats, logits = _features_and_logits(model, x, features)
            scores.update(logits, y)
            if sampler is not None:
                sampler.update(feats, y)
    result = scores.result(groups)
    if sampler is not None:
        feats, labels = sampler.result()
        anchors = anchors.detach().cpu() if anchors is not None else None
        result.update(metrics.representation_metrics(feats, labels, num_classes, anchors))
    return result


def collect_features(
    model: nn.Module,
    loader: Iterable,
    *,
    device: str | torch.device | None = None,
    max_points: int | None = 20000,
    ignore_index: int | None | str = AUTO,
    per_class: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Head-input features and their labels, e.g. to plot an embedding.

    Uses ``model.features_and_logits`` in eval mode. Segmentation maps ``(B, D, h, w)`` give
    one point per pixel at the feature resolution, with labels nearest-downsampled to it.
    Points labelled ``ignore_index`` (``"auto"``: the regulariser's, as in :func:`evaluate`)
    are dropped and at most ``max_points`` are kept, drawn
    uniformly and reproducibly (``None``: keep all). ``per_class`` then keeps at most that
    many points of each class (:func:`sar.data.cap_per_class` with ``seed``; grouped by
    class), so a dominant class such as a background does not bury the others in a plot.

    Returns:
        features ``(N, D)`` float32 and labels ``(N,)`` int64, on the CPU.
    """
    ignore_index = resolve_ignore_index(model, ignore_index)
    model = unwrap(model)
    device = _resolve(model, device)
    sampler = _PointSampler(max_points, ignore_index)
    with _inference(model):
        for batch in loader:
            x, y = _batch(batch, device, input_dtype(model))
            sampler.update(_features_and_logits(model, x, True)[0], y)
    features, labels = sampler.result()
    if per_class is not None:
        from ..data.subsets import cap_per_class  # sar.data only when asked for

        keep = cap_per_class(labels, per_class, seed)
        features, labels = features[keep], labels[keep]
    return features, labels
