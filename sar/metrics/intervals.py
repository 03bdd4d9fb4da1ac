"""Confidence intervals of a mean over a few seeds: when a paired gap is told from zero."""

from __future__ import annotations

import math


def t_half_width(std: float, n: int, confidence: float = 0.95) -> float:
    """Half-width of the Student-t confidence interval of a mean of ``n`` values whose sample
    std (ddof=1) is ``std``: ``t(1 - (1 - confidence) / 2, n - 1) · std / √n``; NaN for n < 2.

    With three seeds (2 degrees of freedom) the 95% quantile is 4.303, so the interval is
    mean ± 2.48 std: a paired gap is told apart from zero only when it is that far from it.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if n < 2:
        return float("nan")
    from scipy import stats  # scipy comes with scikit-learn; only needed here

    return float(stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n))
