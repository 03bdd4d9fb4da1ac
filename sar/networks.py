"""The networks this repository builds: smp segmentation models (offline by default, or with
an encoder pretrained here), :class:`SmallCNN` for 28x28 images, torchvision ResNets."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn


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
