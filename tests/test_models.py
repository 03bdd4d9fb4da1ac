"""smp and torchvision wrappers: eval is the bare model, training taps the head input."""

from __future__ import annotations

import copy
import importlib
import threading
from collections import OrderedDict

import pytest
import torch
import torchvision.models as tv
from torch import nn

from sar import (
    CenterLoss,
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
    assert set(out.losses) == {"pull", "loss", "pull_on"}  # pull_on: the warm-up has ended


def test_options_and_regularizer_together_are_refused():
    with pytest.raises(TypeError, match="not both"):
        SARSegmentationModel(tiny_smp("Unet"), regularizer=NoRegularizer(), trade_off=0.2)


def test_dpt_is_regularised_at_the_input_of_its_final_conv():
    torch.manual_seed(0)
    net = build_smp_model("DPT", "tu-vit_tiny_patch16_224", num_classes=3, img_size=32,
                          decoder_intermediate_channels=(16,) * 4, decoder_fusion_channels=16)
    model = SARSegmentationModel(net).train()
    conv = net.segmentation_head.head[4]  # after Conv 3x3, BN, ReLU, Dropout: the classifier
    assert model.head is model.classifier is conv and model.regularizer.feat_dim == 16
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    out = model(x, y)
    assert out.logits.shape == (2, 3, 32, 32) and torch.isfinite(out.losses["loss"])
    out.losses["anchor_ce"].backward()
    assert conv.weight.grad.abs().sum() > 0
    features, _ = model.features_and_logits(x)
    assert features.shape == (2, 16, 16, 16)  # the head upsamples its logits by 2


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
    with pytest.raises(TypeError, match=r"SARClassifier found no linear or 1x1 conv head in"
                       r" Sequential \(looked at get_classifier\(\), fc, classifier, heads and"
                       r" head\):"
                       r" name it with head_name= \(a dotted name such as 'classifier\.1'\)"):
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


# ----------------------------------------------------------- heads that are not a top-level fc
def tiny_vit(num_classes: int) -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
                             hidden_dim=16, mlp_dim=32, num_classes=num_classes)


def timm_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)


HEADS = {  # model -> the dotted name of its final Linear
    "mobilenet_v3_small": (lambda c: tv.mobilenet_v3_small(weights=None, num_classes=c),
                           "classifier.3"),
    "efficientnet_b0": (lambda c: tv.efficientnet_b0(weights=None, num_classes=c),
                        "classifier.1"),
    "convnext_tiny": (lambda c: tv.convnext_tiny(weights=None, num_classes=c), "classifier.2"),
    "vit": (tiny_vit, "heads.head"),
    "timm_resnet18": (lambda c: timm_model("resnet18", c), "fc"),
    "timm_vit": (lambda c: timm_model("vit_tiny_patch16_224", c, img_size=32, patch_size=8,
                                      depth=1), "head"),
}


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize("named", [False, True], ids=["found", "dotted_name"])
def test_classifier_head_inside_a_container_is_found_or_named(name, named):
    build, head_name = HEADS[name]
    torch.manual_seed(0)
    net = build(4)
    model = SARClassifier(net, head_name=head_name if named else None).train()
    head = net.get_submodule(head_name)
    assert model.head_name == head_name and model.classifier is head
    assert model.regularizer.feat_dim == head.in_features
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 3])
    out = model(x, y)
    assert out.logits.shape == (2, 4) and tuple(out.losses) == LOSS_KEYS
    out.losses["anchor_ce"].backward()
    assert head.weight.grad.abs().sum() > 0
    features, _ = model.eval().features_and_logits(x)
    assert features.shape == (2, head.in_features)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))


def test_a_dotted_head_name_that_is_not_linear_names_what_it_found():
    net = tv.efficientnet_b0(weights=None, num_classes=4)
    with pytest.raises(TypeError, match=r"model\.classifier\.0 to be an nn\.Linear or 1x1"
                       r" nn\.Conv2d head, found Dropout"):
        SARClassifier(net, head_name="classifier.0")
    with pytest.raises(TypeError, match=r"model\.classifier\.7 to be an nn\.Linear or 1x1"
                       r" nn\.Conv2d head, found no such submodule"):
        SARClassifier(net, head_name="classifier.7")


# --------------------------------------------------------------- the head changed after wrapping
def test_a_head_replaced_under_the_same_name_is_used():
    net = build_classifier("small_cnn", num_classes=3)
    model = SARClassifier(net).train()
    net.fc = nn.Linear(net.fc.in_features, 3)  # same shape: the new head is tapped and trained
    out = model(torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 0]))
    out.losses["anchor_ce"].backward()
    assert model.classifier is net.fc and net.fc.weight.grad is not None


