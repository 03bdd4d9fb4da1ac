"""The experiment command: the smoke grids run, write the expected rows, and reruns skip them."""

from __future__ import annotations

import re
import shutil

import pandas as pd
import pytest
import torch

from sar import SmallCNN
from sar.data import scene_class_probs
from sar.experiments import (
    ABLATIONS,
    EXPERIMENTS,
    LONGTAIL_METHODS,
    RESULTS_DIR,
    SMOKE_CLASSIFICATION,
    TUNING,
    Run,
    SegmentationSetup,
    add_shot_group_iou,
    chosen_settings,
    longtail_grid,
    main,
    markdown_table,
    method_name,
    paired_gap,
    paired_gap_interval,
    paired_gap_table,
    render_all,
    results_or_reduced_grid,
    scene_shot_groups,
    with_tuned_options,
)


@pytest.fixture(scope="module")
def longtail_csv(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    main(["longtail", "--smoke", "--seeds", "0", "1", "--out", str(out), "--device", "cpu"])
    return out / "longtail.csv"


def test_longtail_smoke_grid_has_one_row_per_method_setting_and_seed(longtail_csv):
    df = pd.read_csv(longtail_csv)
    factors = SMOKE_CLASSIFICATION.imbalance_factors
    assert len(df) == len(LONGTAIL_METHODS) * len(factors) * 2
    assert set(df["method"]) == set(LONGTAIL_METHODS)
    assert set(df["setting"]) == {f"if={f:g}" for f in factors}
    for column in ("accuracy", "many_accuracy", "few_accuracy", "nc1", "acc_class_9",
                   "hardware", "wall_time_s", "git_commit", "torch", "seed"):
        assert column in df.columns, column
    assert df["accuracy"].between(0, 1).all()
    assert df["smoke"].all()
    assert (df["torch"] == torch.__version__).all()  # rows say which torch rounded them


def test_rerun_skips_finished_rows(longtail_csv, capsys):
    before = pd.read_csv(longtail_csv)
    main(["longtail", "--smoke", "--seeds", "0", "1", "--out", str(longtail_csv.parent),
          "--device", "cpu"])
    total = len(LONGTAIL_METHODS) * len(SMOKE_CLASSIFICATION.imbalance_factors) * 2
    assert f"{total} of {total} runs already" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(longtail_csv), before)


def test_render_writes_a_table_with_mean_and_std(longtail_csv):
    main(["render", "longtail", "--out", str(longtail_csv.parent)])
    summary = (longtail_csv.parent / "longtail.md").read_text()
    assert "| method | if=1 | if=10 |" in summary and "±" in summary
    assert (longtail_csv.parent / "figures" / "longtail_accuracy.png").exists()


def test_render_fills_the_block_of_each_document_that_holds_it_and_keeps_the_rest(
        longtail_csv, tmp_path):
    readme, results, other = (tmp_path / name for name in ("README.md", "results.md", "x.md"))
    readme.write_text("intro\n<!-- results:longtail -->\nold\n<!-- /results:longtail -->\nend\n")
    results.write_text(readme.read_text().replace("intro", "detail"))
    other.write_text("no block here\n")
    main(["render", "longtail", "--out", str(longtail_csv.parent),
          "--into", str(readme), str(results), str(other)])
    for document, first in ((readme, "intro\n"), (results, "detail\n")):
        text = document.read_text()
        assert text.startswith(first) and text.endswith("<!-- /results:longtail -->\nend\n")
        assert "old" not in text and "| method | if=1 | if=10 |" in text
    assert other.read_text() == "no block here\n"
    with pytest.raises(ValueError, match="has a <!-- results:longtail --> ... <!-- /results"):
        main(["render", "longtail", "--out", str(longtail_csv.parent), "--into", str(other)])


