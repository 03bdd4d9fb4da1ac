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

Where the features also enter a head (the wrapped models' case) the pull's gradient for them
would sit in autograd's buffer, feature-sized, from the start of the backward pass, while the
head's backward, where a step's memory peaks, runs beside it. :class:`HeadRoute` defers it: the
head receives the features through an identity node, the pull (computed on that node's output,
so the graph orders the two) hands its output gradient to the node and returns none, and the
node adds the pull's gradient into the head's slice by slice. The sum is bit for bit the one
autograd forms (float addition commutes), so nothing about training changes but the peak.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F

# slices per map: each slice's float32 temporaries are about 1/SLICES of the feature map. A map
# of at most SLICE_ABOVE elements (16 MiB in float32) is one slice in the forward pass: its
# temporaries are smaller than the task loss's own (a log-softmax over every pixel), so slicing
# would add launches only
SLICES = 8
SLICE_ABOVE = 2**22
# the gradient is elementwise, so slicing it changes no bit: a gradient added into another one
# (the head route's half-precision or strided case) is cut from smaller maps on, so that its one
# float32 temporary is an eighth of the map
DEFERRED_SLICE_ABOVE = 2**16


def _pieces(features: torch.Tensor, above: int) -> int:
    """How many row slices a ``(B, D, H, W)`` map is cut into (a ``(B, D)`` batch: one)."""
    return SLICES if features.dim() == 4 and features.numel() > above else 1


def _rows(tensor: torch.Tensor, pieces: int) -> tuple[torch.Tensor, ...]:
    """``pieces`` views of a ``(B, D, H, W)`` map or ``(B, H, W)`` label map along H."""
    return tensor.tensor_split(pieces, dim=tensor.dim() - 2) if pieces > 1 else (tensor,)


def _target(anchors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The anchors of ``labels`` laid out like the features: ``(b, D[, h, w])``."""
    target = anchors[labels]
    return target.movedim(-1, 1) if labels.dim() == 3 else target


def _gathered_target(anchors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The anchors of ``labels`` as a new contiguous ``(B, D[, H, W])`` tensor, in one gather."""
    if labels.dim() == 1:
        return anchors[labels]
    (b, h, w), (c, d) = labels.shape, anchors.shape
    index = labels.reshape(b, 1, h * w).expand(b, d, h * w)
    return anchors.t().unsqueeze(0).expand(b, d, c).gather(2, index).view(b, d, h, w)


def _mse(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # features - target promotes half features to the target's float32 element by element,
    # without a float32 copy of the features
    return (features - target).pow_(2).mean(dim=1)


def _mse_map(features: torch.Tensor, anchors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``mean_d (f - a_y)^2`` per position, slice by slice."""
    pieces = _pieces(features, SLICE_ABOVE)
    if pieces == 1:
        return _mse(features, _target(anchors, labels))
    out = features.new_empty(labels.shape, dtype=torch.promote_types(features.dtype,
                                                                     anchors.dtype))
    for piece_out, piece_features, piece_labels in zip(
            _rows(out, pieces), _rows(features, pieces), _rows(labels, pieces), strict=True):
        piece_out.copy_(_mse(piece_features, _target(anchors, piece_labels)))
    return out


def _new_mse_grad(features: torch.Tensor, anchors: torch.Tensor, labels: torch.Tensor,
                  grad_out: torch.Tensor) -> torch.Tensor:
    """``grad_out`` times d/df of mean_d (f - a)^2, in a new tensor (the gathered anchors').

    ``(a - f) * -2`` is ``(f - a) * 2`` exactly (rounding is symmetric), and ``* (grad_out /
    D)`` follows: the products in the order autograd takes them through ``mean`` and ``pow``,
    so the gradient is bit for bit the plain expression's (training runs reproduce the
    committed rows). It has ``promote_types(features.dtype, anchors.dtype)``.
    """
    dtype = torch.promote_types(anchors.dtype, features.dtype)
    anchors = anchors if anchors.dtype == dtype else anchors.to(dtype)  # no op when it matches
    grad = _gathered_target(anchors, labels).sub_(features).mul_(-2)
    return grad.mul_(grad_out.unsqueeze(1) / features.shape[1])


def _add_sliced_mse_grad(into: torch.Tensor, features: torch.Tensor, anchors: torch.Tensor,
                         labels: torch.Tensor, grad_out: torch.Tensor, above: int) -> None:
    """``into += `` the pull's gradient, in row slices for maps above ``above`` elements."""
    pieces = _pieces(features, above)
    for piece_into, piece_features, piece_labels, piece_grad_out in zip(
            *(_rows(t, pieces) for t in (into, features, labels, grad_out)), strict=True):
        piece_into.add_(_new_mse_grad(piece_features, anchors, piece_labels,
                                      piece_grad_out).to(into.dtype))


class _PerPositionMSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: torch.Tensor, anchors: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(features, anchors, labels)
        return _mse_map(features, anchors, labels)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        features, anchors, labels = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        if _pieces(features, SLICE_ABOVE) == 1:  # one piece: it is the gradient
            return _new_mse_grad(features, anchors, labels, grad_out).to(features.dtype), None, None
        grad = torch.zeros_like(features)
        _add_sliced_mse_grad(grad, features, anchors, labels, grad_out, SLICE_ABOVE)
        return grad, None, None


class _HeadInput(torch.autograd.Function):
    """Identity on the head's input; its backward adds the pulls' deferred gradients.

    With float32 (or float64) features that are contiguous, the pull's gradient is formed in
    one new tensor and the head's is added into it: two maps at once, as in the backward of the
    layer below. Half features (whose pull gradient is float32) or another memory layout get a
    copy of the head's gradient, and the pull's is added slice by slice.
    """

    @staticmethod
    def forward(ctx, features: torch.Tensor, pending: list) -> torch.Tensor:
        ctx.save_for_backward(features)
        ctx.pending = pending
        return features.view_as(features)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (features,) = ctx.saved_tensors
        owned = False  # autograd may hand the same gradient to others: never write into theirs
        while ctx.pending:
            anchors, labels, grad_out = ctx.pending.pop(0)
            if not owned and features.is_contiguous() and anchors.dtype == features.dtype:
                grad = _new_mse_grad(features, anchors, labels, grad_out).add_(grad)
            else:
                grad = grad if owned else grad.clone()
                _add_sliced_mse_grad(grad, features, anchors, labels, grad_out,
                                     DEFERRED_SLICE_ABOVE)
            owned = True
        return grad, None


class _DeferredMSE(torch.autograd.Function):
    """The MSE pull on a head's routed input: its backward hands the output gradient to the
    :class:`_HeadInput` node that made the input and returns none itself."""

    @staticmethod
    def forward(ctx, head_input: torch.Tensor, anchors: torch.Tensor, labels: torch.Tensor,
                pending: list) -> torch.Tensor:
        ctx.save_for_backward(anchors, labels)
        ctx.pending = pending
        return _mse_map(head_input, anchors, labels)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[None, None, None, None]:
        anchors, labels = ctx.saved_tensors
        ctx.pending.append((anchors, labels, grad_out))
        return None, None, None, None


class HeadRoute:
    """A head's input ``features`` and ``head_input``, the same values through an identity node
    that adds the gradient of every MSE pull taken on ``features`` inside
    :func:`pulls_through_heads` to the head's gradient, instead of beside it (see the module
    docstring). Gradients reaching ``features`` are unchanged; only a hook on the head itself,
    which sees ``head_input``, sees the head's gradient without the pull's.
    """

    def __init__(self, features: torch.Tensor) -> None:
        self.features = features
        self.pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.head_input = _HeadInput.apply(features, self.pending)

    @staticmethod
    def applies_to(value: object) -> bool:
        """Whether a head input is worth routing: a floating tensor that autograd tracks, in
        eager mode (a compiled graph plans its own memory)."""
        return (isinstance(value, torch.Tensor) and value.is_floating_point()
                and value.requires_grad and torch.is_grad_enabled()
                and not torch.compiler.is_compiling())


_ROUTES: ContextVar[tuple[HeadRoute, ...]] = ContextVar("sar_head_routes", default=())


@contextmanager
def pulls_through_heads(routes: Sequence[HeadRoute]) -> Iterator[None]:
    """Within this block an MSE pull on a routed ``features`` tensor defers its gradient."""
    if not routes:  # nothing routed (e.g. while compiling, where a ContextVar cannot be set)
        yield
        return
    token = _ROUTES.set(tuple(routes))
    try:
        yield
    finally:
        _ROUTES.reset(token)


def _route_of(features: torch.Tensor) -> HeadRoute | None:
    if torch.compiler.is_compiling():  # nothing is routed in a compiled graph
        return None
    return next((route for route in _ROUTES.get() if route.features is features), None)


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
        for half features). The gradient reaching ``features`` has their dtype. Inside
        :func:`pulls_through_heads`, for a routed ``features``, the MSE gradient is added to
        the head's in its :class:`HeadRoute` (same values, no feature-sized buffer).
    """
    anchors = anchors.detach()
    if distance == "mse":
        route = _route_of(features)
        if route is not None:
            return _DeferredMSE.apply(route.head_input, anchors, labels, route.pending)
        return _PerPositionMSE.apply(features, anchors, labels)
    target = _target(anchors, labels)
    return 1.0 - F.cosine_similarity(features.to(target.dtype), target, dim=1)