def test_a_head_replaced_with_another_shape_is_refused():
    net = timm_model("resnet18", 10)
    model = SARClassifier(net).train()
    net.reset_classifier(4)
    with pytest.raises(RuntimeError, match=r"the classifier 'fc' changed after wrapping: it"
                       r" mapped 512 -> 10 and now maps 512 -> 4, but the regulariser was built"
                       r" for the old one\. Wrap the model again after changing its head"):
        model(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))


class TwoHeads(nn.Module):
    """A body and two linear heads; ``forward`` uses ``use``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 8), nn.ReLU())
        self.fc, self.new_fc, self.use = nn.Linear(8, 3), nn.Linear(8, 3), "fc"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.use)(self.body(x))


def test_a_head_that_does_not_run_is_named_in_the_error():
    net = TwoHeads()
    model = SARClassifier(net).train()
    net.use = "new_fc"  # e.g. a head swapped in under another name after wrapping
    with pytest.raises(RuntimeError, match=r"the head 'fc' \(Linear\) did not run in the"
                       r" model's forward, so there is no feature to regularise: .*Wrap the"
                       r" model after changing its head"):
        model(torch.randn(4, 5), torch.tensor([0, 1, 2, 0]))
    del net.fc
    with pytest.raises(LookupError, match=r"TwoHeads has no submodule 'fc' \(the classifier\);"
                       r" if the head was renamed or removed after wrapping, wrap the model"):
        model(torch.randn(4, 5), torch.tensor([0, 1, 2, 0]))


def test_a_head_outside_the_model_is_refused():
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(ValueError, match=r"the classifier \(Linear\) is not a submodule of the"
                       r" model: pass a layer of the model itself, or its dotted name"):
        RegularizedModel(net, net[2], nn.Linear(8, 3), NoRegularizer())


# -------------------------------------------------------------------------- nn.DataParallel
class Rendezvous(nn.Module):
    """Holds each caller until ``parties`` have arrived (a barrier shared by the replicas)."""

    def __init__(self, parties: int) -> None:
        super().__init__()
        self.barrier = threading.Barrier(parties, timeout=20)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.barrier.wait()
        return x


def cpu_replicate(monkeypatch: pytest.MonkeyPatch, model: nn.Module, copies: int) -> list:
    """``torch.nn.parallel.replicate`` on the CPU: only its CUDA broadcast becomes a clone.

    The replicas are built by PyTorch's own code, so they share ``__dict__`` entries and
    hook dicts with the original exactly as DataParallel's do.
    """
    module = importlib.import_module("torch.nn.parallel.replicate")
    monkeypatch.setattr(module, "_get_device_index", lambda device, optional=False: 0)
    monkeypatch.setattr(module, "_broadcast_coalesced_reshape",
                        lambda tensors, devices, detach=False: [
                            [t.detach().clone() if detach else t.clone() for t in tensors]
                            for _ in devices])
    return module.replicate(model, ["cpu"] * copies)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_data_parallel_replicas_tap_and_classify_with_their_own_head(monkeypatch, dtype):
    torch.manual_seed(0)
    # both replicas are inside their heads' forward at once, as they may be under DataParallel
    net = nn.Sequential(OrderedDict(body=nn.Sequential(nn.Linear(5, 8), nn.ReLU()),
                                    before=Rendezvous(2), fc=nn.Linear(8, 3),
                                    after=Rendezvous(2)))
    model = SARClassifier(net, use_gate=False).to(dtype).train()
    initial = copy.deepcopy(model.state_dict())
    replicas = cpu_replicate(monkeypatch, model, 2)
    inputs = [(torch.randn(4, 5, dtype=dtype), torch.tensor([0, 1, 2, 0])),
              (torch.randn(4, 5, dtype=dtype) + 3.0, torch.tensor([2, 2, 1, 0]))]
    outputs, errors = [None, None], []

    def run(j: int) -> None:  # as DataParallel's parallel_apply: one thread per replica
        try:
            outputs[j] = replicas[j](*inputs[j])
        except Exception as error:  # noqa: BLE001 - re-raised below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(j,)) for j in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    for meeting in (model.model.before, model.model.after):
        meeting.barrier = threading.Barrier(1)  # the reference runs alone
    for j, replica in enumerate(replicas):
        assert replica.classifier is replica.model.fc is not model.model.fc
        model.load_state_dict(initial)  # each replica started from this state
        expected = model(*inputs[j])
        for key in ("anchor_ce", "pull"):
            assert torch.allclose(outputs[j].losses[key], expected.losses[key]), (j, key)
    sum(out.losses["loss"] for out in outputs).backward()
    assert model.model.fc.weight.grad.abs().sum() > 0  # through the replicas' copies


# ------------------------------------------------------------------ half-precision models
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("regularizer", ["sar", "prototypes", "center_loss"])
def test_a_converted_model_keeps_its_regularizer_in_float32(dtype, regularizer):
    torch.manual_seed(0)
    net = build_classifier("small_cnn", num_classes=3, width=8, feat_dim=16)
    made = {"sar": None, "prototypes": PrototypeRegularizer(3, 16),
            "center_loss": CenterLoss(3, 16)}[regularizer]
    model = SARClassifier(net, made).to(dtype).train()
    state = [*model.regularizer.parameters(), *model.regularizer.buffers()]
    assert {t.dtype for t in state if t.is_floating_point()} == {torch.float32}
    assert net.fc.weight.dtype == dtype
    x, y = torch.randn(4, 1, 28, 28, dtype=dtype), torch.tensor([0, 1, 2, 0])
    logits, losses = model(x, y)
    task = nn.functional.cross_entropy(logits, y)
    total = task + losses["loss"]  # half + float32: float32, no precision lost in the sum
    assert task.dtype == dtype and losses["loss"].dtype == total.dtype == torch.float32
    assert torch.isfinite(total)
    total.backward()
    assert net.fc.weight.grad.dtype == dtype and torch.isfinite(net.fc.weight.grad).all()


# ------------------------------------------------- several heads (timm), 1x1 conv heads
def tiny_deit_distilled(num_classes: int) -> nn.Module:
    return timm_model("deit_tiny_distilled_patch16_224", num_classes, img_size=32, patch_size=8,
                      depth=1)


MULTI_HEAD = {  # model -> its heads, in module order
    "deit_distilled": (tiny_deit_distilled, ("head", "head_dist")),
    "crossvit": (lambda c: timm_model("crossvit_tiny_240", c), ("head.0", "head.1")),
    "repvit": (lambda c: timm_model("repvit_m0_9", c), ("head.head.l", "head.head_dist.l")),
}


def head_inputs(net: nn.Module, names: tuple[str, ...], x: torch.Tensor) -> list[torch.Tensor]:
    """What each head receives in ``net(x)``, recorded by hooks of the test's own."""
    seen: dict[str, torch.Tensor] = {}
    handles = [net.get_submodule(name).register_forward_pre_hook(
        lambda module, args, name=name: seen.setdefault(name, args[0].detach()))
        for name in names]
    net(x)
    for handle in handles:
        handle.remove()
    return [seen[name] for name in names]