def test_markdown_table_bolds_the_best_mean_of_each_column():
    df = pd.DataFrame({"method": ["a", "a", "b", "b"], "setting": ["x"] * 4,
                       "seed": [0, 1, 0, 1], "acc": [0.5, 0.7, 0.8, 0.8]})
    table = markdown_table(df, "method", "setting", "acc")
    assert "| a | 60.00 ± 14.14 |" in table and "| b | **80.00 ± 0.00** |" in table
    partial = pd.concat([df, pd.DataFrame({"method": ["a"], "setting": ["y"], "seed": [0],
                                           "acc": [0.4]})])
    assert "| b | **80.00 ± 0.00** | – |" in markdown_table(partial, "method", "setting", "acc")


def test_markdown_table_flags_cells_with_fewer_seeds_and_bolds_no_lone_cell():
    df = pd.DataFrame({"method": ["a", "a", "b", "a"], "setting": ["x", "x", "x", "y"],
                       "seed": [0, 1, 0, 0], "acc": [0.5, 0.7, 0.8, 0.4]})
    table = markdown_table(df, "method", "setting", "acc")
    assert "| a | 60.00 ± 14.14 | 40.00 (n=1) |" in table
    assert "| b | **80.00** (n=1) | – |" in table
    tied = df.assign(acc=0.0)  # e.g. a class no method ever segments: nobody wins
    assert "**" not in markdown_table(tied, "method", "setting", "acc")


def test_grid_runs_seed_by_seed_so_a_partial_grid_is_paired():
    runs = list(longtail_grid(SMOKE_CLASSIFICATION, [0, 1]))
    first = runs[: len(LONGTAIL_METHODS)]
    assert {run.seed for run in first} == {0} and len({run.setting for run in first}) == 1
    assert [run.method for run in first] == list(LONGTAIL_METHODS)
    assert first[0].setting == f"if={max(SMOKE_CLASSIFICATION.imbalance_factors):g}"


def test_paired_gap_pairs_by_seed():
    df = pd.DataFrame({"method": ["a", "a", "b", "b", "b"], "seed": [0, 1, 0, 1, 2],
                       "acc": [0.6, 0.9, 0.5, 0.6, 0.1]})
    mean, std, n = paired_gap(df, "acc", "a", "b")
    assert n == 2 and mean == pytest.approx(0.2) and std == pytest.approx(0.1414, abs=1e-4)


def test_paired_gap_interval_is_the_student_t_half_width_of_the_paired_mean():
    df = pd.DataFrame({"method": ["a", "a", "b", "b", "b"], "seed": [0, 1, 0, 1, 2],
                       "acc": [0.6, 0.9, 0.5, 0.6, 0.1]})
    mean, half, n = paired_gap_interval(df, "acc", "a", "b")
    # gaps 0.1 and 0.3: std 0.1414, t(0.975, 1 dof) = 12.706, half = 12.706 * 0.1414 / sqrt(2)
    assert n == 2 and mean == pytest.approx(0.2) and half == pytest.approx(1.2706, abs=1e-3)
    one = df[df["seed"] == 0]
    mean, half, n = paired_gap_interval(one, "acc", "a", "b")
    assert n == 1 and mean == pytest.approx(0.1) and half != half  # NaN


