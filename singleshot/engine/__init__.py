"""Training and evaluation loops, their configuration, schedules and DistributedDataParallel helpers.

    from singleshot.engine import TrainConfig, Trainer
    result = Trainer(TrainConfig(data="data/shapes", out="runs/a", epochs=10)).fit()

Modules: ``config`` (:class:`TrainConfig`, JSON files, the learning-rate rule), ``schedule`` (warmup then
step or cosine), ``training`` (:class:`Trainer`), ``loader`` (the training batches), ``run_state`` (where a
run stands, in ``last.pt``), ``evaluation`` (:func:`predict_dataset`), ``distributed`` (process groups,
gathering), ``state`` (random states, atomic writes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from singleshot._lazy import lazy_exports

# name -> the module that defines it; imported on first use (PEP 562), so that ``singleshot.engine.config``
# (which the command line's parser reads for its defaults) can be imported without importing torch.
_EXPORTS = {
    "REFERENCE_BATCH": "config",
    "TrainConfig": "config",
    "default_lr": "config",
    "World": "distributed",
    "setup": "distributed",
    "teardown": "distributed",
    "detect_batch": "evaluation",
    "predict_dataset": "evaluation",
    "WarmupSchedule": "schedule",
    "lr_factor": "schedule",
    "Trainer": "training",
    "TrainResult": "training",
}

__all__ = [
    "REFERENCE_BATCH",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "WarmupSchedule",
    "World",
    "default_lr",
    "detect_batch",
    "lr_factor",
    "predict_dataset",
    "setup",
    "teardown",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from singleshot.engine.config import REFERENCE_BATCH, TrainConfig, default_lr
    from singleshot.engine.distributed import World, setup, teardown
    from singleshot.engine.evaluation import detect_batch, predict_dataset
    from singleshot.engine.schedule import WarmupSchedule, lr_factor
    from singleshot.engine.training import Trainer, TrainResult
