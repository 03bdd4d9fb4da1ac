"""Tests of sar.train: fit (SAR and plain), schedules, exact resume, divergence, evaluation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from sar.data import cap_per_class
from sar.metrics import representation_metrics
from sar.models import SARClassifier, SARSegmentationModel, SmallCNN, build_smp_model
from sar.train import collect_features, evaluate, fit, load_checkpoint

NUM_CLASSES = 4
SAR_KEYS = {"anchor_ce", "pull", "reg_loss", "gate_passed", "gate_opened", "anchor_accuracy",
            "min_anchor_prob"}
CPU = torch.device("cpu")



# ------------------------------------------------------------------------------- helpers
def blob_images(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, 1, 12, 12)`` noisy images whose class ``c`` lights up quadrant ``c``; ``(n,)``."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % NUM_CLASSES
    images = 0.3 * torch.randn(n, 1, 12, 12, generator=g)
    for i, c in enumerate(labels.tolist()):
        row, col = divmod(c, 2)
        images[i, 0, 6 * row:6 * row + 6, 6 * col:6 * col + 6] += 1.0
    return images, labels


def loader_of(dataset: Dataset, *, batch_size: int = 16, seed: int | None = 0,
              shuffle: bool = True) -> DataLoader:
    """``seed=None``: no generator, so shuffling draws from the global torch RNG."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=0,
                      generator=generator)


def sar_classifier(seed: int = 0, **sar_options: float) -> SARClassifier:
    torch.manual_seed(seed)
    net = SmallCNN(num_classes=NUM_CLASSES, in_channels=1, width=8, feat_dim=16)
    return SARClassifier(net, **sar_options)


def linear_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(144, NUM_CLASSES))


def quiet_fit(model: nn.Module, loader: DataLoader, device: torch.device = CPU,
              **kwargs) -> pd.DataFrame:
    return fit(model, loader, device=device, progress=False, **kwargs)


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


