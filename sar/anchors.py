"""Pre-defined class anchors: how to make them and how to judge their geometry.

Every generator returns a float32 tensor of shape ``(C, D)``, one row per class, and is
deterministic given ``seed``. Gaussian rows are what the authors' code uses; the other
generators are rescaled to the same typical row norm, ``sqrt(D)``, so swapping the
initialisation changes the directions and nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

ANCHOR_INITS = ("gaussian", "orthogonal", "etf", "hypersphere")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _with_row_norm(rows: torch.Tensor, norm: float) -> torch.Tensor:
    return F.normalize(rows, dim=1) * norm


def gaussian_anchors(num_classes: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Standard-normal rows, ``(C, D)``: the original SAR initialisation (not normalised)."""
    return torch.randn(num_classes, dim, generator=_generator(seed))


def orthogonal_anchors(num_classes: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Mutually orthogonal rows of norm ``sqrt(D)``, ``(C, D)``; needs ``C <= D``."""
    if num_classes > dim:
        raise ValueError(
            f"orthogonal anchors need num_classes <= dim, got C={num_classes}, D={dim}"
        )
    q, _ = torch.linalg.qr(torch.randn(dim, num_classes, generator=_generator(seed)))
    return _with_row_norm(q.T.contiguous(), math.sqrt(dim))


def etf_anchors(num_classes: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Simplex equiangular tight frame, ``(C, D)``: every pair has cosine ``-1/(C-1)``.

    This is the most separated configuration C unit vectors can have (the neural-collapse
    geometry). Built as centred one-hot vectors rotated by a random orthonormal basis.
    The centred vectors span only ``C - 1`` dimensions, so ``D >= C - 1`` is enough.
    """
    if num_classes < 2:
        raise ValueError("a simplex ETF needs at least 2 classes")
    if num_classes > dim + 1:
        raise ValueError(
            f"ETF anchors need num_classes <= dim + 1, got C={num_classes}, D={dim}; "
            "'hypersphere' anchors work for any C"
        )
    centred = torch.eye(num_classes) - 1.0 / num_classes
    # Two constructions of the same frame: the D = C - 1 one below would serve every D, but
    # C <= D keeps its original random rotation so that committed ETF results reproduce.
    if num_classes <= dim:
        basis, _ = torch.linalg.qr(torch.randn(dim, num_classes, generator=_generator(seed)))
        return _with_row_norm(centred @ basis.T, math.sqrt(dim))
    # D = C - 1: write the centred vectors in an orthonormal basis of their own (C-1)-dim span
    # (the orthogonal complement of the all-ones vector), then rotate that basis at random.
    span, _ = torch.linalg.qr(centred[:, :dim])
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=_generator(seed)))
    return _with_row_norm(centred @ span @ rotation, math.sqrt(dim))


def hypersphere_anchors(
    num_classes: int, dim: int, seed: int = 0, steps: int = 500, temperature: float = 0.05
) -> torch.Tensor:
    """Points spread on the sphere by minimising a soft maximum of pairwise cosines, ``(C, D)``.

    Useful where no closed form exists (``C > D + 1``, e.g. 10 classes in 3-D). For
    ``C <= D + 1`` it approaches the simplex ETF. Rows have norm ``sqrt(D)``.
    """
    points = torch.randn(num_classes, dim, generator=_generator(seed), dtype=torch.float64)
    points.requires_grad_(True)
    optimiser = torch.optim.Adam([points], lr=0.05)
    off_diagonal = ~torch.eye(num_classes, dtype=torch.bool)
    for _ in range(steps):
        unit = F.normalize(points, dim=1)
        cosines = (unit @ unit.T)[off_diagonal]
        # log-sum-exp is a smooth stand-in for the largest cosine (the Tammes objective)
        loss = temperature * torch.logsumexp(cosines / temperature, dim=0)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return _with_row_norm(points.detach(), math.sqrt(dim)).float()


def make_anchors(
    init: str | torch.Tensor, num_classes: int, dim: int, seed: int = 0, **options: float
) -> torch.Tensor:
    """Anchors ``(C, D)`` from a generator name in :data:`ANCHOR_INITS` or a user tensor.

    ``options`` go to the generator, e.g. ``steps`` and ``temperature`` for ``"hypersphere"``.
    """
    if isinstance(init, torch.Tensor):
        if options:
            raise TypeError(f"options {sorted(options)} only apply to a named generator")
        if init.shape != (num_classes, dim):
            raise ValueError(
                f"anchor tensor must have shape (num_classes, feat_dim) = ({num_classes}, {dim}),"
                f" got {tuple(init.shape)}"
            )
        return init.detach().float().clone()
    generators = {
        "gaussian": gaussian_anchors,
        "orthogonal": orthogonal_anchors,
        "etf": etf_anchors,
        "hypersphere": hypersphere_anchors,
    }
    if init not in generators:
        raise ValueError(f"unknown anchor init {init!r}; choose one of {ANCHOR_INITS} or a tensor")
    if options and init != "hypersphere":
        raise TypeError(f"{init!r} anchors take no options, got {sorted(options)}")
    return generators[init](num_classes, dim, seed=seed, **options)


def simplex_bound(num_classes: int) -> float:
    """Smallest possible largest pairwise cosine among C vectors: ``-1/(C-1)``."""
    return -1.0 / (num_classes - 1)


@dataclass(frozen=True)
class AnchorGeometry:
    """Summary of a set of anchors.

    Attributes:
        cosine: ``(C, C)`` pairwise cosine matrix.
        max_cosine: largest off-diagonal cosine (the closest pair).
        mean_abs_cosine: mean absolute off-diagonal cosine (0 for orthogonal anchors).
        min_angle_deg: angle of the closest pair, in degrees.
        simplex_max_cosine: the best achievable ``max_cosine`` for C classes, ``-1/(C-1)``.
        simplex_angle_deg: the corresponding angle, in degrees.
    """

    cosine: torch.Tensor
    max_cosine: float
    mean_abs_cosine: float
    min_angle_deg: float
    simplex_max_cosine: float
    simplex_angle_deg: float

    def __str__(self) -> str:
        return (
            f"min angle {self.min_angle_deg:.1f} deg (simplex bound {self.simplex_angle_deg:.1f}),"
            f" max cosine {self.max_cosine:+.3f} (bound {self.simplex_max_cosine:+.3f}),"
            f" mean |cosine| {self.mean_abs_cosine:.3f}"
        )


def anchor_geometry(anchors: torch.Tensor) -> AnchorGeometry:
    """Pairwise geometry of anchors ``(C, D)``, compared with the simplex (ETF) bound."""
    if anchors.dim() != 2 or anchors.shape[0] < 2:
        raise ValueError(f"anchors must be (C, D) with C >= 2, got {tuple(anchors.shape)}")
    unit = F.normalize(anchors.detach().double(), dim=1)
    cosine = unit @ unit.T
    off = cosine[~torch.eye(len(cosine), dtype=torch.bool)]
    max_cos = off.max().item()
    bound = simplex_bound(len(cosine))
    return AnchorGeometry(
        cosine=cosine.float(),
        max_cosine=max_cos,
        mean_abs_cosine=off.abs().mean().item(),
        min_angle_deg=math.degrees(math.acos(max(-1.0, min(1.0, max_cos)))),
        simplex_max_cosine=bound,
        simplex_angle_deg=math.degrees(math.acos(bound)),
    )
