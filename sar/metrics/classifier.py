"""Per-class state of a linear classifier: weight norms, biases, mean logits, prediction shares.

On long-tailed data a classifier trained with plain cross-entropy gives the head classes larger
weight vectors and biases, so it scores them higher on every image (Kang et al., ICLR 2020,
"Decoupling representation and classifier"; Menon et al., ICLR 2021). These numbers show
whether a method undoes that, class by class.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def classifier_weights(classifier: nn.Linear) -> dict[str, torch.Tensor]:
    """The L2 norm of each class's weight row and its bias.

    Args:
        classifier: the linear layer producing the logits, weight ``(C, D)``.

    Returns:
        ``{"weight_norm": (C,), "bias": (C,)}``, float32 on the CPU; the bias is zeros when
        the layer has none.

    Raises:
        TypeError: ``classifier`` is not an ``nn.Linear``.
    """
    if not isinstance(classifier, nn.Linear):
        raise TypeError(f"expected the nn.Linear that produces the logits, got"
                        f" {type(classifier).__name__}; pass e.g. model.classifier")
    weight = classifier.weight.detach().float().cpu()
    bias = (classifier.bias.detach().float().cpu() if classifier.bias is not None
            else torch.zeros(weight.shape[0]))
    return {"weight_norm": weight.norm(dim=1), "bias": bias}


@torch.no_grad()
def logit_statistics(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     num_classes: int, device: torch.device | str = "cpu"
                     ) -> dict[str, torch.Tensor]:
    """Each class's mean logit over all images, and the share of images predicted as it.

    On a balanced test set an unbiased classifier predicts each class about ``1 / C`` of the
    time; a head-biased one predicts head classes more often and gives them higher mean logits.

    Args:
        model: returns ``(B, C)`` logits for ``(B, ...)`` images (run in eval mode here and
            left in eval mode).
        batches: ``(images, labels)`` pairs, e.g. a ``DataLoader`` over the test set; labels
            are ignored.
        num_classes: C.
        device: where the model runs.

    Returns:
        ``{"mean_logit": (C,), "predicted_share": (C,)}``, float32 on the CPU; the shares are
        fractions summing to 1.

    Raises:
        ValueError: no images, or logits whose last dimension is not ``num_classes``.
    """
    model.eval()
    total = torch.zeros(num_classes, dtype=torch.float64)
    predicted = torch.zeros(num_classes, dtype=torch.float64)
    seen = 0
    for images, _ in batches:
        logits = model(images.to(device)).float().cpu()
        if logits.dim() != 2 or logits.shape[1] != num_classes:
            raise ValueError(f"expected (B, {num_classes}) logits, got {tuple(logits.shape)}")
        total += logits.sum(0, dtype=torch.float64)
        predicted += torch.bincount(logits.argmax(1), minlength=num_classes).double()
        seen += logits.shape[0]
    if seen == 0:
        raise ValueError("no images: the batches were empty")
    return {"mean_logit": (total / seen).float(), "predicted_share": (predicted / seen).float()}
