"""sar.pull: the per-position distance to the label's anchor, its gradient and what it keeps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sar import pull
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
