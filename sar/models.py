"""Wrap segmentation and classification models so they train with SAR (or a baseline).

The wrappers never reimplement a model's forward: they tap the input of its head with a
forward pre-hook. So any smp architecture (Unet, FPN, DeepLabV3+, ...) or torchvision / timm
classifier works unchanged, and in eval mode the wrapper *is* the wrapped model: same call,
same logits, no hook, no extra cost. The head is held by its dotted name and looked up at
every call, so a replaced head is found and ``nn.DataParallel`` replicas use their own.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from .heads import find_heads, head_layer, head_names, image_labels, one_per_head
from .networks import SmallCNN, build_classifier, build_smp_model  # noqa: F401 (the API)
from .pull import HeadRoute, pulls_through_heads
from .regularizer import SemanticAnchorRegularizer


class TrainOutput(NamedTuple):
    """What a wrapped model returns in training mode when given labels."""

    logits: torch.Tensor
    losses: dict[str, torch.Tensor]


class _InputTap:
    """The first positional input of each head's forward, recorded by persistent pre-hooks.

    A hook is registered once per head (again only when a head was replaced), not at every
    call, so ``torch.compile(..., fullgraph=True)`` can trace it. It records only while a call
    has armed its head, by putting the head in ``inputs``: a plain forward in eval mode records
    nothing. The dict is keyed by the head module, so ``nn.DataParallel`` replicas, which share
    the original heads' hooks and this dict, each find their own input.
    """

    def __init__(self) -> None:
        self.inputs: dict[nn.Module, Any] = {}
        self.hook_ids: tuple[int, ...] = ()

    def _record(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if module not in self.inputs:
            return None
        if not HeadRoute.applies_to(args[0]):
            self.inputs[module] = args[0]
            return None
        # the head gets the features through a HeadRoute, so the pull's gradient for them is
        # added into the head's instead of waiting beside it (sar.pull)
        route = self.inputs[module] = HeadRoute(args[0])
        return (route.head_input, *args[1:])

    def attach(self, head: nn.Module) -> None:
        """Register the hook on ``head`` unless it is there already (a new head gets it)."""
        if not any(hook_id in head._forward_pre_hooks for hook_id in self.hook_ids):
            self.hook_ids += (head.register_forward_pre_hook(self._record).id,)

    def arm(self, head: nn.Module) -> None:
        self.inputs[head] = None

    def take(self, head: nn.Module) -> Any:
        """The head's input in the call just made, or its :class:`~sar.pull.HeadRoute`."""
        return self.inputs.pop(head, None)


def _name_in(model: nn.Module, module: nn.Module | str, role: str) -> str:
    """The dotted name of ``module`` inside ``model`` (a name is checked and returned)."""
    if isinstance(module, str):
        _submodule(model, module, role)
        return module
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise ValueError(
        f"the {role} ({type(module).__name__}) is not a submodule of the model: pass a layer of"
        " the model itself, or its dotted name (e.g. 'classifier.1'), not a copy"
    )


