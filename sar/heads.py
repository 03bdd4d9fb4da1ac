"""A classifier's heads: find them, and regularise a model whose logits combine several.

A *head* is the layer that turns a feature into class logits: an ``nn.Linear`` on a ``(B, D)``
feature, or a 1x1 ``nn.Conv2d`` on a ``(B, D, H, W)`` map. timm's ``resnetv2_*``, ``dla*`` and
``dpn*`` apply their conv head to the pooled ``(B, D, 1, 1)`` map; torchvision's SqueezeNet
applies ``classifier.1`` to every position of a 512-channel map, then a ReLU, then averages.
Every position of a conv head's input is classified, so it carries its image's label
(:func:`image_labels`). The anchors are scored by the conv itself, not by ``relu(conv)``: see
``docs/failures.md`` (SqueezeNet) for why and what was measured.

Several timm families have more than one head, and their logits combine them (timm 1.0.31,
``distilled_training`` off, its default):

- ``deit_*_distilled``, ``pit_*_distilled``: ``(head(cls token) + head_dist(dist token)) / 2``;
- ``levit_*``, ``efficientformer*``, ``swiftformer_*``, ``repvit_*``, ``iformer_*_distilled``:
  ``(head(x) + head_dist(x)) / 2``, each head with its own BatchNorm in LeViT, RepViT, iFormer;
- ``crossvit_*``: the mean of one head per branch, of different widths;
- ``efficientvim_*``: ``sum_i softmax(w)_i heads[i](stage i)``, averaged with the same over
  ``heads_dist`` in the distilled ones;
- ``volo_*``: ``head(cls) + 0.5 * max over patch tokens of aux_head(token)``: refused, see
  :func:`find_heads`.

With ``distilled_training`` on (timm's ``set_distilled_training()``), those models return the
pair ``(x, x_dist)`` in training mode instead, each head trained by its own loss. Either way
every head classifies its own input feature, so :class:`HeadsRegularizer` regularises each
head's feature with that head as the classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

HEAD_ATTRIBUTES = ("fc", "classifier", "heads", "head")  # looked at when there is no timm API
EXTRA_HEAD_ATTRIBUTES = ("head_dist", "heads_dist", "aux_head")  # timm's second heads


def _is_head_layer(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear | nn.Conv2d)


def _final_layer(module: nn.Module | None) -> nn.Module | None:
    """The last ``Linear`` or ``Conv2d`` registered in ``module`` (itself included), if any."""
    if not isinstance(module, nn.Module):
        return None
    layers = [m for m in module.modules() if _is_head_layer(m)]
    return layers[-1] if layers else None


def _flatten(heads: object) -> list[nn.Module]:
    """timm's ``get_classifier()`` answer as a list: a module, a tuple of them, a ModuleList."""
    if isinstance(heads, tuple | list | nn.ModuleList):
        return [module for item in heads for module in _flatten(item)]
    return [heads] if isinstance(heads, nn.Module) else []


def _head_groups(model: nn.Module) -> list[nn.Module]:
    """The modules that hold the heads: timm's ``get_classifier()``, else the first of
    :data:`HEAD_ATTRIBUTES` that holds a layer."""
    get_classifier = getattr(model, "get_classifier", None)
    groups = _flatten(get_classifier()) if callable(get_classifier) else []
    groups = [group for group in groups if _final_layer(group) is not None]
    if groups:
        return groups
    attributes = [getattr(model, name, None) for name in HEAD_ATTRIBUTES]
    return [group for group in attributes if _final_layer(group) is not None][:1]


def _listed_heads(model: nn.Module) -> tuple[str, ...]:
    """The head names timm's ``pretrained_cfg['classifier']`` lists (a name or a tuple), and
    the timm attributes of extra heads (for a model built from its class, without a config)."""
    config = getattr(model, "pretrained_cfg", None)
    names = config.get("classifier", ()) if isinstance(config, dict) else ()
    names = (names,) if isinstance(names, str) else tuple(names or ())
    extra = tuple(name for name in EXTRA_HEAD_ATTRIBUTES if hasattr(model, name))
    return tuple(dict.fromkeys(names + extra))


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _inside(module: nn.Module, groups: list[nn.Module]) -> bool:
    return any(module is m for group in groups for m in group.modules())


