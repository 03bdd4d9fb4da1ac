"""Distances to class targets (anchors, prototypes, class means): the scale-free ratio, its
split into scatter and offset, per-point distances, and where a pull acts class by class."""

from __future__ import annotations

import math

import torch

from .geometry import _class_means64, _features_and_labels, _mean_squared_spacing
from .scores import ArrayLike, _tensor


def _features_labels_targets(
    features: ArrayLike, labels: ArrayLike, targets: ArrayLike
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 ``(N, D)`` features, ``(N,)`` labels and ``(C, D)`` targets on one device,
    checked against each other."""
    target = _tensor(targets).double()
    if target.ndim != 2:
        raise ValueError(f"targets must be (C, D), got {tuple(target.shape)}")
    feats, labels = _features_and_labels(features, labels, target.shape[0])
    if target.shape[1] != feats.shape[1]:
        raise ValueError(f"targets have D={target.shape[1]}, features D={feats.shape[1]}")
    return feats, labels, target.to(feats.device)


def _targets_and_spacing(
    features: ArrayLike, labels: ArrayLike, targets: ArrayLike
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 features, labels, targets and the mean squared spacing of the present targets."""
    feats, labels, target = _features_labels_targets(features, labels, targets)
    present = torch.nonzero(torch.bincount(labels, minlength=target.shape[0])).flatten()
    if len(present) < 2:
        raise ValueError("target distances need at least two classes present")
    spacing = _mean_squared_spacing(target[present])
    if spacing <= 0:
        raise ValueError("the targets coincide: their spacing is 0")
    return feats, labels, target, spacing


def target_distance_ratio(
    features: ArrayLike, labels: ArrayLike, targets: ArrayLike
) -> torch.Tensor:
    """How close each class's features sit to their own target, relative to the targets' spacing.

    ``r_c = mean_{i: y_i = c} ‖f_i − t_c‖² / mean_{a < b} ‖t_a − t_b‖²``, the pair mean taken
    over the classes present in ``labels``. Scale-free (multiplying features and targets by
    ``k`` leaves it unchanged), so a pull that merely shrinks features does not lower it;
    ``r_c → 0`` as class ``c`` collapses onto its target, and ``r_c`` near ``1/2`` or above
    means its features are as far from their target as the targets are from each other. With
    the class means as ``targets`` the class-weighted mean of ``r_c`` is the ``ratio`` of
    :func:`representation_metrics` (the within-class scatter of Papyan et al.'s NC1, without
    the whitening); with SAR's semantic anchors it says whether the features collapse onto
    *those* (Ge et al., AAAI 2024, section 3.3: the pull towards semantic anchors).

    Args:
        features: ``(N, D)`` float features.
        labels: ``(N,)`` integer classes in ``[0, C)``.
        targets: ``(C, D)`` one target per class (semantic anchors, prototypes, class means).

    Returns:
        ``(C,)`` float64; NaN for classes absent from ``labels``.

    Raises:
        ValueError: shapes that do not match, labels outside ``[0, C)``, fewer than two
            classes present, or targets that coincide (zero spacing).
    """
    feats, labels, target, spacing = _targets_and_spacing(features, labels, targets)
    counts = torch.bincount(labels, minlength=target.shape[0])
    sq = (feats - target[labels]).square().sum(dim=1)
    per_class = feats.new_zeros(target.shape[0]).index_add_(0, labels, sq) / counts.clamp_min(1)
    per_class[counts == 0] = math.nan
    return per_class / spacing


def target_distance_split(
    features: ArrayLike, labels: ArrayLike, targets: ArrayLike, spacing: str = "targets"
) -> dict[str, float]:
    """The distance to the targets, split into the clusters' scatter and their offset.

    For every sample ``‖f_i − t_y‖² = ‖f_i − μ_y‖² + ‖μ_y − t_y‖²`` plus a cross term that
    averages to zero within each class (``μ_y`` the class mean), so the mean squared distance
    to the targets is the within-class scatter plus the squared offset of the class means from
    the targets. The class means are therefore the nearest targets any run can have, and a
    distance to other targets says nothing about tightness until the offset is taken out.

    Args:
        features: ``(N, D)``; labels: ``(N,)`` in ``[0, C)``; targets: ``(C, D)``.
        spacing: the unit of ``total``, ``scatter`` and ``offset``: ``"targets"`` (the
            targets' spacing, as below) or ``"class_means"`` (the spacing of the run's own
            class means, so that ``scatter`` equals ``tightness`` and splits compare across
            runs pulled toward different targets).

    Returns:
        Floats, all (``spacing="targets"``) over the targets' mean squared pairwise spacing (as
        :func:`target_distance_ratio`): ``total`` (mean over samples of ``‖f_i − t_y‖²``, the
        class-weighted mean of :func:`target_distance_ratio`), ``scatter`` (of
        ``‖f_i − μ_y‖²``) and ``offset`` (of ``‖μ_y − t_y‖²``), ``total = scatter + offset``;
        and ``tightness``: the scatter over the spacing of the *class means* instead, the
        ``ratio`` of :func:`representation_metrics`, which needs no targets and so compares
        runs whatever they are pulled toward.

    Raises:
        ValueError: as :func:`target_distance_ratio`; ``spacing`` not one of the two units.
    """
    if spacing not in ("targets", "class_means"):
        raise ValueError(f'spacing must be "targets" or "class_means", got {spacing!r}')
    unit = spacing
    feats, labels, target, spacing = _targets_and_spacing(features, labels, targets)
    means = _class_means64(feats, labels, target.shape[0])
    present = torch.bincount(labels, minlength=target.shape[0]) > 0
    scatter = (feats - means[labels]).square().sum(dim=1).mean()
    offset = (means[labels] - target[labels]).square().sum(dim=1).mean()
    total = (feats - target[labels]).square().sum(dim=1).mean()
    means_spacing = _mean_squared_spacing(means[present])
    if unit == "class_means":
        spacing = means_spacing
    return {"total": (total / spacing).item(), "scatter": (scatter / spacing).item(),
            "offset": (offset / spacing).item(),
            "tightness": (scatter / means_spacing).item()}


def target_distances(
    features: ArrayLike, labels: ArrayLike, targets: ArrayLike
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each feature's distance to its own class's target and to the nearest other target.

    Both are exact distances in the feature space (no projection), divided by the targets'
    root-mean-square spacing ``sqrt(mean_{a < b} ‖t_a − t_b‖²)`` so runs of different feature
    scale compare. A feature collapsed onto its target has ``own = 0``; ``own < nearest``
    means the nearest-target rule assigns it to its own class. Drawn by
    :func:`sar.plots.plot_target_distances`.

    Args:
        features: ``(N, D)``; labels: ``(N,)`` in ``[0, C)``; targets: ``(C, D)``.

    Returns:
        ``(own, nearest_other)``, two ``(N,)`` float64 tensors (unitless).

    Raises:
        ValueError: as :func:`target_distance_ratio`.
    """
    feats, labels, target, spacing = _targets_and_spacing(features, labels, targets)
    dist = torch.cdist(feats, target)  # (N, C)
    own = dist.gather(1, labels[:, None]).squeeze(1)
    others = dist.scatter(1, labels[:, None], math.inf)
    present = torch.bincount(labels, minlength=target.shape[0]) > 0
    others[:, ~present] = math.inf  # absent classes' targets are not competitors
    scale = spacing.sqrt()
    return own / scale, others.min(dim=1).values / scale


def pull_shares(features: ArrayLike, labels: ArrayLike, targets: ArrayLike,
                ignore_index: int | None = 255) -> dict[str, torch.Tensor]:
    """Where a pull toward ``targets`` acts, class by class, over the points given.

    The squared-distance pull of SAR (``distance="mse"``) gives each point the penalty
    ``e = mean_d (f_d - t_{y,d})^2``. Averaged over points (the paper's per-pixel pull) a class
    contributes ``sum_{y_i = c} e_i / sum_i e_i`` of the loss, so a class that owns most pixels
    owns most of the pull; averaged per class first, then over the classes present
    (``pull_reduction="class"``), it contributes ``mean_{y_i = c} e_i / sum_k mean_{y_i = k} e_i``.
    Ge et al. (AAAI 2024) average over pixels; the per-class shares are this repository's option.

    Args:
        features: ``(N, D)``; labels: ``(N,)`` in ``[0, C)`` or ``ignore_index`` (those points
            are left out, as SAR's pull leaves them out); targets: ``(C, D)`` (e.g. the
            semantic anchors of :func:`model_anchors`).

    Returns:
        ``{"points", "per_pixel_pull", "per_class_pull"}``: three ``(C,)`` float64 tensors of
        fractions that sum to 1 (0 for classes without points): each class's share of the
        points, of the per-point mean pull and of the per-class mean pull. When every point
        sits exactly on its target there is no pull to share: both pull shares are all 0.

    Raises:
        ValueError: shapes that disagree, labels outside ``[0, C)``, or no points.
    """
    if ignore_index is not None:
        keep = _tensor(labels) != ignore_index
        features, labels = _tensor(features)[keep], _tensor(labels)[keep]
    feats, labels, target = _features_labels_targets(features, labels, targets)
    if len(labels) == 0:
        raise ValueError("pull shares need at least one point")
    penalty = (feats - target[labels]).pow(2).mean(dim=1)
    num_classes = target.shape[0]
    points = torch.bincount(labels, minlength=num_classes).double()
    summed = torch.zeros(num_classes, dtype=torch.float64, device=feats.device).index_add_(
        0, labels, penalty)
    class_means = summed / points.clamp(min=1)
    # no pull at all (every point on its target): zero shares, not 0 / 0
    return {"points": points / points.sum(),
            "per_pixel_pull": summed / summed.sum().clamp(min=torch.finfo(summed.dtype).tiny),
            "per_class_pull": class_means / class_means.sum().clamp(
                min=torch.finfo(summed.dtype).tiny)}


def nearest_target_summary(features: ArrayLike, labels: ArrayLike, targets: ArrayLike,
                           classes: ArrayLike | None = None) -> dict[str, float]:
    """How the points sit between their own target and the nearest other one
    (:func:`target_distances`), in three numbers.

    Args:
        features: ``(N, D)``; labels: ``(N,)`` in ``[0, C)``; targets: ``(C, D)``.
        classes: class ids whose points are also counted apart (e.g. the confusable ones).

    Returns:
        ``nearer_own``: the fraction of points nearer their own target than any other (the
        nearest-target rule gets them right); ``nearer_own_in_classes``: the same over the
        points of ``classes`` (NaN without ``classes`` or points of them); ``sum_spread``:
        std / mean of ``own + nearest`` over the points, small when the points lie along the
        segments between their own target and a neighbour's.

    Raises:
        ValueError: as :func:`target_distance_ratio`.
    """
    own, nearest = target_distances(features, labels, targets)
    nearer = (nearest > own).double()
    chosen = math.nan
    if classes is not None:
        inside = torch.isin(_tensor(labels).to(own.device), _tensor(classes).to(own.device))
        chosen = nearer[inside].mean().item() if inside.any() else math.nan
    total = own + nearest
    return {"nearer_own": nearer.mean().item(), "nearer_own_in_classes": chosen,
            "sum_spread": (total.std() / total.mean()).item()}
