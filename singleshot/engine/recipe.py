"""The default recipe, adapted to the training data: input size, epochs, batch size, validation interval.

A value the user gives (command line or ``--config``) is kept as it is; each value left to the recipe is
chosen from the training set by :func:`choose_recipe`, which also says why in one sentence per choice. The
trainer prints those sentences in the first lines of a run and records them in ``config.json`` (key
``recipe``). The rules, and the measurements behind them, are in ``docs/training.md``:

- **Input size** (models that take any input size, such as ``ssd_small``): the smallest multiple of 32 at
  which the 10th percentile of the training objects spans :data:`SMALL_OBJECT_PIXELS` pixels, within the
  model's range (``ssd_small``: 192 to 320 px on a CPU). Small objects are learned only when they cover a
  few cells of the finest source map (stride 8).
- **Epochs**: enough optimisation for a small data set, bounded for a large one: about
  :data:`TARGET_SAMPLES` training samples in all (``ceil(TARGET_SAMPLES / images)`` epochs), within
  :data:`EPOCH_RANGE`.
- **Batch size**: 16 below :data:`SMALL_DATA_IMAGES` training images (twice the optimiser steps for the same
  compute; the learning rate scales with the batch), else 32, the paper's.
- **Validation**: about :data:`VALIDATIONS` times per run (and after the last epoch), so that it costs a
  bounded share of the run whatever the number of epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

SMALL_OBJECT_PIXELS = 16.0
"""Pixels (at the network input) that the 10th-percentile object should span: about 2 strides of the finest
source map of ``ssd_small``."""

SIZE_RANGES = {"ssd_small": (192, 320)}
"""Input sizes the recipe may choose per model (multiples of 32); other models keep their own size."""

TARGET_SAMPLES = 30_000
"""Training samples (images seen, augmented) of a default run, before the epoch range applies."""

EPOCH_RANGE = (10, 300)
SMALL_DATA_IMAGES = 2_000
VALIDATIONS = 5


@dataclass(frozen=True)
class Recipe:
    """The resolved values and, for each one the recipe chose, the sentence that says why."""

    image_size: int | None
    epochs: int
    batch_size: int
    val_every: int
    reasons: dict[str, str] = field(default_factory=dict)


def object_sizes(boxes_rel: np.ndarray) -> np.ndarray:
    """``sqrt(w * h)`` of ``boxes_rel`` (ndarray[N, 4], xyxy relative to the image): ndarray[N]."""
    boxes = np.asarray(boxes_rel, dtype=np.float64).reshape(-1, 4)
    w = np.clip(boxes[:, 2] - boxes[:, 0], 0, None)
    h = np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    return np.sqrt(w * h)


def choose_image_size(model: str, boxes_rel: np.ndarray) -> tuple[int | None, str | None]:
    """The input size for ``model`` on objects ``boxes_rel`` (ndarray[N, 4] relative xyxy) and why.

    ``(None, None)`` when the model keeps its own size (it is not in :data:`SIZE_RANGES`) or there are no
    objects to measure.
    """
    if model not in SIZE_RANGES:
        return None, None
    sizes = object_sizes(boxes_rel)
    sizes = sizes[sizes > 0]
    if sizes.size == 0:
        return None, None
    low, high = SIZE_RANGES[model]
    q10 = float(np.quantile(sizes, 0.1))
    wanted = SMALL_OBJECT_PIXELS / q10
    size = int(min(high, max(low, 32 * math.ceil(wanted / 32))))
    where = "the largest" if wanted > high else "the smallest" if wanted <= low else "the"
    return size, (
        f"{size} px: {where} size of {model}'s range {low}-{high} at which the 10th-percentile object "
        f"({100 * q10:.1f} % of the image side) spans {SMALL_OBJECT_PIXELS:.0f} px"
        + (f" (it would need {wanted:.0f} px)" if wanted > high else "")
    )


def choose_recipe(
    model: str,
    num_images: int,
    boxes_rel: np.ndarray,
    *,
    image_size: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    val_every: int | None = None,
) -> Recipe:
    """The recipe for training ``model`` on ``num_images`` images whose objects are ``boxes_rel``.

    Args:
        model: the zoo name.
        num_images: training images (of this process's data set, before sharding).
        boxes_rel (ndarray[N, 4]): the training objects, xyxy relative to their image (not difficult).
        image_size, epochs, batch_size, val_every: values the user gave (kept); ``None`` lets the recipe
            choose.
    """
    reasons: dict[str, str] = {}
    if image_size is None:
        image_size, why = choose_image_size(model, boxes_rel)
        if why:
            reasons["image_size"] = why
    if batch_size is None:
        batch_size = 16 if num_images < SMALL_DATA_IMAGES else 32
        reasons["batch_size"] = f"{batch_size}: " + (
            f"fewer than {SMALL_DATA_IMAGES} training images, so twice the steps of batch 32"
            if batch_size == 16
            else "the paper's batch"
        )
    if epochs is None:
        low, high = EPOCH_RANGE
        wanted = math.ceil(TARGET_SAMPLES / max(num_images, 1))
        epochs = min(high, max(low, wanted))
        reasons["epochs"] = f"{epochs}: about {TARGET_SAMPLES} training samples for {num_images} images" + (
            f" (at least {low} epochs)" if wanted < low else f" (at most {high})" if wanted > high else ""
        )
    if val_every is None:
        val_every = max(1, math.ceil(epochs / VALIDATIONS))
        reasons["val_every"] = (
            f"{val_every}: about {VALIDATIONS} validations in {epochs} epochs (and after the last)"
            if val_every > 1
            else "1: every epoch"
        )
    return Recipe(image_size, epochs, batch_size, val_every, reasons)