def find_heads(model: nn.Module) -> tuple[str, ...]:
    """The dotted names of a classifier's heads (each a ``Linear`` or a 1x1 ``Conv2d``).

    Looked for, in order: timm's ``get_classifier()`` (a module, a tuple of modules or a
    ``ModuleList``: one head each, its last ``Linear``/``Conv2d``), plus the names in timm's
    ``pretrained_cfg['classifier']`` (or at ``head_dist``, ``heads_dist``, ``aux_head``) that
    lie inside those modules (RepViT's ``head`` holds ``head.head.l`` and
    ``head.head_dist.l``); without timm's API, the first of ``fc``
    (ResNet, :class:`~sar.SmallCNN`), ``classifier`` (EfficientNet, MobileNet, ConvNeXt, VGG,
    DenseNet, SqueezeNet), ``heads`` (ViT) and ``head`` (Swin) that holds one, its last
    ``Linear``/``Conv2d``. Names come in the model's module order.

    Raises:
        TypeError: no head found; a head that is neither a ``Linear`` nor a 1x1 ``Conv2d``;
            an auxiliary head that adds to the logits in a way not known here (VOLO's
            ``aux_head``: listed by timm, outside ``get_classifier()``); the message names it
            and the fix.
        ValueError: a torchvision model built with ``aux_logits=True`` (GoogLeNet, Inception
            v3), which returns ``(logits, aux...)`` in training mode.
    """
    groups = _head_groups(model)
    if not groups:
        raise TypeError(
            f"SARClassifier found no linear or 1x1 conv head in {type(model).__name__}"
            " (looked at get_classifier(), fc, classifier, heads and head): name it with"
            " head_name= (a dotted name such as 'classifier.1') or use RegularizedModel"
        )
    layers = [_final_layer(group) for group in groups]
    auxiliary = []
    for name in _listed_heads(model):
        layer = _final_layer(_submodule(model, name))
        if layer is None or any(layer is known for known in layers):
            continue
        if _inside(layer, groups):
            layers.append(layer)
        else:
            auxiliary.append(name)
    names = [name for name, module in model.named_modules() if any(module is m for m in layers)]
    if auxiliary:
        raise TypeError(_auxiliary_message(model, names, auxiliary))
    _refuse_aux_logits(model)
    for name in names:
        check_head_layer(model.get_submodule(name), name)
    return tuple(names)


def _auxiliary_message(model: nn.Module, heads: list[str], auxiliary: list[str]) -> str:
    fix = ("build it with use_aux_head=False (timm.create_model(name, use_aux_head=False)), or"
           if hasattr(model, "use_aux_head") else "remove them, or")
    return (
        f"{type(model).__name__} has the auxiliary classifier head(s) {auxiliary} besides"
        f" {heads}, and its logits add their output in a way SARClassifier cannot regularise"
        " (VOLO adds 0.5 x the max over patch tokens of aux_head, a per-token head with one"
        f" label per image): {fix} pass head_name={heads[0]!r} to regularise that head alone"
        " (the auxiliary head then learns from the task loss only)"
    )


def _refuse_aux_logits(model: nn.Module) -> None:
    if getattr(model, "aux_logits", False) is True:
        raise ValueError(
            f"this {type(model).__name__} was built with aux_logits=True, so in training mode"
            " it returns (logits, aux_logits...) and sar.train.fit cannot train it: build it"
            " with aux_logits=False (e.g. torchvision.models.googlenet(weights=None,"
            " aux_logits=False, init_weights=True)), or write your own loop around"
            " RegularizedModel(model, 'fc', 'fc', SemanticAnchorRegularizer(C, D)) (its logits"
            " are then that tuple; SAR regularises fc, the head the model keeps in eval)"
        )


def head_names(model: nn.Module, head_name: str | Sequence[str] | None = None
               ) -> tuple[str, ...]:
    """The heads to wrap: ``head_name`` (a dotted name or a sequence of them, each checked by
    :func:`head_layer`), or all of them found by :func:`find_heads`."""
    if head_name is None:
        return find_heads(model)
    names = (head_name,) if isinstance(head_name, str) else tuple(head_name)
    for name in names:
        head_layer(model, name)
    return names


def one_per_head(regularizers: Sequence[nn.Module]) -> nn.Module:
    """The regulariser of a one-head model, or a :class:`HeadsRegularizer` of one per head."""
    return regularizers[0] if len(regularizers) == 1 else HeadsRegularizer(list(regularizers))


