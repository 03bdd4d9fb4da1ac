"""Wrap segmentation and classification models so they train with SAR (or a baseline).

The wrappers never reimplement a model's forward: they tap the input of its head with a
forward pre-hook. So any smp architecture (Unet, FPN, DeepLabV3+, ...) or torchvision ResNet
works unchanged, and in eval mode the wrapper *is* the wrapped model: same call, same logits,
no hook, no extra cost.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from .regularizer import SemanticAnchorRegularizer


class TrainOutput(NamedTuple):
    """What a wrapped model returns in training mode when given labels."""

    logits: torch.Tensor
    losses: dict[str, torch.Tensor]


class _InputTap:
    """Context manager that records the first positional input of ``module``'s forward."""

    def __init__(self, module: nn.Module) -> None:
        self.module, self.value = module, None

    def _record(self, _module: nn.Module, args: tuple[Any, ...]) -> None:
        self.value = args[0]

    def __enter__(self) -> _InputTap:
        self._handle = self.module.register_forward_pre_hook(self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()


class RegularizedModel(nn.Module):
    """A model whose head input is regularised during training.

    Args:
        model: the network, left untouched.
        head: the submodule whose input is the regularised feature.
        classifier: the layer of the head that produces class logits; handed to the
            regulariser so the anchor CE trains it (for a plain linear head, the head itself).
        regularizer: a module with ``forward(features, labels, classifier) -> dict`` holding a
            ``"loss"`` key: :class:`SemanticAnchorRegularizer` or one of ``sar.baselines``.

    ``forward(x)`` in eval mode, or without labels, returns ``model(x)`` exactly.
    ``forward(x, labels)`` in training mode returns ``TrainOutput(logits, losses)``.
    """

    def __init__(
        self, model: nn.Module, head: nn.Module, classifier: nn.Module, regularizer: nn.Module
    ) -> None:
        super().__init__()
        self.model, self.regularizer = model, regularizer
        # plain attributes, not submodules: they already live inside ``model``
        self.__dict__["head"], self.__dict__["classifier"] = head, classifier

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor | TrainOutput:
        if not self.training or labels is None:
            return self.model(x)
        features, logits = self.features_and_logits(x)
        return TrainOutput(logits, self.regularizer(features, labels, self.classifier))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's input feature (``(B, D)`` or ``(B, D, H, W)``) and the model's output."""
        with _InputTap(self.head) as tap:
            logits = self.model(x)
        return tap.value, logits


class SARSegmentationModel(RegularizedModel):
    """An smp segmentation model trained with SAR on its decoder output.

    The regularised feature is the decoder output (the map entering ``segmentation_head``,
    ``(B, D, H/s, W/s)``) and the classifier is the head's conv, so the anchor CE trains the
    very layer that segments. Labels ``(B, H, W)`` are nearest-resized to the decoder map.

    Args:
        model: an smp model (anything with ``segmentation_head[0]`` a ``Conv2d``).
        regularizer: defaults to ``SemanticAnchorRegularizer(C, D, **sar_options)`` with C and
            D read from the head.
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
        if regularizer is None:
            regularizer = SemanticAnchorRegularizer(conv.out_channels, conv.in_channels,
                                                    **sar_options)
        elif sar_options:
            raise TypeError("pass SAR options or a regularizer, not both")
        super().__init__(model, head, conv, regularizer)


class SARClassifier(RegularizedModel):
    """An image classifier trained with SAR on the pooled feature that enters its linear head.

    Args:
        model: a classifier whose last layer is the linear head named ``head_name`` (``fc`` for
            torchvision ResNets and :class:`SmallCNN`).
        regularizer: defaults to ``SemanticAnchorRegularizer(C, D, **sar_options)``.
    """

    def __init__(
        self,
        model: nn.Module,
        regularizer: nn.Module | None = None,
        head_name: str = "fc",
        **sar_options: Any,
    ) -> None:
        head = getattr(model, head_name, None)
        if not isinstance(head, nn.Linear):
            raise TypeError(
                f"SARClassifier needs model.{head_name} to be an nn.Linear head, got"
                f" {type(head).__name__}; name the head with head_name= or use RegularizedModel"
            )
        if regularizer is None:
            regularizer = SemanticAnchorRegularizer(head.out_features, head.in_features,
                                                    **sar_options)
        elif sar_options:
            raise TypeError("pass SAR options or a regularizer, not both")
        super().__init__(model, head, head, regularizer)


# ----------------------------------------------------------------------------- factories
def build_smp_model(
    arch: str = "Unet",
    encoder_name: str = "resnet18",
    num_classes: int = 11,
    in_channels: int = 3,
    encoder_weights: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """An smp model, offline by default (``encoder_weights=None``; ask for ``"imagenet"``)."""
    import segmentation_models_pytorch as smp  # heavy (timm): imported only when needed

    return smp.create_model(arch, encoder_name=encoder_name, encoder_weights=encoder_weights,
                            in_channels=in_channels, classes=num_classes, **kwargs)


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
