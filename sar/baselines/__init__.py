"""Baselines that share SAR's interface, so they can be swapped in and compared side by side.

Each baseline follows its authors' recipe by default (sources in each docstring); where an
older, weaker variant produced committed results it is kept behind an explicit option.

Regularisers (``forward(features, labels, classifier) -> dict`` with a ``"loss"`` key, the same
keys on every call, same shapes as :class:`sar.SemanticAnchorRegularizer`):

- :class:`NoRegularizer`: plain cross-entropy training through the same wrapper.
- :class:`CenterLoss`: class centres updated by their own rule, features pulled toward them
  (Wen et al., ECCV 2016).
- :class:`PrototypeRegularizer`: running class means of the features (bias-corrected EMA),
  features pulled toward them one-way after a warm-up: the "EM paradigm" the SAR paper argues
  against.

Heads and task losses (pass the loss to :func:`sar.train.fit` as ``criterion=``):

- :class:`ETFClassifier`: a fixed simplex-ETF head. ``variant="dr"`` (default) is Yang et al.'s
  recipe (NeurIPS 2022): BatchNorm, l2-normalised features, cosine logits, trained with
  :class:`DotRegressionLoss`. ``variant="ce"`` is the earlier fixed ETF + cross-entropy, not
  their recipe.
- :class:`DotRegressionLoss`: Yang et al.'s dot-regression loss on the ETF head's logits.
- :class:`LogitAdjustedCrossEntropy`: classifier rebalancing by the label prior
  (Menon et al., ICLR 2021).
"""

from .center import CenterLoss
from .etf import ETF_VARIANTS, DotRegressionLoss, ETFClassifier
from .features import NoRegularizer
from .logit_adjustment import LogitAdjustedCrossEntropy
from .prototypes import PrototypeRegularizer

__all__ = [
    "CenterLoss",
    "DotRegressionLoss",
    "ETFClassifier",
    "ETF_VARIANTS",
    "LogitAdjustedCrossEntropy",
    "NoRegularizer",
    "PrototypeRegularizer",
]
