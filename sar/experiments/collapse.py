"""Watching features collapse: runs measured after every epoch, and a network with a 2-D feature.

Notebook 02 trains each method several times from identical initial weights and batches, measures
the held-out features after every epoch with :class:`~sar.metrics.RepresentationTracker`, and
compares them with plain cross-entropy. :func:`build_run`, :func:`train_tracked` and
:func:`restore_run` are that recipe; :func:`accuracy_cost` turns the finished runs into the
paired accuracy difference from the control, :func:`cost_table` prints it, and
:func:`scatter_offset_rows` with :func:`tightness_table` tell clusters that got tighter from
clusters that only moved.

To *see* the features, as Wen et al. drew them for center loss (ECCV 2016: a LeNet whose feature
entering the classifier is 2-D), the feature must be 2-D, and two of SAR's building blocks do not
survive that as they are; both changes are options here, never defaults, and notebook 02 measures
why each is needed:

* :func:`collapse_network` with ``linear_feature=True``: :class:`~sar.models.SmallCNN` ends its
  feature in BatchNorm and ReLU, which in 2-D leaves ten classes one quadrant, half of whose
  points sit on an axis. Wen et al.'s 2-D feature is not rectified either.
* :func:`wide_projector`: SAR's projector is ``D`` wide (``Linear(D, D)`` three times, each with
  BatchNorm and ReLU). At ``D = 2`` its two-unit ReLUs send several of the ten anchors to the
  same point, where no classifier can tell them apart, so the gate never opens. The wide projector
  keeps three blocks but makes the hidden ones 64 wide, and it drops the final ReLU when the
  features it must meet are not rectified.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .. import methods
from ..config import seed_everything
from ..metrics import RepresentationTracker, target_distance_split
from ..models import RegularizedModel, SmallCNN
from ..regularizer import PROJECTOR_INITS
from ..train import fit

RunKey = tuple[str, int]


def collapse_network(num_classes: int = 10, in_channels: int = 1, feat_dim: int = 2,
                     width: int = 8, linear_feature: bool = False) -> SmallCNN:
    """A :class:`~sar.models.SmallCNN` whose feature entering ``fc`` is ``feat_dim`` wide.

    ``linear_feature=True`` removes the ReLU after the feature's BatchNorm, so the feature
    ``(B, feat_dim)`` can take any sign (Wen et al.'s 2-D feature); otherwise it is the usual
    non-negative post-ReLU feature that SAR's defaults assume.
    """
    net = SmallCNN(num_classes, in_channels, width=width, feat_dim=feat_dim)
    if linear_feature:
        net.features[-1] = nn.Identity()  # the ReLU after the feature's BatchNorm
    return net


def wide_projector(feat_dim: int, hidden: int = 64, final_relu: bool = False,
                   init: str = "authors") -> nn.Sequential:
    """SAR's three-block projector ``(C, D) -> (C, D)`` with ``hidden``-wide inner blocks.

    ``Linear(D, h), BN, ReLU, Linear(h, h), BN, ReLU, Linear(h, D, no bias), BN`` and, with
    ``final_relu``, a last ReLU (the original ends in one, to meet post-ReLU features).
    BatchNorm normalises over the C anchor rows, as in the original. ``init`` starts the third
    Linear as :func:`sar.regularizer.build_projector` does (``"authors"``: Kaiming-normal,
    fan-out; ``"torch"``: PyTorch's default), the other two with PyTorch's default.

    Raises:
        ValueError: ``hidden`` or ``feat_dim`` below 1, or an unknown ``init``.
    """
    if feat_dim < 1 or hidden < 1:
        raise ValueError(f"feat_dim and hidden must be >= 1, got {feat_dim} and {hidden}")
    if init not in PROJECTOR_INITS:
        raise ValueError(f"init must be one of {PROJECTOR_INITS}, got {init!r}")
    widths = [(feat_dim, hidden, True), (hidden, hidden, True), (hidden, feat_dim, False)]
    layers: list[nn.Module] = []
    for index, (n_in, n_out, bias) in enumerate(widths):
        layers += [nn.Linear(n_in, n_out, bias=bias), nn.BatchNorm1d(n_out)]
        if index < 2 or final_relu:
            layers.append(nn.ReLU(inplace=True))
    if init == "authors":
        last = [m for m in layers if isinstance(m, nn.Linear)][-1]
        nn.init.kaiming_normal_(last.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(*layers)


def build_run(method: str, seed: int, network: Callable[[], nn.Module],
              projector_width: int | None = None, **options: Any) -> RegularizedModel:
    """``sar.methods.build(method, network(), **options)`` right after seeding with ``seed``.

    Every method built with one seed starts from identical network weights. With
    ``projector_width``, SAR's projector is replaced by :func:`wide_projector` of that width,
    initialised like SAR's own (``projector_init``), ending in a ReLU only when the network's
    feature does (the last layer of its ``features``
    stack is a ReLU; a network without such a stack is taken to be rectified, as SAR assumes).

    Raises:
        ValueError: ``projector_width`` for a method without a projector.
    """
    seed_everything(seed)
    net = network()
    model = methods.build(method, net, **options)[0]
    if projector_width is not None:
        reg = model.regularizer
        if not hasattr(reg, "projector"):
            raise ValueError(f"method {method!r} has no projector to widen; projector_width is"
                             " for SAR's methods")
        reg.projector = wide_projector(reg.feat_dim, projector_width,
                                       final_relu=_feature_is_rectified(net),
                                       init=options.get("projector_init", "authors"))
    return model


def _feature_is_rectified(net: nn.Module) -> bool:
    """Whether a SmallCNN-style ``features`` stack ends in a ReLU (SAR's assumption otherwise)."""
    features = getattr(net, "features", None)
    return not isinstance(features, nn.Sequential) or isinstance(features[-1], nn.ReLU)


def train_tracked(model: RegularizedModel, train_set: Dataset, test_loader: DataLoader, *,
                  num_classes: int, epochs: int, seed: int, batch_size: int = 128,
                  lr: float = 0.05, device: torch.device | str = "cpu", progress: bool = True,
                  snapshot_epochs: Any = ()) -> dict[str, Any]:
    """Train ``model`` with :func:`sar.train.fit`, measuring ``test_loader`` after every epoch.

    The batches are shuffled by a generator seeded with ``seed``, so every method trained with
    one seed sees the same batches in the same order. The tracker is called once before
    training (epoch 0, the untrained network) and after each epoch; it keeps the features of
    ``snapshot_epochs``.

    Returns:
        What a cache stores: ``{"state": state_dict on the CPU, "history": fit's step log,
        "tracker": the RepresentationTracker}`` (its loader removed: the record is cached, the
        data are not).
    """
    tracker = RepresentationTracker(test_loader, num_classes, snapshot_epochs=snapshot_epochs)
    tracker(0, model)
    batches = DataLoader(train_set, batch_size=batch_size, shuffle=True,
                         generator=torch.Generator().manual_seed(seed))
    history = fit(model, batches, epochs=epochs, lr=lr, device=device, progress=progress,
                  on_epoch_end=tracker)
    tracker.loader = None
    return {"state": model.cpu().state_dict(), "history": history, "tracker": tracker}


def restore_run(model: RegularizedModel, run: Mapping[str, Any]
                ) -> tuple[RegularizedModel, pd.DataFrame, RepresentationTracker]:
    """``(model, history, tracker)`` of a run from :func:`train_tracked`; ``model`` must be
    built as the run's was (same method, options and network), it is returned in eval mode."""
    model.load_state_dict(run["state"])
    return model.eval(), run["history"], run["tracker"]


def epoch_table(trackers: Mapping[RunKey, RepresentationTracker]) -> pd.DataFrame:
    """Every tracker's rows, with columns ``run`` (the key's label) and ``seed`` added.

    ``target_ratio`` is the distance of the features to their own class's target over the
    targets' spacing: ``anchor_ratio`` for runs with targets (semantic anchors, prototypes;
    NaN while there are none yet), and for runs that never have any (plain CE) the same measure
    against their own class means (``ratio``), the control.
    """
    parts = []
    for (label, seed), tracker in trackers.items():
        table = tracker.table().assign(run=label, seed=seed)
        never = table["anchor_ratio"].isna().all()
        table["target_ratio"] = table["ratio"] if never else table["anchor_ratio"]
        parts.append(table)
    return pd.concat(parts, ignore_index=True)


def accuracy_cost(final: pd.DataFrame, reference: str, metric: str = "accuracy",
                  by: str = "run") -> pd.DataFrame:
    """Per level of ``by``: mean and std of ``metric`` over seeds, and the paired difference
    from ``reference`` (same seed), mean and std (ddof=1), with the per-seed differences.

    Args:
        final: one row per (level, seed), e.g. the last epoch of :func:`epoch_table`.

    Returns:
        Indexed by level, in order of appearance: ``seeds``, ``mean``, ``std``,
        ``diff_mean``, ``diff_std`` and ``per_seed`` (a tuple of the differences), in the units
        of ``metric``.

    Raises:
        KeyError: ``reference`` is not a level of ``by``.
    """
    if reference not in set(final[by]):
        raise KeyError(f"no {by} named {reference!r} (have {sorted(set(final[by]))})")
    ref = final[final[by] == reference].set_index("seed")[metric]
    rows = {}
    for level, group in final.groupby(by, sort=False):
        values = group.set_index("seed")[metric]
        diff = (values - ref).dropna()
        rows[level] = {"seeds": len(values), "mean": values.mean(), "std": values.std(),
                       "diff_mean": diff.mean(), "diff_std": diff.std(),
                       "per_seed": tuple(diff.round(6))}
    return pd.DataFrame.from_dict(rows, orient="index")


Panels = Mapping[RunKey, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]


def _paired_columns(cost: pd.DataFrame, name: str, diff_name: str, scale: float,
                    digits: int) -> dict[str, list[str]]:
    """:func:`accuracy_cost` as strings: ``name`` (mean ± std over seeds, 3 decimals), the
    paired difference (× ``scale``, ``digits`` decimals) and each seed's difference."""
    def signed(value: float) -> str:
        return f"{scale * value:+.{digits}f}"

    return {
        name: [f"{m:.3f} ± {s:.3f}" for m, s in zip(cost["mean"], cost["std"], strict=True)],
        diff_name: [f"{signed(m)} ± {scale * s:.{digits}f}"
                    for m, s in zip(cost.diff_mean, cost.diff_std, strict=True)],
        "per seed": [", ".join(signed(d) for d in seeds) for seeds in cost.per_seed],
    }


def cost_table(final: pd.DataFrame, reference: str = "CE",
               distance: str = "target_ratio") -> pd.DataFrame:
    """The cost of each run against ``reference``, ready to print: test accuracy (mean ± std
    over seeds), its paired difference from ``reference`` in percentage points (mean ± std of
    the per-seed differences, and each seed's), and the distance to the run's own targets.

    Args:
        final: one row per (run, seed) with columns ``run``, ``seed``, ``accuracy`` (a
            fraction) and ``distance``, e.g. the last epoch of :func:`epoch_table`.

    Returns:
        One row of strings per run, ``reference`` included, in order of appearance.

    Raises:
        KeyError: as :func:`accuracy_cost`.
    """
    cost = accuracy_cost(final, reference)
    spread = final.groupby("run", sort=False)[distance].agg(["mean", "std"])
    return pd.DataFrame({
        **_paired_columns(cost, "test accuracy", f"minus {reference} (points)", 100, 1),
        "distance to own target": [f"{m:.3f} ± {s:.3f}" for m, s in
                                   spread.loc[cost.index].to_numpy()],
    }, index=cost.index)


def scatter_offset_rows(panels: Panels) -> pd.DataFrame:
    """:func:`~sar.metrics.target_distance_split` of every run, in its own class-mean units.

    In the spacing of the run's own class means the scatter is the run's tightness, which
    needs no targets, so runs pulled toward different targets (anchors, prototypes, their own
    class means) compare.

    Args:
        panels: ``{(run, seed): (features (N, D), labels (N,), targets (C, D) or None)}``;
            runs without targets yet (``None``) are left out.

    Returns:
        Columns ``run``, ``seed``, ``total``, ``scatter``, ``offset``, ``tightness``
        (``total = scatter + offset``; ``scatter == tightness``).
    """
    return pd.DataFrame([
        {"run": run, "seed": seed,
         **target_distance_split(features, labels, targets, spacing="class_means")}
        for (run, seed), (features, labels, targets) in panels.items() if targets is not None])


def tightness_table(rows: pd.DataFrame, reference: str = "CE") -> pd.DataFrame:
    """Tightness of every run (mean ± std over seeds), its paired difference from
    ``reference`` (mean ± std, and per seed) and the split ``total = scatter + offset``, all in
    the run's own class-mean units (so ``total`` is not the distance in target units that
    :func:`cost_table` gives).

    Args:
        rows: :func:`scatter_offset_rows`.

    Returns:
        One row of strings per run, in order of appearance.

    Raises:
        KeyError: ``reference`` is not a run of ``rows``.
    """
    tight = accuracy_cost(rows, reference, metric="tightness")
    mean = rows.groupby("run", sort=False)[["total", "scatter", "offset"]].mean()
    return pd.DataFrame({
        **_paired_columns(tight, "tightness", f"minus {reference}", 1, 3),
        "total = scatter + offset": [f"{t:.3f} = {s:.3f} + {o:.3f}" for t, s, o in
                                     mean.loc[tight.index].to_numpy()],
    }, index=tight.index)
