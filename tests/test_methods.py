"""The method registry: every name builds, for classifiers and smp models, from one call."""

from __future__ import annotations

import pytest
import torch

from sar import methods
from sar.baselines import LogitAdjustedCrossEntropy, NoRegularizer
from sar.config import seed_everything
from sar.models import SmallCNN, build_smp_model
from sar.regularizer import SemanticAnchorRegularizer

COUNTS = [100, 30, 10, 3]


def small_cnn(seed: int = 0) -> SmallCNN:
    seed_everything(seed)
    return SmallCNN(num_classes=4, in_channels=1, width=4, feat_dim=8)


@pytest.mark.parametrize("name", methods.METHODS)
def test_every_classification_method_trains_one_step(name):
    model, criterion = methods.build(name, small_cnn(), counts=COUNTS)
    x, y = torch.randn(6, 1, 28, 28), torch.arange(6) % 4
    logits, losses = model.train()(x, y)
    loss = (criterion or torch.nn.CrossEntropyLoss())(logits, y) + losses["loss"]
    loss.backward()
    assert logits.shape == (6, 4) and torch.isfinite(loss)


def test_methods_start_from_identical_network_weights():
    built = {name: methods.build(name, small_cnn(seed=3), counts=COUNTS)[0]
             for name in ("ce", "sar", "prototype", "center")}
    states = [model.model.state_dict() for model in built.values()]
    assert all(torch.equal(state[k], states[0][k]) for state in states[1:] for k in states[0])


def test_logit_adjusted_methods_pair_the_loss_with_their_regulariser():
    _, plain = methods.build("sar", small_cnn())
    model, criterion = methods.build("sar_logit_adjusted", small_cnn(), counts=COUNTS, tau=0.5)
    assert plain is None and isinstance(criterion, LogitAdjustedCrossEntropy)
    assert criterion.tau == 0.5 and isinstance(model.regularizer, SemanticAnchorRegularizer)
    model, criterion = methods.build("logit_adjusted", small_cnn(), counts=COUNTS)
    assert isinstance(model.regularizer, NoRegularizer) and criterion is not None
    with pytest.raises(ValueError, match="needs counts="):
        methods.build("logit_adjusted", small_cnn())


def test_options_reach_the_regulariser():
    model, _ = methods.build("sar", small_cnn(), trade_off=1.0, anchor_init="etf")
    assert model.regularizer.trade_off == 1.0
    with pytest.raises(TypeError, match="trade_of"):
        methods.build("sar", small_cnn(), trade_of=1.0)


@pytest.mark.parametrize("name", ["ce", "logit_adjusted"])
def test_options_for_a_method_without_a_regulariser_are_refused(name):
    with pytest.raises(ValueError, match="has no regulariser to take the options"):
        methods.build(name, SmallCNN(num_classes=4, feat_dim=8), counts=[5, 4, 3, 2],
                      update_conf=0.5)


def test_etf_replaces_the_head():
    model, _ = methods.build("etf", small_cnn())
    assert type(model.model.fc).__name__ == "ETFClassifier" and model.classifier is model.model.fc


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown method 'focal'.*ce, sar, prototype"):
        methods.build("focal", small_cnn())


@pytest.mark.parametrize("name", ["ce", "sar", "prototype", "sar_logit_adjusted"])
def test_segmentation_methods_wrap_smp_models(name):
    model, criterion = methods.build(name, build_smp_model("FPN", "resnet18", 3), counts=[5, 2, 1])
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    y[0, :4] = 255
    logits, losses = model.train()(x, y)
    loss = (criterion or torch.nn.CrossEntropyLoss(ignore_index=255))(logits, y)
    assert logits.shape == (2, 3, 64, 64) and torch.isfinite(loss + losses["loss"])


def test_etf_refuses_segmentation_models():
    with pytest.raises(ValueError, match="classifiers"):
        methods.build("etf", build_smp_model("Unet", "resnet18", 3))


def test_a_head_inside_a_container_is_found_or_named():
    import torchvision

    net = torchvision.models.mobilenet_v3_small(weights=None, num_classes=4)
    model, _ = methods.build("sar", net)
    assert model.regularizer.num_classes == 4 and model.head is net.classifier[3]
    with pytest.raises(TypeError, match="model.classifier to be an nn.Linear or 1x1 nn.Conv2d"
                       " head, found Sequential"):
        methods.build("sar", net, head_name="classifier")


def test_etf_dr_is_yang_et_al_recipe_and_etf_keeps_the_committed_variant():
    model, criterion = methods.build("etf_dr", small_cnn())
    assert model.model.fc.variant == "dr" and type(criterion).__name__ == "DotRegressionLoss"
    model, criterion = methods.build("etf", small_cnn())
    assert model.model.fc.variant == "ce" and criterion is None


def tiny_deit_distilled():
    import timm

    seed_everything(0)
    return timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, num_classes=4,
                             img_size=32, patch_size=8, depth=1)


@pytest.mark.parametrize("name", ["sar", "prototype", "center", "sar_logit_adjusted"])
def test_a_multi_head_model_gets_one_regularizer_per_head(name):
    from sar.heads import HeadsRegularizer

    model, criterion = methods.build(name, tiny_deit_distilled(), counts=COUNTS)
    assert model.head_names == ("head", "head_dist")
    assert isinstance(model.regularizer, HeadsRegularizer) and len(model.regularizer) == 2
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    logits, losses = model.train()(x, y)
    loss = (criterion or torch.nn.CrossEntropyLoss())(logits, y) + losses["loss"]
    assert torch.isfinite(loss)


def test_etf_refuses_a_model_without_one_linear_head():
    import torchvision

    with pytest.raises(ValueError, match=r"the ETF head replaces one nn\.Linear head, but the"
                       r" heads of VisionTransformerDistilled are \['head', 'head_dist'\]"
                       r" \(Linear, Linear\)"):
        methods.build("etf", tiny_deit_distilled())
    squeezenet = torchvision.models.squeezenet1_1(weights=None, num_classes=4)
    with pytest.raises(ValueError, match=r"the heads of SqueezeNet are \['classifier\.1'\]"
                       r" \(Conv2d\)"):
        methods.build("etf", squeezenet)
    model, _ = methods.build("sar", squeezenet)  # SAR itself takes the conv head
    assert model.regularizer.feat_dim == 512
