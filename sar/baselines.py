"""Baselines that share SAR's interface, so they can be swapped in and compared side by side.

Each baseline follows its authors' recipe by default (sources in each docstring); where an
older, weaker variant produced committed results it is kept behind an explicit option.

Regularisers (``forward(features, labels, classifier) -> dict`` with a ``"loss"`` key, the same
keys on every call, same shapes as :class:`sar.SemanticAnchorRegularizer`):

- :class:`NoRegularizer`: plain cross-entropy training through the same wrapper.
- :class:`CenterLoss`: class centres updated by their own rule, features pulled toward them
  (Wen et al., ECCV 2016).
- :class:`PrototypeRegularizer`: running class means of the features (bias-corrected EMA),
  features pulled toward them one-way after a warm-up: the "EM paradigm" the SAR paper argues
  against.

Heads and task losses (pass the loss to :func:`sar.train.fit` as ``criterion=``):

- :class:`ETFClassifier`: a fixed simplex-ETF head. ``variant="dr"`` (default) is Yang et al.'s
  recipe (NeurIPS 2022): BatchNorm, l2-normalised features, cosine logits, trained with
  :class:`DotRegressionLoss`. ``variant="ce"`` is the earlier fixed ETF + cross-entropy, not
  their recipe.
- :class:`DotRegressionLoss`: Yang et al.'s dot-regression loss on the ETF head's logits.
- :class:`LogitAdjustedCrossEntropy`: classifier rebalancing by the label prior
  (Menon et al., ICLR 2021).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .anchors import etf_anchors

ETF_VARIANTS = ("dr", "ce")


# ------------------------------------------------------------------------------- helpers
def _check_ignore_index(ignore_index: int, num_classes: int) -> None:
    if 0 <= ignore_index < num_classes:
        raise ValueError(
            f"ignore_index={ignore_index} is a real class id with num_classes={num_classes};"
            " pass an ignore_index outside [0, num_classes), e.g. -100"
        )


def _flatten_valid(
    features: torch.Tensor, labels: torch.Tensor, ignore_index: int, feat_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(N, D)`` float32 features, ``(N,)`` labels with ignored set to 0, ``(N,)`` valid mask.

    Checks shapes and dtypes only (no host sync). Segmentation labels ``(B, h, w)`` or
    ``(B, 1, h, w)`` are nearest-resized to the feature map first.
    """
    if features.dim() not in (2, 4):
        raise ValueError(
            f"features must be (B, D) or (B, D, H, W), got shape {tuple(features.shape)}"
        )
    if features.shape[1] != feat_dim:
        raise ValueError(
            f"features have {features.shape[1]} channels but the regulariser was built with"
            f" feat_dim={feat_dim}: pass the feature map that enters the classifier"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor of class ids, got {labels.dtype}")
    if labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"batch mismatch: features have batch size {features.shape[0]}, labels"
            f" {labels.shape[0]}"
        )
    if features.dim() == 2:
        if labels.dim() != 1:
            raise ValueError(f"for (B, D) features labels must be (B,), got {tuple(labels.shape)}")
    else:
        if labels.dim() == 4 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.dim() != 3:
            raise ValueError(
                f"for (B, D, H, W) features labels must be (B, h, w), got {tuple(labels.shape)}"
            )
        if labels.shape[-2:] != features.shape[-2:]:
            size = features.shape[-2:]
            labels = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0]
        features = features.movedim(1, -1).reshape(-1, features.shape[1])
    labels = labels.reshape(-1).long()
    valid = labels != ignore_index
    return features.float(), torch.where(valid, labels, 0), valid


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ``valid`` positions; 0 (not NaN) when none is valid."""
    return (values * valid).sum() / valid.sum().clamp(min=1)


@torch.no_grad()
def _class_sums(
    flat: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sample counts ``(C,)`` and feature sums ``(C, D)`` of the valid positions."""
    weights = valid.to(flat.dtype)
    counts = flat.new_zeros(num_classes).index_add_(0, targets, weights)
    sums = flat.new_zeros(num_classes, flat.shape[1]).index_add_(
        0, targets, flat.detach() * weights[:, None])
    return counts, sums