def test_paired_gap_table_against_a_reference_setting():
    df = pd.DataFrame({"setting": ["default"] * 2 + ["knob"] * 2 + ["new"],
                       "seed": [0, 1, 0, 1, 0], "acc": [0.5, 0.6, 0.6, 0.8, 0.7]})
    table = paired_gap_table(df, "setting", "default", ["acc"])
    assert "| knob | +15.00 ± 7.07 (n=2) |" in table
    assert "| new | +20.00 (n=1) |" in table and "| default |" not in table
    per_setting = df.assign(method=df["setting"].where(df["setting"] == "default", "sar"),
                            setting=["a", "b"] * 2 + ["b"])
    table = paired_gap_table(per_setting, "method", "default", ["acc"], columns="setting")
    assert table.splitlines()[0] == "| method | a | b |"
    assert "| sar | +10.00 (n=1) | +20.00 (n=1) |" in table
    named = paired_gap_table(df, "setting", "default", ["acc"], label=str.upper)
    assert named.splitlines()[0] == "| setting | Δ ACC |"
    assert "| KNOB | +15.00 ± 7.07 (n=2) |" in named
    bare = paired_gap_table(df, "setting", "default", ["acc"], counts=False)
    assert "| knob | +15.00 ± 7.07 |" in bare and "(n=" not in bare
    fine = paired_gap_table(df, "setting", "default", ["acc"], scale=1.0, digits=3)
    assert "| knob | +0.150 ± 0.071 (n=2) |" in fine
    tight = pd.concat([df, pd.DataFrame({"setting": ["tight"] * 2, "seed": [0, 1],
                                         "acc": [0.61, 0.71]})])
    marked = paired_gap_table(tight, "setting", "default", ["acc"], counts=False,
                              bold_clear=True)
    # knob: 15 ± 7.07 over 2 seeds, t-interval ± 12.71 · 7.07 / √2 = ± 63.5, not clear;
    # tight: 11 ± 0 excludes zero
    assert "| knob | +15.00 ± 7.07 |" in marked and "| tight | **+11.00 ± 0.00** |" in marked
    assert "| new | +20.00 |" in marked  # one seed: no interval, never bold


def test_ablation_loss_option_picks_the_logit_adjusted_method():
    run = Run("ablation", "sar", "with logit-adjusted CE", 0, {"loss": "logit_adjusted"})
    assert method_name(run) == "sar_logit_adjusted"
    assert method_name(Run("longtail", "center", "if=10", 0, {})) == "center"
    with pytest.raises(ValueError, match="unknown loss"):
        method_name(Run("ablation", "sar", "x", 0, {"loss": "focal"}))


def test_status_counts_only_cells_of_the_current_grid(tmp_path, capsys):
    pd.DataFrame({"experiment": "ablation", "method": "sar", "setting": ["default", "default"],
                  "seed": [0, 7], "hardware": "CPU test", "wall_time_s": [60.0, 180.0]},
                 ).to_csv(tmp_path / "ablation.csv", index=False)
    main(["status", "--out", str(tmp_path)])
    table = capsys.readouterr().out
    n_ablation = len(ABLATIONS) * 3
    assert f"| ablation | 1 of {n_ablation} | CPU test | 2.0 (1.0-3.0) |" in table
    n_longtail = len(LONGTAIL_METHODS) * 4 * 3  # four factors, three seeds
    assert f"| longtail | 0 of {n_longtail} | – | – |" in table


def test_missing_results_fall_back_to_a_reduced_grid(tmp_path):
    df, description = results_or_reduced_grid("segmentation", torch.device("cpu"), tmp_path)
    assert "reduced smoke grid" in description and len(df) == 3


def test_ablation_and_segmentation_smoke_grids(tmp_path):
    main(["ablation", "--smoke", "--seeds", "0", "--out", str(tmp_path), "--device", "cpu"])
    ablation = pd.read_csv(tmp_path / "ablation.csv")
    assert list(ablation["setting"]) == list(ABLATIONS)
    main(["render", "ablation", "--out", str(tmp_path)])
    assert "Paired difference to the default SAR" in (tmp_path / "ablation.md").read_text()
    assert (tmp_path / "figures" / "ablation.png").exists()
    main(["segmentation", "--smoke", "--seeds", "0", "--out", str(tmp_path), "--device", "cpu"])
    seg = pd.read_csv(tmp_path / "segmentation.csv")
    assert set(seg["method"]) == {"ce", "prototype", "sar"} and seg["mIoU"].between(0, 1).all()
    assert "iou_class_10" in seg.columns
    main(["render", "segmentation", "--out", str(tmp_path)])
    paired = (tmp_path / "segmentation.md").read_text().split("Paired gain over CE, mIoU")[1]
    assert re.search(r"\| sar \| [+-]\d+\.\d\d \(n=1\) \|", paired), paired
    assert "IoU of the few-shot classes" in paired
    assert (tmp_path / "figures" / "segmentation_miou.png").exists()
    assert (tmp_path / "figures" / "segmentation_shot_groups.png").exists()