def head_layer(model: nn.Module, name: str) -> nn.Linear | nn.Conv2d:
    """``model.<name>``, checked by :func:`check_head_layer` (``TypeError`` if it is none)."""
    layer = _submodule(model, name)
    check_head_layer(layer, name)
    return layer


def check_head_layer(layer: nn.Module | None, name: str) -> None:
    """Raise ``TypeError`` unless ``layer`` is an ``nn.Linear`` or a 1x1, stride-1 ``Conv2d``."""
    if isinstance(layer, nn.Linear):
        return
    if isinstance(layer, nn.Conv2d):
        if layer.kernel_size == (1, 1) and layer.stride == (1, 1) and layer.groups == 1 \
                and layer.padding in ((0, 0), "valid", "same"):
            return
        raise TypeError(
            f"model.{name} is a Conv2d with kernel {layer.kernel_size}, stride {layer.stride},"
            f" groups {layer.groups}: SARClassifier takes an nn.Linear or a 1x1 conv head; for a"
            " conv that classifies a feature map use SARSegmentationModel or RegularizedModel"
        )
    found = "no such submodule" if layer is None else type(layer).__name__
    raise TypeError(
        f"SARClassifier needs model.{name} to be an nn.Linear or 1x1 nn.Conv2d head, found"
        f" {found}; name the head with head_name= (a dotted name such as 'classifier.1') or"
        " use RegularizedModel"
    )


def image_labels(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Image labels ``(B,)`` repeated over a ``(B, D, H, W)`` head input as ``(B, H, W)``.

    A conv head classifies every position of its input map (one position for a pooled
    ``(B, D, 1, 1)`` map), so every position carries the label of its image. Other shapes are
    returned unchanged (the regulariser checks them).
    """
    if features.dim() == 4 and labels.dim() == 1:
        return labels[:, None, None].expand(-1, *features.shape[2:])
    return labels


class HeadsRegularizer(nn.Module):
    """One regulariser per head, for a classifier whose logits combine several heads.

    Args:
        regularizers: one module per head, in the wrapper's head order, each with
            ``forward(features, labels, classifier) -> dict`` (e.g.
            :class:`~sar.SemanticAnchorRegularizer` built for that head's C and D).

    ``forward(features, labels, classifiers)`` takes one feature tensor, label tensor and
    classifier per head (a single ``labels`` tensor serves every head) and returns the mean over
    heads of every entry of their loss dicts: ``loss`` is the mean of the heads' losses, as
    the logits of timm's distilled and CrossViT models are the mean of their heads' logits;
    ``gate_passed`` of 0.5 means one head of two passed. Each head's state stays in its own
    regulariser, ``regularizers[i]`` (``state_dict`` keys ``regularizers.<i>.*``).

    Raises:
        ValueError: fewer than two regularisers, regularisers that ignore different labels;
            in a call, inputs for another number of heads or regularisers whose loss dicts
            have different keys.
    """

    def __init__(self, regularizers: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(regularizers) < 2:
            raise ValueError("HeadsRegularizer is for two heads or more: use the regulariser"
                             " itself for one head")
        ignored = {getattr(reg, "ignore_index", None) for reg in regularizers}
        if len(ignored) > 1:
            raise ValueError(f"the heads' regularisers ignore different labels {ignored}: build"
                             " them with the same ignore_index")
        self.regularizers = nn.ModuleList(regularizers)
        self.ignore_index = ignored.pop()

    def __len__(self) -> int:
        return len(self.regularizers)

    def forward(
        self,
        features: Sequence[torch.Tensor],
        labels: torch.Tensor | Sequence[torch.Tensor],
        classifiers: Sequence[object],
    ) -> dict[str, torch.Tensor]:
        count = len(self.regularizers)
        per_head_labels = [labels] * count if isinstance(labels, torch.Tensor) else list(labels)
        if not len(features) == len(per_head_labels) == len(classifiers) == count:
            raise ValueError(
                f"{count} heads, but got {len(features)} features, {len(per_head_labels)} label"
                f" tensors and {len(classifiers)} classifiers: pass one of each per head"
            )
        losses = [reg(f, y, c) for reg, f, y, c in
                  zip(self.regularizers, features, per_head_labels, classifiers, strict=True)]
        keys = list(losses[0])
        if any(list(loss) != keys for loss in losses):
            raise ValueError(f"the heads' regularisers return different keys:"
                             f" {[list(loss) for loss in losses]}")
        return {key: torch.stack([loss[key] for loss in losses]).mean() for key in keys}
