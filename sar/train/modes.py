"""Train/eval modes that survive ``fit`` and ``evaluate``: frozen BatchNorm stays in eval.

``model.train()`` sets every submodule to training mode, so a frozen encoder's BatchNorm, put
in eval by its user, would update its running statistics again at the next ``fit`` epoch or
after an ``evaluate``. Here the modules to keep in eval are chosen once (``freeze_bn``), and
the modes a call found are the modes it leaves.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..distributed import unwrap

FreezeBN = bool | nn.Module | Iterable[nn.Module]


def _batchnorms(modules: Iterable[nn.Module]) -> list[_BatchNorm]:
    seen: dict[int, _BatchNorm] = {}
    for module in modules:
        seen.update((id(m), m) for m in module.modules() if isinstance(m, _BatchNorm))
    return list(seen.values())


def _is_frozen(bn: _BatchNorm) -> bool:
    params = list(bn.parameters())
    return bool(params) and not any(p.requires_grad for p in params)


def frozen_batchnorms(model: nn.Module, freeze_bn: FreezeBN) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model`` that ``fit`` keeps in eval mode.

    ``False``: none. ``True``: every BatchNorm whose affine parameters are all frozen
    (``requires_grad=False``), i.e. the BatchNorm of the parts you froze. A module or modules
    (e.g. ``model.model.encoder``): every BatchNorm inside them. A regulariser's own
    BatchNorm (SAR's projector) always trains.

    Raises:
        ValueError: ``True`` on a model without a frozen BatchNorm, or modules without any
            BatchNorm: nothing would be kept in eval, which is surely not what was meant.
    """
    if freeze_bn is False:
        return []
    trained = {id(m) for m in getattr(unwrap(model), "regularizer", nn.Identity()).modules()}
    if freeze_bn is True:
        chosen = [bn for bn in _batchnorms([model]) if _is_frozen(bn) and id(bn) not in trained]
        if not chosen:
            raise ValueError(
                "freeze_bn=True keeps in eval the BatchNorm layers whose weight and bias have"
                " requires_grad=False, and this model has none: freeze them first (e.g."
                " encoder.requires_grad_(False)), or pass the modules, freeze_bn=[encoder]"
            )
        return chosen
    modules = [freeze_bn] if isinstance(freeze_bn, nn.Module) else list(freeze_bn)
    chosen = [bn for bn in _batchnorms(modules) if id(bn) not in trained]
    if not chosen:
        raise ValueError(f"freeze_bn names {len(modules)} module(s) without a BatchNorm layer"
                         " (outside the regulariser): nothing would stay in eval mode")
    return chosen


def set_training(model: nn.Module, frozen: Iterable[_BatchNorm]) -> None:
    """``model.train()``, then the ``frozen`` BatchNorm layers back in eval mode."""
    model.train()
    for bn in frozen:
        bn.eval()


def warn_unfrozen_bn(model: nn.Module, frozen: list[_BatchNorm]) -> None:
    """A model in training mode whose BatchNorm was put in eval by hand, and ``fit`` was not
    told to keep it there: ``model.train()`` would let its running statistics drift."""
    if not model.training:
        return
    kept = {id(bn) for bn in frozen}
    names = [name for name, m in model.named_modules()
             if isinstance(m, _BatchNorm) and not m.training and id(m) not in kept]
    if names:
        warnings.warn(
            f"{len(names)} BatchNorm layer(s) of this model are in eval mode (first: {names[0]})"
            " but fit trains with model.train(), which updates their running statistics: pass"
            " freeze_bn=True (BatchNorm with frozen parameters) or freeze_bn=[module] to keep"
            " them in eval", stacklevel=3)


@contextmanager
def modes_kept(model: nn.Module) -> Iterator[None]:
    """Every submodule's train/eval mode after the block as it was before."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