@pytest.mark.parametrize("name", MULTI_HEAD)
def test_every_head_of_a_multi_head_model_is_regularised_with_its_own_feature(name):
    build, names = MULTI_HEAD[name]
    torch.manual_seed(0)
    net = build(4)
    model = SARClassifier(net).train()
    assert model.head_names == names
    heads = [net.get_submodule(n) for n in names]
    assert [reg.feat_dim for reg in model.regularizer.regularizers] == [
        h.in_features for h in heads]
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 3])
    torch.manual_seed(1)
    expected = head_inputs(net, names, x)  # the same dropout draws: eval would skip them
    torch.manual_seed(1)
    features, logits = model.head_features_and_logits(x)
    assert all(torch.equal(f, e) for f, e in zip(features, expected, strict=True))
    out = model(x, y)
    assert tuple(out.losses) == LOSS_KEYS and torch.isfinite(out.losses["loss"])
    out.losses["anchor_ce"].backward()
    assert all(h.weight.grad is not None and h.weight.grad.abs().sum() > 0 for h in heads)
    with torch.no_grad():  # the heads are the whole route to the logits
        for head in heads:
            head.weight.zero_()
            head.bias.zero_()
        logits = model.eval()(x)
    assert torch.equal(logits, torch.zeros_like(logits))


def test_a_multi_head_model_is_averaged_over_heads_and_trains_through_fit():
    from sar.heads import HeadsRegularizer
    from sar.train import fit

    torch.manual_seed(0)
    model = SARClassifier(tiny_deit_distilled(4), use_gate=False)
    assert isinstance(model.regularizer, HeadsRegularizer)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(1)
    out = model.train()(x, y)
    torch.manual_seed(1)
    features, _ = model.head_features_and_logits(x)
    per_head = [reg(f, y, model.model.get_submodule(n)) for reg, f, n in
                zip(model.regularizer.regularizers, features, model.head_names, strict=True)]
    for key in LOSS_KEYS:  # each head's loss counts as its logits do: half
        assert torch.allclose(out.losses[key], (per_head[0][key] + per_head[1][key]) / 2)
    before = [int(reg.num_updates) for reg in model.regularizer.regularizers]
    history = fit(model, [(x, y)] * 2, epochs=1, lr=0.01, progress=False, device="cpu")
    assert {"anchor_ce", "pull"} <= set(history.columns) and len(history) == 2
    after = [int(reg.num_updates) for reg in model.regularizer.regularizers]
    assert after == [n + 2 for n in before]  # every head's EMA moved on each step


