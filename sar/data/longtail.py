"""Long-tailed subsets of a balanced training set, and their many/medium/few-shot class groups."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..labels import class_labels

_MAX_IMBALANCE = 200.0


def _check_profile(
    num_classes: int, imbalance_factor: float, profile: str, step_fraction: float
) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not 1.0 <= imbalance_factor <= _MAX_IMBALANCE:
        raise ValueError(
            f"imbalance_factor must be in [1, {_MAX_IMBALANCE:g}], got {imbalance_factor}"
        )
    if profile not in ("exp", "step"):
        raise ValueError(f"profile must be 'exp' or 'step', got {profile!r}")
    if not 0.0 < step_fraction < 1.0:
        raise ValueError(f"step_fraction must be in (0, 1), got {step_fraction}")


def _num_tail(num_classes: int, step_fraction: float) -> int:
    # the epsilon keeps 10 * 0.3 = 3.0000000000000004 from becoming 4 elsewhere; floor is exact
    return min(num_classes - 1, math.floor(num_classes * step_fraction + 1e-9))


def long_tail_weights(
    num_classes: int, imbalance_factor: float, profile: str = "exp", step_fraction: float = 0.5
) -> list[float]:
    """Relative class sizes head->tail, from 1 down to ``1 / imbalance_factor`` (unrounded).

    ``exp``: ``IF ** (-i / (C - 1))`` for rank ``i``; ``step``: see :func:`long_tail_counts`.
    """
    _check_profile(num_classes, imbalance_factor, profile, step_fraction)
    if num_classes == 1:
        return [1.0]
    if profile == "exp":
        return [imbalance_factor ** (-i / (num_classes - 1)) for i in range(num_classes)]
    n_tail = _num_tail(num_classes, step_fraction)
    return [1.0] * (num_classes - n_tail) + [1.0 / imbalance_factor] * n_tail


def long_tail_counts(
    num_classes: int,
    max_count: int,
    imbalance_factor: float,
    profile: str = "exp",
    step_fraction: float = 0.5,
) -> list[int]:
    """Per-rank class sizes, head (rank 0) to tail, for a long-tailed training set.

    * ``exp`` (Cui et al. 2019): ``n_i = floor(max_count / IF ** (i / (C - 1)))``, so the
      head keeps ``max_count`` and the tail gets exactly ``floor(max_count / IF)``.
    * ``step`` (Cao et al. 2019): the last ``floor(C * step_fraction)`` ranks are tail classes
      with ``floor(max_count / IF)`` each, the rest keep ``max_count`` (C=10, 0.5: five and five).

    ``imbalance_factor`` (IF, head size / tail size) must lie in [1, 200]; IF=1 is balanced.
    Raises ``ValueError`` when ``max_count / IF < 1`` (an empty tail class).
    """
    _check_profile(num_classes, imbalance_factor, profile, step_fraction)
    if max_count / imbalance_factor < 1:
        raise ValueError(f"max_count={max_count} / IF={imbalance_factor} leaves an empty tail")
    if num_classes == 1:
        return [int(max_count)]
    if profile == "exp":
        # dividing by IF ** t (not multiplying by IF ** -t) makes the last rank exact
        return [
            math.floor(max_count / imbalance_factor ** (i / (num_classes - 1)))
            for i in range(num_classes)
        ]
    n_tail = _num_tail(num_classes, step_fraction)
    tail = math.floor(max_count / imbalance_factor)
    return [int(max_count)] * (num_classes - n_tail) + [tail] * n_tail


@dataclass
class LongTail:
    """A long-tailed subset of a balanced labelled set.

    ``indices`` int64 ``(M,)`` ascending positions into the original set; ``counts[c]`` the
    number kept of class id ``c``; ``class_order`` class ids from head to tail;
    ``val_indices`` a class-balanced validation split drawn from the samples the long tail
    left out (empty unless asked for).
    """

    indices: Tensor
    counts: list[int]
    class_order: list[int]
    imbalance_factor: float = 1.0
    profile: str = "exp"
    val_indices: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))

    def apply(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``(images[indices], labels[indices])``."""
        return images[self.indices], labels[self.indices]


