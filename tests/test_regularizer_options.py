"""SAR's class-balanced pull against a loop reference, and the anchor diagnostics it exposes."""

from __future__ import annotations

import copy

import pytest
import torch
from reference_sar import ReferenceSAR, loop_pull
from test_regularizer import (
    C,
    D,
    assert_matches,
    confident_classifier,
    make_regularizer,
    run_both,
    segmentation_batch,
)

from sar import methods
from sar.regularizer import LOSS_KEYS, SemanticAnchorRegularizer

# a hand-made 2x3x4 label map: class 0 is frequent, 1 and 2 rare, 3 absent, 255 ignored
HAND_LABELS = torch.tensor([[[0, 0, 0, 0], [0, 0, 255, 1], [0, 0, 0, 2]],
                            [[0, 0, 0, 255], [2, 0, 0, 0], [0, 255, 0, 0]]])


def hand_batch(device="cpu"):
    g = torch.Generator().manual_seed(5)
    features = torch.rand(2, D, 3, 4, generator=g, dtype=torch.float64).to(device)
    return features.requires_grad_(), HAND_LABELS.to(device)


def pull_and_grad(reg, features, labels):
    """The pull of one opening step (trade_off 1) and its gradient on the features."""
    pull = reg(features, labels, confident_classifier(reg, 40.0))["pull"]
    (grad,) = torch.autograd.grad(pull, features)
    return pull, grad


# --------------------------------------------------------------------- class-balanced pull
@pytest.mark.parametrize("reduction", ["class", "pixel"])
def test_pull_matches_the_loop_reference_with_gradients(reduction, device):
    reg = make_regularizer(trade_off=1.0, pull_reduction=reduction).to(device)
    features, labels = hand_batch(device)
    pull, grad = pull_and_grad(reg, features, labels)
    assert reg.gate_opened  # the pull was on
    ref = loop_pull(features, labels, reg.semantic_anchors, reduction)
    (ref_grad,) = torch.autograd.grad(ref, features)
    assert pull.item() == pytest.approx(ref.item(), rel=1e-12)
    assert torch.allclose(grad, ref_grad, rtol=1e-10, atol=1e-14)
    assert (grad[HAND_LABELS.unsqueeze(1).expand_as(grad).to(device) == 255] == 0).all()


def test_class_pull_weighs_each_present_class_alike_not_each_pixel():
    features, labels = hand_batch()
    pixel = make_regularizer(trade_off=1.0)
    balanced = make_regularizer(trade_off=1.0, pull_reduction="class")
    _, pixel_grad = pull_and_grad(pixel, features, labels)
    _, class_grad = pull_and_grad(balanced, features, labels)
    # per position, the class mean scales the pixel mean's gradient by n_valid / (K n_class)
    n_valid, present = int((HAND_LABELS != 255).sum()), 3
    for c in range(3):
        where = (HAND_LABELS == c).unsqueeze(1).expand_as(pixel_grad)
        n_class = int((HAND_LABELS == c).sum())
        assert torch.allclose(class_grad[where],
                              pixel_grad[where] * n_valid / (present * n_class), rtol=1e-10)


def test_class_pull_matches_the_reference_over_steps_with_resized_labels(device):
    reg = make_regularizer(momentum=0.9, pull_reduction="class").to(device)
    ref = ReferenceSAR(C, momentum=0.9, pull_reduction="class")
    features, labels = segmentation_batch(device=device)
    labels[labels == 3] = 2  # class 3 absent
    head = confident_classifier(reg, 40.0)
    for _ in range(3):
        ours, theirs = run_both(reg, ref, head, features, labels)
        assert theirs["gate_passed"] == 1.0 and theirs["pull"] > 0
        assert_matches(ours, theirs)


def test_class_pull_for_classification_and_an_all_ignore_batch():
    reg = make_regularizer(trade_off=1.0, pull_reduction="class")
    g = torch.Generator().manual_seed(2)
    features = torch.rand(7, D, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 0, 0, 1, 255, 1])  # 2 and 3 absent
    pull, grad = pull_and_grad(reg, features, labels)
    ref = loop_pull(features, labels, reg.semantic_anchors, "class")
    (ref_grad,) = torch.autograd.grad(ref, features)
    assert pull.item() == pytest.approx(ref.item(), rel=1e-12)
    assert torch.allclose(grad, ref_grad, rtol=1e-10, atol=1e-14)
    out = reg(features, torch.full_like(labels, 255), confident_classifier(reg, 40.0))
    assert out["pull"].item() == 0.0 and torch.isfinite(out["loss"])


