"""Center loss (Wen et al., ECCV 2016): class centres with their own update rule."""

from __future__ import annotations

import torch

from ..regularizer import Float32Module, check_class_count
from .features import _class_sums, _flatten_valid, _masked_mean


class CenterLoss(Float32Module):
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
        check_class_count(num_classes, ignore_index)
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
        flat, targets, valid = _flatten_valid(features, labels, self.ignore_index, self.feat_dim,
                                              self.num_classes)
        if self.training:
            counts, sums = _class_sums(flat.detach().to(self.centres.dtype), targets, valid,
                                       self.num_classes)
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