class PoisonAfter(Dataset):
    """Serves ``images, labels`` but NaN images once ``clean`` items have been read."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, clean: int) -> None:
        self.images, self.labels, self.clean, self.reads = images, labels, clean, 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.reads += 1
        image = self.images[i] if self.reads <= self.clean else torch.full_like(self.images[i],
                                                                               math.nan)
        return image, self.labels[i]


# ----------------------------------------------------------------------------------- fit
def test_sar_fit_lowers_loss_and_logs_sar_keys(device: torch.device) -> None:
    images, labels = blob_images(16)
    model = sar_classifier()
    history = quiet_fit(model, loader_of(TensorDataset(images, labels), shuffle=False), device,
                        epochs=30, lr=0.05, schedule="constant")
    assert list(history.columns[:5]) == ["epoch", "step", "lr", "task_loss", "loss"]
    assert set(history.columns[5:]) == SAR_KEYS
    assert len(history) == 30 and history["step"].tolist() == list(range(30))
    assert all(isinstance(v, float) for v in history.iloc[-1][["loss", "pull"]])
    np.testing.assert_allclose(history["loss"], history["task_loss"] + history["reg_loss"],
                               rtol=1e-5, atol=1e-6)
    for column in ("loss", "task_loss", "anchor_ce"):
        first, last = history[column].iloc[:3].mean(), history[column].iloc[-3:].mean()
        assert last < 0.5 * first, column
    assert history["gate_opened"].iloc[-1] == 1.0  # the anchors became classifiable
    assert model.training  # mode restored


def test_on_epoch_end_sees_every_epoch_and_training_goes_on() -> None:
    images, labels = blob_images(16)
    seen = []

    def snapshot(epoch, model):
        seen.append((epoch, model.training))
        model.eval()  # a callback may switch modes; fit puts the model back in training

    quiet_fit(linear_model(), loader_of(TensorDataset(images, labels)), epochs=3,
              schedule="constant", on_epoch_end=snapshot)
    assert seen == [(1, True), (2, True), (3, True)]


def test_plain_module_trains() -> None:
    images, labels = blob_images(16)
    history = quiet_fit(linear_model(), loader_of(TensorDataset(images, labels)), epochs=20,
                        lr=0.1, optimizer="adamw", schedule="constant")
    assert list(history.columns) == ["epoch", "step", "lr", "task_loss", "loss"]
    assert (history["loss"] == history["task_loss"]).all()
    assert history["loss"].iloc[-3:].mean() < 0.5 * history["loss"].iloc[:3].mean()


@pytest.mark.parametrize("schedule", ["cosine", "poly", "constant"])
def test_lr_follows_schedule(schedule: str) -> None:
    images, labels = blob_images(64)
    loader = loader_of(TensorDataset(images, labels))  # 4 steps per epoch
    history = quiet_fit(linear_model(), loader, epochs=3, max_steps=10, lr=0.2,
                        schedule=schedule, warmup_steps=2, log_every=3)
    assert history["step"].tolist() == [0, 3, 6, 9]
    assert history["epoch"].tolist() == [0, 0, 1, 2]

    def expected(step: int) -> float:
        if step < 2:
            return 0.2 * (step + 1) / 2
        t = (step - 2) / 8
        return 0.2 * {"cosine": 0.5 * (1 + math.cos(math.pi * t)), "poly": (1 - t) ** 0.9,
                      "constant": 1.0}[schedule]

    np.testing.assert_allclose(history["lr"], [expected(s) for s in (0, 3, 6, 9)], rtol=1e-12)


# ---------------------------------------------------------------------- checkpoint/resume
@pytest.mark.parametrize("seeded_loader", [True, False])
def test_resume_equals_uninterrupted_run(tmp_path, seeded_loader: bool, device) -> None:
    images, labels = blob_images(64)
    seed, other_seed = (0, 99) if seeded_loader else (None, None)
    options = dict(epochs=2, lr=0.05, schedule="constant", warmup_steps=6, device=device)
    sar = dict(update_conf=0.3, momentum=0.9)  # the gate opens early: EMA and pull both run

    straight = sar_classifier(**sar)
    expected = quiet_fit(straight, loader_of(TensorDataset(images, labels), seed=seed), **options)
    assert straight.regularizer.gate_opened and straight.regularizer.num_updates > 0

    path = tmp_path / "ckpt.pt"
    quiet_fit(sar_classifier(**sar), loader_of(TensorDataset(images, labels), seed=seed),
              **{**options, "epochs": 1}, checkpoint=path)
    # a fresh process: other weights, another RNG state, a loader seeded differently
    torch.manual_seed(123)
    resumed = sar_classifier(seed=7, **sar)
    history = quiet_fit(resumed, loader_of(TensorDataset(images, labels), seed=other_seed),
                        **options, checkpoint=path, resume=True)

    assert_same_state(straight, resumed)
    pd.testing.assert_frame_equal(history, expected)
    assert load_checkpoint(path, sar_classifier(**sar))["epoch"] == 2


def test_nan_stops_training_keeps_last_checkpoint_and_resumes(tmp_path, device) -> None:
    images, labels = blob_images(64)
    options = dict(epochs=2, lr=0.05, schedule="cosine", device=device)
    straight = sar_classifier()
    expected = quiet_fit(straight, loader_of(TensorDataset(images, labels)), **options)

    path = tmp_path / "ckpt.pt"
    poisoned = loader_of(PoisonAfter(images, labels, clean=64))  # the 2nd epoch is NaN
    with pytest.raises(FloatingPointError, match=r"step 4 \(epoch 1.*lower lr.*inputs"):
        quiet_fit(sar_classifier(), poisoned, **options, checkpoint=path)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary leftovers

    resumed = sar_classifier(seed=5)
    state = load_checkpoint(path, resumed)
    assert (state["epoch"], state["step"], len(state["history"])) == (1, 4, 4)
    history = quiet_fit(resumed, loader_of(TensorDataset(images, labels)), **options,
                        checkpoint=path, resume=True)
    assert_same_state(straight, resumed)
    pd.testing.assert_frame_equal(history, expected)


def test_nan_loss_of_plain_model_raises() -> None:
    images, labels = blob_images(16)
    images[5] = math.inf
    with pytest.raises(FloatingPointError, match="step 0 .*lower lr"):
        quiet_fit(linear_model(), loader_of(TensorDataset(images, labels)))


def test_default_criterion_refuses_ignore_index_that_is_a_class() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 300))
    images, labels = blob_images(16)
    with pytest.raises(ValueError, match="ignore_index=255"):
        quiet_fit(model, loader_of(TensorDataset(images, labels)))


# ------------------------------------------------------------------------------ evaluate
class Echo(nn.Module):
    """Returns its input as logits, so the test controls the predictions; features = input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


