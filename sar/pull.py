"""The pull's per-position distance to the anchor of each label, without big temporaries.

``per_position_distance(features, anchors, labels, distance)`` is what the plain expression

    target = anchors[labels].movedim(-1, 1)                 # (B, D, H, W), float32
    (features.float() - target).pow(2).mean(dim=1)          # or 1 - cosine similarity

computes, as a custom autograd function. The plain expression keeps a float32 copy of
``features - target`` (the size of the feature map, twice that of a bf16 map) alive until the
backward pass and builds the gathered anchor map and a float32 copy of the features besides,
all at the end of the forward pass, where a training step's memory peaks. Here the forward pass
works through the map in a few slices (each slice's temporaries are freed before the next) and
saves nothing but the inputs, which the network holds anyway; the backward pass writes the
gradient ``2 (f - a_y) / D`` slice by slice into one tensor of the features' dtype. Values and
gradients are bit for bit the plain expression's where the map is one slice, and equal within
float32 rounding where it is sliced. The cosine distance (an ablation option) keeps the plain
expression.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

# slices per map: each slice's float32 temporaries are about 1/SLICES of the feature map. A map
# of at most SLICE_ABOVE elements (16 MiB in float32) is one slice: its temporaries are smaller
# than the task loss's own (a log-softmax over every pixel), so slicing would add launches only
SLICES = 8
SLICE_ABOVE = 2**22


def _slices(features: torch.Tensor) -> Iterator[tuple[slice, slice]]:
    """(batch, row) index pairs that cut a ``(B, D, H, W)`` map into about ``SLICES`` pieces
    (a ``(B, D)`` batch is one piece: it is small)."""
    if features.dim() == 2 or features.numel() <= SLICE_ABOVE:
        yield slice(None), slice(None)
        return
    batch, height = features.shape[0], features.shape[2]
    per_image = -(-SLICES // batch)  # ceil: small batches are cut along the rows too
    images = max(1, batch // SLICES)
    for b in range(0, batch, images):
        rows = -(-height // per_image) if images == 1 else height
        for h in range(0, height, rows):
            yield slice(b, b + images), slice(h, h + rows)


def _piece(tensor: torch.Tensor, where: tuple[slice, slice], channels: bool) -> torch.Tensor:
    """A slice of a ``(B, D, H, W)`` map (``channels``) or of a ``(B, H, W)`` label map."""
    batch, rows = where
    if tensor.dim() <= 2 or batch == slice(None):  # one piece: the whole map
        return tensor
    return tensor[batch, :, rows] if channels else tensor[batch, rows]


def _target(anchors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The anchors of ``labels`` laid out like the features: ``(b, D[, h, w])``."""
    target = anchors[labels]
    return target.movedim(-1, 1) if labels.dim() == 3 else target


def _mse(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # features - target promotes half features to the target's float32 element by element,
    # without a float32 copy of the features
    return (features - target).pow_(2).mean(dim=1)


def _mse_grad(features: torch.Tensor, target: torch.Tensor,
              grad_out: torch.Tensor) -> torch.Tensor:
    """``grad_out`` times d/df of mean_d (f - a)^2, i.e. ``(grad_out / D) * (2 (f - a))``: the
    products in the order autograd takes them through ``mean`` and ``pow``, so the gradient is
    bit for bit the plain expression's (and training runs reproduce the committed rows)."""
    return (features - target).mul_(2).mul_(grad_out.unsqueeze(1) / features.shape[1])


class _PerPositionMSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: torch.Tensor, anchors: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(features, anchors, labels)
        pieces = [(where, _mse(_piece(features, where, channels=True),
                               _target(anchors, _piece(labels, where, channels=False))))
                  for where in _slices(features)]
        if len(pieces) == 1:
            return pieces[0][1]
        out = features.new_empty(labels.shape, dtype=pieces[0][1].dtype)
        for where, value in pieces:
            _piece(out, where, channels=False).copy_(value)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        features, anchors, labels = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        grad = None
        for where in _slices(features):
            piece_grad = _mse_grad(_piece(features, where, channels=True),
                                   _target(anchors, _piece(labels, where, channels=False)),
                                   _piece(grad_out, where, channels=False))
            if where == (slice(None), slice(None)):  # one piece: it is the gradient
                return piece_grad.to(features.dtype), None, None
            if grad is None:
                grad = torch.empty_like(features)
            _piece(grad, where, channels=True).copy_(piece_grad)
        return grad, None, None


def per_position_distance(
    features: torch.Tensor, anchors: torch.Tensor, labels: torch.Tensor, distance: str = "mse"
) -> torch.Tensor:
    """Distance of each feature to the anchor of its label, differentiable in ``features``.

    Args:
        features: ``(B, D)`` or ``(B, D, H, W)``, any floating dtype.
        anchors: ``(C, D)`` targets, float32 or float64, treated as constants (no gradient).
        labels: int64 class ids in ``[0, C)``, ``(B,)`` or ``(B, H, W)`` (ignored positions
            mapped to any valid id beforehand; the caller masks them out).
        distance: ``"mse"``: ``mean_d (f - a_y)^2``, by the memory-lean function above;
            ``"cosine"``: ``1 - cos(f, a_y)`` (``torch.nn.functional.cosine_similarity``), by
            the plain expression: it is an ablation option, and so the committed ablation row
            that uses it reproduces bit for bit.

    Returns:
        ``(B,)`` or ``(B, H, W)``, in ``promote_types(features.dtype, anchors.dtype)`` (float32
        for half features). The gradient reaching ``features`` has their dtype.
    """
    anchors = anchors.detach()
    if distance == "mse":
        return _PerPositionMSE.apply(features, anchors, labels)
    target = _target(anchors, labels)
    return 1.0 - F.cosine_similarity(features.to(target.dtype), target, dim=1)