def test_a_multi_head_model_needs_one_regularizer_per_head():
    net = tiny_deit_distilled(4)
    with pytest.raises(TypeError, match=r"VisionTransformerDistilled has 2 heads \['head',"
                       r" 'head_dist'\]: pass regularizer=HeadsRegularizer\(\[\.\.\.\]\) with"
                       r" one regulariser per head"):
        SARClassifier(net, NoRegularizer())
    alone = SARClassifier(net, NoRegularizer(), head_name="head")  # named: that head alone
    assert alone.head_names == ("head",)


def test_an_auxiliary_head_that_adds_per_token_logits_is_refused_with_the_fix():
    from timm.models.volo import VOLO

    with pytest.raises(TypeError, match=r"VOLO has the auxiliary classifier head\(s\)"
                       r" \['aux_head'\] besides \['head'\]"):  # named once, config or not
        SARClassifier(timm_model("volo_d1_224", 4))
    net = VOLO(layers=(1, 1, 1, 1), embed_dims=(16, 32, 32, 32), num_heads=(1, 2, 2, 2),
               img_size=32, num_classes=4)
    with pytest.raises(TypeError, match=r"VOLO has the auxiliary classifier head\(s\)"
                       r" \['aux_head'\] besides \['head'\].*build it with use_aux_head=False"
                       r".* or pass head_name='head' to regularise that head alone"):
        SARClassifier(net)
    assert SARClassifier(net, head_name="head").head_names == ("head",)


def test_torchvision_aux_logits_are_refused_with_the_fix():
    net = tv.googlenet(weights=None, num_classes=4, aux_logits=True, init_weights=True)
    with pytest.raises(ValueError, match=r"this GoogLeNet was built with aux_logits=True, so in"
                       r" training mode it returns \(logits, aux_logits\.\.\.\) and"
                       r" sar\.train\.fit cannot train it: build it with aux_logits=False"):
        SARClassifier(net)


def tiny_resnetv2(num_classes: int) -> nn.Module:
    from timm.models.resnetv2 import ResNetV2

    return ResNetV2(layers=(1, 1, 1, 1), channels=(128,) * 4, stem_chs=32,
                    num_classes=num_classes)


CONV_HEADS = {  # model -> its 1x1 conv head, input size, the feature map that head classifies
    "timm_resnetv2": (tiny_resnetv2, "head.fc", 32, (128, 1, 1)),  # after global pooling
    "squeezenet": (lambda c: tv.squeezenet1_1(weights=None, num_classes=c), "classifier.1", 64,
                   (512, 3, 3)),  # every position classified, then ReLU and average
}


@pytest.mark.parametrize("name", CONV_HEADS)
def test_a_1x1_conv_head_trains_with_image_labels(name):
    build, head_name, size, feature_shape = CONV_HEADS[name]
    torch.manual_seed(0)
    net = build(4)
    model = SARClassifier(net).train()
    head = net.get_submodule(head_name)
    assert model.head_names == (head_name,) and model.classifier is head
    assert model.regularizer.feat_dim == head.in_channels
    x, y = torch.randn(2, 3, size, size), torch.tensor([0, 3])
    (features,), _ = model.head_features_and_logits(x)
    assert features.shape == (2, *feature_shape)
    out = model(x, y)
    assert out.logits.shape == (2, 4) and tuple(out.losses) == LOSS_KEYS
    assert torch.isfinite(out.losses["loss"])
    out.losses["anchor_ce"].backward()
    assert head.weight.grad.abs().sum() > 0
    with torch.no_grad():
        assert torch.equal(model.eval()(x), net(x))


def test_a_conv_head_that_is_not_1x1_is_refused():
    net = tv.squeezenet1_1(weights=None, num_classes=4)
    with pytest.raises(TypeError, match=r"model\.features\.0 is a Conv2d with kernel \(3, 3\),"
                       r" stride \(2, 2\), groups 1: SARClassifier takes an nn\.Linear or a 1x1"
                       r" conv head; for a conv that classifies a feature map use"
                       r" SARSegmentationModel or RegularizedModel"):
        SARClassifier(net, head_name="features.0")