def _find(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _submodule(model: nn.Module, name: str, role: str) -> nn.Module:
    module = _find(model, name)
    if module is None:
        raise LookupError(
            f"{type(model).__name__} has no submodule {name!r} (the {role}); if the head was"
            " renamed or removed after wrapping, wrap the model again after changing its head"
        )
    return module


def _layer_shape(layer: nn.Module) -> tuple[int | None, int | None]:
    """(inputs, outputs) of a Linear- or Conv-like layer, else (None, None)."""
    return (getattr(layer, "in_features", getattr(layer, "in_channels", None)),
            getattr(layer, "out_features", getattr(layer, "out_channels", None)))


class RegularizedModel(nn.Module):
    """A model whose head input is regularised during training.

    Args:
        model: the network, left untouched.
        head: the submodule whose input is the regularised feature, or its dotted name in
            ``model`` (e.g. ``"classifier.1"``).
        classifier: the layer of the head that produces class logits (module or dotted name);
            handed to the regulariser so the anchor CE trains it (for a plain linear head, the
            head itself).
        regularizer: a module with ``forward(features, labels, classifier) -> dict`` holding a
            ``"loss"`` key: :class:`SemanticAnchorRegularizer` or one of ``sar.baselines``.

    ``forward(x)`` in eval mode, or without labels, returns ``model(x)`` exactly.
    ``forward(x, labels)`` in training mode returns ``TrainOutput(logits, losses)``.

    The head and classifier are kept as names and looked up in ``model`` at every call, so a
    head replaced under the same name is used, and under ``nn.DataParallel`` each replica taps
    and classifies with its own copy.

    Raises:
        ValueError: at construction, if ``head`` or ``classifier`` is not a submodule of
            ``model``.
        LookupError: if a named submodule no longer exists.
        RuntimeError: in a call, if the head did not run during ``model(x)`` (bypassed, or
            replaced under another name), or if the classifier's shape changed since wrapping.
    """

    def __init__(
        self,
        model: nn.Module,
        head: nn.Module | str,
        classifier: nn.Module | str,
        regularizer: nn.Module,
    ) -> None:
        super().__init__()
        self.model, self.regularizer = model, regularizer
        # names, not module references: a reference outlives a replaced head, and a
        # DataParallel replica would share the original's head (its __dict__ is copied)
        self.head_name = _name_in(model, head, "head")
        self.classifier_name = _name_in(model, classifier, "classifier")
        self._classifier_shape = _layer_shape(self.classifier)
        self._tap = _InputTap()
        self._tap.attach(self.head)

    @property
    def head(self) -> nn.Module:
        """The submodule whose input is regularised, looked up in ``model`` now."""
        return _submodule(self.model, self.head_name, "head")

    @property
    def classifier(self) -> nn.Module:
        """The layer that produces the logits, looked up in ``model`` now."""
        return _submodule(self.model, self.classifier_name, "classifier")

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor | TrainOutput:
        if not self.training or labels is None:
            return self.model(x)
        classifier = self._unchanged_classifier()
        (features,), logits, routes = self._tapped_forward(x, (self.head_name,))
        with pulls_through_heads(routes):
            return TrainOutput(logits, self.regularizer(features, labels, classifier))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's input feature (``(B, D)`` or ``(B, D, H, W)``) and the model's output."""
        (features,), logits, _ = self._tapped_forward(x, (self.head_name,))
        return features, logits

    def _tapped_forward(
        self, x: torch.Tensor, head_names: Sequence[str]
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, tuple[HeadRoute, ...]]:
        """``model(x)``, the input of each named head in that call, and the routes by which
        the heads received them (for :func:`~sar.pull.pulls_through_heads`)."""
        heads = [_submodule(self.model, name, "head") for name in head_names]
        for head in heads:
            self._tap.attach(head)
            self._tap.arm(head)
        try:
            logits = self.model(x)
        finally:
            taken = tuple(self._tap.take(head) for head in heads)
        routes = tuple(item for item in taken if isinstance(item, HeadRoute))
        features = tuple(item.features if isinstance(item, HeadRoute) else item
                         for item in taken)
        silent = [f"{name!r} ({type(head).__name__})" for name, head, feature
                  in zip(head_names, heads, features, strict=True) if feature is None]
        if silent:
            raise RuntimeError(
                f"the head {' and '.join(silent)} did not run in the model's forward, so there"
                " is no feature to regularise: was the head replaced under another name, or is"
                " it bypassed? Wrap the model after changing its head (e.g. after timm's"
                " reset_classifier), or name the layer that runs"
            )
        return features, logits, routes

    def _unchanged_classifier(self) -> nn.Module:
        return self._unchanged(self.classifier_name, self._classifier_shape)

    def _unchanged(self, name: str, was: tuple[int | None, int | None]) -> nn.Module:
        """The layer ``name``, looked up now, if it still maps ``was`` = (inputs, outputs)."""
        layer = _submodule(self.model, name, "classifier")
        now = _layer_shape(layer)
        if now != was:
            raise RuntimeError(
                f"the classifier {name!r} changed after wrapping: it mapped"
                f" {was[0]} -> {was[1]} and now maps {now[0]} -> {now[1]}, but the regulariser"
                " was built for the old one. Wrap the model again after changing its head"
            )
        return layer

    def bare_state_dict(self) -> dict[str, torch.Tensor]:
        """The wrapped model's own ``state_dict``, without the regulariser (for deployment).

        ``bare_model.load_state_dict(wrapper.bare_state_dict())`` loads with ``strict=True``;
        the keys lose the wrapper's ``model.`` prefix. See :func:`bare_state_dict` for a
        checkpoint file.
        """
        return self.model.state_dict()


class SARSegmentationModel(RegularizedModel):
    """An smp segmentation model trained with SAR on its decoder output.

    The regularised feature is the decoder output (the map entering ``segmentation_head``,
    ``(B, D, H/s, W/s)``) and the classifier is the head's conv, so the anchor CE trains the
    very layer that segments. Labels ``(B, H, W)`` are nearest-resized to the decoder map.

    For DPT, whose ``segmentation_head.head`` is ``Sequential(Conv2d 3x3, BN, ReLU, Dropout,
    Conv2d 1x1)``, the regularised map is the input of that final 1x1 conv, which is the
    classifier (as in mmsegmentation, where SAR taps the feature entering ``conv_seg``).

    Args:
        model: an smp model (anything with ``segmentation_head[0]`` a ``Conv2d``, or DPT).
        regularizer: defaults to ``SemanticAnchorRegularizer(C, D, **sar_options)`` with C and
            D read from the head.

    Raises:
        TypeError: for a model without an smp-style ``segmentation_head``.
        ValueError: for an smp model built with ``aux_params`` (its ``(mask, label)`` output
            is not supported), or, with SAR, ``classes=1`` (use ``classes=2``).
    """

    def __init__(
        self, model: nn.Module, regularizer: nn.Module | None = None, **sar_options: Any
    ) -> None:
        head_name, classifier_name = smp_head_names(model)
        conv = model.get_submodule(classifier_name)
        if getattr(model, "classification_head", None) is not None:
            raise ValueError(
                "this smp model was built with aux_params, so it returns (mask, label) and"
                " sar.train.fit cannot train it: build it without aux_params, or wrap it in"
                " RegularizedModel(model, 'segmentation_head', 'segmentation_head.0', regularizer)"
                " and write your own loop (logits is then the (mask, label) tuple)"
            )
        if regularizer is None:
            regularizer = SemanticAnchorRegularizer(conv.out_channels, conv.in_channels,
                                                    **sar_options)
        elif sar_options:
            raise TypeError("pass SAR options or a regularizer, not both")
        super().__init__(model, head_name, classifier_name, regularizer)


def smp_head_names(model: nn.Module) -> tuple[str, str]:
    """(head, classifier) names of an smp model: its ``segmentation_head`` and the head's first
    conv, or, for DPT (``segmentation_head.head = Sequential(Conv, BN, ReLU, Dropout, Conv)``),
    the final conv for both (its input, after the Dropout, is the regularised map)."""
    head = getattr(model, "segmentation_head", None)
    if isinstance(head, nn.Sequential) and len(head) and isinstance(head[0], nn.Conv2d):
        return "segmentation_head", "segmentation_head.0"
    block = getattr(head, "head", None)
    if isinstance(block, nn.Sequential) and len(block) and isinstance(block[-1], nn.Conv2d):
        name = f"segmentation_head.head.{len(block) - 1}"
        return name, name
    raise TypeError(
        "SARSegmentationModel needs an smp-style model whose segmentation_head[0] (or, as in"
        " DPT, segmentation_head.head[-1]) is a Conv2d; got"
        f" {type(model).__name__}. Use RegularizedModel to name the head and classifier"
        " yourself."
    )


def find_linear_head(model: nn.Module) -> str:
    """The dotted name of a classifier's one head, an ``nn.Linear`` or a 1x1 ``nn.Conv2d``.

    Found as :func:`sar.heads.find_heads` finds heads: behind timm's ``get_classifier()``,
    then at ``fc`` (torchvision ResNet, :class:`SmallCNN`), ``classifier`` (EfficientNet,
    MobileNet, ConvNeXt, VGG, DenseNet, SqueezeNet), ``heads`` (ViT) or ``head`` (Swin); in a
    container, its last ``Linear``/``Conv2d``.

    Raises:
        TypeError: as :func:`~sar.heads.find_heads`, or for a model with several heads (the
            message names them; :class:`SARClassifier` regularises each).
        ValueError: as :func:`~sar.heads.find_heads` (torchvision ``aux_logits=True``).
    """
    names = find_heads(model)
    if len(names) > 1:
        raise TypeError(
            f"{type(model).__name__} has {len(names)} classifier heads {list(names)} whose"
            " logits it combines: SARClassifier(model) regularises the feature of each head"
            " with that head; name one with head_name= only to regularise it alone"
        )
    return names[0]


class SARClassifier(RegularizedModel):
    """An image classifier trained with SAR on the feature that enters each of its heads.

    Args:
        model: a classifier whose logits come from an ``nn.Linear`` or a 1x1 ``nn.Conv2d``
            head: torchvision ResNet, EfficientNet, MobileNet, ConvNeXt, ViT, SqueezeNet, a
            timm model (distilled and multi-branch ones included), :class:`SmallCNN`, ...
        regularizer: defaults to ``SemanticAnchorRegularizer(C, D, **sar_options)`` with C and
            D read from the head; for several heads, a
            :class:`~sar.heads.HeadsRegularizer` of one per head.
        head_name: dotted name of the head (``"fc"``, ``"classifier.1"``, ``"heads.head"``),
            or a sequence of names; ``None`` finds them (see :func:`sar.heads.find_heads`).

    The regularised feature is the input of the head. A linear head gives ``(B, D)``: for
    ``classifier = Sequential(Dropout, Linear)`` it is taken after the Dropout, so in training
    mode it is the dropped-out feature the classifier actually sees. A 1x1 conv head gives
    ``(B, D, H, W)`` (``(B, D, 1, 1)`` after timm's pooling; SqueezeNet's unpooled map), and
    every position carries the image's label ``(B,)``. The anchor CE scores the anchors with
    the head layer itself, also where a ReLU follows it (SqueezeNet): scored through the ReLU,
    an anchor whose own logit starts negative gets no gradient and never becomes confident.

    Several heads (timm's ``deit_*_distilled``, ``levit_*``, ``crossvit_*``, ...; see
    :mod:`sar.heads`): each head's input is regularised with that head as the classifier and
    the losses are averaged; :meth:`features_and_logits` gives the first head's feature,
    :meth:`head_features_and_logits` every head's.

    Raises:
        TypeError: when no head is found, a named head is not an ``nn.Linear`` or 1x1
            ``nn.Conv2d``, a model with an auxiliary head the wrapper cannot regularise (VOLO),
            or a ``regularizer`` that does not hold one regulariser per head.
        ValueError: a torchvision model built with ``aux_logits=True``.
    """

    def __init__(
        self,
        model: nn.Module,
        regularizer: nn.Module | None = None,
        head_name: str | Sequence[str] | None = None,
        **sar_options: Any,
    ) -> None:
        names = head_names(model, head_name)
        layers = [head_layer(model, name) for name in names]
        regularizer = _head_regularizer(model, names, layers, regularizer, sar_options)
        super().__init__(model, names[0], names[0], regularizer)
        self.head_names = names
        self._head_shapes = tuple(_layer_shape(layer) for layer in layers)
        # one linear head: exactly RegularizedModel's training step
        self._plain = len(names) == 1 and isinstance(layers[0], nn.Linear)

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor | TrainOutput:
        if self._plain or not self.training or labels is None:
            return super().forward(x, labels)
        classifiers = [self._unchanged(name, shape)
                       for name, shape in zip(self.head_names, self._head_shapes, strict=True)]
        features, logits, routes = self._tapped_forward(x, self.head_names)
        per_head = [image_labels(feature, labels) for feature in features]
        with pulls_through_heads(routes):
            if len(features) == 1:
                return TrainOutput(
                    logits, self.regularizer(features[0], per_head[0], classifiers[0]))
            return TrainOutput(logits, self.regularizer(features, per_head, classifiers))

    def head_features_and_logits(
        self, x: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Every head's input feature, in :attr:`head_names` order, and the model's output."""
        features, logits, _ = self._tapped_forward(x, self.head_names)
        return features, logits


def _head_regularizer(model: nn.Module, names: Sequence[str], layers: Sequence[nn.Module],
                      regularizer: nn.Module | None, sar_options: dict[str, Any]) -> nn.Module:
    """The given regulariser, checked against the heads, or SAR built for each head."""
    if regularizer is not None:
        if sar_options:
            raise TypeError("pass SAR options or a regularizer, not both")
        if len(names) > 1 and len(getattr(regularizer, "regularizers", ())) != len(names):
            raise TypeError(
                f"{type(model).__name__} has {len(names)} heads {list(names)}: pass"
                " regularizer=HeadsRegularizer([...]) with one regulariser per head, in that"
                " order, or leave regularizer=None for SAR on each"
            )
        return regularizer
    return one_per_head([SemanticAnchorRegularizer(out, width, **sar_options)
                         for width, out in map(_layer_shape, layers)])


def bare_state_dict(checkpoint: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """The bare model's ``state_dict`` from a wrapper's state or a ``sar.train`` checkpoint.

    ``net.load_state_dict(bare_state_dict("run/checkpoint.pt"))`` loads a checkpoint written
    by :func:`sar.train.fit` / ``save_checkpoint`` into the plain model (e.g. the smp model
    you deploy), with ``strict=True``: the ``model.`` prefix is removed and the regulariser's
    ``regularizer.*`` entries are dropped. The state's ``_metadata`` (the per-module versions
    that e.g. torchvision's MNASNet and BatchNorm read while loading) is kept, re-keyed the
    same way. Prefixes of wrappers around the whole state are removed first: ``module.``
    (DDP, ``nn.DataParallel``, ``AveragedModel``, whose ``n_averaged`` is dropped) and
    ``_orig_mod.`` (``torch.compile``), so a wrapped bare model's state comes out bare too.

    Args:
        checkpoint: a checkpoint file path, its loaded dict (with a ``"model"`` entry), or a
            :class:`RegularizedModel`'s ``state_dict`` (wrapped or not).

    Raises:
        ValueError: a state that is neither a wrapper's (only ``model.*`` and
            ``regularizer.*`` entries) nor under a wrapper prefix; the message names its
            top-level prefixes.
    """
    if not isinstance(checkpoint, Mapping):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = checkpoint.get("model", checkpoint)
    state, removed = _without_wrapper_prefixes(state)
    tops = sorted({key.split(".", 1)[0] for key in state})
    if "model" in tops and set(tops) <= {"model", "regularizer"}:
        return _under_prefix(state, "model.")
    if removed:  # a bare model inside DDP or torch.compile: its state, unprefixed
        return state
    raise ValueError(
        f"not the state of a RegularizedModel (SARClassifier, SARSegmentationModel), whose"
        f" entries are model.* and regularizer.*: its top-level names are {tops[:6]}. A bare"
        " model's own state_dict loads as it is"
    )


_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP/DataParallel/AveragedModel, torch.compile


def _without_wrapper_prefixes(state: Mapping[str, Any]) -> tuple[Mapping[str, Any], list[str]]:
    """``state`` without the prefixes that wrap all of it, and those prefixes, outermost first."""
    removed: list[str] = []
    while True:
        keys = [key for key in state if key != "n_averaged"]  # AveragedModel's own counter
        prefix = next((p for p in _WRAPPER_PREFIXES
                       if keys and all(key.startswith(p) for key in keys)), None)
        if prefix is None:
            return state, removed
        state = _under_prefix(state, prefix)
        removed.append(prefix)


def _under_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The entries under ``prefix``, without it, and their ``_metadata`` re-keyed alike."""
    inner: dict[str, Any] = OrderedDict((key.removeprefix(prefix), value)
                                        for key, value in state.items() if key.startswith(prefix))
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        module = prefix[:-1]
        inner._metadata = OrderedDict(  # type: ignore[attr-defined]
            ("" if name == module else name.removeprefix(prefix), value)
            for name, value in metadata.items() if name == module or name.startswith(prefix))
    return inner