def test_shot_group_iou_averages_the_scene_classes_of_each_group():
    setup = SegmentationSetup()
    order, _ = scene_class_probs(setup.imbalance_factor, seed=setup.scene_seed)
    row = {f"iou_class_{k}": float(k) for k in range(11)}  # IoU of mask id k is k
    df = add_shot_group_iou(pd.DataFrame([row]), scene_shot_groups(setup))
    # mask id = class id + 1; background (mask id 0) belongs to no group
    assert df["few_iou"].item() == pytest.approx(sum(c + 1 for c in order[-3:]) / 3)
    assert df["many_iou"].item() == pytest.approx(sum(c + 1 for c in order[:3]) / 3)
    assert df["medium_iou"].item() == pytest.approx(sum(c + 1 for c in order[3:7]) / 4)


def test_settings_restrict_the_grid_and_unknown_ones_are_named(tmp_path):
    chosen = ["anchor CE off (pull only)", "pull off (anchor CE only)"]
    main(["ablation", "--smoke", "--seeds", "0", "--settings", *chosen,
          "--out", str(tmp_path), "--device", "cpu"])
    # the grid's own order, whatever order they were asked in
    assert list(pd.read_csv(tmp_path / "ablation.csv")["setting"]) == chosen[::-1]
    with pytest.raises(ValueError, match="no setting \\['if=3'\\]"):
        main(["longtail", "--smoke", "--settings", "if=3", "--out", str(tmp_path)])


def test_methods_restrict_the_grid_and_unknown_ones_are_named(tmp_path):
    main(["longtail", "--smoke", "--seeds", "0", "--settings", "if=10", "--methods", "sar", "ce",
          "--out", str(tmp_path), "--device", "cpu"])
    rows = pd.read_csv(tmp_path / "longtail.csv")
    assert list(rows["method"]) == ["ce", "sar"] and set(rows["setting"]) == {"if=10"}
    with pytest.raises(ValueError, match="no method \\['sar_typo'\\]; its methods are"):
        main(["longtail", "--smoke", "--methods", "sar_typo", "--out", str(tmp_path)])


def test_merge_adds_only_missing_rows_of_the_same_experiment(tmp_path, capsys):
    here, there = tmp_path / "here", tmp_path / "there"
    row = {"experiment": "segmentation", "method": "ce", "setting": "Unet", "mIoU": 0.2}
    here.mkdir(), there.mkdir()
    pd.DataFrame([row | {"seed": 0}]).to_csv(here / "segmentation.csv", index=False)
    pd.DataFrame([row | {"seed": 0, "mIoU": 0.9}, row | {"seed": 2, "wall_time_s": 5.0}]
                 ).to_csv(there / "segmentation.csv", index=False)
    main(["merge", "segmentation", str(there / "segmentation.csv"), "--out", str(here)])
    assert "added 1 rows to" in capsys.readouterr().out
    merged = pd.read_csv(here / "segmentation.csv")
    assert list(merged["seed"]) == [0, 2] and list(merged["mIoU"]) == [0.2, 0.2]
    with pytest.raises(ValueError, match="not 'longtail'"):
        main(["merge", "longtail", str(there / "segmentation.csv"), "--out", str(here)])
    with pytest.raises(SystemExit):
        main(["render", "segmentation", str(there / "segmentation.csv")])


def test_tuning_grid_scores_on_validation_data_only(tmp_path):
    main(["tuning", "--smoke", "--seeds", "0", "1", "--out", str(tmp_path), "--device", "cpu"])
    df = pd.read_csv(tmp_path / "tuning.csv")
    assert len(df) == sum(len(grid) for grid in TUNING.values())  # one seed, whatever is asked
    assert set(df["seed"]) == {0}
    assert df["val_accuracy"].between(0, 1).all() and "val_few_accuracy" in df
    assert "accuracy" not in df and "acc_class_0" not in df  # the test split is never touched
    main(["render", "tuning", "--out", str(tmp_path)])
    assert "val accuracy" in (tmp_path / "tuning.md").read_text()