def test_evaluate_classification_on_controlled_predictions() -> None:
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 3, 3])
    preds = torch.tensor([0, 0, 0, 1, 1, 1, 2, 0, 0, 0])
    logits = nn.functional.one_hot(preds, NUM_CLASSES).float()
    model = Echo().eval()
    result = evaluate(model, loader_of(TensorDataset(logits, labels), batch_size=3),
                      num_classes=NUM_CLASSES, device=CPU, groups={"many": [0, 1], "few": [2, 3]},
                      features=True, anchors=torch.eye(NUM_CLASSES))
    assert result["accuracy"] == pytest.approx(6 / 10)
    assert result["per_class_accuracy"] == pytest.approx([3 / 4, 1.0, 1 / 2, 0.0])
    assert result["many_accuracy"] == pytest.approx((3 / 4 + 1) / 2)
    assert result["few_accuracy"] == pytest.approx(1 / 4)
    reference = representation_metrics(logits, labels, NUM_CLASSES, anchors=torch.eye(4))
    for key, value in reference.items():
        assert result[key] == pytest.approx(value, nan_ok=True), key
    assert not model.training


def test_evaluate_segmentation_iou() -> None:
    labels = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [2, 2, 2, 2]]])
    preds = torch.tensor([[[0, 1, 1, 1], [0, 0, 1, 1], [2, 2, 0, 1], [2, 2, 2, 0]]])
    logits = nn.functional.one_hot(preds, 3).permute(0, 3, 1, 2).float()
    result = evaluate(Echo(), loader_of(TensorDataset(logits, labels)), num_classes=3,
                      task="segmentation", device=CPU)
    # class 0: tp 3, fp 1, fn 1; class 1: tp 4, fp 1, fn 0; class 2: tp 5, fp 0, fn 1
    assert result["per_class_iou"] == pytest.approx([3 / 5, 4 / 5, 5 / 6])
    assert result["mIoU"] == pytest.approx((3 / 5 + 4 / 5 + 5 / 6) / 3)
    assert result["pixel_accuracy"] == pytest.approx(12 / 14)


