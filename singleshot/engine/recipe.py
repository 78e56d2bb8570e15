"""The default recipe, adapted to the training data: input size, epochs, batch size, validation interval.

A value the user gives (command line or ``--config``) is kept as it is; each value left to the recipe is
chosen from the training set by :func:`choose_recipe`, which also says why in one sentence per choice. The
trainer prints those sentences in the first lines of a run and records them in ``config.json`` (key
``recipe``). The rules, and the measurements behind them, are in ``docs/training.md``:

- **Input size** (models that take any input size, such as ``ssd_small``): the smallest multiple of 32 at
  which the 10th percentile of the training objects spans :data:`SMALL_OBJECT_PIXELS` pixels, within the
  model's range (``ssd_small``: 192 to 256 px on a CPU). Small objects are learned only when they cover a
  few cells of the finest source map (stride 8).
- **Epochs**: enough optimisation for a small data set, bounded for a large one: about
  :data:`TARGET_SAMPLES` training samples in all (``ceil(TARGET_SAMPLES / images)`` epochs), within
  :data:`EPOCH_RANGE`.
- **Batch size**: :data:`SMALL_DATA_BATCH` below :data:`SMALL_DATA_IMAGES` training images (four times the
  optimiser steps for the same compute; the learning rate scales with the batch), else 32, the paper's.
- **Validation**: about :data:`VALIDATIONS` times per run (and after the last epoch), so that it costs a
  bounded share of the run whatever the number of epochs.
- **Time budget** (CPU, epochs left to the recipe): after the second epoch, the epochs are cut to those that
  fit ``time_budget`` seconds at its pace (:func:`epochs_in_budget`), so that a default run takes about as long on a slow
  CPU as on a fast one; the trainer says so in one line and records it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

SMALL_OBJECT_PIXELS = 16.0
"""Pixels (at the network input) that the 10th-percentile object should span: about 2 strides of the finest
source map of ``ssd_small``."""

SIZE_RANGES = {"ssd_small": (192, 256)}
"""Input sizes the recipe may choose per model (multiples of 32); other models keep their own size."""

TARGET_SAMPLES = 30_000
"""Training samples (images seen, augmented) of a default run, before the epoch range applies."""

EPOCH_RANGE = (10, 300)

BUDGET_EPOCH = 1
"""The epoch (0-based) whose training time sets the pace for the time budget: the second, since the first
also starts the data-loader workers and warms up (on a 2-core CPU it took 1.3x the later ones)."""

BUDGET_VALIDATION_SHARE = 0.1
"""The share of ``time_budget`` kept for validation when the epochs are fitted to it after the first epoch."""
SMALL_DATA_IMAGES = 2_000
SMALL_DATA_BATCH = 8
"""The batch below :data:`SMALL_DATA_IMAGES` training images: more optimiser steps for the same compute (on
the tuning set ``photo-occluded``, 20 epochs with AdamW at 3e-3: 63.3 % test mAP at batch 8, 58.3 % at 16)."""
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


def _tenth_percentile(boxes_rel: np.ndarray) -> float | None:
    """The 10th percentile of the sizes of the boxes that have an area (None when none has)."""
    sizes = object_sizes(boxes_rel)
    sizes = sizes[sizes > 0]
    return float(np.quantile(sizes, 0.1)) if sizes.size else None


def choose_image_size(model: str, boxes_rel: np.ndarray) -> tuple[int | None, str | None]:
    """The input size for ``model`` on objects ``boxes_rel`` (ndarray[N, 4] relative xyxy) and why.

    ``(None, None)`` when the model keeps its own size (it is not in :data:`SIZE_RANGES`) or there are no
    objects to measure.
    """
    if model not in SIZE_RANGES:
        return None, None
    q10 = _tenth_percentile(boxes_rel)
    if q10 is None:
        return None, None
    low, high = SIZE_RANGES[model]
    wanted = SMALL_OBJECT_PIXELS / q10
    size = int(min(high, max(low, 32 * math.ceil(wanted / 32))))
    if wanted > high:
        why = (
            f"{size} px, the largest of {model}'s range {low}-{high}: the 10th-percentile object "
            f"({100 * q10:.1f} % of the image side) would span {SMALL_OBJECT_PIXELS:.0f} px at {wanted:.0f} px"
        )
    else:
        why = (
            f"{size} px, the smallest of {model}'s range {low}-{high} at which the 10th-percentile object "
            f"({100 * q10:.1f} % of the image side) spans {SMALL_OBJECT_PIXELS:.0f} px"
        )
    return size, why


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
        batch_size = SMALL_DATA_BATCH if num_images < SMALL_DATA_IMAGES else 32
        reasons["batch_size"] = f"{batch_size}: " + (
            f"fewer than {SMALL_DATA_IMAGES} training images, so {32 // SMALL_DATA_BATCH} times the steps of "
            "batch 32"
            if batch_size == SMALL_DATA_BATCH
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
        val_every, reasons["val_every"] = validation_interval(epochs)
    return Recipe(image_size, epochs, batch_size, val_every, reasons)


def epochs_in_budget(planned: int, epoch_s: float, budget_s: float) -> tuple[int, str | None]:
    """The epochs of a run whose epochs take ``epoch_s`` seconds each, within ``budget_s``, and why.

    ``(planned, None)`` when the ``planned`` epochs fit (or there is no budget). Otherwise the epochs whose
    training fits ``1 - BUDGET_VALIDATION_SHARE`` of the budget, never under the low end of
    :data:`EPOCH_RANGE` (nor over ``planned``).
    """
    if budget_s <= 0 or epoch_s <= 0:
        return planned, None
    fit = math.floor(budget_s * (1 - BUDGET_VALIDATION_SHARE) / epoch_s)
    if fit >= planned:
        return planned, None
    epochs = min(planned, max(EPOCH_RANGE[0], fit))
    why = (
        f"{epochs} instead of {planned}: an epoch takes {epoch_s:.1f} s on this machine, and "
        f"{fit} epochs fit the {budget_s:g} s time budget of a CPU run (--time-budget; --epochs to choose)"
    )
    if fit < EPOCH_RANGE[0]:
        why += f"; at least {EPOCH_RANGE[0]} epochs, so the run will take longer"
    return epochs, why


def validation_interval(epochs: int) -> tuple[int, str]:
    """Validate every ``k`` epochs for about :data:`VALIDATIONS` validations in ``epochs``, and why."""
    val_every = max(1, math.ceil(epochs / VALIDATIONS))
    why = (
        f"{val_every}: about {VALIDATIONS} validations in {epochs} epochs (and after the last)"
        if val_every > 1
        else "1: every epoch"
    )
    return val_every, why


EXPAND_PIXELS = 16.0
"""Zoom-out (the paper's "expand") shrinks objects by up to ``expand_max`` per side; the recipe keeps the
10th-percentile object at :data:`EXPAND_PIXELS` or more after the largest zoom-out."""

COVERAGE_WARNING = 0.9
"""Below this default-box coverage of the training objects, the trainer warns and names the missed sizes."""


def choose_expand(boxes_rel: np.ndarray, image_size: int) -> tuple[dict, str]:
    """Zoom-out settings for ``TrainTransform`` (``{"expand": False}`` or ``{"expand_max": r}``) and why.

    The paper's zoom-out (up to 4x per side, half of the time) makes small training examples from large
    ones; on data whose objects are already small it makes them too small to match any default box, and a
    short run learns them slower. The ratio is the one that keeps the 10th-percentile object at
    :data:`EXPAND_PIXELS` at the input, capped at the paper's 4; under 1.5 zoom-out is off.
    """
    q10_px = (_tenth_percentile(boxes_rel) or 0.0) * image_size
    ratio = min(4.0, q10_px / EXPAND_PIXELS)
    if ratio < 1.5:
        return {"expand": False}, (
            f"off: the 10th-percentile object spans {q10_px:.0f} px at the input, and zooming out would "
            f"take it under {EXPAND_PIXELS:.0f} px"
        )
    ratio = round(ratio, 1)
    return {"expand_max": ratio}, (
        f"up to {ratio:g}x per side: the 10th-percentile object ({q10_px:.0f} px at the input) stays at "
        f"{EXPAND_PIXELS:.0f} px or more" + (" (the paper's 4x)" if ratio == 4.0 else "")
    )


def adapt_config(config, train_set, say):
    """The run's configuration with what the user left open chosen from ``train_set`` (a new run only).

    Fills in the input size, epochs, batch size and validation interval (:func:`choose_recipe`), the
    zoom-out of the augmentation (:func:`choose_expand`), and, unless ``config.fit_boxes`` is false or the
    model options already give default boxes, default boxes fitted to the training objects
    (:func:`singleshot.coverage.fit_default_boxes`, at most twice the model's number). Each choice is
    recorded with its reason in ``config.recipe`` and said through ``say`` (one line each); a coverage
    under :data:`COVERAGE_WARNING` gets a warning naming the sizes that are missed.

    Raises:
        UserError: the training set has no objects to learn, or only objects under 2 px at the input.
    """
    import dataclasses

    from singleshot.coverage import check_learnable_boxes, coverage, fit_for_model
    from singleshot.models import build_model

    boxes = train_set.training_boxes()
    name = config.data_name + (f" (split {train_set.split})" if train_set.split else "")
    recipe = choose_recipe(
        config.model,
        len(train_set),
        boxes.numpy(),
        image_size=config.image_size,
        epochs=config.epochs,
        batch_size=config.batch_size,
        val_every=config.val_every,
    )
    reasons = dict(recipe.reasons)
    options = dict(config.model_options)
    if recipe.image_size is not None:
        options["image_size"] = recipe.image_size
    model = build_model(config.model, train_set.num_classes, **options)
    check_learnable_boxes(boxes, model.image_size, name)
    augment = dict(config.augment)
    if not {"expand", "expand_max"} & set(augment):
        chosen, reasons["expand"] = choose_expand(boxes.numpy(), min(model.image_size))
        augment.update(chosen)
    model_options = dict(config.model_options)
    given_boxes = {"scales", "aspect_ratios", "densities", "steps"} & set(model_options)
    if config.fit_boxes and not given_boxes:
        fit = fit_for_model(model, boxes)
        model_options.update(fit.model_options)
        after = fit.after
        reasons["default_boxes"] = (
            f"fitted to the training objects: coverage (IoU >= 0.5) {100 * fit.before.coverage:.1f} % -> "
            f"{100 * after.coverage:.1f} %, {fit.before.num_priors} -> {after.num_priors} default boxes"
        )
    else:
        after = coverage(boxes, model.priors)
        why = "the model options give them" if given_boxes else "--zoo-boxes"
        reasons["default_boxes"] = (
            f"the model's own ({why}): coverage (IoU >= 0.5) {100 * after.coverage:.1f} %"
        )
    config = dataclasses.replace(
        config,
        image_size=recipe.image_size or config.image_size,
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        val_every=recipe.val_every,
        augment=augment,
        model_options=model_options,
        recipe=reasons,
    )
    for key, why in reasons.items():
        say(f"recipe: {key.replace('_', ' ')} {why}")
    if after.coverage < COVERAGE_WARNING:
        say(f"warning: {_missed(after, min(model.image_size))}")
    return config


def _missed(cov, side: int) -> str:
    """A sentence naming the object sizes that the default boxes miss most."""
    weak = [b for b in cov.by_size if b.count and b.coverage is not None and b.coverage < COVERAGE_WARNING]
    weak.sort(key=lambda b: b.covered - b.count)
    parts = [f"{b.label} of the side ({b.count - b.covered} of {b.count} objects missed)" for b in weak[:3]]
    return (
        f"only {100 * cov.coverage:.1f} % of the training objects overlap a default box by IoU >= 0.5; "
        f"missed most: {'; '.join(parts) or 'no size in particular'}; a larger --image-size helps small objects "
        f"(now {side} px)"
    )