def test_the_default_pull_is_the_pixel_mean_bit_for_bit():
    reg = make_regularizer()
    assert reg.pull_reduction == "pixel"
    features, labels = segmentation_batch(size=(10, 14), label_size=(10, 14))
    out = reg(features, labels, confident_classifier(reg, 40.0))
    # the formula of the faithful pull, as it was before pull_reduction existed
    valid = labels != 255
    target = reg.semantic_anchors[torch.where(valid, labels, 0)].movedim(-1, 1)
    per_position = (features - target).pow(2).mean(dim=1)
    expected = reg.trade_off * ((per_position * valid).sum() / valid.sum().clamp(min=1))
    assert torch.equal(out["pull"], expected)
    balanced = make_regularizer(pull_reduction="class")
    assert balanced(features, labels, confident_classifier(balanced, 40.0))["pull"] != expected


def test_class_pull_keeps_the_same_keys_closed_or_open():
    reg = make_regularizer(pull_reduction="class")
    features, labels = segmentation_batch()
    closed = reg(features, labels, confident_classifier(reg, 0.1))
    opened = reg(features, labels, confident_classifier(reg, 40.0))
    assert tuple(closed) == tuple(opened) == LOSS_KEYS
    assert closed["pull"].item() == 0.0 and opened["pull"].item() > 0.0
    with pytest.raises(ValueError, match="pull_reduction must be one of"):
        make_regularizer(pull_reduction="classes")
    assert "pull_reduction='class'" in repr(reg)


def test_registry_name_builds_sar_with_the_class_pull():
    from sar.models import build_smp_model

    model, criterion = methods.build("sar_class_pull", build_smp_model("Unet", num_classes=4))
    assert model.regularizer.pull_reduction == "class" and criterion is None
    assert methods.build("sar", build_smp_model("Unet", num_classes=4))[0].regularizer \
        .pull_reduction == "pixel"
    assert "sar_class_pull" in methods.__doc__


# ---------------------------------------------------------------------- anchor diagnostics
def hard_anchor_head(reg):
    head = confident_classifier(reg, 15.0)
    with torch.no_grad():
        head.weight[0] *= 0.3  # anchor 0 hard, the others above filter_conf
    return head


def test_anchor_diagnostics_are_the_values_the_forward_uses():
    reg = make_regularizer(trade_off_ce=2.0)
    ref = ReferenceSAR(C, trade_off_ce=2.0)
    head = hard_anchor_head(reg)
    features, labels = segmentation_batch()
    diag = reg.anchor_diagnostics(head)
    ours, theirs = run_both(reg, ref, head, features, labels)
    probs, weights = diag["anchor_probs"], diag["anchor_weights"]
    assert probs.shape == weights.shape == (C,) and diag["projected"].shape == (C, D)
    assert probs.tolist() == pytest.approx(ref.last_probs, rel=1e-9)
    assert weights.tolist() == pytest.approx(ref.last_weights, rel=1e-9, abs=1e-15)
    assert weights[1:].eq(0).all() and weights[0] > 0  # confident anchors drop out
    assert torch.equal(probs.min(), ours["min_anchor_prob"])
    assert torch.equal(diag["anchor_correct"].double().mean(), ours["anchor_accuracy"])
    assert (2.0 * (weights * -probs.log()).sum()).item() == pytest.approx(
        ours["anchor_ce"].item(), rel=1e-12)
    assert not any(value.requires_grad for value in diag.values())


@pytest.mark.parametrize("train", [True, False])
def test_anchor_diagnostics_change_no_state(train):
    reg = make_regularizer().train(train)
    head = confident_classifier(reg, 40.0)
    features, labels = segmentation_batch()
    reg(features, labels, head)  # some state first (gate open in training mode)
    twin = copy.deepcopy(reg)
    before = copy.deepcopy(reg.state_dict())
    diag = reg.anchor_diagnostics(head)
    after = reg.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)  # BN statistics too
    ours, theirs = reg(features, labels, head), twin(features, labels, head)
    assert all(torch.equal(ours[key], theirs[key]) for key in LOSS_KEYS)
    # the projector normalises as the forward does: batch statistics in training mode only
    with torch.no_grad():
        projected = copy.deepcopy(reg.projector).train(train)(reg.anchors)
    assert torch.equal(diag["projected"], projected)


def test_first_target_weight_is_the_ema_share_of_the_first_opening():
    reg = SemanticAnchorRegularizer(3, 4, momentum=0.9)
    assert reg.first_target_weight() == 0.0
    reg.num_updates.fill_(3)
    assert reg.first_target_weight() == pytest.approx(0.81)
