"""Prototypes: running class means of the features, pulled toward one-way (the EM paradigm)."""

from __future__ import annotations

import torch

from ..regularizer import Float32Module, check_class_count
from .features import _class_sums, _flatten_valid, _masked_mean


class PrototypeRegularizer(Float32Module):
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
        check_class_count(num_classes, ignore_index)
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

    def first_batch_weight(self) -> torch.Tensor:
        """``(C,)`` float64: the weight each class's first batch mean still has in its prototype,
        ``m^(t-1) (1 - m) / (1 - m^t)`` after ``t`` updates (1 after one, 0 for unseen classes).
        """
        t, m = self.class_updates.double(), self.momentum
        weight = m ** (t - 1) * (1 - m) / (1 - m ** t).clamp(min=1e-300)
        return torch.where(t == 1, 1.0, torch.where(t == 0, 0.0, weight))

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, feat_dim={self.feat_dim},"
                f" weight={self.weight}, momentum={self.momentum},"
                f" warmup_steps={self.warmup_steps}")

    def forward(
        self, features: torch.Tensor, labels: torch.Tensor, classifier: object = None
    ) -> dict[str, torch.Tensor]:
        flat, targets, valid = _flatten_valid(features, labels, self.ignore_index, self.feat_dim,
                                              self.num_classes)
        if self.training:
            self._update(*_class_sums(flat.detach().to(self.prototypes.dtype), targets, valid,
                                      self.num_classes))
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
