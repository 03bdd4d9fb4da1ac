"""A slow, loop-based float64 implementation of SAR written from the spec, for the tests.

Everything is plain Python loops over anchors, classes, channels and positions, so it shares
no code path with ``sar.regularizer``. It reads the projector's and classifier's weights and
returns plain floats and lists.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def _linear(rows: list[list[float]], layer: nn.Linear) -> list[list[float]]:
    weight = layer.weight.detach().double().tolist()
    bias = layer.bias.detach().double().tolist() if layer.bias is not None else None
    out = []
    for row in rows:
        values = []
        for o, w in enumerate(weight):
            total = sum(wi * xi for wi, xi in zip(w, row, strict=True))
            values.append(total + (bias[o] if bias is not None else 0.0))
        out.append(values)
    return out


def _batch_norm_relu(rows: list[list[float]], bn: nn.BatchNorm1d) -> list[list[float]]:
    """Training-mode BN over the rows (biased variance), then ReLU."""
    gamma, beta = bn.weight.detach().double().tolist(), bn.bias.detach().double().tolist()
    n, dim = len(rows), len(rows[0])
    out = [[0.0] * dim for _ in range(n)]
    for d in range(dim):
        column = [rows[i][d] for i in range(n)]
        mean = sum(column) / n
        var = sum((v - mean) ** 2 for v in column) / n
        for i in range(n):
            value = (column[i] - mean) / math.sqrt(var + bn.eps) * gamma[d] + beta[d]
            out[i][d] = max(value, 0.0)
    return out


def project(anchors: torch.Tensor, projector: nn.Sequential) -> list[list[float]]:
    rows = anchors.double().tolist()
    layers = list(projector)
    for block in range(3):
        rows = _linear(rows, layers[3 * block])
        rows = _batch_norm_relu(rows, layers[3 * block + 1])
    return rows


def nearest_resize(labels: list[list[int]], height: int, width: int) -> list[list[int]]:
    """Nearest-neighbour resize as PyTorch's 'nearest' mode: src = floor(dst * in / out)."""
    in_h, in_w = len(labels), len(labels[0])
    return [
        [labels[math.floor(i * in_h / height)][math.floor(j * in_w / width)] for j in range(width)]
        for i in range(height)
    ]