class HalfResolution(nn.Module):
    """Feature map = input at half resolution, so each feature must equal its pixel's label."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, :, ::2, ::2], x


def test_collect_features_aligns_downsampled_labels_and_subsamples() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (6, 16, 16), generator=g)
    labels[:, :4] = 255
    images = labels[:, None].float()
    loader = loader_of(TensorDataset(images, labels), batch_size=2, shuffle=False)
    feats, labs = collect_features(HalfResolution(), loader, device=CPU, max_points=None)
    assert feats.shape == (6 * 8 * 6, 1) and feats.dtype == torch.float32
    assert labs.dtype == torch.int64 and torch.equal(feats[:, 0].long(), labs)

    sample, sample_labels = collect_features(HalfResolution(), loader, device=CPU, max_points=50)
    again, _ = collect_features(HalfResolution(), loader, device=CPU, max_points=50)
    assert sample.shape == (50, 1) and torch.equal(sample, again)
    assert torch.equal(sample[:, 0].long(), sample_labels)

    capped, capped_labels = collect_features(HalfResolution(), loader, device=CPU,
                                             max_points=None, per_class=20, seed=1)
    assert torch.bincount(capped_labels).tolist() == [20, 20, 20]
    assert torch.equal(capped[:, 0].long(), capped_labels)  # features follow their labels
    assert torch.equal(capped, feats[cap_per_class(labs, 20, seed=1)])


def test_segmentation_fit_and_evaluate_with_features(tmp_path) -> None:
    torch.manual_seed(0)
    net = build_smp_model("Unet", "resnet18", num_classes=3, in_channels=3, encoder_depth=3,
                          decoder_channels=(16, 8, 8))
    model = SARSegmentationModel(net)
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 3, (4, 32, 32), generator=g)
    masks[:, :2] = 255
    images = nn.functional.one_hot(masks.clamp(max=2), 3).permute(0, 3, 1, 2).float()
    loader = loader_of(TensorDataset(images, masks), batch_size=2)
    history = quiet_fit(model, loader, epochs=2, lr=0.01, checkpoint=tmp_path / "seg.pt")
    assert len(history) == 4 and SAR_KEYS <= set(history.columns)
    assert np.isfinite(history["loss"]).all()

    result = evaluate(model, loader, num_classes=3, task="segmentation", device=CPU,
                      features=True, anchors=model.regularizer.semantic_anchors,
                      max_feature_points=500)
    assert 0.0 <= result["mIoU"] <= 1.0 and len(result["per_class_iou"]) == 3
    assert 0.0 <= result["pixel_accuracy"] <= 1.0
    assert result["num_present"] == 3.0 and {"compactness", "anchor_cosine"} <= set(result)
    feats, labs = collect_features(model, loader, device=CPU, max_points=500)
    assert feats.shape == (500, 8) and int(labs.max()) < 3
    assert model.training


def test_gate_opened_step_is_the_first_logged_open_step() -> None:
    from sar.train import gate_opened_step

    history = pd.DataFrame({"step": [0, 5, 10, 15], "gate_opened": [0.0, 0.0, 1.0, 1.0]})
    assert gate_opened_step(history) == 10
    assert gate_opened_step(history.assign(gate_opened=0.0)) is None
    assert gate_opened_step(history.drop(columns="gate_opened")) is None  # a run without SAR


def test_a_bfloat16_model_trains_and_scores_with_float32_inputs_from_the_loader():
    torch.manual_seed(0)
    model = SARSegmentationModel(build_smp_model("FPN", "resnet18", 3)).bfloat16()
    images, masks = torch.rand(4, 3, 64, 64), torch.randint(0, 3, (4, 64, 64))  # float32 in
    batches = DataLoader(TensorDataset(images, masks), batch_size=2)
    history = fit(model, batches, epochs=1, lr=0.01, device="cpu", progress=False)
    assert np.isfinite(history["loss"]).all()  # used to fail: input and weight dtypes differ
    assert model.regularizer.semantic_anchors.dtype == torch.float32
    scores = evaluate(model, batches, num_classes=3, task="segmentation", device="cpu")
    assert 0 <= scores["mIoU"] <= 1


def test_tqdm_disable_hides_fit_progress_bars(monkeypatch, capsys):
    # the notebooks' execution command sets TQDM_DISABLE=1 so stored outputs hold no bars
    batches = DataLoader(TensorDataset(torch.randn(8, 1, 28, 28), torch.arange(8) % 10),
                         batch_size=4)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    fit(SARClassifier(SmallCNN(width=4, feat_dim=8)), batches, device="cpu", progress=True)
    assert "fit" not in capsys.readouterr().err
    monkeypatch.delenv("TQDM_DISABLE")
    fit(SARClassifier(SmallCNN(width=4, feat_dim=8)), batches, device="cpu", progress=True)
    assert "fit" in capsys.readouterr().err
