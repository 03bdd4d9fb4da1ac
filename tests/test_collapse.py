"""The feature-collapse recipe of notebook 02: low-dimensional networks, tracked runs, costs."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sar.experiments.collapse import (
    accuracy_cost,
    build_run,
    collapse_network,
    epoch_table,
    restore_run,
    train_tracked,
    wide_projector,
)


def _tiny_images(n: int = 48, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.randn(n, 1, 12, 12, generator=g) + labels[:, None, None, None].float()
    return TensorDataset(images, labels)


def _network(linear: bool = True):
    return lambda: collapse_network(3, 1, feat_dim=2, width=4, linear_feature=linear)


def test_a_linear_feature_takes_both_signs_and_the_default_one_does_not():
    x = torch.randn(64, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    linear, rectified = _network(True)().train(), _network(False)().train()
    assert linear.features(x).shape == (64, 2)
    assert (linear.features(x) < 0).any()
    assert (rectified.features(x) >= 0).all()


def test_the_wide_projector_keeps_ten_anchors_apart_in_two_dimensions():
    torch.manual_seed(0)
    anchors = torch.randn(10, 2)
    plain, rectified = wide_projector(2, hidden=64), wide_projector(2, 64, final_relu=True)
    assert [m.out_features for m in plain if isinstance(m, nn.Linear)] == [64, 64, 2]
    assert not isinstance(plain[-1], nn.ReLU) and isinstance(rectified[-1], nn.ReLU)
    z = plain(anchors)
    assert z.shape == (10, 2) and (z < 0).any()
    assert torch.pdist(z).min() > 1e-3  # ten distinct points
    assert (rectified(anchors) >= 0).all()
    with pytest.raises(ValueError, match=">= 1"):
        wide_projector(2, hidden=0)
    with pytest.raises(ValueError, match="init"):
        wide_projector(2, init="xavier")


def test_the_wide_projector_starts_its_last_linear_as_the_authors_projector_does():
    torch.manual_seed(0)
    authors = [m for m in wide_projector(64, hidden=256) if isinstance(m, nn.Linear)][-1]
    torch.manual_seed(0)
    plain = [m for m in wide_projector(64, hidden=256, init="torch")
             if isinstance(m, nn.Linear)][-1]
    # Kaiming-normal fan-out with ReLU gain: std sqrt(2 / fan_out) = sqrt(2 / 64)
    assert authors.weight.std().item() == pytest.approx((2 / 64) ** 0.5, rel=0.05)
    assert plain.weight.std().item() == pytest.approx((1 / (3 * 256)) ** 0.5, rel=0.05)


def test_build_run_starts_every_method_from_the_same_weights_and_widens_only_sar():
    ce = build_run("ce", 3, _network())
    sar = build_run("sar", 3, _network(), projector_width=16, trade_off=1.0)
    for key, value in ce.model.state_dict().items():
        assert torch.equal(value, sar.model.state_dict()[key]), key
    projector = sar.regularizer.projector
    assert [m.out_features for m in projector if isinstance(m, nn.Linear)] == [16, 16, 2]
    assert not isinstance(projector[-1], nn.ReLU)  # the feature is linear, so is the projector
    assert sar.regularizer.trade_off == 1.0
    rectified = build_run("sar", 3, _network(linear=False), projector_width=16)
    assert isinstance(rectified.regularizer.projector[-1], nn.ReLU)
    with pytest.raises(ValueError, match="no projector"):
        build_run("prototype", 3, _network(), projector_width=16)


def test_train_tracked_measures_every_epoch_and_restores_bit_for_bit():
    data, test = _tiny_images(), DataLoader(_tiny_images(24, seed=1), batch_size=12)

    def run():
        model = build_run("sar", 0, _network(), projector_width=8, use_gate=False)
        return train_tracked(model, data, test, num_classes=3, epochs=2, seed=0,
                             batch_size=16, lr=0.05, progress=False, snapshot_epochs=(0, 2))

    first, second = run(), run()
    for key, value in first["state"].items():  # seeded data order and initialisation
        assert torch.equal(value, second["state"][key]), key
    tracker = first["tracker"]
    assert tracker.table()["epoch"].tolist() == [0, 1, 2] and tracker.loader is None
    assert sorted(tracker.snapshots) == [0, 2]
    snap = tracker.snapshots[2]
    assert snap.features.shape == (24, 2) and snap.anchors.shape == (3, 2)
    model, history, _ = restore_run(build_run("sar", 0, _network(), projector_width=8,
                                              use_gate=False), first)
    assert not model.training and len(history) == 6  # 3 batches x 2 epochs
    with torch.no_grad():
        features = torch.cat([model.features_and_logits(x)[0] for x, _ in test])
    assert torch.equal(features, snap.features)
    assert torch.equal(model.regularizer.semantic_anchors, snap.anchors)


def test_epoch_table_measures_ce_against_its_class_means_and_the_others_against_targets():
    class Tracker:
        def __init__(self, anchor_ratio):
            self.anchor_ratio = anchor_ratio

        def table(self):
            return pd.DataFrame({"epoch": [0, 1], "ratio": [0.5, 0.2],
                                 "anchor_ratio": self.anchor_ratio})

    table = epoch_table({("CE", 0): Tracker([math.nan, math.nan]),
                         ("SAR", 0): Tracker([math.nan, 0.3])})
    assert table.query("run == 'CE'")["target_ratio"].tolist() == [0.5, 0.2]
    sar = table.query("run == 'SAR'")["target_ratio"]
    assert math.isnan(sar.iloc[0]) and sar.iloc[1] == 0.3  # no target yet: not the class means
    assert set(table["seed"]) == {0}


def test_accuracy_cost_is_the_paired_difference_per_seed():
    final = pd.DataFrame({"run": ["CE"] * 3 + ["SAR"] * 3, "seed": [0, 1, 2] * 2,
                          "accuracy": [0.80, 0.70, 0.90, 0.82, 0.71, 0.87]})
    cost = accuracy_cost(final, "CE")
    assert list(cost.index) == ["CE", "SAR"]
    sar = cost.loc["SAR"]
    assert sar["seeds"] == 3 and sar["mean"] == pytest.approx(0.8)
    assert sar["per_seed"] == pytest.approx((0.02, 0.01, -0.03))
    assert sar["diff_mean"] == pytest.approx(0.0, abs=1e-12)
    assert sar["diff_std"] == pytest.approx(pd.Series([0.02, 0.01, -0.03]).std())
    assert cost.loc["CE", "diff_mean"] == 0.0
    with pytest.raises(KeyError, match="plain"):
        accuracy_cost(final, "plain")
