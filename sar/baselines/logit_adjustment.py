"""Logit-adjusted cross-entropy (Menon et al., ICLR 2021): rebalancing by the label prior."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..labels import zero_without_labels


class LogitAdjustedCrossEntropy(nn.Module):
    """Cross-entropy on ``logits + tau * log(prior)`` (Menon et al., 2021), for training only.

    Adding the log prior during training makes the plain logits Bayes-consistent for the
    balanced error, so the rebalancing lives in the loss and inference is unchanged.

    Args:
        class_counts: training samples per class, ``(C,)``.
        tau: strength of the adjustment (1.0 in the paper).
        ignore_index: label value that adds no loss (as ``nn.CrossEntropyLoss``'s). A batch
            with only ignored labels gives 0, not NaN (as ``sar.train.fit``'s default loss).
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
        loss = F.cross_entropy(logits + self.tau * shift, labels, ignore_index=self.ignore_index)
        return zero_without_labels(loss, labels, self.ignore_index)