def test_chosen_setting_is_the_best_on_validation():
    df = pd.DataFrame({"method": ["sar", "sar", "sar", "la"], "setting": ["a", "b", "c", "t"],
                       "val_accuracy": [0.5, 0.7, 0.7, 0.1], "val_few_accuracy": [0.0] * 4})
    chosen = chosen_settings(df)
    assert chosen.set_index("method")["setting"].to_dict() == {"sar": "b", "la": "t"}


def test_longtail_rows_record_the_options_they_trained_with(longtail_csv):
    df = pd.read_csv(longtail_csv).set_index("method")
    assert df.loc["sar_anchor_ce_only", "method_options"].iloc[0] == '{"trade_off": 0.0}'
    assert df.loc["ce", "method_options"].iloc[0] == "{}"


def test_tuned_methods_take_the_setting_chosen_on_validation(tmp_path):
    runs = list(longtail_grid(SMOKE_CLASSIFICATION, [0]))
    with pytest.raises(FileNotFoundError, match="run `python -m sar.experiments tuning` first"):
        with_tuned_options(runs, tmp_path, smoke=False)
    assert with_tuned_options(runs, tmp_path, smoke=True) == runs  # smoke: defaults
    rows = [{"method": m, "setting": s, "val_accuracy": acc, "val_few_accuracy": 0.0}
            for m, s, acc in [("sar", "trade_off 0.1", 0.7), ("sar", "trade_off_ce 3", 0.8),
                              ("logit_adjusted", "tau 2", 0.9), ("prototype", "weight 1", 0.5),
                              ("center", "weight 0.01", 0.5)]]
    pd.DataFrame(rows).to_csv(tmp_path / "tuning.csv", index=False)
    tuned = {run.method: run.options["method_options"]
             for run in with_tuned_options(runs, tmp_path, smoke=False)}
    assert tuned["sar_tuned"] == {"trade_off_ce": 3.0} and tuned["sar"] == {}
    assert tuned["logit_adjusted"] == {"tau": 2.0} and tuned["prototype"] == {"weight": 1.0}
    assert tuned["sar_anchor_ce_only"] == {"trade_off": 0.0}


def test_per_class_iou_table_orders_classes_head_to_tail_and_averages_seeds():
    from sar.experiments.report import per_class_iou_table

    groups = {"many": [4, 1, 7], "medium": [0, 3, 5, 9], "few": [2, 6, 8]}
    rows = [{"setting": "Unet", "method": m, "seed": s,
             **{f"iou_class_{k}": (k + s) / 100 for k in range(11)}}
            for m in ("ce", "sar") for s in (0, 1)]
    table = per_class_iou_table(pd.DataFrame(rows), groups)
    assert list(table.columns[:4]) == ["architecture", "method", "background", "Coat"]
    assert list(table.columns[-3:]) == ["Pullover", "Shirt", "Bag"]
    assert table.loc[0, "Coat"] == pytest.approx(5.5)  # class 4 is mask id 5: (5 + 6) / 2
    assert len(table) == 2


def test_every_generated_block_of_the_readme_and_docs_is_in_sync_with_results(tmp_path,
                                                                              capsys):
    # what `render all --into README.md docs/*.md` would write changes nothing in the repo
    root = RESULTS_DIR.parent
    documents = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    for csv in RESULTS_DIR.glob("*.csv"):
        shutil.copy(csv, tmp_path)
    copies = []
    for document in documents:
        copies.append(tmp_path / "documents" / document.relative_to(root))
        copies[-1].parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(document, copies[-1])
    render_all(tmp_path, [0, 1, 2], copies, figures=False)
    assert "rendered longtail" in capsys.readouterr().out
    blocks = re.compile(r"<!-- results:(\w+) -->.*?<!-- /results:\1 -->", re.S)
    held = set()
    for document, copy in zip(documents, copies, strict=True):
        found = {m.group(1): m.group(0) for m in blocks.finditer(document.read_text())}
        rendered = {m.group(1): m.group(0) for m in blocks.finditer(copy.read_text())}
        for name, block in found.items():
            assert block == rendered[name], (
                f"{document.name}'s {name} block is stale: python -m sar.experiments render all"
                " --into README.md docs/results.md docs/cost.md")
        held |= set(found)
    assert {"headline", "status", *EXPERIMENTS} <= held

