"""Evaluation metrics: classification accuracy, segmentation IoU, and feature geometry.

Three families, all taking torch tensors (numpy arrays are converted):

* **Classification** - :func:`accuracy`, :func:`per_class_accuracy`, :func:`shot_accuracy`
  (many/medium/few-shot groups of a long-tailed benchmark).
* **Segmentation** - :func:`confusion_matrix` and the quantities derived from it
  (:func:`iou_per_class`, :func:`mean_iou`, :func:`pixel_accuracy`), plus the streaming
  :class:`ConfusionMeter` for evaluation loops, and :func:`segmentation_summary`, one table
  row from a segmentation evaluation.
* **Classifier bias** - :func:`classifier_weights` (per-class weight norms and biases) and
  :func:`logit_statistics` (mean logits, prediction shares): how far a head favours the
  frequent classes.
* **Representation geometry** - how tightly features cluster around their class mean or
  anchor (:func:`representation_metrics`, including neural-collapse NC1;
  :func:`class_mean_cosines`, how close two classes' centred means lie;
  :func:`target_distance_ratio` per class, scale-free; :func:`target_distance_split`
  into scatter and offset; :func:`nearest_target_summary`, own target against the nearest
  other) and how much class
  centres move between runs or epochs (:func:`center_drift`, :func:`geometry_drift`).
* **Seeds and training logs** - :func:`t_half_width` (the 95% Student-t interval of a mean
  over a few seeds: is a paired gap told from zero?); :func:`gate_opened_step` and
  :func:`loss_dict_events`, read from ``sar.train.fit``'s history.

Accuracies and IoUs are fractions in ``[0, 1]``, not percentages.
"""

from .classifier import classifier_weights, logit_statistics
from .geometry import (
    FeatureSnapshot,
    RepresentationTracker,
    center_drift,
    class_mean_cosines,
    class_means,
    geometry_drift,
    model_anchors,
    representation_metrics,
)
from .history import gate_opened_step, loss_dict_events
from .intervals import t_half_width
from .scores import (
    ConfusionMeter,
    accuracy,
    confusion_matrix,
    iou_per_class,
    mean_iou,
    per_class_accuracy,
    pixel_accuracy,
    segmentation_summary,
    shot_accuracy,
)
from .targets import (
    nearest_target_summary,
    pull_shares,
    target_distance_ratio,
    target_distance_split,
    target_distances,
)

__all__ = [
    "ConfusionMeter",
    "FeatureSnapshot",
    "RepresentationTracker",
    "accuracy",
    "center_drift",
    "class_mean_cosines",
    "class_means",
    "classifier_weights",
    "confusion_matrix",
    "gate_opened_step",
    "geometry_drift",
    "iou_per_class",
    "logit_statistics",
    "loss_dict_events",
    "mean_iou",
    "model_anchors",
    "nearest_target_summary",
    "per_class_accuracy",
    "pixel_accuracy",
    "pull_shares",
    "representation_metrics",
    "segmentation_summary",
    "shot_accuracy",
    "t_half_width",
    "target_distance_ratio",
    "target_distance_split",
    "target_distances",
]
