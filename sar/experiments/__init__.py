"""The reproduction suite: named experiments that append one CSV row per finished run.

    python -m sar.experiments longtail              # the full grid, resumable
    python -m sar.experiments ablation --seeds 0 1 2
    python -m sar.experiments segmentation --smoke  # a tiny grid (what the tests run)
    python -m sar.experiments overhead
    python -m sar.experiments render longtail       # figures + a markdown table from the CSV

Each run is identified by (experiment, method, setting, seed); a row already in the CSV is
skipped, so a long grid can be run over several sittings. Rows carry the hardware, the wall
time and the git commit, so every number in the README and notebook 04 traces back here.
"""

from .cli import main
from .grids import (
    ABLATIONS,
    CLASSIFICATION_METHODS,
    EXPERIMENTS,
    LONGTAIL_METHODS,
    LONGTAIL_VARIANTS,
    SEGMENTATION_METHODS,
    SMOKE_CLASSIFICATION,
    SMOKE_SEGMENTATION,
    TUNED,
    TUNING,
    ClassificationSetup,
    Run,
    SegmentationSetup,
    ablation_grid,
    grid_runs,
    longtail_grid,
    segmentation_grid,
    setups,
    tuning_grid,
)
from .report import (
    chosen_settings,
    markdown_table,
    paired_differences,
    paired_gap,
    paired_gap_table,
    plot_ablation,
    plot_paired_differences,
    plot_segmentation_shot_groups,
    render,
    summarise,
    update_readme,
)
from .runner import grid_status, results_or_reduced_grid, run_grid, with_tuned_options
from .runs import (
    LongTailData,
    add_shot_group_iou,
    load_longtail_data,
    method_name,
    run_classification,
    run_segmentation,
    scene_shot_groups,
)
from .store import (
    KEY,
    RESULTS_DIR,
    append_row,
    append_rows,
    finished_keys,
    git_commit,
    hardware,
    keys_by_row,
    load_results,
    merge_rows,
)

__all__ = [
    "ABLATIONS",
    "CLASSIFICATION_METHODS",
    "ClassificationSetup",
    "EXPERIMENTS",
    "KEY",
    "LONGTAIL_METHODS",
    "LONGTAIL_VARIANTS",
    "LongTailData",
    "RESULTS_DIR",
    "Run",
    "SEGMENTATION_METHODS",
    "SMOKE_CLASSIFICATION",
    "SMOKE_SEGMENTATION",
    "SegmentationSetup",
    "TUNED",
    "TUNING",
    "ablation_grid",
    "add_shot_group_iou",
    "append_row",
    "append_rows",
    "chosen_settings",
    "finished_keys",
    "git_commit",
    "grid_runs",
    "grid_status",
    "hardware",
    "keys_by_row",
    "load_longtail_data",
    "load_results",
    "longtail_grid",
    "main",
    "markdown_table",
    "merge_rows",
    "method_name",
    "paired_differences",
    "paired_gap",
    "paired_gap_table",
    "plot_ablation",
    "plot_paired_differences",
    "plot_segmentation_shot_groups",
    "render",
    "results_or_reduced_grid",
    "run_classification",
    "run_grid",
    "run_segmentation",
    "scene_shot_groups",
    "segmentation_grid",
    "setups",
    "summarise",
    "tuning_grid",
    "update_readme",
    "with_tuned_options",
]