def test_grid_runs_build_sar_with_the_projector_init_of_the_committed_rows():
    from sar import methods
    from sar.experiments.runs import GRID_PROJECTOR_INIT, build_method

    assert GRID_PROJECTOR_INIT == "torch"
    for name in methods.SAR_METHODS:
        torch.manual_seed(0)
        grid, _ = build_method(name, SmallCNN(4), counts=[5, 4, 3, 2])
        torch.manual_seed(0)
        pinned, _ = methods.build(name, SmallCNN(4), counts=[5, 4, 3, 2], projector_init="torch")
        torch.manual_seed(0)
        default, _ = methods.build(name, SmallCNN(4), counts=[5, 4, 3, 2])
        third = "regularizer.projector.6.weight"
        assert torch.equal(grid.state_dict()[third], pinned.state_dict()[third]), name
        assert not torch.equal(grid.state_dict()[third], default.state_dict()[third]), name
    torch.manual_seed(0)
    build_method("prototype", SmallCNN(4))  # no SAR options for other regularisers


def test_train_classification_trains_the_model_whose_scores_the_grid_row_reports():
    from torch.utils.data import DataLoader

    from sar.experiments import build_classification_model, run_classification, train_classification
    from sar.train import evaluate

    run = next(r for r in longtail_grid(SMOKE_CLASSIFICATION, [0])
               if r.method == "sar_anchor_ce_only" and r.options["imbalance_factor"] == 10)
    data: dict = {}
    row = run_classification(run, SMOKE_CLASSIFICATION, torch.device("cpu"), data)
    model, history, lt = train_classification(run, SMOKE_CLASSIFICATION, torch.device("cpu"), data)
    test = DataLoader(lt.test, batch_size=512)
    scores = evaluate(model, test, num_classes=len(lt.counts), groups=lt.groups)
    assert scores["accuracy"] == row["accuracy"] and len(history) > 0
    assert scores["per_class_accuracy"] == [row[f"acc_class_{k}"] for k in range(len(lt.counts))]
    # the shell of build_classification_model takes the trained weights back
    shell, _ = build_classification_model(run, SMOKE_CLASSIFICATION, lt.counts)
    shell.load_state_dict(model.state_dict())
    images = next(iter(test))[0]
    assert torch.equal(shell.eval()(images), model.eval()(images))
    assert shell.regularizer.trade_off == 0.0  # the run's method options reach the model


def test_inspect_classification_gives_the_same_run_in_a_worker_process(tmp_path):
    """Notebook 04 trains its runs in two one-thread worker processes: each must equal the
    one-thread run in this process (and the grid's own training of that cell)."""
    import functools

    from sar.cache import cached_in_processes
    from sar.experiments import inspect_classification

    runs = [r for r in longtail_grid(SMOKE_CLASSIFICATION, [0])
            if r.method in ("ce", "sar") and r.options["imbalance_factor"] == 10]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = [inspect_classification(run, SMOKE_CLASSIFICATION) for run in runs]
    finally:
        torch.set_num_threads(threads)
    jobs = [(f"inspect_{run.method}", {"key": run.key}, functools.partial(
        inspect_classification, run, SMOKE_CLASSIFICATION)) for run in runs]
    there = cached_in_processes(jobs, processes=2, folder=tmp_path, smoke=False, progress=False)
    for mine, theirs in zip(here, there, strict=True):
        assert mine["accuracy"] == theirs["accuracy"]
        for stat in ("weight_norm", "bias", "mean_logit", "predicted_share"):
            assert torch.equal(mine[stat], theirs[stat]), stat
        for name, tensor in mine["state"].items():
            assert torch.equal(tensor, theirs["state"][name]), name