class ReferenceSAR:
    """State (EMA, gate) kept as Python lists; ``step`` mirrors one training forward."""

    def __init__(self, num_classes: int, *, trade_off=0.1, trade_off_ce=1.0, filter_conf=0.9,
                 update_conf=0.8, momentum=0.999, ignore_index=255, distance="mse",
                 pull_reduction="pixel"):
        self.c = num_classes
        self.pull_reduction = pull_reduction
        self.last_probs: list[float] = []  # p_i and w_i of the last step, for diagnostics
        self.last_weights: list[float] = []
        self.trade_off, self.trade_off_ce = trade_off, trade_off_ce
        self.filter_conf, self.update_conf, self.momentum = filter_conf, update_conf, momentum
        self.ignore_index, self.distance = ignore_index, distance
        self.ema: list[list[float]] | None = None

    def step(self, anchors, projector, classifier_weight, classifier_bias, features, labels):
        """features: (B, D) or (B, D, H, W) tensor; labels: (B,) or (B, h, w) tensor."""
        z = project(anchors, projector)
        weight = classifier_weight.double().tolist()
        bias = classifier_bias.double().tolist() if classifier_bias is not None else [0.0] * self.c

        ce, correct = [], []
        for i in range(self.c):
            logits = [sum(w * x for w, x in zip(weight[k], z[i], strict=True)) + bias[k]
                      for k in range(self.c)]
            top = max(logits)
            log_norm = top + math.log(sum(math.exp(v - top) for v in logits))
            ce.append(log_norm - logits[i])
            correct.append(max(range(self.c), key=lambda k, lg=logits: lg[k]) == i)

        probs = [math.exp(-v) for v in ce]
        log_p_filtered = [0.0 if p > self.filter_conf else math.log(p) for p in probs]
        denominator = sum(log_p_filtered) + 1e-9
        anchor_ce = self.trade_off_ce * sum(
            ce[i] * log_p_filtered[i] / denominator for i in range(self.c)
        )
        self.last_probs = probs
        self.last_weights = [log_p_filtered[i] / denominator for i in range(self.c)]

        passed = all(correct) and all(v < -math.log(self.update_conf) for v in ce)
        if passed:
            if self.ema is None:
                self.ema = [row[:] for row in z]
            else:
                m = self.momentum
                self.ema = [[m * e + (1 - m) * v for e, v in zip(er, zr, strict=True)]
                            for er, zr in zip(self.ema, z, strict=True)]

        pull = 0.0
        if passed:
            pull = self.trade_off * self._pull(features, labels)
        return {"anchor_ce": anchor_ce, "pull": pull, "loss": anchor_ce + pull,
                "gate_passed": float(passed), "gate_opened": float(self.ema is not None)}

    def _pull(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        feats = features.double().tolist()
        pairs = positions(features, labels, lambda *at: functools.reduce(list.__getitem__, at,
                                                                          feats))
        by_class: dict[int, list[float]] = {}  # the distances of each class's positions
        for vector, label in pairs:
            if label == self.ignore_index:
                continue
            anchor = self.ema[label]
            if self.distance == "mse":
                squares = sum((f - a) ** 2 for f, a in zip(vector, anchor, strict=True))
                distance = squares / len(anchor)
            else:
                dot = sum(f * a for f, a in zip(vector, anchor, strict=True))
                norms = math.sqrt(sum(f * f for f in vector) * sum(a * a for a in anchor))
                distance = 1.0 - dot / max(norms, 1e-8)
            by_class.setdefault(label, []).append(distance)
        return reduce_by_class(by_class, self.pull_reduction, empty=0.0)


def loop_pull(features: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor,
              reduction: str, ignore_index: int = 255) -> torch.Tensor:
    """The MSE pull (without trade_off) with autograd, one position and one channel at a time.

    ``features`` (B, D) or (B, D, H, W), ``labels`` (B,) or (B, h, w) (nearest-resized),
    ``anchors`` (C, D), treated as constants. ``reduction`` "pixel": mean over labelled
    positions; "class": mean within each class present, then over those classes.
    """
    targets = anchors.detach().double().tolist()
    by_class: dict[int, list[torch.Tensor]] = {}
    for vector, label in positions(features, labels, lambda *at: features[at]):
        if label == ignore_index:
            continue
        squares = sum((f - a) ** 2 for f, a in zip(vector, targets[label], strict=True))
        by_class.setdefault(label, []).append(squares / len(vector))
    return reduce_by_class(by_class, reduction, empty=features.sum() * 0.0)


def positions(features: torch.Tensor, labels: torch.Tensor,
              entry: Callable[..., Any]) -> list[tuple[list[Any], int]]:
    """``(feature vector, label)`` for every position, labels nearest-resized to the feature
    map; ``entry(b, d[, i, j])`` reads one channel (a float, or a 0-dim tensor for autograd)."""
    channels = range(features.shape[1])
    if features.dim() == 2:
        return [([entry(b, d) for d in channels], int(labels[b]))
                for b in range(features.shape[0])]
    height, width = features.shape[2:]
    pairs = []
    for b in range(features.shape[0]):
        lab = nearest_resize(labels[b].tolist(), height, width)
        pairs += [([entry(b, d, i, j) for d in channels], lab[i][j])
                  for i in range(height) for j in range(width)]
    return pairs


def reduce_by_class(by_class: dict[int, list[Any]], reduction: str, empty: Any) -> Any:
    """Mean over all positions (``"pixel"``) or over each class's mean (``"class"``)."""
    if not by_class:
        return empty
    if reduction == "class":
        return sum(sum(d) / len(d) for d in by_class.values()) / len(by_class)
    everything = [d for ds in by_class.values() for d in ds]
    return sum(everything) / len(everything)
