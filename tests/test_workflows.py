"""The workflows users run around ``fit``, each once silently wrong (docs/failures.md, entries
40 on): a compiled or otherwise wrapped model, void labels under the logit-adjusted loss,
frozen BatchNorm, resume with loader workers or from inside an epoch, the deployment state of
a versioned model, and the authors' task-loss mean.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image
from test_train import blob_images as blobs  # (n, 1, 12, 12) images, class c in quadrant c
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Dataset, TensorDataset, WeightedRandomSampler

from sar import SARClassifier, SARSegmentationModel, SmallCNN, bare_state_dict, methods
from sar.baselines import LogitAdjustedCrossEntropy
from sar.distributed import distributed_loader, unwrap
from sar.labels import resolve_ignore_index
from sar.models import build_smp_model
from sar.train import (
    IgnoreSafeCrossEntropy,
    RunConfig,
    evaluate,
    fit,
    load_checkpoint,
    save_checkpoint,
)
from sar.train import cli as train_cli

CPU = torch.device("cpu")
C = 4  # classes
TINY_UNET = {"encoder_depth": 3, "decoder_channels": (16, 8, 8)}


# ------------------------------------------------------------------------------- helpers
def quiet_fit(model: nn.Module, loader, **kwargs) -> pd.DataFrame:
    options = {"lr": 0.05, "schedule": "constant", "device": CPU, "progress": False} | kwargs
    return fit(model, loader, **options)


def classifier(seed: int = 0) -> SARClassifier:
    torch.manual_seed(seed)
    # the gate opens within a few steps, so the EMA and the pull take part in the run
    return SARClassifier(SmallCNN(num_classes=C, in_channels=1, width=4, feat_dim=8),
                         update_conf=0.3, momentum=0.9)


class NoisyBlobs(Dataset):
    """Blobs with fresh noise at every read (a random augmentation: it draws from the torch
    RNG of whichever process reads it, the main one or a loader worker)."""

    def __init__(self, n: int = 64) -> None:
        self.images, self.labels = blobs(n)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i] + 0.2 * torch.randn_like(self.images[i]), self.labels[i]


def shuffled(dataset: Dataset, batch_size: int = 8, **kwargs) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(0), **kwargs)


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = unwrap(a).state_dict(), unwrap(b).state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def tiny_unet(num_classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_smp_model("Unet", "resnet18", num_classes=num_classes, **TINY_UNET)


def scenes(n: int = 4, void: int = 255, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, 3, 32, 32)`` images showing their masks (3 classes), a quarter of them ``void``."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.randint(0, 3, (n, 32, 32), generator=g)
    images = nn.functional.one_hot(masks, 3).permute(0, 3, 1, 2).float()
    masks[:, :8] = void
    return images, masks


# ------------------------------------------------------- 40. compiled and wrapped models
def test_unwrap_sees_through_every_wrapper_nested() -> None:
    model = classifier()
    averaged = AveragedModel(model)  # holds its own copy of the model
    nested = nn.DataParallel(torch.compile(averaged, backend="eager"))
    assert unwrap(nested) is averaged.module
    assert unwrap(torch.compile(nn.DataParallel(model), backend="eager")) is model
    assert unwrap(model) is model
    regularized = SARSegmentationModel(tiny_unet(), ignore_index=-1)
    wrapped = nn.DataParallel(torch.compile(regularized, backend="eager"))
    assert resolve_ignore_index(wrapped, "auto") == -1


def test_fit_trains_the_regulariser_of_a_compiled_model_through_the_compiled_module(
        tmp_path: Path) -> None:
    images, labels = blobs()
    plain = classifier()
    expected = quiet_fit(plain, shuffled(TensorDataset(images, labels)), epochs=2)

    graphs = []

    def counting_backend(graph: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(graph)
        return graph.forward

    compiled = torch.compile(classifier(), backend=counting_backend)
    path = tmp_path / "compiled.pt"
    history = quiet_fit(compiled, shuffled(TensorDataset(images, labels)), epochs=2,
                        checkpoint=path)
    assert graphs  # the training forward went through the compiled module
    assert unwrap(compiled).regularizer.num_updates > 0  # before: 0, and no SAR columns
    pd.testing.assert_frame_equal(history, expected)
    assert_same_state(compiled, plain)
    # the checkpoint holds the bare wrapper's keys (no _orig_mod.): it resumes uncompiled
    load_checkpoint(path, classifier(seed=3))


# ------------------------------------------ 41-42. void labels, logit-adjusted loss
@pytest.mark.parametrize("name", ["sar_logit_adjusted", "logit_adjusted"])
def test_logit_adjusted_methods_ignore_the_label_their_model_ignores(name: str) -> None:
    model, criterion = methods.build(name, tiny_unet(), counts=[5, 3, 2], ignore_index=-1)
    assert criterion.ignore_index == -1  # before: 255, and -1 labels failed in the loss
    assert resolve_ignore_index(model, "auto") == -1
    history = quiet_fit(model, DataLoader(TensorDataset(*scenes(void=-1)), batch_size=2),
                        criterion=criterion, lr=0.01)
    assert history["task_loss"].notna().all()


def test_logit_adjusted_loss_of_an_all_void_batch_is_zero_and_fit_goes_on() -> None:
    criterion = LogitAdjustedCrossEntropy([5, 3, 2], ignore_index=255)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = criterion(logits, torch.full((2, 4, 4), 255))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))
    images, masks = scenes()
    masks[:2] = 255  # the first batch is all void
    model, criterion = methods.build("sar_logit_adjusted", tiny_unet(), counts=[5, 3, 2])
    history = quiet_fit(model, DataLoader(TensorDataset(images, masks), batch_size=2),
                        criterion=criterion, lr=0.01)  # before: stopped, blaming the lr
    assert history["task_loss"].tolist()[0] == 0.0 and history["task_loss"].iloc[1] > 0


def test_fit_refuses_a_criterion_that_ignores_another_label_than_the_model() -> None:
    model = SARSegmentationModel(tiny_unet(), ignore_index=-1)
    with pytest.raises(ValueError, match=r"the criterion ignores label 255 but the model's"
                       r" labels use -1 for void positions: build the criterion with"
                       r" ignore_index=-1"):
        quiet_fit(model, DataLoader(TensorDataset(*scenes(void=-1)), batch_size=2),
                  criterion=LogitAdjustedCrossEntropy([5, 3, 2], ignore_index=255))


# ------------------------------------------------------------------- 43. frozen BatchNorm
def bn_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in module.named_buffers()
            if "running" in name or "num_batches" in name}


def frozen_encoder_model() -> SARSegmentationModel:
    model = SARSegmentationModel(tiny_unet(), update_conf=0.3)
    model.model.encoder.requires_grad_(False)
    model.model.encoder.eval()  # as a user freezes it; fit used to switch it back
    return model


@pytest.mark.parametrize("how", ["frozen parameters", "modules"])
def test_frozen_batchnorm_keeps_its_running_statistics_through_fit_and_evaluate(
        how: str) -> None:
    model = frozen_encoder_model()
    encoder = model.model.encoder
    before, decoder_before = bn_buffers(encoder), bn_buffers(model.model.decoder)
    projector_before = bn_buffers(model.regularizer)
    images, masks = scenes()
    loader = DataLoader(TensorDataset(images, masks), batch_size=2)
    modes = []

    def score(epoch: int, trained: nn.Module) -> None:  # evaluate restores the modes it found
        evaluate(trained, loader, num_classes=3, task="segmentation", device=CPU)
        modes.append((trained.training, encoder.bn1.training))

    freeze_bn = True if how == "frozen parameters" else [encoder]
    quiet_fit(model, loader, epochs=2, lr=0.01, freeze_bn=freeze_bn, on_epoch_end=score)
    after = bn_buffers(encoder)
    assert len(before) == 3 * 20  # resnet18's 20 BatchNorm layers
    assert all(torch.equal(before[k], after[k]) for k in before)  # before: drifted
    decoder_after = bn_buffers(model.model.decoder)
    assert not all(torch.equal(decoder_before[k], decoder_after[k]) for k in decoder_before)
    projector_after = bn_buffers(model.regularizer)  # SAR's projector BN trains as ever
    assert not all(torch.equal(projector_before[k], projector_after[k])
                   for k in projector_before)
    assert modes == [(True, False), (True, False)]
    assert model.training and not encoder.training  # each module's mode as fit found it


def test_a_batchnorm_put_in_eval_by_hand_is_warned_about_and_freeze_bn_must_select_one() -> None:
    loader = DataLoader(TensorDataset(*scenes()), batch_size=2)
    with pytest.warns(UserWarning, match=r"BatchNorm layer\(s\) of this model are in eval mode"
                      r" \(first: model\.encoder\.bn1\) but fit trains with model\.train\(\).*"
                      r"freeze_bn=True"):
        quiet_fit(frozen_encoder_model(), loader, max_steps=1, lr=0.01)
    with pytest.raises(ValueError, match=r"freeze_bn=True keeps in eval the BatchNorm layers"
                       r" whose weight and bias have requires_grad=False, and this model has"
                       r" none"):
        quiet_fit(SARSegmentationModel(tiny_unet()), loader, freeze_bn=True)


def test_evaluate_restores_each_module_s_own_mode() -> None:
    model = frozen_encoder_model()
    evaluate(model, DataLoader(TensorDataset(*scenes()), batch_size=2), num_classes=3,
             task="segmentation", device=CPU)
    assert model.training and model.model.decoder.training
    assert not model.model.encoder.training  # before: train(True) reached it too


# -------------------------------------------------------------- 44. resume with workers
def test_resume_is_exact_with_loader_workers(tmp_path: Path) -> None:
    def loader() -> DataLoader:  # as `python -m sar.train` builds it, with 2 workers
        return distributed_loader(NoisyBlobs(), 8, seed=0, num_workers=2)

    straight = classifier()
    expected = quiet_fit(straight, loader(), epochs=2)
    path = tmp_path / "ckpt.pt"
    quiet_fit(classifier(), loader(), epochs=1, checkpoint=path)
    torch.manual_seed(99)  # a fresh process: another RNG state
    resumed = classifier(seed=5)
    history = quiet_fit(resumed, loader(), epochs=2, checkpoint=path, resume=True)
    assert_same_state(resumed, straight)  # before: the workers' noise differed after resume
    pd.testing.assert_frame_equal(history, expected)


def test_resume_with_persistent_workers_warns(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    quiet_fit(classifier(), shuffled(NoisyBlobs()), max_steps=2, checkpoint=path)
    persistent = shuffled(NoisyBlobs(), num_workers=1, persistent_workers=True)
    with pytest.warns(UserWarning, match=r"persistent_workers=True.*not bit-exact"):
        quiet_fit(classifier(), persistent, max_steps=2, checkpoint=path, resume=True)


# ------------------------------------------------- 45-47. a max_steps stop in an epoch
@pytest.mark.parametrize(("stop", "workers"), [(10, 0), (10, 2), (8, 0)])
def test_a_max_steps_stop_resumes_where_it_stopped(tmp_path: Path, stop: int,
                                                   workers: int) -> None:
    def loader() -> DataLoader:  # 8 batches per epoch, reshuffled, fresh noise at every read
        return shuffled(NoisyBlobs(), num_workers=workers)

    straight = classifier()
    expected = quiet_fit(straight, loader(), epochs=2, max_steps=12)
    path = tmp_path / "ckpt.pt"
    quiet_fit(classifier(), loader(), epochs=2, max_steps=stop, checkpoint=path)
    state = load_checkpoint(path, classifier(), restore_rng=False)
    torch.manual_seed(99)
    resumed = classifier(seed=5)
    history = quiet_fit(resumed, loader(), epochs=2, max_steps=12, checkpoint=path, resume=True)
    assert history["step"].tolist() == list(range(12))  # before: 10 steps, 0..9
    assert_same_state(resumed, straight)
    pd.testing.assert_frame_equal(history, expected)
    # (epochs done, batches of the next one done); before: (2, absent) after 10 steps
    assert (state["epoch"], state.get("batches_into_epoch")) == divmod(stop, 8)


def test_resume_is_exact_with_a_sampler_that_has_its_own_generator(tmp_path: Path) -> None:
    def loader() -> DataLoader:  # the sampler's generator, not the loader's, draws the order
        generator = torch.Generator().manual_seed(0)
        sampler = WeightedRandomSampler(torch.ones(64), 64, generator=generator)
        return DataLoader(NoisyBlobs(), batch_size=8, sampler=sampler)

    straight = classifier()
    quiet_fit(straight, loader(), epochs=2)
    path = tmp_path / "ckpt.pt"
    quiet_fit(classifier(), loader(), epochs=1, checkpoint=path)
    resumed = classifier(seed=5)
    quiet_fit(resumed, loader(), epochs=2, checkpoint=path, resume=True)
    assert_same_state(resumed, straight)  # before: the 2nd epoch drew the 1st epoch's order


def test_a_resume_inside_an_epoch_refuses_a_loader_of_another_length(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    quiet_fit(classifier(), shuffled(NoisyBlobs()), epochs=2, max_steps=10, checkpoint=path)
    with pytest.raises(ValueError, match=r"the checkpoint was written with a loader of 8 batches"
                       r" per epoch, this one has 4 \(another batch_size.*stopped 2 batches into"
                       r" epoch 2"):
        quiet_fit(classifier(), shuffled(NoisyBlobs(), batch_size=16), epochs=2, max_steps=12,
                  checkpoint=path, resume=True)
    quiet_fit(classifier(), shuffled(NoisyBlobs()), epochs=1, checkpoint=path)
    with pytest.warns(UserWarning, match=r"8 batches per epoch, this one has 4.*not the one that"
                      r" was planned"):
        quiet_fit(classifier(), shuffled(NoisyBlobs(), batch_size=16), epochs=2,
                  checkpoint=path, resume=True)


def test_a_loader_that_runs_out_before_the_planned_steps_is_warned_about() -> None:
    images, labels = blobs(32)
    batches = DataLoader(TensorDataset(images, labels), batch_size=8)  # 4 batches
    one_shot = (batch for batch in batches)  # no len(), and a second epoch would be empty
    with pytest.warns(UserWarning, match=r"fit trained 4 of the 10 steps it planned"):
        quiet_fit(classifier(), one_shot, epochs=3, max_steps=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_fit(classifier(), DataLoader(TensorDataset(images, labels), batch_size=8),
                  epochs=2)
    assert not [w for w in caught if "steps it planned" in str(w.message)]


# ----------------------------------------------------------- 48. the deployment state
def test_bare_state_dict_keeps_the_versions_that_mnasnet_loads_with(tmp_path: Path) -> None:
    torch.manual_seed(0)
    wrapper = SARClassifier(torchvision.models.mnasnet0_5(weights=None, num_classes=C))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = wrapper.eval()(x)
    path = save_checkpoint(tmp_path / "ckpt.pt", wrapper, torch.optim.SGD(wrapper.parameters()),
                           None, step=0, epoch=0, history=[])
    for state in (wrapper.state_dict(), path):  # before: "version should be set to 1 or 2"
        bare = torchvision.models.mnasnet0_5(weights=None, num_classes=C)
        bare.load_state_dict(bare_state_dict(state))
        with torch.no_grad():
            assert torch.equal(bare.eval()(x), reference)


def test_bare_state_dict_removes_wrapper_prefixes() -> None:
    torch.manual_seed(0)
    wrapper = SARClassifier(torchvision.models.mnasnet0_5(weights=None, num_classes=C))
    net = wrapper.model
    states = {  # the prefixes of the keys
        "module._orig_mod.model.": nn.DataParallel(
            torch.compile(wrapper, backend="eager")).state_dict(),
        "_orig_mod. (a compiled bare model)": torch.compile(net, backend="eager").state_dict(),
        "module.model. (AveragedModel)": AveragedModel(wrapper).state_dict(),
    }
    for state in states.values():
        bare = torchvision.models.mnasnet0_5(weights=None, num_classes=C)
        bare.load_state_dict(bare_state_dict(state))  # before: "loads as it is", which failed
        assert_same_state(bare, net)
    with pytest.raises(ValueError, match=r"not the state of a RegularizedModel.*its top-level"
                       r" names are \['classifier', 'layers'\]"):
        bare_state_dict(net.state_dict())


# ------------------------------------------------------------------ 49. the task loss mean
def hand_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, divide_by: int) -> float:
    """Sum over labelled positions of -log softmax(logits)[label], / ``divide_by``."""
    total = 0.0
    for b, i, j in (labels != 255).nonzero().tolist():
        scores = logits[b, :, i, j].double()
        total -= (scores[labels[b, i, j]] - scores.exp().sum().log()).item()
    return total / divide_by


def test_both_cross_entropy_means_against_a_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, generator=g)
    labels = torch.randint(0, 3, (2, 4, 5), generator=g)
    labels[0, :2] = 255  # 10 of 40 positions void
    labelled = IgnoreSafeCrossEntropy(ignore_index=255)(logits, labels)
    all_pixels = IgnoreSafeCrossEntropy(ignore_index=255, mean_over="all")(logits, labels)
    assert labelled.item() == pytest.approx(hand_cross_entropy(logits, labels, 30), rel=1e-6)
    assert all_pixels.item() == pytest.approx(hand_cross_entropy(logits, labels, 40), rel=1e-6)
    void = torch.full_like(labels, 255)
    assert IgnoreSafeCrossEntropy(ignore_index=255, mean_over="all")(logits, void).item() == 0


def test_fit_trains_with_the_mean_over_all_pixels_when_asked() -> None:
    images, masks = scenes(n=2)
    model = SARSegmentationModel(tiny_unet())
    with torch.no_grad():
        logits = model.train().model(images)  # the first step's logits (BN batch statistics)
    history = quiet_fit(model, DataLoader(TensorDataset(images, masks), batch_size=2),
                        max_steps=1, ce_mean_over="all", lr=0.01)
    expected = hand_cross_entropy(logits, masks, masks.numel())  # 3/4 of the pixels labelled
    assert history["task_loss"].iloc[0] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match=r"ce_mean_over='all' sets fit's default criterion"):
        quiet_fit(model, DataLoader(TensorDataset(images, masks), batch_size=2),
                  ce_mean_over="all", criterion=nn.CrossEntropyLoss(ignore_index=255))


def test_fit_task_loss_mean_is_labelled_by_default() -> None:
    model = SARSegmentationModel(tiny_unet())
    images, masks = scenes(n=2)
    with torch.no_grad():
        logits = model.train().model(images)
    history = quiet_fit(model, DataLoader(TensorDataset(images, masks), batch_size=2),
                        max_steps=1, lr=0.01)
    labelled = int((masks != 255).sum())
    assert history["task_loss"].iloc[0] == pytest.approx(
        hand_cross_entropy(logits, masks, labelled), rel=1e-5)


def test_the_run_command_trains_with_the_configured_mean(tmp_path: Path, monkeypatch) -> None:
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for i in range(2):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(tmp_path / f"images/{i}.png")
        Image.fromarray(np.full((32, 32), i, np.uint8)).save(tmp_path / f"masks/{i}.png")
    seen = {}

    def recording_fit(*args, **kwargs):
        seen.update(kwargs)
        raise KeyboardInterrupt  # the training itself is not what is tested here

    monkeypatch.setattr(train_cli, "fit", recording_fit)
    config = RunConfig.from_dict({
        "data": {"name": "folder", "root": str(tmp_path), "num_classes": 3},
        "model": {"kwargs": dict(TINY_UNET)},
        "train": {"ce_mean_over": "all", "batch_size": 2, "device": "cpu"},
        "output_dir": str(tmp_path / "run")})
    with pytest.raises(KeyboardInterrupt):
        train_cli.run(config)
    assert seen["ce_mean_over"] == "all"
    with pytest.raises(ValueError, match=r"train\.ce_mean_over must be one of \['labelled',"
                       r" 'all'\], got 'pixels'"):
        RunConfig.from_dict({"train": {"ce_mean_over": "pixels"}})


# ------------------------------------------------------------ 51. gradient accumulation
def bn_free_classifier(seed: int = 0) -> SARClassifier:
    """No BatchNorm in the network, so 4 micro-batches of 4 step exactly as one batch of 16."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(144, 8), nn.ReLU(), nn.Linear(8, C))
    return SARClassifier(net, head_name="3", update_conf=0.3, momentum=0.9)


