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
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from .regularizer import SemanticAnchorRegularizer


class TrainOutput(NamedTuple):
    """What a wrapped model returns in training mode when given labels."""

    logits: torch.Tensor
    losses: dict[str, torch.Tensor]


class _InputTap:
    """The first positional input of a head's forward, recorded by one persistent pre-hook.

    The hook is registered once per head (again only when the head was replaced), not at
    every call, so ``torch.compile(..., fullgraph=True)`` can trace it. It records only while
    a call has armed this head, by putting the head in ``inputs``: a plain forward in eval
    mode records nothing. The dict is keyed by the head module, so ``nn.DataParallel``
    replicas, which share the original head's hook and this dict, each find their own input.
    """

    def __init__(self) -> None:
        self.inputs: dict[nn.Module, Any] = {}
        self.hook_id: int | None = None

    def _record(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if module in self.inputs:
            self.inputs[module] = args[0]

    def attach(self, head: nn.Module) -> None:
        """Register the hook on ``head`` unless it is there already (a new head gets it)."""
        if self.hook_id is None or self.hook_id not in head._forward_pre_hooks:
            self.hook_id = head.register_forward_pre_hook(self._record).id

    def arm(self, head: nn.Module) -> None:
        self.inputs[head] = None

    def take(self, head: nn.Module) -> Any:
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
        features, logits = self.features_and_logits(x)
        return TrainOutput(logits, self.regularizer(features, labels, classifier))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's input feature (``(B, D)`` or ``(B, D, H, W)``) and the model's output."""
        head = self.head
        self._tap.attach(head)
        self._tap.arm(head)
        try:
            logits = self.model(x)
        finally:
            features = self._tap.take(head)
        if features is None:
            raise RuntimeError(
                f"the head {self.head_name!r} ({type(head).__name__}) did not run in the model's"
                " forward, so there is no feature to regularise: was the head replaced under"
                " another name, or is it bypassed? Wrap the model after changing its head"
                " (e.g. after timm's reset_classifier), or name the layer that runs"
            )
        return features, logits

    def _unchanged_classifier(self) -> nn.Module:
        classifier = self.classifier
        if _layer_shape(classifier) != self._classifier_shape:
            was, now = self._classifier_shape, _layer_shape(classifier)
            raise RuntimeError(
                f"the classifier {self.classifier_name!r} changed after wrapping: it mapped"
                f" {was[0]} -> {was[1]} and now maps {now[0]} -> {now[1]}, but the regulariser"
                " was built for the old one. Wrap the model again after changing its head"
            )
        return classifier

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

    Args:
        model: an smp model (anything with ``segmentation_head[0]`` a ``Conv2d``).
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
        head = getattr(model, "segmentation_head", None)
        conv = head[0] if isinstance(head, nn.Sequential) and len(head) else None
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(
                "SARSegmentationModel needs an smp-style model whose segmentation_head[0] is a"
                f" Conv2d; got {type(model).__name__}. Use RegularizedModel to name the head and"
                " classifier yourself."
            )
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
        super().__init__(model, "segmentation_head", "segmentation_head.0", regularizer)


def find_linear_head(model: nn.Module) -> str:
    """The dotted name of a classifier's final ``nn.Linear``, found without being named.

    Looked for, in order: timm's ``get_classifier()``, then ``fc`` (torchvision ResNet,
    :class:`SmallCNN`), ``classifier`` (EfficientNet, MobileNet, ConvNeXt, VGG, DenseNet),
    ``heads`` (ViT) and ``head`` (Swin); in a container, its last ``nn.Linear``.

    Raises:
        TypeError: when none of these holds an ``nn.Linear``.
    """
    get_classifier = getattr(model, "get_classifier", None)
    candidates = [get_classifier()] if callable(get_classifier) else []
    candidates += [getattr(model, name, None) for name in ("fc", "classifier", "heads", "head")]
    for candidate in candidates:
        if isinstance(candidate, nn.Module):
            linears = [m for m in candidate.modules() if isinstance(m, nn.Linear)]
            if linears:
                return _name_in(model, linears[-1], "head")
    raise TypeError(
        f"SARClassifier found no linear head in {type(model).__name__} (looked at"
        " get_classifier(), fc, classifier, heads and head): name it with head_name= (a dotted"
        " name such as 'classifier.1') or use RegularizedModel"
    )


class SARClassifier(RegularizedModel):
    """An image classifier trained with SAR on the feature that enters its final linear layer.

    Args:
        model: a classifier whose logits come from an ``nn.Linear``: torchvision ResNet,
            EfficientNet, MobileNet, ConvNeXt, ViT, a timm model, :class:`SmallCNN`, ...
        regularizer: defaults to ``SemanticAnchorRegularizer(C, D, **sar_options)`` with C and
            D read from the linear layer.
        head_name: dotted name of that linear layer (``"fc"``, ``"classifier.1"``,
            ``"heads.head"``); ``None`` finds it (see :func:`find_linear_head`).

    The regularised feature is the input of the linear layer, ``(B, D)``: for heads such as
    ``classifier = Sequential(Dropout, Linear)`` it is taken after the Dropout, so in training
    mode it is the dropped-out feature the classifier actually sees.

    Raises:
        TypeError: when the head is not found or is not an ``nn.Linear``.
    """

    def __init__(
        self,
        model: nn.Module,
        regularizer: nn.Module | None = None,
        head_name: str | None = None,
        **sar_options: Any,
    ) -> None:
        if head_name is None:
            head_name = find_linear_head(model)
        head = _find(model, head_name)
        if not isinstance(head, nn.Linear):
            found = "no such submodule" if head is None else type(head).__name__
            raise TypeError(
                f"SARClassifier needs model.{head_name} to be an nn.Linear head, found {found};"
                " name the head with head_name= (a dotted name such as 'classifier.1') or use"
                " RegularizedModel"
            )
        if regularizer is None:
            regularizer = SemanticAnchorRegularizer(head.out_features, head.in_features,
                                                    **sar_options)
        elif sar_options:
            raise TypeError("pass SAR options or a regularizer, not both")
        super().__init__(model, head_name, head_name, regularizer)


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
