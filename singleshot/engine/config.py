"""The configuration of a training run: defaults < ``--config FILE`` (JSON) < command-line options.

Every key of :class:`TrainConfig` can appear in the JSON file; ``RUN/config.json`` holds the
configuration a run actually used (defaults resolved: model, image size, learning rate, metric, device),
so ``singleshot train --config RUN/config.json --out RUN2`` repeats a run.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from singleshot.engine.schedule import SCHEDULES
from singleshot.errors import UserError

REFERENCE_BATCH = 32
"""The paper's batch size: default learning rates are given for it and scaled linearly (``default_lr``)."""

METRICS = ("voc07", "voc", "coco")
FORMATS = ("voc", "coco", "yolo")


@dataclass
class TrainConfig:
    """Inputs of one training run. ``None`` means "derive it" (see :meth:`resolve`)."""

    data: str | list[str] | None = None  # several: the union of the data sets (same class names)
    out: str | None = None
    format: str | None = None
    train_split: str | None = None
    val_split: str | None = None
    val_data: str | list[str] | None = None  # the data set(s) to validate on; None: a split of ``data``
    model: str | None = None
    weights: str | None = None  # start a new run from these weights: a checkpoint or torchvision:NAME
    image_size: int | None = None
    epochs: int | None = None  # None: the recipe's (engine.recipe), from the number of training images
    time_budget: float = 720.0  # seconds a CPU run whose epochs the recipe chose may take (0: no limit)
    batch_size: int | None = None  # None: the recipe's, from the number of training images
    lr: float | None = None
    optimizer: str | None = None  # None: the model's (default_optimizer): AdamW for ssd_small, else SGD
    momentum: float = 0.9  # SGD's momentum; AdamW's beta1
    weight_decay: float | None = None  # None: the optimizer's (OPTIMIZERS)
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    warmup_factor: float = 0.001
    milestones: list[float] = field(default_factory=lambda: [2 / 3, 5 / 6])
    gamma: float = 0.1
    final_lr_factor: float = 0.0
    workers: int | None = None
    device: str = "auto"
    amp: bool | None = None  # None: on CUDA (float16); on the CPU only when true (bfloat16)
    channels_last: bool | None = None
    winograd: bool = True
    sync_bn: bool | None = None
    seed: int = 0
    val_every: int | None = None  # None: the recipe's, a bounded number of validations
    metric: str | None = None
    skip_invalid: bool = False
    log_every: int = 10
    augment: dict = field(default_factory=dict)
    model_options: dict = field(default_factory=dict)
    fit_boxes: bool = True  # fit the default boxes to the training data when training from scratch
    # ImageNet weights of the backbone when training from scratch: "imagenet", "none" or a state dict's path;
    # None: none (singleshot train's default is "imagenet" for zoo.IMAGENET_BACKBONE_MODELS)
    backbone_weights: str | None = None
    # parts of the model that keep their weights, e.g. ["backbone"] or "backbone.conv4,head" (engine.freeze)
    freeze: str | list[str] = field(default_factory=list)
    ema: bool = False  # validate and save an exponential moving average of the weights (engine.ema)
    recipe: dict = field(default_factory=dict)  # written by the trainer: why each derived value was chosen

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict, source: str = "the configuration") -> TrainConfig:
        """A configuration from a dict; unknown keys and wrongly typed values raise :class:`UserError`."""
        return cls().updated(values, source)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a JSON object written by hand or by a previous run (``RUN/config.json``)."""
        return cls().updated(read_json_object(path), str(path))

    def updated(self, values: dict, source: str = "the configuration") -> TrainConfig:
        """A copy with ``values`` (already parsed) applied over this configuration."""
        known = self.keys()
        unknown = [k for k in values if k not in known]
        if unknown:
            close = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys are {', '.join(known)}"
            raise UserError(f"{source}: unknown key {unknown[0]!r}{hint}")
        types = {f.name: f.type for f in dataclasses.fields(self)}
        clean = {k: _coerce(k, v, types[k], source) for k, v in values.items()}
        if "freeze" in clean:  # always a list of part names; "backbone,head" is two
            items = [clean["freeze"]] if isinstance(clean["freeze"], str) else clean["freeze"]
            clean["freeze"] = [name.strip() for item in items for name in item.split(",") if name.strip()]
        return dataclasses.replace(self, **clean)

    @property
    def data_name(self) -> str:
        """The training data as text: its path, or the paths of several joined by ``" + "``."""
        return " + ".join(self.data) if isinstance(self.data, list) else str(self.data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # -- checks and derived values -----------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`UserError` naming the first option whose value cannot work."""
        if not self.data:
            raise UserError("--data is required: the folder or annotation file of the training data")
        if isinstance(self.data, list) and len(set(self.data)) != len(self.data):
            raise UserError(f"--data {self.data!r} names a data set twice; give each once")
        if not self.out:
            raise UserError("--out is required: the run folder to write checkpoints, metrics and curves to")
        checks = [
            (self.format is None or self.format in FORMATS, "format", f"use one of {', '.join(FORMATS)}"),
            (self.epochs is None or self.epochs >= 1, "epochs", "give at least 1"),
            (self.batch_size is None or self.batch_size >= 1, "batch_size", "give at least 1"),
            (self.lr is None or self.lr > 0, "lr", "give a positive learning rate"),
            (self.image_size is None or self.image_size >= 32, "image_size", "give at least 32 pixels"),
            (self.workers is None or self.workers >= 0, "workers", "give 0 or more"),
            (self.schedule in SCHEDULES, "schedule", f"use one of {', '.join(SCHEDULES)}"),
            (self.warmup_epochs >= 0, "warmup_epochs", "give 0 or more"),
            (self.time_budget >= 0, "time_budget", "give seconds, or 0 for no limit"),
            (0 < self.warmup_factor <= 1, "warmup_factor", "give a number in (0, 1]"),
            (all(0 < m <= 1 for m in self.milestones), "milestones", "give fractions of training in (0, 1]"),
            (0 < self.gamma <= 1, "gamma", "give a number in (0, 1]"),
            (self.val_every is None or self.val_every >= 1, "val_every", "give at least 1"),
            (self.metric is None or self.metric in METRICS, "metric", f"use one of {', '.join(METRICS)}"),
            (self.log_every >= 1, "log_every", "give at least 1"),
            (0 <= self.momentum < 1, "momentum", "give a number in [0, 1)"),
            (self.weight_decay is None or self.weight_decay >= 0, "weight_decay", "give 0 or more"),
            (
                self.optimizer is None or self.optimizer in OPTIMIZERS,
                "optimizer",
                f"use one of {', '.join(OPTIMIZERS)}",
            ),
        ]
        for ok, key, what in checks:
            if not ok:
                raise UserError(f"{option_name(key)} {getattr(self, key)!r} cannot work: {what}")


