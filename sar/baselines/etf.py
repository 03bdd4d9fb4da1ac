"""A fixed simplex-ETF head and the dot-regression loss (Yang et al., NeurIPS 2022)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..anchors import etf_anchors
from .features import _masked_mean

ETF_VARIANTS = ("dr", "ce")


class ETFClassifier(nn.Module):
    """A linear head whose class vectors are a fixed simplex ETF ``(C, D)`` with unit rows.

    Nothing in the class directions is trained: they are maximally separated from the first
    step (every pair has cosine ``-1/(C-1)``) and the features must align to them.

    ``variant="dr"`` (default), the recipe of Yang et al. (NeurIPS 2022) as in their code
    (``ETF_Classifier`` in ``models/resnet_cifar.py``): the feature goes through a BatchNorm1d
    (learnable affine, trained with the network; their ``BN_H``), is l2-normalised
    (``h / max(||h||, 1e-8)``) and the logits are its dot products with the unit ETF vectors,
    i.e. cosines in ``[-1, 1]``. Train it with :class:`DotRegressionLoss`; at inference the
    argmax of these logits is their prediction. The normalisation and the logits run in
    float32 even under autocast.

    ``variant="ce"``: the raw (non-negative, post-ReLU) feature times the unit ETF vectors,
    trained with plain cross-entropy. This is **not** Yang et al.'s recipe: post-ReLU features
    cannot align with ETF directions that have negative components. It is kept because
    committed result rows (method ``"etf"``) were produced with it.

    Args:
        in_features: D; the ETF needs ``D >= C - 1``.
        num_classes: C >= 2.
        seed: seed of the random rotation of the ETF (the same frame on every process).
        variant: ``"dr"`` or ``"ce"``.

    Shapes and dtypes:
        ``"dr"``: float ``(B, D)`` -> ``(B, C)`` cosines, float32 (float64 for float64 input).
        ``"ce"``: float ``(..., D)`` -> ``(..., C)`` in the input dtype.

    State: buffer ``weight`` float32 ``(C, D)`` (no parameters); ``"dr"`` adds the submodule
    ``norm`` (BatchNorm1d: parameters ``weight``/``bias``, running statistics).

    Raises:
        ValueError: an unknown ``variant``; ``C < 2`` or ``C > D + 1`` (from
            :func:`sar.anchors.etf_anchors`); in ``"dr"``, features that are not ``(B, D)``.

    Sources: Y. Yang, S. Chen, X. Li, L. Xie, Z. Lin, D. Tao, "Inducing Neural Collapse in
    Imbalanced Learning: Do We Really Need a Learnable Classifier at the End of Deep Neural
    Network?", NeurIPS 2022; code github.com/NeuralCollapseApplications/ImbalancedLearning
    (``models/resnet_cifar.py``, ``methods.py``, ``train.py``, configs ``*_ETF_DR.yaml``).
    """

    def __init__(
        self, in_features: int, num_classes: int, seed: int = 0, variant: str = "dr"
    ) -> None:
        super().__init__()
        if variant not in ETF_VARIANTS:
            raise ValueError(f"variant must be one of {ETF_VARIANTS}, got {variant!r}")
        self.in_features, self.out_features, self.variant = in_features, num_classes, variant
        weight = etf_anchors(num_classes, in_features, seed=seed) / math.sqrt(in_features)
        self.register_buffer("weight", weight)
        if variant == "dr":
            self.norm = nn.BatchNorm1d(in_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features},"
                f" variant={self.variant!r}")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.variant == "ce":
            return F.linear(features, self.weight.to(features.dtype))
        if features.dim() != 2 or features.shape[1] != self.in_features:
            raise ValueError(
                f"ETFClassifier(variant='dr') takes (B, {self.in_features}) features, got"
                f" shape {tuple(features.shape)}"
            )
        with torch.autocast(device_type=features.device.type, enabled=False):
            h = self.norm(features.to(torch.promote_types(features.dtype, torch.float32)))
            h = h / h.norm(dim=1, keepdim=True).clamp(min=1e-8)
            return F.linear(h, self.weight.to(h.dtype))


class DotRegressionLoss(nn.Module):
    """Yang et al.'s dot-regression (DR) loss on the cosine logits of :class:`ETFClassifier`.

    Their loss (``dot_loss(..., criterion="reg_dot_loss")`` in ``methods.py``) is, per sample,
    ``0.5 * (h^T w_y - ||w_y|| ||h||)^2 / ||h||`` with ``h`` the normalised feature
    (``||h|| = 1``, its length detached) and ``w_y = E_y * m_y`` the unit ETF vector of the
    label scaled, during training, by ``E_y = sqrt(gamma / n_y)``: ``n_y`` samples of class y
    in the batch and ``gamma`` = batch size / number of classes present (their ``produce_Ew``,
    on by default: ``GivenEw = True``). With cosine logits ``z`` this is::

        loss = mean over valid samples of 0.5 * E_y^2 * (z_y - 1)^2

    It only pulls each feature toward its own class vector (no push from the others: the fixed
    ETF already separates them), and ``E_y^2`` gives each class present in the batch the same
    total weight: the loss is the mean over those classes of each class's mean
    ``0.5 * (z_y - 1)^2``, a per-batch class balance. ``balance=False`` drops it (``E_y = 1``).

    Pass it to :func:`sar.train.fit` as ``criterion=``; it is called as ``loss(logits, labels)``.

    Args:
        balance: Yang et al.'s per-batch ``E_y`` weighting (True, as in their configs).
        ignore_index: label value excluded from the loss and from the batch counts (-100).
        validate: raise if a logit lies outside ``[-1 - 1e-3, 1 + 1e-3]``, i.e. the logits are
            not the cosines of an ``ETFClassifier(variant="dr")`` (one host read per call).

    Shapes and dtypes:
        logits: float ``(N, C)`` (computed in float32, or float64). labels: integer ``(N,)``.
        Returns a 0-dim float32 (float64) tensor; 0 when every label is ignored.

    Raises:
        ValueError: logits not 2-D, labels not ``(N,)``; with ``validate``, logits that are not
            cosines.
        TypeError: float or bool labels.

    Source: Yang et al., NeurIPS 2022, code github.com/NeuralCollapseApplications/
    ImbalancedLearning (``methods.py``: ``dot_loss``, ``produce_Ew``; ``train.py``). Their
    configs also train with mixup (alpha 1), for the CE baselines as well; that is a data
    augmentation of the training loop, not part of this loss.
    """

    def __init__(
        self, balance: bool = True, ignore_index: int = -100, validate: bool = True
    ) -> None:
        super().__init__()
        self.balance, self.ignore_index, self.validate = balance, ignore_index, validate

    def extra_repr(self) -> str:
        return f"balance={self.balance}, ignore_index={self.ignore_index}"

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 2:
            raise ValueError(f"logits must be (N, C), got shape {tuple(logits.shape)}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer tensor of class ids, got {labels.dtype}")
        if labels.shape != logits.shape[:1]:
            raise ValueError(
                f"labels must be (N,) = ({logits.shape[0]},), got {tuple(labels.shape)}")
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        if self.validate and bool((logits.detach().abs() > 1.0 + 1e-3).any()):
            raise ValueError(
                "DotRegressionLoss expects cosine logits in [-1, 1] from"
                " ETFClassifier(variant='dr'); got logits of magnitude up to"
                f" {logits.detach().abs().max().item():.3g}"
            )
        valid = labels != self.ignore_index
        targets = torch.where(valid, labels, 0).long()
        cosine = logits.gather(1, targets[:, None])[:, 0]
        per_sample = 0.5 * (cosine - 1.0).pow(2)
        if self.balance:
            weights = valid.to(logits.dtype)
            counts = logits.new_zeros(logits.shape[1]).index_add_(0, targets, weights)
            gamma = valid.sum() / (counts > 0).sum().clamp(min=1)
            per_sample = per_sample * gamma / counts[targets].clamp(min=1)
        return _masked_mean(per_sample, valid)
