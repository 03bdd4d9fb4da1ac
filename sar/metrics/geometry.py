"""Feature geometry: compactness around class means or anchors, NC1, and centre drift."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .scores import ArrayLike, _class_indices, _tensor, accuracy


def _features_and_labels(
    features: ArrayLike, labels: ArrayLike, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    feats = _tensor(features).double()
    labels = _class_indices(_tensor(labels), "labels").to(feats.device)
    if feats.ndim != 2 or labels.shape != feats.shape[:1]:
        raise ValueError(
            f"expected features (N, D) and labels (N,), got {tuple(feats.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    return feats, labels


def _class_means64(feats: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    sums = feats.new_zeros(num_classes, feats.shape[1]).index_add_(0, labels, feats)
    counts = torch.bincount(labels, minlength=num_classes).to(feats.dtype)
    means = sums / counts.clamp_min(1)[:, None]
    means[counts == 0] = math.nan
    return means


def class_means(features: ArrayLike, labels: ArrayLike, num_classes: int) -> torch.Tensor:
    """Mean feature of each class.

    Args:
        features: ``(N, D)`` float features.
        labels: ``(N,)`` integer classes in ``[0, C)``.
        num_classes: ``C``.

    Returns:
        ``(C, D)`` means (accumulated in float64, returned in the features' float dtype, or
        float32 for integer input); rows of classes without samples are NaN.
    """
    feats, labels = _features_and_labels(features, labels, num_classes)
    src = _tensor(features)
    dtype = src.dtype if src.is_floating_point() else torch.float32
    return _class_means64(feats, labels, num_classes).to(dtype)


def class_mean_cosines(features: ArrayLike, labels: ArrayLike, num_classes: int) -> torch.Tensor:
    """Cosine between every two class means, each centred on the average of the class means
    (the view of neural collapse's NC2): +1 for two classes whose means point the same way from
    the centre, ``-1 / (C - 1)`` between the vertices of a simplex.

    Args:
        features: ``(N, D)`` float features.
        labels: ``(N,)`` integer classes in ``[0, C)``.
        num_classes: ``C``.

    Returns:
        ``(C, C)`` float64 cosines (ones on the diagonal); rows and columns of classes
        without samples are NaN.
    """
    feats, labels = _features_and_labels(features, labels, num_classes)
    return _pairwise_cosine(_centred(_class_means64(feats, labels, num_classes)))


def _mean_squared_spacing(points: torch.Tensor) -> torch.Tensor:
    """Mean over unordered pairs of rows of ``‖p_a − p_b‖²`` (a 0-d tensor; needs 2+ rows)."""
    pairs = torch.triu_indices(len(points), len(points), offset=1, device=points.device)
    return torch.cdist(points, points).square()[pairs[0], pairs[1]].mean()


def _centred(means: torch.Tensor) -> torch.Tensor:
    """Subtract the mean of the (non-NaN) rows: the global mean of the class means."""
    return means - means.nanmean(dim=0, keepdim=True)


def _pairwise_cosine(rows: torch.Tensor) -> torch.Tensor:
    unit = F.normalize(rows, dim=-1, eps=1e-12)
    return unit @ unit.transpose(-1, -2)


def _nc1(residuals: torch.Tensor, centred_means: torch.Tensor) -> float:
    """tr(Σ_W Σ_B⁺) / C without forming D × D matrices.

    With ``M = U S Vᵀ`` the SVD of the (C, D) centred means, Σ_B = V diag(s²/C) Vᵀ and
    Σ_B⁺ = V diag(C/s²) Vᵀ, so tr(Σ_W Σ_B⁺)/C = Σ_k (v_kᵀ Σ_W v_k) / s_k² and
    v_kᵀ Σ_W v_k = ‖R v_k‖² / N for the (N, D) residuals R. Singular directions are kept by
    the ``pinv`` rule for Σ_B: eigenvalue > max(D, D)·eps·largest eigenvalue.
    """
    _, s, vh = torch.linalg.svd(centred_means, full_matrices=False)
    eig = s.square()
    dim = centred_means.shape[1]
    keep = eig > dim * torch.finfo(eig.dtype).eps * eig.max()
    if not keep.any():
        return math.nan
    within = (residuals @ vh[keep].T).square().mean(dim=0)  # v_kᵀ Σ_W v_k, (K,)
    return (within / eig[keep]).sum().item()


def representation_metrics(
    features: ArrayLike,
    labels: ArrayLike,
    num_classes: int,
    anchors: ArrayLike | None = None,
) -> dict[str, float]:
    """Summary statistics of how features are arranged around their classes.

    Computed in float64. ``μ_c`` is the mean of class ``c``'s features, ``μ_G`` the mean of
    the class means (not of the samples, so a long tail does not drag it to the head), and
    only the ``C'`` classes present in ``labels`` enter any average.

    Args:
        features: ``(N, D)`` float features (e.g. penultimate-layer outputs).
        labels: ``(N,)`` integer classes in ``[0, C)``.
        num_classes: ``C``.
        anchors: optional ``(C, D)`` anchor per class, in the same space as ``features``.

    Returns:
        A dict of floats (units are squared feature units unless stated):

        * ``compactness`` - mean over samples of ``‖f_i − μ_{y_i}‖²``; intra-class spread,
          lower is more compact.
        * ``separation`` - mean over unordered pairs of present classes of ``‖μ_a − μ_b‖²``.
        * ``ratio`` - ``compactness / separation`` (scale-free; lower is better separated).
        * ``nc1`` - neural-collapse NC1 (Papyan et al. 2020), ``tr(Σ_W Σ_B⁺) / C'`` with
          ``Σ_W = 1/N Σ_i (f_i − μ_{y_i})(f_i − μ_{y_i})ᵀ``,
          ``Σ_B = 1/C' Σ_c (μ_c − μ_G)(μ_c − μ_G)ᵀ`` and ``⁺`` the Moore-Penrose
          pseudo-inverse; dimensionless, → 0 as features collapse onto their class means.
        * ``min_center_cosine`` / ``mean_center_cosine`` / ``max_center_cosine`` - minimum,
          mean and maximum over pairs of present classes of ``cos(μ_a − μ_G, μ_b − μ_G)``;
          a simplex ETF gives ``−1/(C'−1)`` for all three, and a high maximum flags the two
          least separated classes.
        * ``num_present`` - ``C'``.
        * ``class_mean_cosine`` - mean over samples of ``cos(f_i, μ_{y_i})``: the control for
          ``anchor_cosine``, defined for any model (plain CE included).
        * with ``anchors``: ``anchor_cosine`` - mean over samples of
          ``cos(f_i, a_{y_i})`` (in ``[−1, 1]``, higher is closer to the anchor's direction);
          ``anchor_distance`` - mean over samples of ``‖f_i − a_{y_i}‖² / D`` (per-dimension
          squared distance); ``anchor_ratio`` - mean over samples of ``‖f_i − a_{y_i}‖²``
          over the anchors' mean squared pairwise spacing (present classes): the ``ratio``
          with anchors in place of class means, scale-free, → 0 as features collapse onto
          their anchors (:func:`target_distance_ratio` gives it per class).

        Pair-based entries are NaN when fewer than two classes are present.
    """
    feats, labels = _features_and_labels(features, labels, num_classes)
    means = _class_means64(feats, labels, num_classes)
    present = ~means.isnan().any(dim=1)
    residuals = feats - means[labels]
    centred = _centred(means[present])
    n_present = int(present.sum())

    out: dict[str, float] = {"num_present": float(n_present)}
    out["compactness"] = residuals.square().sum(dim=1).mean().item()
    out["class_mean_cosine"] = F.cosine_similarity(feats, means[labels], dim=1).mean().item()
    if n_present >= 2:
        pairs = torch.triu_indices(n_present, n_present, offset=1, device=feats.device)
        cos = _pairwise_cosine(centred)[pairs[0], pairs[1]]
        out["separation"] = _mean_squared_spacing(means[present]).item()
        out["ratio"] = out["compactness"] / out["separation"]
        out["nc1"] = _nc1(residuals, centred)
        out["min_center_cosine"] = cos.min().item()
        out["mean_center_cosine"] = cos.mean().item()
        out["max_center_cosine"] = cos.max().item()
    else:
        for key in (
            "separation",
            "ratio",
            "nc1",
            "min_center_cosine",
            "mean_center_cosine",
            "max_center_cosine",
        ):
            out[key] = math.nan

    if anchors is not None:
        target = _tensor(anchors).double().to(feats.device)
        if target.shape != (num_classes, feats.shape[1]):
            raise ValueError(
                f"anchors must be (C, D) = ({num_classes}, {feats.shape[1]}), "
                f"got {tuple(target.shape)}"
            )
        target = target[labels]
        out["anchor_cosine"] = F.cosine_similarity(feats, target, dim=1).mean().item()
        out["anchor_distance"] = (feats - target).square().mean().item()
        out["anchor_ratio"] = math.nan
        if n_present >= 2:
            spacing = _mean_squared_spacing(_tensor(anchors).double().to(feats.device)[present])
            if spacing > 0:
                out["anchor_ratio"] = ((feats - target).square().sum(dim=1).mean()
                                       / spacing).item()
    return out


def _run_pairs(centres: ArrayLike) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    c = _tensor(centres).double()
    if c.ndim != 3 or c.shape[0] < 2:
        raise ValueError(f"centres must be (S, C, D) with S >= 2 runs, got {tuple(c.shape)}")
    return c, list(itertools.combinations(range(c.shape[0]), 2))


def center_drift(centres: ArrayLike) -> float:
    """How far each class centre moves between runs, in a shared feature space.

    ``mean over run pairs (s, t) and classes c of 1 − cos(centres[s, c], centres[t, c])``,
    ignoring NaN (absent) classes. Range ``[0, 2]``; 0 means every class points the same way
    in every run.

    Use it when the runs live in one coordinate system, e.g. snapshots of a single run across
    epochs. Different seeds do not share one: even SAR's semantic anchors come from a projector
    trained from a seed-dependent start (only the raw ``anchors`` buffer is shared), so between
    seeds the feature space is defined up to a rotation and this is large even for identical
    geometry; use :func:`geometry_drift` there.

    Args:
        centres: ``(S, C, D)`` class centres (e.g. :func:`class_means`) of ``S`` runs.

    Returns:
        Mean cosine distance (dimensionless).
    """
    c, pairs = _run_pairs(centres)
    dists = [1 - F.cosine_similarity(c[s], c[t], dim=1) for s, t in pairs]
    return torch.stack(dists).nanmean().item()


def geometry_drift(centres: ArrayLike) -> float:
    """How much the *shape* of the class configuration differs between runs.

    For each run, centre its class means on their mean and take the ``(C, C)`` matrix of
    pairwise cosines ``G_s``; return the mean over run pairs of the mean absolute
    off-diagonal difference ``|G_s − G_t|`` (the diagonal is always 1). NaN classes are
    skipped. Range ``[0, 2]``.

    Invariant to rotating, reflecting, uniformly scaling or translating any run, so it
    compares independently trained seeds, whose feature axes are arbitrary. It cannot tell
    whether a class moved in absolute terms; for that, in a shared space, use
    :func:`center_drift`.

    Args:
        centres: ``(S, C, D)`` class centres of ``S`` runs.

    Returns:
        Mean absolute cosine difference (dimensionless).
    """
    c, pairs = _run_pairs(centres)
    cos = _pairwise_cosine(c - c.nanmean(dim=1, keepdim=True))  # (S, C, C)
    off = ~torch.eye(c.shape[1], dtype=torch.bool, device=c.device)
    diffs = [(cos[s] - cos[t]).abs()[off] for s, t in pairs]
    return torch.stack(diffs).nanmean().item()


def model_anchors(model: torch.nn.Module) -> torch.Tensor | None:
    """A detached copy ``(C, D)`` of the class targets a regularised model pulls features toward.

    SAR (a regulariser with ``semantic_anchors``): the semantic anchors, once its gate has
    opened. EMA prototypes (``prototypes`` and ``seen``): the prototypes, once every class has
    been seen. Anything else (plain CE, or before either condition holds): ``None``.
    """
    reg = getattr(model, "regularizer", None)
    if hasattr(reg, "semantic_anchors") and hasattr(reg, "gate_opened"):
        return reg.semantic_anchors.detach().clone() if bool(reg.gate_opened) else None
    if hasattr(reg, "prototypes") and hasattr(reg, "seen"):
        return reg.prototypes.detach().clone() if bool(reg.seen.all()) else None
    return None


class FeatureSnapshot:
    """Held-out features ``(N, D)``, labels ``(N,)`` and anchors ``(C, D)`` or None, on the CPU."""

    def __init__(
        self, features: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor | None
    ) -> None:
        self.features, self.labels, self.anchors = features, labels, anchors


class RepresentationTracker:
    """An ``on_epoch_end`` callback for :func:`sar.train.fit` that measures held-out features.

    After each epoch it runs ``model.features_and_logits`` (eval mode, no gradients) over
    ``loader`` and appends one row to :attr:`rows`: ``epoch``, ``accuracy`` (fraction),
    every entry of :func:`representation_metrics` measured against :func:`model_anchors`
    (the ``anchor_*`` entries are NaN while there are none), ``anchor_cosine_other`` (mean
    over samples of the mean cosine to the anchors of the *other* classes, the level that
    ``anchor_cosine`` has to beat) and ``anchor_step_drift`` (:func:`center_drift` between
    these anchors and those of the previous row: how far the targets moved in one epoch).
    Call it once with ``epoch=0`` before training to record the initial state.

    Args:
        loader: ``(images, labels)`` batches, e.g. a fixed test subset (not shuffled).
        num_classes: ``C``.
        snapshot_epochs: epochs whose features, labels and anchors are kept in
            :attr:`snapshots` (``{epoch: FeatureSnapshot}``), e.g. for embedding plots.
    """

    def __init__(
        self, loader: object, num_classes: int, snapshot_epochs: Sequence[int] = ()
    ) -> None:
        self.loader, self.num_classes = loader, num_classes
        self.snapshot_epochs = set(snapshot_epochs)
        self.rows: list[dict[str, float]] = []
        self.snapshots: dict[int, FeatureSnapshot] = {}
        self._previous: torch.Tensor | None = None

    def features(self, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features ``(N, D)``, logits ``(N, C)`` and labels ``(N,)`` of ``loader``, on the CPU."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        feats, logits, labels = [], [], []
        try:
            with torch.no_grad():
                for x, y in self.loader:
                    f, out = model.features_and_logits(x.to(device))
                    feats.append(f.float().cpu())
                    logits.append(out.float().cpu())
                    labels.append(y.long().cpu())
        finally:
            model.train(was_training)
        return torch.cat(feats), torch.cat(logits), torch.cat(labels)

    def __call__(self, epoch: int, model: torch.nn.Module) -> None:
        feats, logits, labels = self.features(model)
        anchors = model_anchors(model)
        anchors = None if anchors is None else anchors.float().cpu()
        row: dict[str, float] = {"epoch": float(epoch), "accuracy": accuracy(logits, labels)}
        row |= representation_metrics(feats, labels, self.num_classes, anchors)
        row["anchor_cosine_other"] = math.nan
        row["anchor_step_drift"] = math.nan
        if anchors is not None:
            cos = _pairwise_cosine_between(feats.double(), anchors.double())  # (N, C)
            own = cos.gather(1, labels[:, None]).squeeze(1)
            row["anchor_cosine_other"] = ((cos.sum(1) - own) / (self.num_classes - 1)).mean().item()
            if self._previous is not None:
                row["anchor_step_drift"] = center_drift(torch.stack([self._previous, anchors]))
        row.setdefault("anchor_cosine", math.nan)
        row.setdefault("anchor_distance", math.nan)
        row.setdefault("anchor_ratio", math.nan)
        self._previous = anchors
        self.rows.append(row)
        if epoch in self.snapshot_epochs:
            self.snapshots[epoch] = FeatureSnapshot(feats, labels, anchors)

    def table(self):  # -> pandas.DataFrame (pandas is imported lazily)
        """:attr:`rows` as a ``pandas.DataFrame``, one row per call, ``epoch`` as int."""
        import pandas as pd

        return pd.DataFrame(self.rows).astype({"epoch": int})


def _pairwise_cosine_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(N, C)`` cosines between the rows of ``a (N, D)`` and ``b (C, D)``."""
    return F.normalize(a, dim=1, eps=1e-12) @ F.normalize(b, dim=1, eps=1e-12).T