def make_long_tailed(
    labels: Tensor,
    imbalance_factor: float,
    profile: str = "exp",
    seed: int = 0,
    max_count: int | None = None,
    class_order: Sequence[int] | None = None,
    step_fraction: float = 0.5,
    val_per_class: int = 0,
) -> LongTail:
    """Subsample ``labels`` (int64 ``(N,)``, ids ``0..C-1``) to a long-tailed profile.

    Which class is the head is a permutation of the class ids drawn from ``seed`` (pass
    ``class_order``, head first, to fix it). Within class ``c`` the kept samples are the
    first ``counts[c]`` of a permutation drawn from ``seed`` and ``c`` alone, so the subsets
    for growing IF are nested. ``max_count`` defaults to the smallest class size (every class
    can then be the head). ``val_per_class`` samples of every class form a balanced
    validation split (``LongTail.val_indices``) from the *last* samples of that permutation,
    so it never meets the training subset and is the same for every imbalance factor: tune
    knobs on it, never on the test split. Raises ``ValueError`` when a class has fewer samples
    than needed. Keep the test split untouched (balanced) for evaluation.
    """
    labels = class_labels(torch.as_tensor(labels)).flatten()
    num_classes = int(labels.max()) + 1
    available = torch.bincount(labels, minlength=num_classes).tolist()
    if max_count is None:
        max_count = min(available)
    if class_order is None:
        order_gen = torch.Generator().manual_seed(seed)
        class_order = torch.randperm(num_classes, generator=order_gen).tolist()
    class_order = [int(c) for c in class_order]
    if sorted(class_order) != list(range(num_classes)):
        raise ValueError(f"class_order must be a permutation of 0..{num_classes - 1}")
    per_rank = long_tail_counts(num_classes, max_count, imbalance_factor, profile, step_fraction)
    counts = [0] * num_classes
    for rank, c in enumerate(class_order):
        counts[c] = per_rank[rank]
    kept, held_out = [], []
    for c in range(num_classes):
        if available[c] < counts[c] + val_per_class:
            raise ValueError(
                f"class {c} has {available[c]} samples but the profile needs {counts[c]}"
                f" (+ {val_per_class} for validation): lower max_count or val_per_class, or"
                " pick another class_order"
            )
        members = torch.nonzero(labels == c).flatten()
        gen = torch.Generator().manual_seed(seed * 1_000_003 + c)
        shuffled = members[torch.randperm(len(members), generator=gen)]
        kept.append(shuffled[: counts[c]])
        held_out.append(shuffled[len(shuffled) - val_per_class:])
    indices = torch.sort(torch.cat(kept)).values
    val_indices = torch.sort(torch.cat(held_out)).values
    return LongTail(indices, counts, class_order, float(imbalance_factor), profile, val_indices)


def shot_groups(
    counts: Sequence[float],
    many_threshold: float | None = None,
    few_threshold: float | None = None,
    class_order: Sequence[int] | None = None,
) -> dict[str, list[int]]:
    """Split class ids into "many", "medium" and "few" shot groups (each list ascending).

    ``counts[c]`` is class ``c``'s training frequency: a sample count, or a probability.

    With thresholds (CIFAR-LT/ImageNet-LT use 100 and 20): many = ``count > many_threshold``,
    few = ``count < few_threshold``, medium otherwise. Without (both None): sort classes by
    count, largest first, and cut into thirds of ``round(C / 3)`` head and tail classes with
    the rest medium (C=10: 3/4/3). Ties go by position in ``class_order`` (head to tail, e.g.
    ``LongTail.class_order``), else by class id; so a balanced set (imbalance factor 1) gets
    the same groups as its long-tailed versions. Giving only one threshold is an error.
    """
    counts = [float(n) for n in counts]
    if (many_threshold is None) != (few_threshold is None):
        raise ValueError("give both many_threshold and few_threshold, or neither")
    if many_threshold is not None and few_threshold is not None:
        groups: dict[str, list[int]] = {"many": [], "medium": [], "few": []}
        for c, n in enumerate(counts):
            key = "many" if n > many_threshold else "few" if n < few_threshold else "medium"
            groups[key].append(c)
        return groups
    position = {c: i for i, c in enumerate(class_order if class_order is not None
                                           else range(len(counts)))}
    if sorted(position) != list(range(len(counts))):
        raise ValueError(f"class_order must be a permutation of 0..{len(counts) - 1}")
    ranked = sorted(range(len(counts)), key=lambda c: (-counts[c], position[c]))
    k = round(len(counts) / 3)
    return {
        "many": sorted(ranked[:k]),
        "medium": sorted(ranked[k : len(counts) - k]),
        "few": sorted(ranked[len(counts) - k :]),
    }
