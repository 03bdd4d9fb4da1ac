"""Tests for sar.metrics: hand-computed cases and agreement with scikit-learn / numpy loops."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from sar.metrics import (
    ConfusionMeter,
    accuracy,
    center_drift,
    class_mean_cosines,
    class_means,
    confusion_matrix,
    geometry_drift,
    iou_per_class,
    mean_iou,
    per_class_accuracy,
    pixel_accuracy,
    representation_metrics,
    segmentation_summary,
    shot_accuracy,
    target_distance_ratio,
    target_distance_split,
    target_distances,
)


@pytest.fixture
def rand_preds() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (400,), generator=g)
    noise = torch.randint(0, 5, (400,), generator=g)
    preds = torch.where(torch.rand(400, generator=g) < 0.6, labels, noise)
    return preds, labels


# ---------------------------------------------------------------------------- classification


def test_accuracy_hand_computed_preds_logits_and_numpy():
    labels = torch.tensor([0, 1, 2, 1])
    preds = torch.tensor([0, 1, 1, 1])
    logits = torch.nn.functional.one_hot(preds, 3).float()
    assert accuracy(preds, labels) == 0.75
    assert accuracy(logits, labels) == 0.75
    assert accuracy(preds.numpy(), labels.numpy()) == 0.75
    assert accuracy(preds, labels, ignore_index=1) == 0.5


def test_accuracy_matches_sklearn(rand_preds):
    preds, labels = rand_preds
    assert accuracy(preds, labels) == pytest.approx(skm.accuracy_score(labels, preds))


def test_per_class_accuracy_hand_computed_with_absent_class():
    labels = torch.tensor([0, 0, 1, 1, 1])
    preds = torch.tensor([0, 1, 1, 1, 0])
    acc = per_class_accuracy(preds, labels, num_classes=3)
    assert acc[:2].tolist() == pytest.approx([0.5, 2 / 3])
    assert math.isnan(acc[2])


def test_per_class_accuracy_matches_sklearn_recall(rand_preds):
    preds, labels = rand_preds
    ours = per_class_accuracy(preds, labels, 5).numpy()
    np.testing.assert_allclose(ours, skm.recall_score(labels, preds, average=None))


def test_shot_accuracy_skips_nan_and_handles_empty_group():
    acc = torch.tensor([1.0, 0.5, math.nan, 0.0])
    out = shot_accuracy(acc, {"many": [0, 1], "few": [2, 3], "none": []})
    assert out["many"] == 0.75
    assert out["few"] == 0.0
    assert math.isnan(out["none"])


# ------------------------------------------------------------------------------ segmentation


def test_confusion_matrix_hand_computed_rows_are_truth():
    labels = torch.tensor([0, 0, 1, 2])
    preds = torch.tensor([0, 1, 1, 0])
    expected = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 0]])
    conf = confusion_matrix(preds, labels, 3)
    assert conf.dtype == torch.int64
    assert torch.equal(conf, expected)


def test_confusion_matrix_matches_sklearn_on_segmentation_maps():
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (2, 8, 9), generator=g)
    preds = torch.randint(0, 4, (2, 8, 9), generator=g)
    ours = confusion_matrix(preds, labels, 4).numpy()
    ref = skm.confusion_matrix(labels.ravel(), preds.ravel(), labels=range(4))
    np.testing.assert_array_equal(ours, ref)


def test_confusion_matrix_masks_ignore_index():
    labels = torch.tensor([[0, 255], [1, 255]])
    preds = torch.tensor([[0, 1], [1, 0]])
    conf = confusion_matrix(preds, labels, 2, ignore_index=255)
    assert torch.equal(conf, torch.tensor([[1, 0], [0, 1]]))


@pytest.mark.parametrize(
    ("preds", "labels"),
    [([0, 1], [0, 2]), ([0, -1], [0, 1]), ([0, 3], [0, 1]), ([0, 1], [0, 254])],
)
def test_confusion_matrix_rejects_out_of_range(preds, labels):
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.tensor(preds), torch.tensor(labels), 2)


def test_confusion_matrix_rejects_shape_mismatch_and_float_preds():
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long), 2)
    with pytest.raises(TypeError, match="integer"):
        confusion_matrix(torch.zeros(3), torch.zeros(3, dtype=torch.long), 2)


def test_iou_pixel_accuracy_hand_computed():
    conf = torch.tensor([[3, 1, 0], [2, 4, 0], [0, 0, 0]])
    iou = iou_per_class(conf)
    # class 0: tp 3, fp 2, fn 1 -> 3/6; class 1: tp 4, fp 1, fn 2 -> 4/7; class 2 absent.
    assert iou[:2].tolist() == pytest.approx([0.5, 4 / 7])
    assert math.isnan(iou[2])
    assert mean_iou(conf) == pytest.approx((0.5 + 4 / 7) / 2)
    assert pixel_accuracy(conf) == pytest.approx(0.7)


def test_segmentation_summary_leaves_background_out_of_the_item_miou():
    scores = {"mIoU": 0.5, "pixel_accuracy": 0.9, "per_class_iou": [0.9, 0.2, math.nan, 0.4],
              "ratio": 0.3}
    row = segmentation_summary(scores, gate_step=60, seconds=12.5)
    assert list(row) == ["mIoU", "pixel accuracy", "mIoU items only",
                         "feature compactness / separation", "gate first open (step)",
                         "wall time (s)"]
    assert row["mIoU items only"] == pytest.approx(0.3)  # (0.2 + 0.4) / 2, NaN skipped
    assert row["gate first open (step)"] == 60 and row["wall time (s)"] == 12.5
    other = segmentation_summary(scores, background=3)
    assert other["mIoU items only"] == pytest.approx((0.9 + 0.2) / 2)
    bare = segmentation_summary({k: scores[k] for k in ("mIoU", "pixel_accuracy",
                                                        "per_class_iou")}, background=None)
    assert "mIoU items only" not in bare and math.isnan(bare["feature compactness / separation"])
    with pytest.raises(ValueError, match="background 4"):
        segmentation_summary(scores, background=4)


def test_iou_matches_sklearn_jaccard(rand_preds):
    preds, labels = rand_preds
    ours = iou_per_class(confusion_matrix(preds, labels, 5)).numpy()
    np.testing.assert_allclose(ours, skm.jaccard_score(labels, preds, average=None))


def test_confusion_meter_streams_batches():
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 3, (4, 5, 5), generator=g)
    labels[0, 0] = 255
    preds = torch.randint(0, 3, (4, 5, 5), generator=g)
    meter = ConfusionMeter(3, ignore_index=255)
    for p, t in zip(preds, labels, strict=True):
        meter.update(p, t)
    full = confusion_matrix(preds, labels, 3)
    assert torch.equal(meter.matrix, full)
    assert meter.mean_iou() == mean_iou(full)
    assert meter.pixel_accuracy() == pixel_accuracy(full)
    meter.reset()
    assert meter.matrix.sum() == 0


# ------------------------------------------------------------------- representation geometry


def _nc1_loop(feats: np.ndarray, labels: np.ndarray) -> float:
    """Papyan et al. NC1 by explicit sums and numpy pinv (slow reference)."""
    classes = np.unique(labels)
    means = {c: feats[labels == c].mean(axis=0) for c in classes}
    global_mean = np.mean([means[c] for c in classes], axis=0)
    d = feats.shape[1]
    sigma_w, sigma_b = np.zeros((d, d)), np.zeros((d, d))
    for f, y in zip(feats, labels, strict=True):
        r = f - means[y]
        sigma_w += np.outer(r, r) / len(feats)
    for c in classes:
        r = means[c] - global_mean
        sigma_b += np.outer(r, r) / len(classes)
    return float(np.trace(sigma_w @ np.linalg.pinv(sigma_b, hermitian=True)) / len(classes))


def _clusters(num_classes: int, per_class: int, dim: int, noise: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=g) * 3
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    feats = centres[labels] + noise * torch.randn(len(labels), dim, generator=g)
    return feats.double(), labels


def test_class_mean_cosines_of_a_shifted_simplex_and_against_numpy():
    """Centred on their average, the vertices of a simplex meet at cosine -1 / (C - 1),
    wherever the simplex sits; random features match a numpy loop; absent classes are NaN."""
    vertices = torch.eye(4) * 3.0 + 5.0  # a 4-class simplex, shifted off the origin
    labels = torch.arange(4).repeat_interleave(5)
    noise = 0.1 * torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    noise -= noise.view(4, 5, 4).mean(1).repeat_interleave(5, 0)  # class means stay exact
    cos = class_mean_cosines(vertices[labels] + noise, labels, 4)
    expected = torch.full((4, 4), -1 / 3, dtype=torch.float64).fill_diagonal_(1.0)
    torch.testing.assert_close(cos, expected)

    rng = np.random.default_rng(1)
    feats, labs = rng.normal(size=(60, 5)), rng.integers(0, 3, 60)
    means = np.stack([feats[labs == c].mean(0) for c in range(3)])
    centred = means - means.mean(0)
    unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    np.testing.assert_allclose(class_mean_cosines(feats, labs, 3).numpy(), unit @ unit.T)

    absent = class_mean_cosines(torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 3, 3]), 4)
    assert torch.isnan(absent[2]).all() and torch.isnan(absent[:, 2]).all()
    assert not torch.isnan(absent[[0, 1, 3]][:, [0, 1, 3]]).any()


def test_class_means_hand_computed_nan_for_absent():
    feats = torch.tensor([[0.0, 0.0], [2.0, 2.0], [1.0, -1.0]])
    means = class_means(feats, torch.tensor([0, 0, 2]), num_classes=3)
    assert means.dtype == torch.float32
    assert means[0].tolist() == [1.0, 1.0]
    assert means[2].tolist() == [1.0, -1.0]
    assert means[1].isnan().all()


def test_compactness_separation_ratio_for_two_known_clusters():
    # Class 0 at x = ±1 around 0, class 1 at x = 4 ± 1: spread 1, distance 4.
    feats = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [3.0, 0.0], [5.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    out = representation_metrics(feats, labels, num_classes=2)
    assert out["compactness"] == pytest.approx(1.0)
    assert out["separation"] == pytest.approx(16.0)
    assert out["ratio"] == pytest.approx(1 / 16)
    # Two centred means are antipodal.
    assert out["min_center_cosine"] == pytest.approx(-1.0)
    assert out["mean_center_cosine"] == pytest.approx(-1.0)
    # Σ_W = diag(1, 0), Σ_B = diag(4, 0) -> tr(Σ_W Σ_B⁺)/2 = 1/8.
    assert out["nc1"] == pytest.approx(1 / 8)


def test_nc1_near_zero_when_collapsed_and_large_when_random():
    collapsed, labels = _clusters(5, 20, 16, noise=1e-4)
    assert representation_metrics(collapsed, labels, 5)["nc1"] < 1e-6
    random = torch.randn(100, 16, generator=torch.Generator().manual_seed(3))
    assert representation_metrics(random, labels, 5)["nc1"] > 1


@pytest.mark.parametrize("dim", [3, 16])  # D < C - 1 and D > C - 1
def test_nc1_matches_numpy_loop(dim):
    feats, labels = _clusters(6, 15, dim, noise=2.0, seed=4)
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(5))]
    ours = representation_metrics(feats, labels, 6)["nc1"]
    assert ours == pytest.approx(_nc1_loop(feats.numpy(), labels.numpy()), rel=1e-6)


def test_center_cosines_of_simplex():
    # Means on a regular simplex: every centred pair has cosine -1/(C-1).
    means = torch.eye(4) * 5
    labels = torch.arange(4).repeat(3)
    out = representation_metrics(means[labels], labels, 4)
    assert out["min_center_cosine"] == pytest.approx(-1 / 3)
    assert out["max_center_cosine"] == pytest.approx(-1 / 3)
    assert out["nc1"] == pytest.approx(0.0, abs=1e-12)


def test_anchor_metrics_hand_computed():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    feats = torch.tensor([[2.0, 0.0], [0.0, -2.0]])
    out = representation_metrics(feats, torch.tensor([0, 1]), 2, anchors=anchors)
    assert out["anchor_cosine"] == pytest.approx(0.0)  # (1 + -1) / 2
    assert out["anchor_distance"] == pytest.approx((1.0 + 16.0) / 2 / 2)


def test_representation_metrics_single_class_is_nan_for_pairs():
    out = representation_metrics(torch.randn(5, 3), torch.zeros(5, dtype=torch.long), 3)
    assert math.isnan(out["separation"]) and math.isnan(out["nc1"])
    assert out["num_present"] == 1.0


# ------------------------------------------------------------------------------------ drift


def test_center_drift_zero_for_identical_runs_positive_when_perturbed():
    g = torch.Generator().manual_seed(6)
    base = torch.randn(5, 8, generator=g)
    same = torch.stack([base, base, base])
    assert center_drift(same) == pytest.approx(0.0, abs=1e-12)
    assert geometry_drift(same) == pytest.approx(0.0, abs=1e-12)
    moved = torch.stack([base, base + 0.5 * torch.randn(5, 8, generator=g)])
    assert center_drift(moved) > 0.01
    assert geometry_drift(moved) > 0.01


def test_center_drift_hand_computed():
    run_a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    run_b = torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # class 0 turned 90°, class 1 unchanged
    assert center_drift(torch.stack([run_a, run_b])) == pytest.approx(0.5)


def test_geometry_drift_rotation_invariant_center_drift_not():
    g = torch.Generator().manual_seed(7)
    base = torch.randn(6, 10, generator=g, dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))
    runs = torch.stack([base, base @ rotation])
    assert geometry_drift(runs) == pytest.approx(0.0, abs=1e-10)
    assert center_drift(runs) > 0.1


def test_geometry_drift_matches_pairwise_definition():
    centres = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(8)).double()

    def cos(m: torch.Tensor) -> torch.Tensor:
        c = m - m.mean(0)
        c = c / c.norm(dim=1, keepdim=True)
        return c @ c.T

    off = ~torch.eye(4, dtype=torch.bool)
    expected = np.mean(
        [
            (cos(centres[s]) - cos(centres[t])).abs()[off].mean().item()
            for s, t in itertools.combinations(range(3), 2)
        ]
    )
    assert geometry_drift(centres) == pytest.approx(expected)


def test_drift_needs_two_runs():
    with pytest.raises(ValueError, match="S >= 2"):
        center_drift(torch.randn(1, 3, 4))


# ------------------------------------------------------------- model_anchors / the tracker


def _tiny_classifier(regularizer=None, **sar_options):
    from sar.models import SARClassifier, SmallCNN

    torch.manual_seed(0)
    net = SmallCNN(num_classes=3, in_channels=1, width=4, feat_dim=6)
    return SARClassifier(net, regularizer, **sar_options)


def _tiny_loader(n: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 1, 8, 8, generator=g), torch.arange(n) % 3
    return [(x[i : i + 8], y[i : i + 8]) for i in range(0, n, 8)]


def test_model_anchors_per_method():
    from sar.baselines import NoRegularizer, PrototypeRegularizer
    from sar.metrics import model_anchors

    assert model_anchors(_tiny_classifier(NoRegularizer())) is None
    sar_model = _tiny_classifier()
    assert model_anchors(sar_model) is None  # gate still closed
    sar_model.regularizer.gate_opened.fill_(True)
    sar_model.regularizer.semantic_anchors.normal_()
    got = model_anchors(sar_model)
    assert torch.equal(got, sar_model.regularizer.semantic_anchors)
    got.zero_()  # a copy: the buffer is untouched
    assert sar_model.regularizer.semantic_anchors.abs().sum() > 0
    proto = _tiny_classifier(PrototypeRegularizer(3, 6))
    proto.regularizer.seen[:2] = True
    assert model_anchors(proto) is None  # class 2 never seen
    proto.regularizer.seen[:] = True
    assert torch.equal(model_anchors(proto), proto.regularizer.prototypes)


def test_tracker_rows_and_snapshots_through_fit():
    from sar.baselines import NoRegularizer
    from sar.metrics import RepresentationTracker
    from sar.train import fit

    model, loader = _tiny_classifier(NoRegularizer()), _tiny_loader()
    tracker = RepresentationTracker(loader, 3, snapshot_epochs=(0, 2))
    tracker(0, model)
    fit(model, _tiny_loader(seed=1), epochs=2, lr=0.01, progress=False, device="cpu",
        on_epoch_end=tracker)
    table = tracker.table()
    assert table["epoch"].tolist() == [0, 1, 2]
    assert sorted(tracker.snapshots) == [0, 2]
    snap = tracker.snapshots[2]
    assert snap.features.shape == (24, 6) and snap.anchors is None
    assert torch.equal(snap.labels, torch.arange(24) % 3)
    # the last row describes the trained model exactly
    model.eval()
    with torch.no_grad():
        feats = torch.cat([model.model.features(x) for x, _ in loader])
        logits = model.model.fc(feats)
    model.train()
    assert torch.allclose(snap.features, feats, atol=1e-6)
    assert table["accuracy"].iloc[-1] == pytest.approx(accuracy(logits, snap.labels))
    expected = representation_metrics(feats, snap.labels, 3)
    assert table["nc1"].iloc[-1] == pytest.approx(expected["nc1"], rel=1e-5)
    assert table[["anchor_cosine", "anchor_cosine_other", "anchor_step_drift"]].isna().all().all()
    assert model.training  # the tracker restores the mode


def test_tracker_anchor_columns_hand_computed():
    from sar.metrics import RepresentationTracker

    model = _tiny_classifier()
    reg = model.regularizer
    reg.gate_opened.fill_(True)
    reg.semantic_anchors.copy_(torch.rand(3, 6, generator=torch.Generator().manual_seed(3)))
    loader = _tiny_loader()
    tracker = RepresentationTracker(loader, 3, snapshot_epochs=(5,))
    tracker(4, model)
    first = reg.semantic_anchors.clone()
    reg.semantic_anchors[0] = -reg.semantic_anchors[0]  # class 0 turns around
    tracker(5, model)
    feats, labels = tracker.snapshots[5].features.double(), tracker.snapshots[5].labels
    anchors = reg.semantic_anchors.double()
    cos = torch.stack([torch.nn.functional.cosine_similarity(feats, a[None], dim=1)
                       for a in anchors], dim=1)
    own = cos[torch.arange(len(labels)), labels]
    other = torch.stack([cos[i, [c for c in range(3) if c != labels[i]]].mean()
                         for i in range(len(labels))])
    row = tracker.table().iloc[-1]
    assert row["anchor_cosine"] == pytest.approx(own.mean().item(), rel=1e-6)
    assert row["anchor_cosine_other"] == pytest.approx(other.mean().item(), rel=1e-6)
    assert row["anchor_step_drift"] == pytest.approx(2 / 3)  # one of three classes reversed
    assert math.isnan(tracker.table()["anchor_step_drift"].iloc[0])
    assert torch.equal(tracker.snapshots[5].anchors, reg.semantic_anchors)
    assert not torch.equal(first, reg.semantic_anchors)


def _target_distance_ratio_loop(features, labels, targets):
    # slow reference: plain Python loops over samples and class pairs
    present = sorted(set(labels.tolist()))
    pair_sq = [float(((targets[a] - targets[b]) ** 2).sum())
               for a, b in itertools.combinations(present, 2)]
    spacing = sum(pair_sq) / len(pair_sq)
    out = []
    for c in range(len(targets)):
        rows = [float(((f - targets[c]) ** 2).sum())
                for f, y in zip(features, labels, strict=True) if y == c]
        out.append(sum(rows) / len(rows) / spacing if rows else math.nan)
    return torch.tensor(out, dtype=torch.float64)


def test_target_distance_ratio_matches_loop_reference_and_is_scale_free():
    g = torch.Generator().manual_seed(3)
    features, targets = torch.randn(60, 5, generator=g), torch.randn(4, 5, generator=g)
    labels = torch.randint(0, 3, (60,), generator=g)  # class 3 absent
    got = target_distance_ratio(features, labels, targets)
    want = _target_distance_ratio_loop(features, labels, targets)
    assert torch.allclose(got[:3], want[:3], rtol=1e-10) and math.isnan(got[3])
    assert torch.allclose(target_distance_ratio(7 * features, labels, 7 * targets)[:3], got[:3])
    assert target_distance_ratio(targets[labels], labels, targets)[:3].abs().max() == 0


def test_target_distance_ratio_on_class_means_is_the_ratio_metric():
    g = torch.Generator().manual_seed(4)
    features, labels = torch.randn(80, 6, generator=g), torch.arange(80) % 4
    means = class_means(features, labels, 4)
    per_class = target_distance_ratio(features, labels, means)
    counts = torch.bincount(labels, minlength=4).double()
    ratio = representation_metrics(features, labels, 4)["ratio"]
    # class_means returns float32 means, the metric measures in float64
    assert (per_class * counts).sum().item() / 80 == pytest.approx(ratio, rel=1e-6)


def test_target_distance_split_adds_scatter_and_offset_to_the_distance():
    g = torch.Generator().manual_seed(5)
    features, labels = torch.randn(90, 6, generator=g), torch.arange(90) % 3
    targets = torch.randn(3, 6, generator=g)
    split = target_distance_split(features, labels, targets)
    counts = torch.bincount(labels).double()
    per_class = target_distance_ratio(features, labels, targets)
    assert split["total"] == pytest.approx((per_class * counts).sum().item() / 90)
    assert split["scatter"] + split["offset"] == pytest.approx(split["total"])
    ratio = representation_metrics(features, labels, 3)["ratio"]
    assert split["tightness"] == pytest.approx(ratio)
    own = target_distance_split(features, labels, class_means(features, labels, 3))
    assert own["offset"] == pytest.approx(0, abs=1e-12)
    assert own["total"] == pytest.approx(own["tightness"], rel=1e-6)
    moved = target_distance_split(features + 3.0, labels, targets)  # same clusters, elsewhere
    assert moved["tightness"] == pytest.approx(split["tightness"])
    assert moved["offset"] != pytest.approx(split["offset"])


@pytest.mark.parametrize(("labels", "targets", "match"), [
    (torch.zeros(5, dtype=torch.long), torch.randn(3, 4), "two classes"),
    (torch.tensor([0, 1, 0, 1, 0]), torch.ones(3, 4), "coincide"),
    (torch.tensor([0, 1, 0, 1, 0]), torch.randn(3, 5), "D=5"),
])
def test_target_distance_ratio_refuses_what_it_cannot_measure(labels, targets, match):
    with pytest.raises(ValueError, match=match):
        target_distance_ratio(torch.randn(5, 4), labels, targets)


def test_target_distances_are_exact_distances_over_the_rms_spacing():
    g = torch.Generator().manual_seed(5)
    features = torch.randn(30, 4, generator=g, dtype=torch.float64)
    targets = torch.randn(3, 4, generator=g, dtype=torch.float64)
    labels = torch.arange(30) % 3
    own, nearest = target_distances(features, labels, targets)
    scale = math.sqrt(sum(float(((targets[a] - targets[b]) ** 2).sum())
                          for a, b in itertools.combinations(range(3), 2)) / 3)
    for i in range(30):
        d = [float((features[i] - t).norm()) / scale for t in targets]
        y = int(labels[i])
        assert own[i].item() == pytest.approx(d[y], rel=1e-9)
        assert nearest[i].item() == pytest.approx(min(d[:y] + d[y + 1:]), rel=1e-9)
    ratio = target_distance_ratio(features, labels, targets)
    assert torch.allclose(ratio, torch.stack([own[labels == c].square().mean() for c in range(3)]))


def test_target_distances_ignore_targets_of_absent_classes():
    targets = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.1, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])  # class 2 (next to class 0's target) absent
    features = targets[labels]
    own, nearest = target_distances(features, labels, targets)
    assert own.abs().max() == 0 and torch.allclose(nearest, torch.ones(4, dtype=torch.float64))


def test_class_mean_cosine_is_the_mean_cosine_to_the_own_class_mean():
    g = torch.Generator().manual_seed(6)
    features, labels = torch.randn(40, 3, generator=g, dtype=torch.float64), torch.arange(40) % 4
    means = [features[labels == c].mean(0) for c in range(4)]
    want = sum(float(torch.dot(f, means[y]) / (f.norm() * means[y].norm()))
               for f, y in zip(features, labels.tolist(), strict=True)) / 40
    got = representation_metrics(features, labels, 4)["class_mean_cosine"]
    assert got == pytest.approx(want, rel=1e-10)


def test_anchor_ratio_is_the_sample_weighted_target_distance_ratio():
    g = torch.Generator().manual_seed(7)
    features = torch.randn(50, 4, generator=g, dtype=torch.float64)
    anchors = torch.randn(3, 4, generator=g, dtype=torch.float64)
    labels = torch.arange(50) % 3
    per_class = target_distance_ratio(features, labels, anchors)
    counts = torch.bincount(labels, minlength=3).double()
    got = representation_metrics(features, labels, 3, anchors)["anchor_ratio"]
    assert got == pytest.approx(((per_class * counts).sum() / 50).item(), rel=1e-9)
    scaled = representation_metrics(3 * features, labels, 3, 3 * anchors)["anchor_ratio"]
    assert scaled == pytest.approx(got, rel=1e-9)


def test_pull_shares_match_a_loop_over_points_and_the_regularizers_pull():
    from sar import SemanticAnchorRegularizer
    from sar.metrics import pull_shares

    gen = torch.Generator().manual_seed(0)
    feats, targets = torch.randn(40, 3, generator=gen), torch.randn(4, 3, generator=gen)
    labels = torch.tensor([0] * 25 + [1] * 10 + [3] * 5)  # class 2 absent
    shares = pull_shares(feats, labels, targets)
    ys = labels.tolist()
    penalty = [((f - targets[y]) ** 2).mean().item() for f, y in zip(feats, ys, strict=True)]
    by_class = {c: [e for e, y in zip(penalty, ys, strict=True) if y == c] for c in (0, 1, 3)}
    total = sum(penalty)
    means = {c: sum(v) / len(v) for c, v in by_class.items()}
    for c in range(4):
        assert shares["points"][c] == pytest.approx(len(by_class.get(c, [])) / 40)
        assert shares["per_pixel_pull"][c] == pytest.approx(sum(by_class.get(c, [])) / total)
        assert shares["per_class_pull"][c] == pytest.approx(
            means.get(c, 0.0) / sum(means.values()))
    # the regulariser's two reductions are these sums: per point and per class present
    for reduction, expected in (("pixel", total / 40), ("class", sum(means.values()) / 3)):
        reg = SemanticAnchorRegularizer(4, 3, pull_reduction=reduction)
        reg.semantic_anchors.copy_(targets)
        assert reg._pull(feats, labels).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="at least one point"):
        pull_shares(feats[:0], labels[:0], targets)
    ignored = pull_shares(torch.cat([feats, feats[:3]]), torch.cat([labels, torch.full((3,), 255)]),
                          targets)  # ignored positions are left out, as the pull leaves them out
    assert all(torch.equal(ignored[k], shares[k]) for k in shares)
    on_target = pull_shares(targets[labels], labels, targets)  # no pull: zero shares, no NaN
    assert on_target["per_pixel_pull"].eq(0).all() and on_target["per_class_pull"].eq(0).all()
    with pytest.raises(ValueError, match="targets have D=2"):
        pull_shares(feats, labels, targets[:, :2])


def test_target_distance_split_in_class_mean_units_makes_the_scatter_the_tightness():
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(300, 4, generator=gen)
    labels = torch.arange(300) % 3
    targets = 5 * torch.randn(3, 4, generator=gen)
    by_targets = target_distance_split(features, labels, targets)
    by_means = target_distance_split(features, labels, targets, spacing="class_means")
    assert by_means["scatter"] == pytest.approx(by_means["tightness"])
    assert by_means["total"] == pytest.approx(by_means["scatter"] + by_means["offset"])
    ratio = by_means["total"] / by_targets["total"]  # one change of unit for all three parts
    assert by_means["offset"] / by_targets["offset"] == pytest.approx(ratio)
    assert ratio != pytest.approx(1.0)
    with pytest.raises(ValueError, match="spacing must be"):
        target_distance_split(features, labels, targets, spacing="pixels")