class NoRegularizer(nn.Module):
    """Adds nothing: plain cross-entropy through the same wrapper (features stay tappable).

    Returns ``{"loss": 0}`` (a float32 0-dim tensor on the features' device) on every call.
    """

    def forward(
        self, features: torch.Tensor, labels: torch.Tensor, classifier: object = None
    ) -> dict[str, torch.Tensor]:
        return {"loss": features.new_zeros((), dtype=torch.float32)}


class CenterLoss(nn.Module):
    """Center loss (Wen et al., ECCV 2016): features pulled toward class centres ``(C, D)`` that
    are updated by their own rule, outside the optimiser.

    Loss, as in the authors' Caffe layer (``loss = sum ||x_i - c_{y_i}||^2 / M / 2``)::

        pull = weight * mean over valid positions of 0.5 * sum over D of (f - c_y)^2

    so the gradient on a feature is ``weight * (f - c_y) / M``. The centres are buffers (no
    gradient, not seen by the optimiser, no weight decay) updated after the loss on every
    training call by the paper's rule (its Eq. 4 and Algorithm 1), with ``n_j`` the number of
    valid positions of class j in the batch::

        delta_j = sum over i with y_i = j of (c_j - f_i) / (1 + n_j)
        c_j <- c_j - alpha * delta_j

    Classes absent from the batch do not move. Initialisation (not fixed by the paper; the
    Caffe code uses a Xavier filler, a later PyTorch port ``randn``): the first time a class
    appears its centre is set to that batch's class mean of the current features, so the pull
    starts at the features' own scale instead of at random points with negative coordinates
    that post-ReLU features cannot reach; its pull on that first call is then the batch's own
    spread. With ``alpha = 0.5`` a centre closes about half of the gap to its class mean at
    every sighting, so any initialisation is forgotten after a few sightings.

    Args:
        num_classes: C.
        feat_dim: D, the width of the feature that enters the classifier.
        weight: lambda of the paper, the weight of the loss. The authors' Caffe configs use
            0.01 on MNIST (2-D features, softmax) and 0.008 on faces; the default is 0.01.
            The per-coordinate pull ``weight * (f_d - c_d)`` does not depend on D.
        alpha: centre learning rate of the update rule, in ``[0, 1]`` (0.5 in the paper;
            0 freezes the centres at their first-sighting means).
        ignore_index: label value excluded from the loss and the update (255).

    Shapes and dtypes:
        features: float ``(B, D)`` or ``(B, D, H, W)`` (computed in float32).
        labels: integer ``(B,)``, or ``(B, h, w)`` / ``(B, 1, h, w)`` at any resolution
            (nearest-resized to ``(H, W)``); values in ``[0, C)`` or ``ignore_index``.
        classifier: ignored (accepted for the common interface).

    Returns:
        ``{"pull", "loss"}``, float32 0-dim tensors (``loss == pull``), on every call.

    State (``state_dict``): buffers ``centres`` float32 ``(C, D)`` and ``seen`` bool ``(C,)``.
    They change only in training mode.

    Raises:
        ValueError: ``ignore_index`` in ``[0, C)``, ``alpha`` outside ``[0, 1]``, negative
            ``weight``; features not ``(B, D)``/``(B, D, H, W)`` or not D wide; labels of the
            wrong shape or batch size.
        TypeError: float or bool labels.
        IndexError: (on the CPU) a label outside ``[0, C)`` that is not ``ignore_index``.

    Sources: Y. Wen, K. Zhang, Z. Li, Y. Qiao, "A Discriminative Feature Learning Approach for
    Deep Face Recognition", ECCV 2016; the authors' Caffe layer and configs,
    github.com/ydwen/caffe-face (``src/caffe/layers/center_loss_layer.cpp``,
    ``mnist_example/mnist_train_test.prototxt``). In that code the update direction is written
    to the centres' gradient and applied by the solver (lr, momentum); here it is applied
    directly with rate ``alpha``, as the paper states it.
    """

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        weight: float = 0.01,
        alpha: float = 0.5,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        _check_ignore_index(ignore_index, num_classes)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        self.num_classes, self.feat_dim = num_classes, feat_dim
        self.weight, self.alpha, self.ignore_index = weight, alpha, ignore_index
        self.register_buffer("centres", torch.zeros(num_classes, feat_dim))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, feat_dim={self.feat_dim},"
                f" weight={self.weight}, alpha={self.alpha}")

    def forward(
        self, features: torch.Tensor, labels: torch.Tensor, classifier: object = None
    ) -> dict[str, torch.Tensor]:
        flat, targets, valid = _flatten_valid(features, labels, self.ignore_index, self.feat_dim)
        if self.training:
            counts, sums = _class_sums(flat, targets, valid, self.num_classes)
            self._first_sighting(counts, sums)
        centres = self.centres[targets]  # a copy: the update below does not touch it
        distance = 0.5 * (flat - centres).pow(2).sum(dim=1)
        pull = self.weight * _masked_mean(distance, valid & self.seen[targets])
        if self.training:
            self._update(counts, sums)
        return {"pull": pull, "loss": pull}

    @torch.no_grad()
    def _first_sighting(self, counts: torch.Tensor, sums: torch.Tensor) -> None:
        present = counts > 0
        means = sums / counts.clamp(min=1)[:, None]
        self.centres.copy_(torch.where((present & ~self.seen)[:, None], means, self.centres))
        self.seen |= present

    @torch.no_grad()
    def _update(self, counts: torch.Tensor, sums: torch.Tensor) -> None:
        # sum over the class's samples of (c_j - f_i) = n_j c_j - sum_i f_i; zero when absent
        delta = (counts[:, None] * self.centres - sums) / (1.0 + counts)[:, None]
        self.centres -= self.alpha * delta


