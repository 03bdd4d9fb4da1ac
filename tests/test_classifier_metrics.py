"""Per-class classifier state: weight norms, biases, mean logits, prediction shares."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sar.metrics import classifier_weights, logit_statistics


def test_weight_norms_and_biases_are_read_per_class():
    layer = nn.Linear(2, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 1.0], [1.0, 0.0]]))
        layer.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    out = classifier_weights(layer)
    torch.testing.assert_close(out["weight_norm"], torch.tensor([5.0, 1.0, 1.0]))
    torch.testing.assert_close(out["bias"], torch.tensor([0.5, -1.0, 2.0]))


def test_a_layer_without_bias_reports_zero_biases_and_a_non_linear_layer_is_refused():
    assert classifier_weights(nn.Linear(4, 3, bias=False))["bias"].eq(0).all()
    with pytest.raises(TypeError, match="nn.Linear"):
        classifier_weights(nn.Conv2d(4, 3, 1))


def test_mean_logits_and_prediction_shares_over_every_batch():
    # the model returns its input as logits, so the expected statistics are plain arithmetic
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [3.0, 0.0, 1.0], [0.0, 0.0, 5.0]])
    batches = [(logits[:3], torch.zeros(3)), (logits[3:], torch.zeros(1))]
    out = logit_statistics(nn.Identity(), batches, num_classes=3)
    torch.testing.assert_close(out["mean_logit"], logits.mean(0))
    torch.testing.assert_close(out["predicted_share"], torch.tensor([0.5, 0.25, 0.25]))


def test_logit_statistics_refuse_empty_batches_and_wrong_class_counts():
    with pytest.raises(ValueError, match="no images"):
        logit_statistics(nn.Identity(), [], num_classes=3)
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        logit_statistics(nn.Identity(), [(torch.zeros(2, 3), torch.zeros(2))], num_classes=4)
