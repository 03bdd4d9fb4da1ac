"""The segmentation setups: the committed benchmark unchanged, the pretrained-encoder grid."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pandas as pd
import pytest
import torch

from sar import data as D
from sar import methods
from sar.encoder_weights import save_encoder_weights, sha256_of
from sar.experiments import (
    LOGIT_ADJUSTED_SEGMENTATION_METHODS,
    PRETRAINED_ENCODER,
    PRETRAINED_SEGMENTATION,
    PRETRAINED_SEGMENTATION_METHODS,
    RESULTS_DIR,
    SegmentationSetup,
    encoder_weights_path,
    grid_runs,
    keys_by_row,
    load_scenes,
    main,
    scene_pixel_counts,
)
from sar.experiments import runs as runs_module
from sar.models import build_smp_model
from sar.pretrain import DEFAULT_OUT, make_encoder


def test_the_default_setup_is_the_committed_from_scratch_benchmark():
    setup = SegmentationSetup()
    assert setup.encoder_weights is None and setup.encoder == "resnet18"
    assert setup.item_scale == (0.6, 1.2) and setup.items_per_scene == (2, 5)
    assert setup.steps == 900 and setup.lr == 0.02 and setup.imbalance_factor == 20
    runs = grid_runs("segmentation", [0, 1, 2], smoke=False)
    assert len(runs) == 27 and {r.method for r in runs} == {"ce", "sar", "prototype"}
    committed = pd.read_csv(RESULTS_DIR / "segmentation.csv")
    assert set(keys_by_row(committed)) <= {run.key for run in runs}


def test_the_default_scenes_are_those_of_the_committed_rows():
    small = replace(SegmentationSetup(), train_scenes=3, val_scenes=2)
    train, val = load_scenes(small)
    # the call the committed rows were made with, before the setup had scene knobs
    old_train = D.make_fashion_scenes(3, split="train", size=64, imbalance_factor=20.0, seed=0)
    old_val = D.make_fashion_scenes(2, split="val", size=64, imbalance_factor=20.0, seed=0)
    assert torch.equal(train.images, old_train.images) and torch.equal(val.masks, old_val.masks)
    assert val.source_split == "fashion-mnist/test"  # validation items never seen in training


def test_the_pretrained_grid_runs_four_methods_everywhere_and_logit_adjustment_once():
    runs = grid_runs("segmentation_pretrained", [0, 1, 2], smoke=False)
    per_arch = {arch: [r.method for r in runs if r.setting == arch and r.seed == 0]
                for arch in PRETRAINED_SEGMENTATION.archs}
    assert per_arch["Unet"] == per_arch["FPN"] == list(PRETRAINED_SEGMENTATION_METHODS)
    assert per_arch["DeepLabV3Plus"] == [*PRETRAINED_SEGMENTATION_METHODS,
                                         *LOGIT_ADJUSTED_SEGMENTATION_METHODS,
                                         "logit_adjusted_tau0.25", "logit_adjusted_tau0.5",
                                         "sar_logit_adjusted_tau0.5"]
    assert len(runs) == 3 * (3 * 4 + 5) and {r.experiment for r in runs} == {
        "segmentation_pretrained"}
    # the committed rows keep their keys: the tau rows were added, nothing was renamed
    committed = pd.read_csv(RESULTS_DIR / "segmentation_pretrained.csv")
    assert set(keys_by_row(committed)) <= {run.key for run in runs}
    assert "sar_class_pull" in per_arch["Unet"]
    assert PRETRAINED_SEGMENTATION.imbalance_factor >= 20  # the tail stays a tail
    assert PRETRAINED_SEGMENTATION.encoder_weights == PRETRAINED_ENCODER
    # where python -m sar.pretrain writes by default is where the grid looks
    assert encoder_weights_path(PRETRAINED_SEGMENTATION) == DEFAULT_OUT
    with pytest.raises(ValueError, match="one_arch 'FPN' is not among archs"):
        SegmentationSetup(archs=("Unet",), one_arch="FPN", one_arch_methods=("logit_adjusted",))


def test_pixel_counts_of_the_scenes_are_the_logit_adjustment_prior():
    masks = torch.zeros(2, 4, 4, dtype=torch.long)
    masks[0, :2] = 3
    scenes = D.SceneDataset(torch.zeros(2, 3, 4, 4), masks, [[], []], list(range(10)),
                            [0.1] * 10, "custom", 0.15)
    assert scene_pixel_counts(scenes) == [24, 1, 1, 8, 1, 1, 1, 1, 1, 1, 1]  # absent: 1


def test_pretrained_smoke_grid_starts_every_method_from_the_file(tmp_path, monkeypatch):
    weights = tmp_path / "encoders" / "r18.pt"
    save_encoder_weights(make_encoder().state_dict(), weights, {"encoder": "resnet18"})
    built, priors = [], []
    real_build_smp, real_build = runs_module.build_smp_model, methods.build

    def spy_smp(*args, **kwargs):
        built.append(kwargs["encoder_weights"])
        return real_build_smp(*args, **kwargs)

    def spy_build(name, model, **kwargs):
        priors.append(kwargs.get("counts"))
        return real_build(name, model, **kwargs)

    monkeypatch.setattr(runs_module, "build_smp_model", spy_smp)
    monkeypatch.setattr(methods, "build", spy_build)
    out = tmp_path / "results"
    main(["segmentation_pretrained", "--smoke", "--seeds", "0", "--out", str(out),
          "--device", "cpu", "--encoder-weights", str(weights)])
    df = pd.read_csv(out / "segmentation_pretrained.csv")
    assert list(df["method"]) == [*PRETRAINED_SEGMENTATION_METHODS,
                                  *LOGIT_ADJUSTED_SEGMENTATION_METHODS,
                                  "logit_adjusted_tau0.25", "logit_adjusted_tau0.5",
                                  "sar_logit_adjusted_tau0.5"]
    assert df["mIoU"].between(0, 1).all() and "iou_class_10" in df
    assert (df["encoder_sha256"] == sha256_of(weights)).all()
    assert (df["encoder_weights"] == "r18.pt").all() and (df["steps"] == 2).all()
    assert built == [weights.resolve()] * len(df)
    assert all(len(p) == 11 and min(p) >= 1 for p in priors)  # pixel counts, background first
    main(["render", "segmentation_pretrained", "--out", str(out)])
    assert "IoU of the few-shot classes" in (out / "segmentation_pretrained.md").read_text()
    assert (out / "figures" / "segmentation_pretrained_shot_groups.png").exists()


def test_a_missing_encoder_file_stops_the_grid_before_any_run(tmp_path):
    missing = tmp_path / "none.pt"
    with pytest.raises(FileNotFoundError, match="python -m sar.pretrain --encoder resnet18"):
        main(["segmentation_pretrained", "--smoke", "--seeds", "0", "--out", str(tmp_path),
              "--device", "cpu", "--encoder-weights", str(missing)])
    assert not (tmp_path / "segmentation_pretrained.csv").exists()
    with pytest.raises(ValueError, match="for the segmentation experiments"):
        main(["longtail", "--smoke", "--out", str(tmp_path), "--encoder-weights", str(missing)])


def test_a_notebook_gets_the_model_of_exactly_the_run_a_grid_cell_scores():
    from sar.experiments import SMOKE_SEGMENTATION, Run, run_segmentation, train_on_scenes
    from sar.train import evaluate

    setup = replace(SMOKE_SEGMENTATION, train_scenes=8, val_scenes=4)
    out = train_on_scenes("sar", "Unet", setup, seed=3, device="cpu")
    row = run_segmentation(Run("segmentation", "sar", "Unet", 3, {"arch": "Unet"}), setup,
                           torch.device("cpu"), {})
    assert row["mIoU"] == out["scores"]["mIoU"]
    per_class = pd.Series([row[f"iou_class_{k}"] for k in range(11)])
    assert per_class.equals(pd.Series(out["scores"]["per_class_iou"]))  # NaN == NaN here
    assert not out["model"].training
    val = load_scenes(setup)[1]
    again = evaluate(out["model"], torch.utils.data.DataLoader(val, batch_size=32),
                     num_classes=11, task="segmentation", device="cpu")
    assert again["mIoU"] == out["scores"]["mIoU"]


def test_a_cached_scene_run_trains_once_and_reloads_the_same_model(tmp_path, monkeypatch):
    from sar.experiments import SMOKE_SEGMENTATION, cached_scene_run
    from sar.experiments import runs as runs_module

    monkeypatch.setenv("SAR_CACHE", "1")
    monkeypatch.setenv("SAR_CACHE_DIR", str(tmp_path))
    setup = replace(SMOKE_SEGMENTATION, train_scenes=8, val_scenes=4)
    first = cached_scene_run("sar", "Unet", setup, 3, "cpu", progress=False)
    assert len(list(tmp_path.glob("scene_run_sar_Unet_seed3-*.pt"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("trained again although the run was cached")

    monkeypatch.setattr(runs_module, "train_on_scenes", no_training)
    again = cached_scene_run("sar", "Unet", setup, 3, "cpu", progress=False)
    assert again["scores"]["mIoU"] == first["scores"]["mIoU"]
    assert again["history"].equals(first["history"])
    for (name, a), (_, b) in zip(first["model"].state_dict().items(),
                                 again["model"].state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert not again["model"].training
    images = load_scenes(setup)[1].images[:2]
    with torch.no_grad():
        assert torch.equal(first["model"](images), again["model"](images))
    # a grid that holds more rows is the same run; another schedule is another run
    grown = replace(setup, one_arch="Unet", one_arch_methods=("logit_adjusted_tau0.5",))
    cached_scene_run("sar", "Unet", grown, 3, "cpu", progress=False)
    with pytest.raises(AssertionError, match="trained again"):
        cached_scene_run("sar", "Unet", replace(setup, lr=0.5), 3, "cpu")
    with pytest.raises(AssertionError, match="trained again"):  # other options: another run
        cached_scene_run("sar", "Unet", setup, 3, "cpu", options={"update_conf": 0.5})


def test_cached_scene_runs_in_workers_equal_one_thread_runs_here(tmp_path, monkeypatch):
    from sar.experiments import SMOKE_SEGMENTATION, cached_scene_run, cached_scene_runs

    monkeypatch.setenv("SAR_CACHE", "1")
    setup = replace(SMOKE_SEGMENTATION, train_scenes=6, val_scenes=2, max_steps=3)
    requests = [("ce", None), ("sar", {"update_conf": 0.5})]
    monkeypatch.setenv("SAR_CACHE_DIR", str(tmp_path / "workers"))
    in_workers = cached_scene_runs(requests, "Unet", setup, 1, "cpu", processes=2,
                                   progress=False, name="pair")
    assert len(list((tmp_path / "workers").glob("pair_*.pt"))) == 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each worker ran with
    try:
        monkeypatch.setenv("SAR_CACHE_DIR", str(tmp_path / "here"))
        here = [cached_scene_run(method, "Unet", setup, 1, "cpu", progress=False,
                                 options=options, name="pair") for method, options in requests]
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(in_workers, here, strict=True):
        assert a["scores"]["mIoU"] == b["scores"]["mIoU"]
        assert a["history"].equals(b["history"])
        for key, value in a["model"].state_dict().items():
            assert torch.equal(value, b["model"].state_dict()[key]), key
    assert in_workers[1]["model"].regularizer.update_conf == 0.5  # options reach the model
    assert sorted(p.name for p in (tmp_path / "workers").glob("*.pt")) == sorted(
        p.name for p in (tmp_path / "here").glob("*.pt"))  # the same cache keys


def test_log_every_sets_the_history_rows_and_is_its_own_cache_entry(tmp_path, monkeypatch):
    from sar.experiments import SMOKE_SEGMENTATION, cached_scene_run

    monkeypatch.setenv("SAR_CACHE", "1")
    monkeypatch.setenv("SAR_CACHE_DIR", str(tmp_path))
    setup = replace(SMOKE_SEGMENTATION, train_scenes=4, val_scenes=2, epochs=5)  # 5 steps
    every = cached_scene_run("sar", "Unet", setup, 0, "cpu", progress=False, log_every=1)
    assert every["history"]["step"].tolist() == [0, 1, 2, 3, 4]
    default = cached_scene_run("sar", "Unet", setup, 0, "cpu", progress=False)
    assert default["history"]["step"].tolist() == [0]  # every 20th step of 5
    assert len(list(tmp_path.glob("*.pt"))) == 2
    assert default["scores"]["mIoU"] == every["scores"]["mIoU"]  # logging changes no weight


def test_a_cache_dict_from_another_setup_is_refused_not_reused(tmp_path, monkeypatch):
    from sar.experiments import SMOKE_SEGMENTATION, cached_scene_run, train_on_scenes

    monkeypatch.setenv("SAR_CACHE_DIR", str(tmp_path))
    setup = replace(SMOKE_SEGMENTATION, train_scenes=4, val_scenes=2)
    other = replace(setup, train_scenes=6, scene_seed=3)
    cache: dict = {}
    train_on_scenes("ce", "Unet", setup, 0, "cpu", cache)
    with pytest.raises(ValueError, match="another setup; pass a fresh dict"):
        cached_scene_run("ce", "Unet", other, 0, "cpu", cache)
    with pytest.raises(ValueError, match="another setup"):
        train_on_scenes("ce", "Unet", other, 0, "cpu", cache)
    assert not list(tmp_path.glob("*.pt"))  # nothing was saved under the other setup's key
    assert len(cache["scenes"][0]) == 4
    shorter = replace(setup, max_steps=1)  # another schedule on the same scenes shares them
    assert train_on_scenes("ce", "Unet", shorter, 0, "cpu", cache)["history"]["step"].max() == 0


def test_scene_shot_groups_list_each_group_head_first():
    from sar.experiments import PRETRAINED_SEGMENTATION, scene_shot_groups

    order, probs = D.scene_class_probs(PRETRAINED_SEGMENTATION.imbalance_factor,
                                       seed=PRETRAINED_SEGMENTATION.scene_seed)
    groups = scene_shot_groups(PRETRAINED_SEGMENTATION)
    assert [c for name in ("many", "medium", "few") for c in groups[name]] == order
    assert all(probs[a] > probs[b]
               for ids in groups.values() for a, b in itertools.pairwise(ids))


def test_segmentation_setup_follows_smoke_mode_unless_told(monkeypatch):
    from sar.experiments import SMOKE_PRETRAINED_SEGMENTATION, segmentation_setup

    monkeypatch.setenv("SAR_SMOKE", "1")
    assert segmentation_setup("segmentation_pretrained") == SMOKE_PRETRAINED_SEGMENTATION
    assert segmentation_setup("segmentation_pretrained", smoke=False) == PRETRAINED_SEGMENTATION
    monkeypatch.setenv("SAR_SMOKE", "0")
    monkeypatch.delenv("CI", raising=False)
    assert segmentation_setup("segmentation_pretrained") == PRETRAINED_SEGMENTATION
    with pytest.raises(ValueError, match="not a segmentation experiment"):
        segmentation_setup("longtail")


def test_train_on_scenes_accepts_scenes_made_beforehand():
    from sar.experiments import SMOKE_SEGMENTATION, train_on_scenes

    setup = replace(SMOKE_SEGMENTATION, train_scenes=4, val_scenes=2, max_steps=1)
    out = train_on_scenes("ce", "Unet", setup, 0, "cpu", {"scenes": load_scenes(setup)})
    assert out["encoder"]["encoder_weights"] == "random init"


def test_a_tau_row_trains_logit_adjusted_ce_at_its_own_tau(monkeypatch):
    """The tau rows build the registry's logit-adjusted CE with their tau, nothing else."""
    runs = {r.method: r for r in grid_runs("segmentation_pretrained", [0], smoke=True)}
    seen = []

    def record(method, arch, setup, seed, device, cache, **kwargs):
        seen.append((method, kwargs.get("options")))
        raise RuntimeError("stop before training")

    monkeypatch.setattr(runs_module, "train_on_scenes", record)
    for label, expected in [("logit_adjusted_tau0.25", {"tau": 0.25}), ("logit_adjusted", {}),
                            ("sar_logit_adjusted_tau0.5", {"tau": 0.5}), ("sar_class_pull", {})]:
        with pytest.raises(RuntimeError, match="stop before training"):
            runs_module.run_segmentation(runs[label], PRETRAINED_SEGMENTATION, "cpu", {})
        assert seen[-1] == (runs[label].options["method"], expected)
    net = build_smp_model("Unet", "resnet18", 3, 3)
    _, criterion = methods.build("logit_adjusted", net, counts=[70, 20, 10],
                                 **runs["logit_adjusted_tau0.25"].options["method_options"])
    assert criterion.tau == 0.25


def test_scene_rows_are_shaped_like_the_csv_rows_and_pair_by_seed():
    from sar.experiments import scene_rows

    scores = {"mIoU": 0.5, "pixel_accuracy": 0.9, "per_class_iou": [0.9, 0.4, 0.2]}
    runs = {"ce": {"scores": scores}, "sar": {"scores": {**scores, "mIoU": 0.6}}}
    rows = scene_rows(runs, seed=3)
    assert list(rows.columns) == ["method", "seed", "mIoU", "pixel_accuracy",
                                  "iou_class_0", "iou_class_1", "iou_class_2"]
    assert rows.method.tolist() == ["ce", "sar"] and rows.seed.tolist() == [3, 3]
    assert rows.mIoU.tolist() == [0.5, 0.6] and rows.iou_class_2.tolist() == [0.2, 0.2]
