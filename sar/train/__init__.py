"""Training and evaluation loops for SAR-wrapped (or plain) models.

:func:`fit` trains any ``nn.Module`` with cross-entropy; when the model is a
:class:`~sar.models.RegularizedModel` it adds the regulariser's loss and logs every entry of
its loss dict. It checkpoints atomically at the end of each epoch (weights, regulariser
buffers, optimiser, schedule and every RNG state), so ``resume=True`` continues exactly where
the checkpoint left off. :func:`evaluate` computes accuracy or IoU and, optionally, the
geometry of the head-input features (:func:`collect_features`).

``fit`` also trains a ``DistributedDataParallel`` model (see :mod:`sar.distributed`): it
calls ``set_epoch`` on a ``DistributedSampler``, averages the logged values over ranks, stops
every rank together on a non-finite loss, and only rank 0 writes the checkpoint (with every
rank's RNG state). :func:`main` is the command-line entry point, for one process or torchrun::

    python -m sar.train --config configs/fashion_scenes_unet.json
    torchrun --nproc_per_node=4 -m sar.train --config configs/voc_deeplabv3plus.json
"""

from .checkpoint import CHECKPOINT_VERSION, load_checkpoint, save_checkpoint
from .cli import RunResult, main, run
from .criterion import CE_MEAN_OVER, IgnoreSafeCrossEntropy
from .evaluation import TASKS, collect_features, evaluate, gate_opened_step
from .loop import fit
from .optim import OPTIMIZERS, POLY_POWER, SCHEDULES, lr_factor
from .run_config import (
    AMP_DTYPES,
    DATASETS,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    build_datasets,
    build_model,
    load_run_config,
)

__all__ = [
    "AMP_DTYPES",
    "CE_MEAN_OVER",
    "CHECKPOINT_VERSION",
    "DATASETS",
    "DataConfig",
    "IgnoreSafeCrossEntropy",
    "ModelConfig",
    "OPTIMIZERS",
    "POLY_POWER",
    "RunConfig",
    "RunResult",
    "SCHEDULES",
    "TASKS",
    "TrainConfig",
    "build_datasets",
    "build_model",
    "collect_features",
    "evaluate",
    "fit",
    "gate_opened_step",
    "load_checkpoint",
    "load_run_config",
    "lr_factor",
    "main",
    "run",
    "save_checkpoint",
]
