"""smp and torchvision wrappers: eval is the bare model, training taps the head input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sar import (
    NoRegularizer,
    PrototypeRegularizer,
    RegularizedModel,
    SARClassifier,
    SARSegmentationModel,
    build_classifier,
    build_smp_model,
)
from sar.regularizer import LOSS_KEYS

ARCHS = ["Unet", "FPN", "DeepLabV3Plus"]


def tiny_smp(arch: str, num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return build_smp_model(arch, "resnet18", num_classes=num_classes)


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_logits_are_bitwise_those_of_the_bare_model(arch):
    bare = tiny_smp(arch).eval()
    wrapped = SARSegmentationModel(tiny_smp(arch)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(wrapped(x), bare(x))
        assert torch.equal(wrapped(x, torch.zeros(2, 64, 64, dtype=torch.long)), bare(x))


@pytest.mark.parametrize("arch", ARCHS)
def test_training_returns_logits_and_sar_losses_from_the_decoder_map(arch):
    model = SARSegmentationModel(tiny_smp(arch)).train()
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    out = model(x, y)
    assert out.logits.shape == (2, 3, 64, 64)
    assert tuple(out.losses) == LOSS_KEYS
    head = model.model.segmentation_head
    features, _ = model.features_and_logits(x)
    assert features.shape[1] == head[0].in_channels == model.regularizer.feat_dim
    assert model.regularizer.num_classes == 3


def test_anchor_ce_trains_the_segmentation_head_conv():
    model = SARSegmentationModel(tiny_smp("Unet")).train()
    out = model(torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64)))
    out.losses["anchor_ce"].backward()
    conv = model.model.segmentation_head[0]
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    encoder_grads = [p.grad for p in model.model.encoder.parameters()]
    assert all(g is None for g in encoder_grads)


def test_wrapper_state_dict_holds_the_regulariser_and_round_trips():
    model = SARSegmentationModel(tiny_smp("Unet"), momentum=0.5)
    keys = model.state_dict().keys()
    state = {"regularizer.anchors", "regularizer.semantic_anchors", "regularizer.gate_opened"}
    assert state <= set(keys)
    twin = SARSegmentationModel(tiny_smp("Unet"), momentum=0.5, anchor_seed=9)
    twin.load_state_dict(model.state_dict())
    assert torch.equal(twin.regularizer.anchors, model.regularizer.anchors)


def test_baselines_plug_into_the_same_wrapper():
    model = SARSegmentationModel(tiny_smp("FPN"), regularizer=PrototypeRegularizer(3, 128)).train()
    out = model(torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64)))
    assert set(out.losses) == {"pull", "loss"}


def test_options_and_regularizer_together_are_refused():
    with pytest.raises(TypeError, match="not both"):
        SARSegmentationModel(tiny_smp("Unet"), regularizer=NoRegularizer(), trade_off=0.2)


def test_non_smp_model_gets_a_helpful_error():
    with pytest.raises(TypeError, match="RegularizedModel"):
        SARSegmentationModel(nn.Conv2d(3, 3, 1))


@pytest.mark.parametrize("name, channels, size", [("small_cnn", 1, 28), ("resnet18", 3, 32)])
def test_classifier_wrapper_taps_the_pooled_feature(name, channels, size):
    torch.manual_seed(0)
    bare = build_classifier(name, num_classes=10, in_channels=channels).eval()
    wrapped = SARClassifier(build_classifier(name, num_classes=10, in_channels=channels))
    wrapped.model.load_state_dict(bare.state_dict())
    x = torch.randn(4, channels, size, size)
    with torch.no_grad():
        assert torch.equal(wrapped.eval()(x), bare(x))
    out = wrapped.train()(x, torch.randint(0, 10, (4,)))
    assert out.logits.shape == (4, 10) and tuple(out.losses) == LOSS_KEYS
    features, _ = wrapped.features_and_logits(x)
    assert features.shape == (4, wrapped.model.fc.in_features)
    assert (features >= 0).all()  # post-ReLU, like the projected anchors


def test_classifier_without_linear_head_is_refused():
    with pytest.raises(TypeError, match="head_name"):
        SARClassifier(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


def test_generic_wrapper_with_a_named_head():
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    model = RegularizedModel(net, head=net[2], classifier=net[2], regularizer=NoRegularizer())
    out = model.train()(torch.randn(4, 5), torch.tensor([0, 1, 2, 0]))
    assert out.logits.shape == (4, 3) and out.losses["loss"].item() == 0.0
    assert set(model.state_dict()) == {f"model.{k}" for k in net.state_dict()}


def test_build_classifier_rejects_unknown_names():
    with pytest.raises(ValueError, match="small_cnn"):
        build_classifier("vgg11")