CLI_KEYS = {
    "data",
    "out",
    "format",
    "train_split",
    "val_split",
    "val_data",
    "model",
    "weights",
    "backbone_weights",
    "ema",
    "freeze",
    "amp",
    "image_size",
    "epochs",
    "time_budget",
    "batch_size",
    "lr",
    "optimizer",
    "workers",
    "device",
    "seed",
    "val_every",
    "metric",
    "skip_invalid",
    "schedule",
}
"""Keys that also have a command-line option of ``singleshot train`` (``--image-size`` for ``image_size``)."""


def option_name(key: str) -> str:
    """How to name a key in a message: ``--image-size`` when it is an option, else ``config key 'gamma'``."""
    return "--" + key.replace("_", "-") if key in CLI_KEYS else f"config key {key!r}"


OPTIMIZERS = {"sgd": 5e-4, "adamw": 0.05}
"""The optimizers a run can use, each with its default weight decay: SGD with momentum (the paper's, with
Caffe's 5e-4) and AdamW (Loshchilov and Hutter 2019; decoupled weight decay, 0.05 as in most AdamW recipes)."""


def default_optimizer(model_name: str) -> str:
    """AdamW for ``ssd_small``, SGD for the others (the paper's and torchvision's recipes).

    ``ssd_small`` trains from scratch in a few thousand steps; on the tuning data sets of
    ``docs/training.md`` AdamW reached in 20 epochs the mAP that SGD reached in 42.
    """
    return "adamw" if model_name == "ssd_small" else "sgd"


def default_lr(model_name: str, global_batch: int, optimizer: str | None = None) -> float:
    """The recipe's learning rate for ``model_name`` and ``optimizer``, scaled to the global batch.

    SGD: the paper trains VGG16 SSD at 1e-3 for a batch of 32. SSDLite (batch normalisation) trains at
    2e-2 (torchvision's SSDLite recipe, 0.15 for a batch of 192, is 2.5e-2 at 32); ``ssd_small`` at 4e-2.
    The rate grows linearly with the global batch (``batch_size x processes``) relative to
    :data:`REFERENCE_BATCH` (Goyal et al. 2017). AdamW: ``ssd_small`` at 8.4e-3 for a batch of 32 (4.2e-3 for
    the recipe's batch of 8 on small data sets, the best of 3e-3, 4.2e-3 and 6e-3 on the tuning set
    ``photo-occluded`` of ``docs/training.md``), other models at 1e-4; adaptive optimizers scale with the
    square root of the batch (Malladi et al. 2022).
    """
    optimizer = optimizer or default_optimizer(model_name)
    if optimizer == "adamw":
        base = 8.4e-3 if model_name == "ssd_small" else 1e-4
        return base * math.sqrt(global_batch / REFERENCE_BATCH)
    if model_name.startswith(("ssd300", "ssd512", "vgg")):
        base = 1e-3
    else:
        base = 4e-2 if model_name == "ssd_small" else 2e-2
    return base * global_batch / REFERENCE_BATCH


def read_json_object(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; give a JSON configuration such as RUN/config.json") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror})") from None
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(values, dict):
        raise UserError(f'{path}: expected a JSON object of options such as {{"epochs": 10}}')
    return values


def _coerce(key: str, value, annotation: str, source: str):
    """Check (and gently convert) a value against the field's annotation string."""
    if value is None:
        if "None" in annotation:
            return None
        raise UserError(f"{source}: {key} cannot be null")
    kinds = [a.strip() for a in annotation.split("|") if a.strip() != "None"]
    for kind in kinds:
        if kind == "bool" and isinstance(value, bool):
            return value
        if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind == "str" and isinstance(value, str):
            return value
        if (
            kind == "list[str]"
            and isinstance(value, (list, tuple))
            and all(isinstance(v, str) for v in value)
        ):
            return list(value) if len(value) != 1 else value[0]  # one data set is recorded as its path
        if kind.startswith("list") and isinstance(value, (list, tuple)):
            return [float(v) for v in value]
        if kind == "dict" and isinstance(value, dict):
            return dict(value)
    raise UserError(f"{source}: {key} = {value!r} is not a {' or '.join(kinds)}")
