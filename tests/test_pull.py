"""sar.pull: the per-position distance to the label's anchor, its gradient and what it keeps."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from test_training_step import TinySegmenter, classifier_case, segmentation_case, train_step

import sar
from sar import pull
from sar.benchmark import TrainStep, profile_step
from sar.pull import per_position_distance


def plain_distance(features, anchors, labels, distance):
    """The expression the custom function replaces, through ordinary autograd."""
    target = anchors[labels]
    if features.dim() == 4:
        target = target.movedim(-1, 1)
    features = features.to(torch.promote_types(features.dtype, anchors.dtype))
    if distance == "mse":
        return (features - target).pow(2).mean(dim=1)
    return 1.0 - F.cosine_similarity(features, target, dim=1)


SHAPES = [((3, 6), (3,)), ((2, 6, 5, 7), (2, 5, 7)), ((9, 6, 4, 3), (9, 4, 3)),
          ((1, 6, 17, 3), (1, 17, 3))]


def inputs(shape, label_shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    anchors = torch.randn(4, shape[1], generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, label_shape, generator=g)
    weights = torch.rand(label_shape, generator=g, dtype=torch.float64)
    return features.requires_grad_(), anchors, labels, weights


@pytest.mark.parametrize("sliced", [False, True], ids=["one_piece", "sliced"])
@pytest.mark.parametrize("distance", ["mse", "cosine"])
@pytest.mark.parametrize(("shape", "label_shape"), SHAPES)
def test_values_and_gradients_equal_the_plain_expression(shape, label_shape, distance, sliced,
                                                         monkeypatch):
    if sliced:
        monkeypatch.setattr(pull, "SLICE_ABOVE", 1)  # every 4-D map is cut into pieces
    features, anchors, labels, weights = inputs(shape, label_shape)
    ours = per_position_distance(features, anchors, labels, distance)
    plain = plain_distance(features, anchors, labels, distance)
    (grad,) = torch.autograd.grad((ours * weights).sum(), features)
    (plain_grad,) = torch.autograd.grad((plain * weights).sum(), features)
    assert ours.shape == label_shape and ours.dtype == torch.float64
    assert torch.allclose(ours, plain, rtol=1e-12, atol=1e-14)
    assert torch.allclose(grad, plain_grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("distance", ["mse", "cosine"])
def test_gradcheck_in_float64(distance):
    features, anchors, labels, _ = inputs((2, 6, 3, 4), (2, 3, 4))
    assert torch.autograd.gradcheck(
        lambda f: per_position_distance(f, anchors, labels, distance), (features,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_piece_is_bitwise_the_plain_expression_value_and_gradient(dtype):
    """Bit for bit: a grid row rerun on this code trains exactly as the committed one did."""
    features, anchors, labels, weights = inputs((2, 6, 10, 14), (2, 10, 14), dtype=dtype)
    anchors, weights = anchors.float(), weights.float()
    ours = per_position_distance(features, anchors, labels)
    plain = plain_distance(features, anchors, labels, "mse")
    (grad,) = torch.autograd.grad((ours * weights).sum() / 7, features)
    (plain_grad,) = torch.autograd.grad((plain * weights).sum() / 7, features)
    assert torch.equal(ours, plain) and torch.equal(grad, plain_grad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_features_give_float32_distances_and_a_half_gradient(dtype):
    features, anchors, labels, _ = inputs((2, 8, 6, 6), (2, 6, 6), dtype=dtype)
    ours = per_position_distance(features, anchors.float(), labels)
    (grad,) = torch.autograd.grad(ours.sum(), features)
    plain = plain_distance(features, anchors.float(), labels, "mse")
    (plain_grad,) = torch.autograd.grad(plain.sum(), features)
    assert ours.dtype == torch.float32 and grad.dtype == dtype
    assert torch.allclose(ours, plain, rtol=1e-6)
    assert torch.equal(grad, plain_grad.to(dtype)) or torch.allclose(
        grad.float(), plain_grad.float(), rtol=1e-2, atol=1e-3)


def feature_sized_saved_tensors(fn, features):
    """Tensors as large as ``features`` that autograd saves while ``fn`` runs and that are not
    ``features`` itself (which the network keeps alive anyway)."""
    saved = []

    def pack(tensor):
        if tensor.numel() >= features.numel() and tensor.data_ptr() != features.data_ptr():
            saved.append((tuple(tensor.shape), tensor.dtype))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return saved


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_pull_saves_nothing_feature_sized_but_the_features(dtype):
    features, anchors, labels, _ = inputs((2, 8, 16, 16), (2, 16, 16), dtype=dtype)
    anchors = anchors.float()
    ours = feature_sized_saved_tensors(
        lambda: per_position_distance(features, anchors, labels).sum(), features)
    plain = feature_sized_saved_tensors(
        lambda: plain_distance(features, anchors, labels, "mse").sum(), features)
    assert ours == []
    assert plain  # the plain expression keeps (features - target) in float32 for backward


# ------------------------------------------------- the pull's gradient routed through the head
def routed_and_plain(monkeypatch, case, step):
    """``step(model, x, y)`` on a wrapped model with the head route and on its deep copy with
    routing switched off (the pull's gradient then meets the head's in autograd's buffer)."""
    model, x, y = case()
    plain = copy.deepcopy(model)
    torch.manual_seed(1)
    routed_out = step(model, x, y)
    with monkeypatch.context() as patch:
        patch.setattr(pull.HeadRoute, "applies_to", staticmethod(lambda value: False))
        torch.manual_seed(1)
        plain_out = step(plain, x, y)
    return (model, routed_out), (plain, plain_out)


def grads(model):
    return [p.grad for p in model.parameters() if p.grad is not None]


def half_segmentation_case():
    model, x, y = segmentation_case()
    return model.to(torch.bfloat16), x.to(torch.bfloat16), y


def float64_segmentation_case():
    """A float64 network beside the float32 regulariser: the gradient is formed in float64."""
    model, x, y = segmentation_case()
    model.model.double()
    return model, x.double(), y


def channels_last_segmentation_case():
    model, x, y = segmentation_case()
    return model.to(memory_format=torch.channels_last), x, y


def class_pull_segmentation_case():
    return segmentation_case(pull_reduction="class")


def all_ignored_segmentation_case():
    model, x, y = segmentation_case()
    return model, x, torch.full_like(y, 255)


@pytest.mark.parametrize("case", [segmentation_case, classifier_case, half_segmentation_case,
                                  float64_segmentation_case, channels_last_segmentation_case,
                                  class_pull_segmentation_case, all_ignored_segmentation_case],
                         ids=["seg", "cls", "seg_bf16_sliced", "seg_float64_sliced",
                              "seg_channels_last_sliced", "seg_class_pull", "seg_all_ignored"])
def test_the_routed_pull_trains_bit_for_bit_as_the_plain_one(monkeypatch, case):
    monkeypatch.setattr(pull, "DEFERRED_SLICE_ABOVE", 1)  # where it slices, it does
    (routed, _), (plain, _) = routed_and_plain(monkeypatch, case, train_step)
    assert len(grads(routed)) == len(grads(plain)) == len(list(plain.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(grads(routed), grads(plain), strict=True))
    assert torch.equal(routed.regularizer.semantic_anchors, plain.regularizer.semantic_anchors)


def test_the_pull_alone_differentiates_through_the_route(monkeypatch):
    """No head gradient at all (autograd.grad of the pull only): the route adds the pull's to
    zero, and a gradient taken twice from one graph is the plain one both times."""
    def pull_grads(model, x, y):
        pull_loss = model(x, y).losses["pull"]
        params = list(model.model.body.parameters())
        first = torch.autograd.grad(pull_loss, params, retain_graph=True)
        return first, torch.autograd.grad(pull_loss, params)

    (_, routed), (_, plain) = routed_and_plain(monkeypatch, segmentation_case, pull_grads)
    assert any(g.abs().sum() > 0 for g in routed[0])
    for routed_grads, plain_grads in zip(routed, plain, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(routed_grads, plain_grads, strict=True))


def test_a_gradient_hook_on_the_features_sees_the_pull(monkeypatch):
    def feature_grad(model, x, y):
        seen = []

        def keep_its_gradient(module, args, out):
            out.register_hook(seen.append)

        model.model.body.register_forward_hook(keep_its_gradient)
        train_step(model, x, y)
        return seen[0]

    (_, routed), (_, plain) = routed_and_plain(monkeypatch, segmentation_case, feature_grad)
    assert torch.equal(routed, plain)


def test_the_route_keeps_no_pull_gradient_beside_the_heads(monkeypatch):
    """The step's peak (CPU allocation trace) falls by about one feature map with the route:
    the pull's gradient no longer waits in autograd's buffer during the head's backward."""
    def peak(model, x, y):
        step = TrainStep(model, x, y)
        step(), step()
        return profile_step(step, torch.device("cpu"))[0].peak_bytes

    def case():
        torch.manual_seed(0)
        model = sar.SARSegmentationModel(TinySegmenter(classes=21, width=16),
                                         use_gate=False).train()
        return model, torch.randn(2, 3, 64, 64), torch.randint(0, 21, (2, 64, 64))

    (_, routed), (_, plain) = routed_and_plain(monkeypatch, case, peak)
    feature_map = 2 * 16 * 64 * 64 * 4
    assert plain - routed >= 0.75 * feature_map, (plain, routed)