def test_accumulated_micro_batches_step_like_one_large_batch_and_the_ema_advances_once() -> None:
    images, labels = blobs(64)
    data = TensorDataset(images, labels)
    large, accumulated = bn_free_classifier(), bn_free_classifier()
    big = quiet_fit(large, DataLoader(data, batch_size=16), epochs=2)
    small = quiet_fit(accumulated, DataLoader(data, batch_size=4), epochs=2, accumulate=4)
    assert small["step"].tolist() == big["step"].tolist() == list(range(8))
    reg, reference = accumulated.regularizer, large.regularizer
    assert reference.num_updates > 2  # the gate opened and the EMA moved
    assert reg.num_updates == reference.num_updates  # before: 4x as many EMA updates
    assert torch.allclose(reg.semantic_anchors, reference.semantic_anchors, atol=1e-5)
    running = ("running_mean", "running_var", "num_batches_tracked")  # per forward, as any BN
    for (key, a), b in zip(accumulated.state_dict().items(), large.state_dict().values(),
                           strict=True):
        if not key.endswith(running):
            assert torch.allclose(a.float(), b.float(), atol=1e-5), key
    pd.testing.assert_series_equal(small["task_loss"], big["task_loss"], atol=1e-5)


def test_an_epoch_ends_with_a_step_over_the_batches_left() -> None:
    images, labels = blobs(40)
    history = quiet_fit(classifier(), DataLoader(TensorDataset(images, labels), batch_size=8),
                        epochs=2, accumulate=2)  # 5 batches: steps of 2, 2 and 1
    assert history["step"].tolist() == list(range(6))
    assert history["epoch"].tolist() == [0, 0, 0, 1, 1, 1]


