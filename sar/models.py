"""Wrap segmentation and classification models so they train with SAR (or a baseline).

The wrappers never reimplement a model's forward: they tap the input of its head with a
forward pre-hook. So any smp architecture (Unet, FPN, DeepLabV3+, ...) or torchvision / timm
classifier works unchanged, and in eval mode the wrapper *is* the wrapped model: same call,
same logits, no hook, no extra cost. The head is held by its dotted name and looked up at
every call, so a replaced head is found and ``nn.DataParallel`` replicas use their own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from typing import Any, NamedTuple

import torch
from torch import nn

from .heads import HeadsRegularizer, find_heads, head_layer, image_labels
from .regularizer import SemanticAnchorRegularizer


class TrainOutput(NamedTuple):
    """What a wrapped model returns in training mode when given labels."""

    logits: torch.Tensor
    losses: dict[str, torch.Tensor]


class _InputTap:
    """Context manager that records the first positional input of ``module``'s forward."""

    def __init__(self, module: nn.Module) -> None:
        self.module, self.value = module, None

    def _record(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        # DataParallel replicas share their hook dicts with the original module: record only
        # this module's call, never a sibling replica's running in another thread
        if module is self.module:
            self.value = args[0]

    def __enter__(self) -> _InputTap:
        self._handle = self.module.register_forward_pre_hook(self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()


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
        features, logits = self.features_and_logits(x)
        return TrainOutput(logits, self.regularizer(features, labels, classifier))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's input feature (``(B, D)`` or ``(B, D, H, W)``) and the model's output."""
        head = self.head
        with _InputTap(head) as tap:
            logits = self.model(x)
        if tap.value is None:
            raise RuntimeError(
                f"the head {self.head_name!r} ({type(head).__name__}) did not run in the model's"
                " forward, so there is no feature to regularise: was the head replaced under"
                " another name, or is it bypassed? Wrap the model after changing its head"
                " (e.g. after timm's reset_classifier), or name the layer that runs"
            )
        return tap.value, logits

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
        names = find_heads(model) if head_name is None else (
            (head_name,) if isinstance(head_name, str) else tuple(head_name))
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
        features, logits = self.head_features_and_logits(x)
        per_head = [image_labels(feature, labels) for feature in features]
        if len(features) == 1:
            return TrainOutput(logits, self.regularizer(features[0], per_head[0], classifiers[0]))
        return TrainOutput(logits, self.regularizer(features, per_head, classifiers))

    def head_features_and_logits(
        self, x: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Every head's input feature, in :attr:`head_names` order, and the model's output."""
        with ExitStack() as stack:
            taps = [stack.enter_context(_InputTap(_submodule(self.model, name, "head")))
                    for name in self.head_names[1:]]
            first, logits = self.features_and_logits(x)
        silent = [name for name, tap in zip(self.head_names[1:], taps, strict=True)
                  if tap.value is None]
        if silent:
            raise RuntimeError(
                f"the head(s) {silent} did not run in the model's forward, so there is no"
                " feature to regularise: wrap the model after changing its heads"
            )
        return (first, *(tap.value for tap in taps)), logits


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
    per_head = [SemanticAnchorRegularizer(out, width, **sar_options)
                for width, out in map(_layer_shape, layers)]
    return per_head[0] if len(per_head) == 1 else HeadsRegularizer(per_head)


def bare_state_dict(checkpoint: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """The bare model's ``state_dict`` from a wrapper's state or a ``sar.train`` checkpoint.

    ``net.load_state_dict(bare_state_dict("run/checkpoint.pt"))`` loads a checkpoint written
    by :func:`sar.train.fit` / ``save_checkpoint`` into the plain model (e.g. the smp model
    you deploy), with ``strict=True``: the ``model.`` prefix is removed and the regulariser's
    ``regularizer.*`` entries are dropped.

    Args:
        checkpoint: a checkpoint file path, its loaded dict (with a ``"model"`` entry), or a
            :class:`RegularizedModel`'s ``state_dict``.

    Raises:
        ValueError: if it holds no ``model.*`` entry (not a wrapper's state).
    """
    if not isinstance(checkpoint, Mapping):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = checkpoint.get("model", checkpoint)
    bare = {key.removeprefix("model."): value for key, value in state.items()
            if key.startswith("model.")}
    if not bare:
        raise ValueError(
            "no 'model.' entries: this is not the state of a RegularizedModel (SARClassifier,"
            " SARSegmentationModel); a bare model's state_dict loads as it is"
        )
    return bare


# ----------------------------------------------------------------------------- factories
def build_smp_model(
    arch: str = "Unet",
    encoder_name: str = "resnet18",
    num_classes: int = 11,
    in_channels: int = 3,
    encoder_weights: str | os.PathLike | None = None,
    **kwargs: Any,
) -> nn.Module:
    """An smp model, offline by default.

    Args:
        encoder_weights: ``None`` (default): a randomly initialised encoder, no download.
            A path (a ``Path``, or a string with a ``/`` or ending in ``.pt``/``.pth``): an
            encoder ``state_dict`` made by ``python -m sar.pretrain``, loaded strictly into
            ``model.encoder`` after its SHA-256 is checked against the sidecar
            ``<file>.json`` when there is one (see :mod:`sar.encoder_weights`). Any other
            string (``"imagenet"``, ...) is passed to smp, which downloads the weights.

    Raises:
        FileNotFoundError: a weights path that does not exist; the message gives the
            ``python -m sar.pretrain`` command that makes it.
        ValueError: a weights file that fails its checksum, was made for another encoder, or
            does not fit the encoder (e.g. pretrained on 3 channels, asked for another count).
    """
    import segmentation_models_pytorch as smp  # heavy (timm): imported only when needed

    from .encoder_weights import is_weights_path, load_encoder_weights

    weights_file = encoder_weights if is_weights_path(encoder_weights) else None
    model = smp.create_model(arch, encoder_name=encoder_name,
                             encoder_weights=None if weights_file else encoder_weights,
                             in_channels=in_channels, classes=num_classes, **kwargs)
    if weights_file is not None:
        state, record = load_encoder_weights(weights_file, encoder_name)
        try:
            model.encoder.load_state_dict(state, strict=True)
        except RuntimeError as err:
            made = "" if record is None else (
                f" (made for {record.get('encoder')} with"
                f" {record.get('in_channels')} input channels)")
            raise ValueError(
                f"{weights_file}{made} does not fit the {encoder_name} encoder with"
                f" in_channels={in_channels}: {err}"
            ) from err
    return model


class SmallCNN(nn.Module):
    """A small CNN for 28x28 (or 32x32) images: three conv stages, global pooling, ``fc``.

    ``(B, in_channels, H, W) -> (B, num_classes)``; the feature entering ``fc`` is
    ``(B, feat_dim)``, non-negative (after ReLU), like ResNet's pooled feature.
    """

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, width: int = 32, feat_dim: int = 128
    ) -> None:
        super().__init__()

        def stage(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            )

        self.features = nn.Sequential(
            stage(in_channels, width), nn.MaxPool2d(2),
            stage(width, 2 * width), nn.MaxPool2d(2),
            stage(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4 * width, feat_dim), nn.BatchNorm1d(feat_dim), nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(feat_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def build_classifier(
    name: str = "small_cnn", num_classes: int = 10, in_channels: int = 1, **kwargs: Any
) -> nn.Module:
    """A classifier with an ``fc`` head: ``"small_cnn"`` or a torchvision ResNet name.

    ResNets are built without weights (offline) and with their stem adapted to
    ``in_channels``.
    """
    if name == "small_cnn":
        return SmallCNN(num_classes, in_channels, **kwargs)
    if name.startswith("resnet"):
        import torchvision  # about a second to import: only when a ResNet is asked for

        net = getattr(torchvision.models, name)(weights=None, num_classes=num_classes, **kwargs)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        return net
    raise ValueError(f"unknown classifier {name!r}: use 'small_cnn' or a torchvision resnet")
