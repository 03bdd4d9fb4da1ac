"""Semantic Anchor Regularization (Ge et al., AAAI 2024) as a plug-and-play ``nn.Module``.

Defaults reproduce the authors' code (see ``SAR_SPEC``): Gaussian anchors, a three-block
projector, a classifier-aware anchor cross-entropy weighted towards hard anchors, a gate
that opens once every anchor is confidently classified, an EMA of the projected anchors
(the *semantic anchors*) and a one-way MSE pull of features toward the anchor of their label.

What differs from the original is engineering only: the classifier is handed in explicitly,
the same loss keys come back on every step, the gate and the EMA stay on the device (no host
sync), and the anchor branch, the EMA and the pull compute in float32 (or float64) under
autocast and in a model converted with ``.half()`` / ``.bfloat16()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import chain

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .anchors import make_anchors
from .labels import labels_at_feature_resolution
from .pull import per_position_distance

Classifier = nn.Linear | nn.Conv2d | Callable[[torch.Tensor], torch.Tensor]
PULL_DISTANCES = ("mse", "cosine")
PULL_REDUCTIONS = ("pixel", "class")
PROJECTOR_INITS = ("authors", "torch")
VALIDATE_MODES = ("first", "always", "never")
# with validate="first", the value checks (host syncs) run on this many calls, then stop
VALIDATE_FIRST_CALLS = 10
LOSS_KEYS = ("anchor_ce", "pull", "loss", "gate_passed", "gate_opened", "anchor_accuracy",
             "min_anchor_prob")


def _low_precision(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() and tensor.element_size() < 4


class Float32Module(nn.Module):
    """A module whose floating parameters and buffers never drop below float32.

    ``.half()``, ``.bfloat16()``, ``.to(torch.float16)`` and the same calls on a model that
    holds this module still move it between devices but keep its dtype (float32, or float64
    after ``.double()``). A regulariser's state must not round: in fp16 the ``1e-9`` of the
    anchor-CE weights underflows to 0, and in bf16 ``0.999 * x + 0.001 * y`` rounds back to x,
    so the EMA would stop moving.
    """

    def _apply(
        self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True
    ) -> Float32Module:
        def keep_precision(tensor: torch.Tensor) -> torch.Tensor:
            converted = fn(tensor)
            if _low_precision(converted) and not _low_precision(tensor):
                return tensor.to(converted.device)  # follow the device, not the dtype
            return converted

        return super()._apply(keep_precision, recurse)


def check_labels(labels: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    """Raise ``ValueError`` unless every label is a class id or ``ignore_index`` (host sync)."""
    in_range = (labels >= 0) & (labels < num_classes) | (labels == ignore_index)
    if not bool(in_range.all()):
        bad = labels[~in_range].unique()[:10].tolist()
        raise ValueError(
            f"labels must lie in [0, {num_classes}) or equal ignore_index={ignore_index};"
            f" found {bad}"
        )


def check_class_count(num_classes: int, ignore_index: int) -> None:
    """Refuse fewer than two classes and an ``ignore_index`` that is a class id."""
    if num_classes < 2:
        raise ValueError(
            f"num_classes must be >= 2, got {num_classes}: for a binary task use two classes"
            " (background and object) with cross-entropy, e.g. an smp model with classes=2 and"
            " masks of 0/1, instead of one logit with a sigmoid"
        )
    if 0 <= ignore_index < num_classes:
        raise ValueError(
            f"ignore_index={ignore_index} is a real class id with num_classes={num_classes};"
            " pass an ignore_index outside [0, num_classes), e.g. -100"
        )


def build_projector(dim: int, init: str = "authors") -> nn.Sequential:
    """The anchor projector: three (Linear, BatchNorm, ReLU) blocks, ``(C, D) -> (C, D)``.

    BatchNorm treats the C anchor rows as its batch; the last ReLU makes the projected anchors
    non-negative like the post-ReLU features they meet. The third Linear has no bias (it is a
    1x1 conv followed by BN in the original, where a bias would be cancelled anyway).

    ``init="authors"`` starts the third Linear as the authors' code starts its 1x1 conv (mmcv's
    ``ConvModule``: Kaiming-normal, fan-out, ReLU gain, std ``sqrt(2 / D)``); ``"torch"`` keeps
    PyTorch's default ``Linear`` init (std ``1 / sqrt(3 D)``, about 2.4x smaller), which every
    result row committed before this option existed was trained with. The forward output is
    the same either way up to BatchNorm's eps (BN removes the weights' scale); what differs is
    the effective step size of SGD on that layer. The first two blocks are ``nn.Linear`` in the
    original too, with PyTorch's default init.
    """
    if init not in PROJECTOR_INITS:
        raise ValueError(f"projector_init must be one of {PROJECTOR_INITS}, got {init!r}")
    blocks: list[nn.Module] = []
    for bias in (True, True, False):
        blocks += [nn.Linear(dim, dim, bias=bias), nn.BatchNorm1d(dim), nn.ReLU(inplace=True)]
    if init == "authors":
        nn.init.kaiming_normal_(blocks[6].weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(*blocks)


class SemanticAnchorRegularizer(Float32Module):
    """Pull features toward class anchors that the task's own classifier has learnt to classify.

    Args:
        num_classes: C, the number of classes of the task head.
        feat_dim: D, the channel width of the feature that enters the classifier.
        trade_off: weight of the pull loss (0.1 in the paper).
        trade_off_ce: weight of the classifier-aware anchor cross-entropy (1.0).
        filter_conf: anchors whose own-class probability exceeds this are dropped from the
            anchor CE (0.9); a value >= 1 switches the filter off.
        update_conf: the gate opens on a step where every anchor is argmax-correct and has
            probability above this (0.8).
        momentum: EMA momentum of the semantic anchors (0.999).
        anchor_init: ``"gaussian"`` (original), ``"orthogonal"``, ``"etf"``, ``"hypersphere"``,
            or a ``(C, D)`` tensor.
        anchor_seed: seed of the anchor generator; anchors are identical on every process.
        distance: pull distance, ``"mse"`` (original: mean over D of squared error) or
            ``"cosine"`` (1 - cosine similarity).
        detach_weights: detach the hard-anchor weights of the anchor CE. The original does not,
            so the gradient on unfiltered anchor i is ``(2 a_i - L) / sum a`` with ``L`` the
            weighted CE: an anchor easier than ``L / 2`` is pushed to be *less* confident.
        pull_reduction: how the per-position pull distances become one number.
            ``"pixel"`` (original): the mean over valid positions (images, for
            classification), so in segmentation the pull acts mostly on the most frequent
            class, usually background. ``"class"``: the mean over the valid positions of each
            class present in the batch, then the mean over those classes, so every present
            class pulls with the same weight, a rare one as much as background.
        use_gate: if False the semantic anchors are updated and the pull applied on every step.
        pull_after_open: if True the pull stays on once the gate has opened, instead of only on
            steps where the gate passes (the original).
        ignore_index: label value excluded from the pull (255).
        validate: when the value checks run. The shape, dtype and width checks run on every
            call (they read no tensor values). The value checks (every label is a class id or
            ``ignore_index``; every feature is finite) read tensors back to the host, which
            stalls a GPU's launch queue, so ``"first"`` (default) runs them on the first
            :data:`VALIDATE_FIRST_CALLS` calls of this module (counted from construction or
            loading; catching a wrong ignore index, masks scaled by ``ToTensor`` or a wrong
            ``num_classes`` at once), ``"always"`` on every call, ``"never"`` (or ``False``)
            not at all. ``True`` means ``"always"``. Later, a bad label still stops training
            through the task loss (``cross_entropy`` refuses out-of-range targets) and a
            non-finite feature through the non-finite loss check of :func:`sar.train.fit`.
            Inside ``torch.compile`` the value checks are skipped (they would break the graph).
        projector_init: ``"authors"`` (default: the third projector block starts as in the
            authors' code) or ``"torch"`` (PyTorch's default; the committed result rows); see
            :func:`build_projector`.

    Shapes:
        features: ``(B, D)`` for classification or ``(B, D, H, W)`` for segmentation.
        labels: ``(B,)``, or ``(B, h, w)`` / ``(B, 1, h, w)`` at any resolution; resized to
            ``(H, W)`` by nearest neighbour.
        classifier: ``nn.Linear(D, C)``, ``nn.Conv2d(D, C, k)`` with odd k and padding ``k // 2``
            (applied to a 1x1 map), another module, or a callable mapping ``(C, D) -> (C, C)``
            logits. A module runs with its weights cast to the regulariser's dtype, so a half
            classifier gives float32 anchor logits (gradients still reach its half weights); a
            plain callable is given float32 (C, D) anchors.

    Dtypes: features, and the classifier's weights, may be float16, bfloat16, float32 or
    float64. The anchors, projector, EMA, gate and losses stay float32 whatever the module is
    converted to (see :class:`Float32Module`; ``.double()`` is kept), so the returned losses
    are float32 and ``task_loss + out["loss"]`` is float32 even when the task loss is half.

    Returns:
        A dict with the same keys on every call (:data:`LOSS_KEYS`), all 0-dim tensors:
        ``anchor_ce`` and ``pull`` (differentiable), ``loss`` (their sum, add it to the task
        loss), and for logging ``gate_passed``/``gate_opened`` (0 or 1), ``anchor_accuracy`` and
        ``min_anchor_prob``. The per-anchor values behind the last two (each anchor's
        probability of its own class and its hard-anchor weight, shape ``(C,)``) come from
        :meth:`anchor_diagnostics`, which changes no state.

    State (saved in ``state_dict``): buffer ``anchors`` (C, D), module ``projector``, buffer
    ``semantic_anchors`` (C, D, the EMA), buffer ``gate_opened`` (bool) and ``num_updates``.
    The EMA and gate are updated only in training mode.
    """

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        *,
        trade_off: float = 0.1,
        trade_off_ce: float = 1.0,
        filter_conf: float = 0.9,
        update_conf: float = 0.8,
        momentum: float = 0.999,
        anchor_init: str | torch.Tensor = "gaussian",
        anchor_seed: int = 0,
        distance: str = "mse",
        detach_weights: bool = False,
        pull_reduction: str = "pixel",
        use_gate: bool = True,
        pull_after_open: bool = False,
        ignore_index: int = 255,
        validate: bool | str = "first",
        projector_init: str = "authors",
    ) -> None:
        super().__init__()
        check_class_count(num_classes, ignore_index)
        if distance not in PULL_DISTANCES:
            raise ValueError(f"distance must be one of {PULL_DISTANCES}, got {distance!r}")
        if pull_reduction not in PULL_REDUCTIONS:
            raise ValueError(
                f"pull_reduction must be one of {PULL_REDUCTIONS}, got {pull_reduction!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not 0.0 < update_conf < 1.0:
            raise ValueError(f"update_conf must be in (0, 1), got {update_conf}")
        if filter_conf <= 0.0:
            raise ValueError(f"filter_conf must be > 0, got {filter_conf}")
        self.num_classes, self.feat_dim = num_classes, feat_dim
        self.trade_off, self.trade_off_ce = trade_off, trade_off_ce
        self.filter_conf, self.update_conf, self.momentum = filter_conf, update_conf, momentum
        self.distance, self.detach_weights = distance, detach_weights
        self.pull_reduction = pull_reduction
        self.use_gate, self.pull_after_open = use_gate, pull_after_open
        self.ignore_index = ignore_index
        self.validate = _validate_mode(validate)
        self.update_state = True  # False: no gate or EMA update (see no_anchor_update)
        self._value_checks_done = 0

        anchors = make_anchors(anchor_init, num_classes, feat_dim, anchor_seed)
        self.register_buffer("anchors", anchors)
        self.projector = build_projector(feat_dim, projector_init)
        self.register_buffer("semantic_anchors", torch.zeros(num_classes, feat_dim))
        self.register_buffer("gate_opened", torch.zeros((), dtype=torch.bool))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def first_target_weight(self) -> float:
        """The weight the projected anchors of the gate's first opening still have in the
        semantic anchors: ``momentum ** (num_updates - 1)`` (0 before the gate opens)."""
        updates = int(self.num_updates)
        return self.momentum ** (updates - 1) if updates else 0.0

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, feat_dim={self.feat_dim}, trade_off={self.trade_off},"
            f" trade_off_ce={self.trade_off_ce}, filter_conf={self.filter_conf},"
            f" update_conf={self.update_conf}, momentum={self.momentum},"
            f" distance={self.distance!r}, pull_reduction={self.pull_reduction!r}"
        )

    # ----------------------------------------------------------------------------- forward
    def forward(
        self, features: torch.Tensor, labels: torch.Tensor, classifier: Classifier
    ) -> dict[str, torch.Tensor]:
        labels = labels_at_feature_resolution(features, labels, self.feat_dim)
        if self._value_checks_due():
            self._check_values(features, labels)

        # the anchor branch is tiny and drives a hard gate: keep it in float32 under autocast
        with torch.autocast(device_type=features.device.type, enabled=False):
            projected = self.projector(self.anchors)
            logits = self._classify(classifier, projected)
            anchor_ce, per_anchor_ce, correct = self._anchor_cross_entropy(logits)

        passed = self._gate(per_anchor_ce, correct)
        if self.training and self.update_state:
            self._update_semantic_anchors(projected.detach(), passed)
        pull_on = self.gate_opened if self.pull_after_open else passed & self.gate_opened
        pull = self.trade_off * torch.where(pull_on, self._pull(features, labels), 0.0)
        return {
            "anchor_ce": anchor_ce,
            "pull": pull,
            "loss": anchor_ce + pull,
            "gate_passed": passed.float(),
            "gate_opened": self.gate_opened.float(),
            "anchor_accuracy": correct.float().mean(),
            "min_anchor_prob": torch.exp(-per_anchor_ce.detach().max()),
        }

    # ------------------------------------------------------------------------ anchor branch
    def _classify(self, classifier: Classifier, projected: torch.Tensor) -> torch.Tensor:
        """Logits ``(C, C)``, in the projector's dtype, of the classifier on the anchors."""
        if isinstance(classifier, nn.Conv2d):
            centred = classifier.padding == "same" or classifier.padding == tuple(
                k // 2 for k in classifier.kernel_size)
            if not centred or any(k % 2 == 0 for k in classifier.kernel_size):
                raise ValueError(
                    f"the classifier conv (kernel {classifier.kernel_size}, padding"
                    f" {classifier.padding}) cannot map a 1x1 anchor to 1x1 logits;"
                    " SAR needs an odd kernel with padding = kernel_size // 2"
                )
            logits = _run_in_dtype(classifier, projected[:, :, None, None]).flatten(1)
        elif isinstance(classifier, nn.Module):
            logits = _run_in_dtype(classifier, projected)
        else:
            logits = classifier(projected)
        logits = _as(logits, projected.dtype)  # a callable may answer in its own dtype
        if logits.shape != (self.num_classes, self.num_classes):
            raise ValueError(
                f"the classifier must map (C, D) = {tuple(projected.shape)} anchors to"
                f" (C, C) = ({self.num_classes}, {self.num_classes}) logits, got"
                f" {tuple(logits.shape)}: does it output num_classes={self.num_classes} classes?"
            )
        return logits

    def _anchor_cross_entropy(
        self, logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Hard-anchor-weighted CE, per-anchor CE ``(C,)`` and argmax correctness ``(C,)``.

        With ``a_i = -log p'_i`` (``p'_i = 1`` for anchors above ``filter_conf``) the weights
        ``w = log p' / (sum log p' + 1e-9)`` give ``sum_i CE_i w_i = sum a_i^2 / sum a_i``:
        confident anchors drop out and hard ones count more.
        """
        target = torch.arange(self.num_classes, device=logits.device)
        per_anchor_ce = F.cross_entropy(logits, target, reduction="none")
        weights = self._anchor_weights(per_anchor_ce)
        if self.detach_weights:
            weights = weights.detach()
        anchor_ce = self.trade_off_ce * (per_anchor_ce * weights).sum()
        correct = logits.detach().argmax(dim=1) == target
        return anchor_ce, per_anchor_ce, correct

    def _anchor_weights(self, per_anchor_ce: torch.Tensor) -> torch.Tensor:
        """The hard-anchor weights ``w = log p' / (sum log p' + 1e-9)``, ``(C,)``."""
        # log p' computed from the CE directly: log(exp(-ce)) would underflow for hard anchors
        filtered_log_p = torch.where(per_anchor_ce < -math.log(self.filter_conf), 0.0,
                                     -per_anchor_ce)
        return filtered_log_p / (filtered_log_p.sum() + 1e-9)

    @torch.no_grad()
    def anchor_diagnostics(self, classifier: Classifier) -> dict[str, torch.Tensor]:
        """The anchor branch as a forward call would compute it now, without changing state.

        Args:
            classifier: the task's classifier, as handed to :meth:`forward`.

        Returns:
            Detached tensors on the anchors' device, float32 (float64 after ``.double()``):
            ``anchor_probs`` ``(C,)``: ``p_i``, the softmax probability the classifier gives
            projected anchor ``i`` for its own class i (the gate needs every ``p_i`` above
            ``update_conf``; ``min_anchor_prob`` of the loss dict is their minimum);
            ``anchor_weights`` ``(C,)``: the hard-anchor weights ``w_i`` of the anchor CE (0
            for anchors above ``filter_conf``; ``anchor_ce = trade_off_ce * sum_i w_i *
            (-log p_i)``); ``anchor_correct`` ``(C,)`` bool: anchor i is argmax-classified as
            i; ``projected`` ``(C, D)``: the projected anchors ``z``.

        As in :meth:`forward`, the projector's BatchNorm normalises with the batch statistics
        of the C anchors in training mode and with its running statistics in eval mode; its
        running statistics are updated on copies that are thrown away, so the module's state
        (``state_dict``, gate, EMA) is exactly as before, and the next forward call is
        unaffected. The classifier is run as forward runs it (a ``Linear`` or ``Conv2d`` head
        holds no state). Cost: one projector pass on C rows, no autograd graph.
        """
        scratch = {name: buffer.clone() for name, buffer in self.projector.named_buffers()}
        with torch.autocast(device_type=self.anchors.device.type, enabled=False):
            projected = functional_call(self.projector, scratch, (self.anchors,))
            logits = self._classify(classifier, projected)
        target = torch.arange(self.num_classes, device=logits.device)
        per_anchor_ce = F.cross_entropy(logits, target, reduction="none")
        return {
            "anchor_probs": torch.exp(-per_anchor_ce),
            "anchor_weights": self._anchor_weights(per_anchor_ce),
            "anchor_correct": logits.argmax(dim=1) == target,
            "projected": projected,
        }

    def _gate(self, per_anchor_ce: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
        """0-dim bool: every anchor argmax-correct and above ``update_conf`` (on the device)."""
        if not self.use_gate:
            return torch.ones((), dtype=torch.bool, device=correct.device)
        confident = per_anchor_ce.detach() < -math.log(self.update_conf)
        return (correct & confident).all()

    @torch.no_grad()
    def _update_semantic_anchors(self, projected: torch.Tensor, passed: torch.Tensor) -> None:
        """First passing step copies the projected anchors; later ones blend them in (EMA).
        Two ``where``s on the device, no branch on the gate's value (no host sync)."""
        blended = self.momentum * self.semantic_anchors + (1.0 - self.momentum) * projected
        updated = torch.where(self.gate_opened, blended, projected)
        self.semantic_anchors.copy_(torch.where(passed, updated, self.semantic_anchors))
        self.gate_opened |= passed
        self.num_updates += passed

    # ---------------------------------------------------------------------------- the pull
    def _pull(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean distance of the labelled features to their (detached) semantic anchors: over
        positions, or per class then over classes (see ``pull_reduction``). The per-position
        distances come from :func:`sar.pull.per_position_distance`, which keeps no
        feature-sized temporary for the backward pass."""
        valid = labels != self.ignore_index
        per_position = per_position_distance(
            features, self.semantic_anchors, torch.where(valid, labels, 0), self.distance)
        if self.pull_reduction == "class":
            return self._class_mean(per_position, labels, valid)
        # an all-ignore batch gives 0, not NaN
        return (per_position * valid).sum() / valid.sum().clamp(min=1)

    def _class_mean(
        self, per_position: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """Mean over the classes present of each class's mean ``per_position`` value.

        ``per_position`` float ``(B, [H, W])``; ``labels`` int64 and ``valid`` bool alike.
        Ignored positions go to an extra bin that is dropped; a class without a valid position
        is left out of the mean; an all-ignore batch gives 0.
        """
        bins = torch.where(valid, labels, self.num_classes).flatten()
        # scatter_add, not a one-hot matmul: O(positions) memory even with 150 classes
        sums = per_position.new_zeros(self.num_classes + 1).scatter_add(
            0, bins, per_position.flatten())[:-1]
        counts = torch.bincount(bins, minlength=self.num_classes + 1)[:-1]
        per_class = sums / counts.clamp(min=1).to(sums.dtype)
        return per_class.sum() / (counts > 0).sum().clamp(min=1)

    # -------------------------------------------------------------------------- validation
    def _value_checks_due(self) -> bool:
        """Whether this call runs the value checks (see ``validate``); counts the call."""
        if self.validate == "never" or torch.compiler.is_compiling():
            return False
        if self.validate == "always":
            return True
        self._value_checks_done += 1
        return self._value_checks_done <= VALIDATE_FIRST_CALLS

    def _check_values(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        check_labels(labels, self.num_classes, self.ignore_index)
        if not bool(torch.isfinite(features).all()):
            raise FloatingPointError(
                "features contain NaN or Inf: the network diverged or the input has non-finite"
                " values (check the learning rate and the data)"
            )


def _validate_mode(validate: bool | str) -> str:
    if validate is True or validate is False:
        return "always" if validate else "never"
    if validate not in VALIDATE_MODES:
        raise ValueError(f"validate must be one of {VALIDATE_MODES} or a bool, got {validate!r}")
    return validate


def _run_in_dtype(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """``module(inputs)`` with its floating weights cast to ``inputs.dtype``.

    A half or bf16 classifier thus gives float32 anchor logits; the casts are differentiable,
    so the anchor CE still trains the module's own (half) weights.
    """
    if type(module) in (nn.Linear, nn.Conv2d):
        # weights read as attributes: a DataParallel replica holds them as plain attributes,
        # so named_parameters() would not see them
        weight, bias = _as(module.weight, inputs.dtype), _as(module.bias, inputs.dtype)
        if isinstance(module, nn.Linear):
            return F.linear(inputs, weight, bias)
        return module._conv_forward(inputs, weight, bias)  # Conv2d.forward, given weights
    tensors = chain(module.named_parameters(), module.named_buffers())
    cast = {name: t.to(inputs.dtype) for name, t in tensors
            if t.is_floating_point() and t.dtype != inputs.dtype}
    return functional_call(module, cast, (inputs,)) if cast else module(inputs)


def _as(tensor: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``tensor`` in ``dtype``, without an op where it already is (each op is a launch)."""
    return tensor if tensor is None or tensor.dtype == dtype else tensor.to(dtype)


@contextmanager
def no_anchor_update(model: nn.Module) -> Iterator[None]:
    """Within this block the SAR regularisers in ``model`` do not advance their gate and EMA.

    For gradient accumulation (and two-pass optimisers such as SAM), where several forward
    calls make one optimiser step. The projected anchors, and so the gate, are identical in
    all of them (the projector has not changed and its BatchNorm normalises over the same C
    anchors), but each training call would blend them into the EMA again: with 4 micro-batches
    a momentum of 0.9 would act as 0.9 ** 4 = 0.656. The authors' code updates once per
    iteration; so update on the first micro-batch of each step and run the others here::

        for i, (x, y) in enumerate(micro_batches):
            with no_anchor_update(model) if i else nullcontext():
                logits, losses = model(x, y)
                ((criterion(logits, y) + losses["loss"]) / len(micro_batches)).backward()
        optimizer.step()

    The pull and the anchor CE still run (and still use the semantic anchors of this step's
    update). :func:`sar.train.fit` does this with ``accumulate=``. Other regularisers (the
    prototype EMA of class means, center loss) learn from each batch's features and keep
    updating on every call.
    """
    regularizers = [m for m in model.modules() if isinstance(m, SemanticAnchorRegularizer)]
    before = [reg.update_state for reg in regularizers]
    for reg in regularizers:
        reg.update_state = False
    try:
        yield
    finally:
        for reg, state in zip(regularizers, before, strict=True):
            reg.update_state = state