class PrototypeRegularizer(nn.Module):
    """Pull features one-way toward running class means of the features themselves.

    The "EM paradigm" the SAR paper argues against: class prototypes estimated from the
    training features (E-step: a running mean per class) and features pulled toward the
    prototype of their label (M-step), with SAR's own pull so that only the target differs.

    Prototypes (buffer ``prototypes``) are a bias-corrected exponential moving average of the
    per-batch class means, as Adam corrects its moments: with ``t_c`` the number of training
    calls on which class c was present (only those count),

        ema_c <- m * ema_c + (1 - m) * batch_mean_c,    prototype_c = ema_c / (1 - m^t_c),

    kept directly as ``prototype_c += (1 - m) / (1 - m^t_c) * (batch_mean_c - prototype_c)``.
    The first sighting copies the batch mean, and every later batch mean weighs ``m^(age)``,
    normalised: the prototype is an average of recent class means whatever the run length,
    with no pull toward the zero start. On the features of an untrained network, which are far
    smaller than later ones, the first batches are forgotten at the rate ``m``.

    Pull (weight times SAR's MSE), zero during the first ``warmup_steps`` training calls and
    for classes not yet seen; the prototypes are updated from the first call::

        pull = weight * mean over valid positions of mean over D of (f - prototype_y)^2

    with the prototype detached (a buffer): features move toward prototypes, never back.

    Momentum: the default 0.9 averages over about ``1 / (1 - m) = 10`` sightings of a class
    (the noise of one batch mean shrinks by ``sqrt((1 + m) / (1 - m)) ~ 4.4``). Prototype
    segmentation methods use ``m = 0.999`` over 40k-80k iterations (ProtoSeg, Zhou et al.,
    CVPR 2022: a window of 1.2-2.5% of the run); the runs here last a few hundred to a few
    thousand steps, and a tail class is present in only some batches, so a window of ~10
    sightings keeps the prototypes on the current features (0.99 suits runs of ~10k steps or
    more; 0.999 on a 400-step run leaves the prototypes far behind growing features).

    Args:
        num_classes: C.
        feat_dim: D, the width of the feature that enters the classifier.
        weight: weight of the pull (0.1, SAR's ``trade_off``).
        momentum: m in ``[0, 1)`` (0.9); 0 uses each batch's class means alone.
        warmup_steps: training calls without pull (50, about when SAR's gate opens in this
            repo's runs); the prototypes are still updated meanwhile.
        ignore_index: label value excluded from the pull and the update (255).

    Shapes and dtypes:
        features: float ``(B, D)`` or ``(B, D, H, W)`` (computed in float32).
        labels: integer ``(B,)``, or ``(B, h, w)`` / ``(B, 1, h, w)`` at any resolution
            (nearest-resized to ``(H, W)``); values in ``[0, C)`` or ``ignore_index``.
        classifier: ignored (accepted for the common interface).

    Returns:
        ``{"pull", "loss", "pull_on"}``, float32 0-dim tensors on every call: ``pull`` (and
        ``loss``, equal to it) is differentiable w.r.t. the features only; ``pull_on`` is 1.0
        once the warm-up is over, for logging.

    State (``state_dict``): buffers ``prototypes`` float32 ``(C, D)``, ``seen`` bool ``(C,)``,
    ``class_updates`` int64 ``(C,)`` (``t_c``) and ``num_steps`` int64 (training calls). They
    change only in training mode; nothing is read back to the host.

    Raises:
        ValueError: ``ignore_index`` in ``[0, C)``, ``momentum`` outside ``[0, 1)``, negative
            ``weight`` or ``warmup_steps``; features not ``(B, D)``/``(B, D, H, W)`` or not D
            wide; labels of the wrong shape or batch size.
        TypeError: float or bool labels.
        IndexError: (on the CPU) a label outside ``[0, C)`` that is not ``ignore_index``.

    Sources: Ge et al., "Beyond Prototypes: Semantic Anchor Regularization", AAAI 2024 (the
    prototype paradigm it argues against); the moving-average class prototypes of ProtoSeg
    (T. Zhou et al., "Rethinking Semantic Segmentation: A Prototype View", CVPR 2022,
    github.com/tfzhou/ProtoSeg, ``protoseg.gamma = 0.999``); bias correction as in Adam
    (Kingma & Ba, ICLR 2015).
    """

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        weight: float = 0.1,
        momentum: float = 0.9,
        warmup_steps: int = 50,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        _check_ignore_index(ignore_index, num_classes)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight < 0 or warmup_steps < 0:
            raise ValueError(
                f"weight and warmup_steps must be >= 0, got {weight} and {warmup_steps}")
        self.num_classes, self.feat_dim = num_classes, feat_dim
        self.weight, self.momentum, self.warmup_steps = weight, momentum, warmup_steps
        self.ignore_index = ignore_index
        self.register_buffer("prototypes", torch.zeros(num_classes, feat_dim))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))
        self.register_buffer("class_updates", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, feat_dim={self.feat_dim},"
                f" weight={self.weight}, momentum={self.momentum},"
                f" warmup_steps={self.warmup_steps}")

    def forward(
        self, features: torch.Tensor, labels: torch.Tensor, classifier: object = None
    ) -> dict[str, torch.Tensor]:
        flat, targets, valid = _flatten_valid(features, labels, self.ignore_index, self.feat_dim)
        if self.training:
            self._update(*_class_sums(flat, targets, valid, self.num_classes))
            self.num_steps += 1
        pull_on = self.num_steps > self.warmup_steps
        distance = (flat - self.prototypes[targets]).pow(2).mean(dim=1)
        pull = self.weight * _masked_mean(distance, valid & self.seen[targets] & pull_on)
        return {"pull": pull, "loss": pull, "pull_on": pull_on.float()}

    @torch.no_grad()
    def _update(self, counts: torch.Tensor, sums: torch.Tensor) -> None:
        present = counts > 0
        means = sums / counts.clamp(min=1)[:, None]
        self.class_updates += present.long()
        t = self.class_updates.clamp(min=1)
        rate = (1.0 - self.momentum) / (1.0 - self.momentum ** t.float())
        rate = torch.where(t == 1, 1.0, rate)  # exactly a copy at the first sighting
        rate = torch.where(present, rate, 0.0)
        self.prototypes += rate[:, None] * (means - self.prototypes)
        self.seen |= present


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


class LogitAdjustedCrossEntropy(nn.Module):
    """Cross-entropy on ``logits + tau * log(prior)`` (Menon et al., 2021), for training only.

    Adding the log prior during training makes the plain logits Bayes-consistent for the
    balanced error, so the rebalancing lives in the loss and inference is unchanged.

    Args:
        class_counts: training samples per class, ``(C,)``.
        tau: strength of the adjustment (1.0 in the paper).
    """

    def __init__(
        self, class_counts: Sequence[int] | torch.Tensor, tau: float = 1.0, ignore_index: int = -100
    ) -> None:
        super().__init__()
        counts = torch.as_tensor(class_counts, dtype=torch.float)
        if (counts <= 0).any():
            raise ValueError("every class needs a positive count for the log prior")
        self.register_buffer("log_prior", torch.log(counts / counts.sum()))
        self.tau, self.ignore_index = tau, ignore_index

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        shift = self.log_prior.view(1, -1, *([1] * (logits.dim() - 2)))
        return F.cross_entropy(logits + self.tau * shift, labels, ignore_index=self.ignore_index)
