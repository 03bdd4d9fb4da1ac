"""The README's findings at a glance: gaps paired by seed, the table and the figures."""

from __future__ import annotations

import pandas as pd
import pytest

from sar.experiments import (
    HEADLINE_GAPS,
    headline_differences,
    headline_table,
    main,
    scene_shot_groups,
    segmentation_setup,
)

SEEDS = (0, 1, 2)
# SAR - CE per seed, in fractions: mean +0.02, std 0.01
SAR_GAINS = (0.01, 0.02, 0.03)


def longtail_rows() -> pd.DataFrame:
    rows = []
    for seed in SEEDS:
        ce = 0.70 + 0.05 * seed  # seeds differ far more than the methods do
        for method, gain in (("ce", 0.0), ("sar", SAR_GAINS[seed]), ("sar_tuned", 0.03),
                             ("logit_adjusted", 0.1)):
            rows.append({"method": method, "setting": "if=100", "seed": seed,
                         "accuracy": ce + gain, "few_accuracy": ce / 2 + 2 * gain,
                         "hardware": "test"})
    # a CE seed no other method ran: pairing must leave it out
    rows.append({"method": "ce", "setting": "if=100", "seed": 7, "accuracy": 0.0,
                 "few_accuracy": 0.0, "hardware": "test"})
    return pd.DataFrame(rows)


def segmentation_rows() -> pd.DataFrame:
    few = [c + 1 for c in scene_shot_groups(segmentation_setup("segmentation_pretrained",
                                                               smoke=False))["few"]]
    rows = []
    for arch in ("Unet", "FPN", "DeepLabV3Plus"):
        for seed in SEEDS:
            for method, gain in (("ce", 0.0), ("sar", SAR_GAINS[seed])):
                ious = {f"iou_class_{k}": 0.3 + (gain if k in few else 0.0) for k in range(11)}
                rows.append({"method": method, "setting": arch, "seed": seed, "mIoU": 0.4 - gain,
                             "hardware": "test", **ious})
    return pd.DataFrame(rows)


@pytest.fixture
def results(tmp_path):
    longtail_rows().to_csv(tmp_path / "longtail.csv", index=False)
    segmentation_rows().to_csv(tmp_path / "segmentation_pretrained.csv", index=False)
    return tmp_path


def test_headline_gaps_are_paired_by_seed_in_points(results):
    diffs = headline_differences(results)
    sar = diffs[(diffs["method"] == "sar") & (diffs["experiment"] == "longtail")]
    assert sorted(sar["seed"].unique()) == list(SEEDS)  # CE's unpaired seed 7 is left out
    assert sar.set_index(["measure", "seed"])["points"].loc["overall"].tolist() == (
        pytest.approx([1.0, 2.0, 3.0]))
    scenes = diffs[diffs["experiment"] == "segmentation_pretrained"]
    few = scenes[scenes["measure"] == "few-shot"].groupby("benchmark")["points"].mean()
    assert few.to_dict() == pytest.approx(dict.fromkeys(few.index, 2.0))
    overall = scenes[scenes["measure"] == "overall"]["points"]
    assert overall.mean() == pytest.approx(-2.0)  # mIoU went down by the gain


def test_headline_table_gives_mean_std_and_seeds_of_every_comparison(results):
    table = headline_table(headline_differences(results))
    lines = table.splitlines()
    assert len(lines) == 2 + len(HEADLINE_GAPS)
    assert ("| SAR − CE | Fashion-MNIST-LT, imbalance 100 | +2.00 ± 1.00 | +4.00 ± 2.00 | 3 |"
            in lines)
    assert "| SAR − CE | scenes, DeepLabV3+ | -2.00 ± 1.00 | +2.00 ± 1.00 | 3 |" in lines
    assert "| logit-adjusted CE − CE | Fashion-MNIST-LT, imbalance 100 | +10.00 ± 0.00 |" in table


def test_headline_without_a_grid_or_a_pair_says_what_is_missing(tmp_path):
    longtail_rows().to_csv(tmp_path / "longtail.csv", index=False)
    with pytest.raises(FileNotFoundError, match="no segmentation_pretrained.csv"):
        headline_differences(tmp_path)
    segmentation_rows().to_csv(tmp_path / "segmentation_pretrained.csv", index=False)
    longtail_rows().query("method != 'sar_tuned'").to_csv(tmp_path / "longtail.csv",
                                                          index=False)
    with pytest.raises(ValueError, match="no seed where both sar_tuned and ce ran at if=100"):
        headline_differences(tmp_path)


def test_render_headline_fills_the_readme_block_and_draws_its_figures(results):
    readme = results / "README.md"
    readme.write_text("# x\n<!-- results:headline -->\n<!-- /results:headline -->\n")
    main(["render", "headline", "--out", str(results), "--into", str(readme)])
    assert "| SAR − CE | scenes, Unet | -2.00 ± 1.00 | +2.00 ± 1.00 | 3 |" in readme.read_text()
    for name in ("findings.png", "sar_pipeline.png"):
        assert (results / "figures" / name).stat().st_size > 10_000