def test_a_max_steps_stop_with_accumulation_resumes_where_it_stopped(tmp_path: Path) -> None:
    def loader() -> DataLoader:
        return shuffled(NoisyBlobs())  # 8 batches: 4 steps of 2 per epoch

    straight = classifier()
    expected = quiet_fit(straight, loader(), epochs=2, max_steps=7, accumulate=2)
    path = tmp_path / "ckpt.pt"
    quiet_fit(classifier(), loader(), epochs=2, max_steps=5, checkpoint=path, accumulate=2)
    resumed = classifier(seed=5)
    history = quiet_fit(resumed, loader(), epochs=2, max_steps=7, checkpoint=path, resume=True,
                        accumulate=2)
    assert_same_state(resumed, straight)
    pd.testing.assert_frame_equal(history, expected)


@pytest.mark.parametrize("accumulate", [0, -1, 1.5, True])
def test_accumulate_must_be_a_positive_int(accumulate) -> None:
    images, labels = blobs(8)
    with pytest.raises(ValueError, match="accumulate must be an int >= 1"):
        quiet_fit(classifier(), DataLoader(TensorDataset(images, labels), batch_size=4),
                  accumulate=accumulate)


class TwoOutputs(nn.Module):
    """Returns ``(logits, logits)`` like timm's distilled models in distilled training."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(144, 8), nn.ReLU())
        self.fc = nn.Linear(8, C)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.fc(self.body(x))
        return logits, logits


def test_fit_refuses_a_model_that_returns_several_outputs() -> None:
    images, labels = blobs(8)
    with pytest.raises(TypeError, match="returned a tuple, not one logits tensor"):
        quiet_fit(SARClassifier(TwoOutputs()), DataLoader(TensorDataset(images, labels),
                                                          batch_size=4))
