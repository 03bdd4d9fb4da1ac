"""Plots for anchors, embeddings, training curves, per-class results and segmentation.

Every function draws onto a given matplotlib ``ax`` (or creates one), returns the Axes (the
Figure for multi-panel plots) and never calls ``plt.show()``, so the same code serves
notebooks, scripts and tests. Call :func:`use_style` once for the house style. A method keeps
one colour across all plots through :func:`method_color` (:data:`METHOD_COLORS`), a class
through :func:`class_palette`, keyed by its name (a "background" class is black everywhere),
a logged loss term through :func:`series_colors`.
:func:`plot_sar_pipeline` draws the whole method as one diagram; :func:`plot_recipe_costs`
and :func:`plot_scatter_offset` draw notebook 02's collapse runs.
"""

from ..metrics.intervals import t_half_width  # beside the paired figures that draw it
from .collapse import plot_feature_step, plot_recipe_costs, plot_scatter_offset
from .diagram import loss_equation, plot_sar_pipeline, sar_defaults
from .geometry import (
    cosine_matrix,
    plot_anchor_cosines,
    plot_embedding,
    plot_feature_grid,
    plot_features_2d,
    plot_target_distances,
)
from .paired import (
    PAIRED_INTERVALS,
    paired_gaps,
    plot_paired_gaps,
    plot_per_class_seeds,
)
from .results import (
    plot_bars,
    plot_per_class,
    plot_sweep,
    plot_sweep_panels,
    sweep_summary,
)
from .segmentation import colorize_mask, plot_segmentation_comparison, plot_segmentation_overlay
from .style import (
    BACKGROUND_RGB,
    CLASS_COLORS,
    COLUMN_LABELS,
    FIGSIZE,
    IGNORE_RGB,
    MAX_LEGEND_CLASSES,
    METHOD_COLORS,
    METHOD_LABELS,
    TERM_COLORS,
    canonical_method,
    class_palette,
    figure_legend,
    level_colors,
    method_color,
    method_label,
    pretty_label,
    readable_log_axis,
    series_colors,
    strength_styles,
    tick_labels,
    use_style,
)
from .training import (
    plot_anchor_probabilities,
    plot_metric_curves,
    plot_training_curves,
    plot_value_histograms,
)

__all__ = [
    "BACKGROUND_RGB",
    "CLASS_COLORS",
    "COLUMN_LABELS",
    "FIGSIZE",
    "IGNORE_RGB",
    "MAX_LEGEND_CLASSES",
    "METHOD_COLORS",
    "METHOD_LABELS",
    "PAIRED_INTERVALS",
    "TERM_COLORS",
    "canonical_method",
    "class_palette",
    "colorize_mask",
    "cosine_matrix",
    "figure_legend",
    "level_colors",
    "loss_equation",
    "method_color",
    "method_label",
    "paired_gaps",
    "plot_anchor_cosines",
    "plot_anchor_probabilities",
    "plot_bars",
    "plot_embedding",
    "plot_feature_grid",
    "plot_feature_step",
    "plot_features_2d",
    "plot_target_distances",
    "plot_metric_curves",
    "plot_paired_gaps",
    "plot_per_class",
    "plot_per_class_seeds",
    "plot_recipe_costs",
    "plot_sar_pipeline",
    "plot_scatter_offset",
    "plot_segmentation_comparison",
    "plot_segmentation_overlay",
    "plot_sweep",
    "plot_sweep_panels",
    "plot_training_curves",
    "plot_value_histograms",
    "pretty_label",
    "readable_log_axis",
    "sar_defaults",
    "series_colors",
    "strength_styles",
    "sweep_summary",
    "t_half_width",
    "tick_labels",
    "use_style",
]
