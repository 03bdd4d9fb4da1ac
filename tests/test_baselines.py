"""Baselines under SAR's interface: who gets gradients, and what the prototypes track."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sar import CenterLoss, ETFClassifier, LogitAdjustedCrossEntropy, PrototypeRegularizer


def test_center_loss_moves_both_centres_and_features():
    loss_fn = CenterLoss(3, 4, weight=1.0)
    features = torch.randn(6, 4, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 255, 1])
    out = loss_fn(features, labels)
    expected = (features[[0, 1, 2, 3, 5]] - loss_fn.centres[[0, 1, 2, 0, 1]]).pow(2).mean()
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    out["loss"].backward()
    assert loss_fn.centres.grad.abs().sum() > 0 and features.grad.abs().sum() > 0
    assert features.grad[4].abs().sum() == 0  # the ignored sample


def test_prototypes_copy_then_blend_class_means_and_pull_one_way():
    reg = PrototypeRegularizer(3, 2, weight=1.0, momentum=0.5).train()
    first = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    reg(first, torch.tensor([0, 0, 1]))
    assert torch.allclose(reg.prototypes[0], torch.tensor([2.0, 0.0]))
    assert torch.allclose(reg.prototypes[1], torch.tensor([0.0, 4.0]))
    assert reg.seen.tolist() == [True, True, False]

    second = torch.tensor([[4.0, 0.0], [5.0, 5.0]], requires_grad=True)
    out = reg(second, torch.tensor([0, 2]))
    assert torch.allclose(reg.prototypes[0], torch.tensor([3.0, 0.0]))  # 0.5*2 + 0.5*4
    assert torch.allclose(reg.prototypes[2], torch.tensor([5.0, 5.0]))  # first sighting: copy
    out["loss"].backward()
    assert second.grad is not None and not reg.prototypes.requires_grad


def test_prototypes_pull_segmentation_maps_with_ignore():
    reg = PrototypeRegularizer(2, 3, weight=1.0).train()
    features = torch.rand(1, 3, 2, 2)
    labels = torch.tensor([[[0, 255], [1, 1]]])
    out = reg(features, labels)
    assert torch.isfinite(out["loss"])
    assert torch.allclose(reg.prototypes[1], features[0, :, 1, :].mean(dim=1))


@pytest.mark.parametrize("in_features", [16, 4])  # 4 = C - 1, the smallest that fits an ETF
def test_etf_head_is_fixed_and_maximally_separated(in_features):
    head = ETFClassifier(in_features, 5)
    assert list(head.parameters()) == []
    w = F.normalize(head.weight, dim=1)
    off = (w @ w.T)[~torch.eye(5, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, -0.25), atol=1e-6)
    assert head(torch.randn(3, in_features)).shape == (3, 5)


def test_logit_adjustment_shifts_by_the_log_prior():
    counts = [100, 10, 1]
    logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    prior = torch.tensor(counts, dtype=torch.float) / sum(counts)
    expected = F.cross_entropy(logits + 2.0 * prior.log(), labels)
    assert LogitAdjustedCrossEntropy(counts, tau=2.0)(logits, labels).item() == pytest.approx(
        expected.item(), rel=1e-6)
    assert LogitAdjustedCrossEntropy(counts, tau=0.0)(logits, labels).item() == pytest.approx(
        F.cross_entropy(logits, labels).item(), rel=1e-6)
    seg = LogitAdjustedCrossEntropy(counts, ignore_index=255)
    assert torch.isfinite(seg(torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))))


def test_logit_adjustment_needs_positive_counts():
    with pytest.raises(ValueError, match="positive count"):
        LogitAdjustedCrossEntropy([5, 0])
