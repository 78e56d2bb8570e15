"""``singleshot train``: train an SSD on a VOC, COCO or YOLO data set (one process, or several: torchrun)."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from singleshot.engine.config import REFERENCE_BATCH, TrainConfig, option_name, read_json_object
from singleshot.errors import UserError

HELP = "train a detector; writes RUN/last.pt, RUN/best.pt, metrics.csv, curves.png and config.json"

EXAMPLES = f"""\
examples:
  singleshot train --data data/shapes --out runs/a                  # the small CPU model, default recipe
  singleshot train --data VOCdevkit/VOC2007 --model ssd300_vgg16 --epochs 120 --batch-size 32 --out runs/voc
  singleshot train --data VOCdevkit/VOC2007 --data VOCdevkit/VOC2012 --model ssd300_vgg16 --out runs/voc0712
  singleshot train --data coco/instances_train2017.json --val-data coco/instances_val2017.json --out runs/coco
  singleshot train --config runs/a/config.json --epochs 40 --out runs/b   # a previous run's settings, changed
  singleshot train --data VOC --weights torchvision:ssd300_vgg16      # fine-tune torchvision's COCO SSD300
  singleshot train --resume runs/a/last.pt                          # continue a stopped run (Ctrl-C saves it)
  torchrun --nproc_per_node 4 -m singleshot train --data data/voc --out runs/ddp   # DistributedDataParallel

learning rate: without --lr, the recipe's rate for the model (SGD, momentum 0.9, weight decay 5e-4) scaled
linearly to the global batch, --batch-size x processes, relative to {REFERENCE_BATCH}; a given --lr is used
as it is, for the global batch. Warmup then cosine decay by default (config key "schedule": "step" for the
paper's x0.1 steps at 2/3 and 5/6 of training).
config file: a JSON object of the keys of RUN/config.json; options on the command line override it.
"""

# option -> (config key, argparse keyword arguments); defaults come from TrainConfig, shown in --help.
_DEFAULTS = TrainConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS  # an option not given leaves the config file's (or the default) value
    _add_data_arguments(parser.add_argument_group("data"), S)
    model = parser.add_argument_group("model and recipe")
    model.add_argument(
        "--model",
        metavar="NAME",
        default=S,
        help="model name from 'singleshot models' (default: the small CPU model)",
    )
    model.add_argument(
        "--weights",
        metavar="SOURCE",
        default=S,
        help="start from a trained detector: a checkpoint (RUN/best.pt) or torchvision:ssd300_vgg16 / "
        "torchvision:ssdlite320_mobilenet_v3_large (COCO); its model and default boxes, classes matched by name",
    )
    model.add_argument(
        "--backbone-weights",
        metavar="W",
        default=S,
        help="ImageNet start of a new model: imagenet (torchvision's weights from $TORCH_HOME/hub/checkpoints, "
        "downloaded once), none, or the path of a torchvision vgg16 / mobilenet_v3_large state dict "
        "(default: imagenet for ssd300_vgg16, ssd512_vgg16, ssdlite320_mobilenet_v3_large, else none)",
    )
    model.add_argument(
        "--ema",
        action="store_true",
        default=S,
        help="keep an exponential moving average of the weights (decay 0.9998, warmed up over 2000 steps); "
        "validation and best.pt use it, last.pt keeps it for --resume",
    )
    model.add_argument(
        "--freeze",
        metavar="PARTS",
        default=S,
        help="comma-separated parts of the model that keep their start weights, e.g. backbone (fine-tuning "
        "on few images) or backbone.conv4 (SSD300's conv1_1-conv4_3: a step takes less than half the time); "
        "a name that is no part lists them (default: none)",
    )
    model.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=S,
        help="mixed precision: float16 on CUDA (the default there), bfloat16 on a CPU (off by default; "
        "pays on CPUs with AVX-512 BF16 or AMX)",
    )
    model.add_argument(
        "--image-size",
        type=int,
        metavar="S",
        default=S,
        help="input side in pixels (default: ssd_small's from the object sizes, 192-256; others their own)",
    )
    model.add_argument(
        "--zoo-boxes",
        dest="fit_boxes",
        action="store_false",
        default=S,
        help="keep the model's own default boxes (default: fitted to the training data, see default-boxes)",
    )
    model.add_argument(
        "--epochs",
        type=int,
        metavar="E",
        default=S,
        help="epochs (default: the recipe's, about 30 000 training samples, fewer when a CPU run would "
        "take longer than --time-budget)",
    )
    model.add_argument(
        "--time-budget",
        type=float,
        metavar="S",
        default=S,
        help="seconds of training that a CPU run without --epochs may take; the recipe sets the epochs from "
        f"the second epoch's time (default: {_DEFAULTS.time_budget:g}; 0: no limit)",
    )
    model.add_argument(
        "--batch-size",
        type=int,
        metavar="B",
        default=S,
        help="images per step and process (default: 8 below 2000 training images, else 32)",
    )
    model.add_argument(
        "--lr",
        type=float,
        metavar="LR",
        default=S,
        help="peak learning rate for the global batch (default: the recipe's, scaled; see below)",
    )
    model.add_argument(
        "--optimizer",
        choices=("sgd", "adamw"),
        default=S,
        help="sgd (momentum) or adamw (default: adamw for ssd_small, sgd for the others)",
    )
    model.add_argument(
        "--schedule",
        choices=("cosine", "step"),
        default=S,
        help=f"decay after the warmup (default: {_DEFAULTS.schedule})",
    )
    model.add_argument(
        "--seed",
        type=int,
        default=S,
        help=f"seed of weights, order, augmentation (default: {_DEFAULTS.seed})",
    )
    _add_run_arguments(parser.add_argument_group("run"))


def _add_data_arguments(data, S) -> None:
    data.add_argument(
        "--data",
        metavar="PATH",
        action="append",
        default=S,
        help="a VOC root, COCO instances JSON or YOLO folder (required unless in --config); repeat it to "
        "train on the union of data sets with the same class names (--data VOC2007 --data VOC2012)",
    )
    data.add_argument(
        "--format", choices=("voc", "coco", "yolo"), default=S, help="data format (default: detected)"
    )
    data.add_argument(
        "--train-split", metavar="NAME", default=S, help="training split (default: trainval, else train)"
    )
    data.add_argument(
        "--val-data",
        metavar="PATH",
        action="append",
        default=S,
        help="validate on this VOC, COCO or YOLO data set (the classes of --data), not a split of --data; "
        "repeatable",
    )
    data.add_argument(
        "--val-split",
        metavar="NAME",
        default=S,
        help="split of --val-data (else of --data) to validate on, or 'none' (default: test, else val; "
        "when there is neither: all of --val-data, or no validation)",
    )
    data.add_argument(
        "--skip-invalid",
        action="store_true",
        default=S,
        help="leave broken images and objects out instead of stopping (see singleshot check-data)",
    )


def _add_run_arguments(run) -> None:
    S = argparse.SUPPRESS
    run.add_argument(
        "--out",
        metavar="RUN",
        default=S,
        help="run folder for checkpoints, metrics and curves (default with --resume: the checkpoint's)",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (without it, a folder holding a run is refused)",
    )
    run.add_argument("--config", metavar="FILE", help="JSON options, e.g. a previous RUN/config.json")
    run.add_argument("--resume", metavar="RUN/last.pt", help="continue the run saved in this checkpoint")
    run.add_argument(
        "--val-every",
        type=int,
        metavar="K",
        default=S,
        help="validate every K epochs and after the last (default: about 5 validations a run)",
    )
    run.add_argument(
        "--metric",
        choices=("voc07", "voc", "coco"),
        default=S,
        help="validation metric (default: coco for COCO data, else voc07)",
    )
    run.add_argument(
        "--workers",
        type=int,
        metavar="N",
        default=S,
        help="data-loading processes (default: one per spare core, at most 4; none when training on a CPU of 2 cores or fewer)",
    )
    run.add_argument("--device", metavar="D", default=S, help="cpu, cuda, cuda:N or auto (default: auto)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")


_OPTION_KEYS = (
    "data",
    "format",
    "train_split",
    "val_split",
    "val_data",
    "skip_invalid",
    "model",
    "weights",
    "backbone_weights",
    "ema",
    "freeze",
    "amp",
    "image_size",
    "fit_boxes",
    "epochs",
    "time_budget",
    "batch_size",
    "lr",
    "optimizer",
    "schedule",
    "seed",
    "out",
    "val_every",
    "metric",
    "workers",
    "device",
)
# What cannot change when a run resumes: the weights and the data order depend on them.
_FIXED_ON_RESUME = (
    "model",
    "optimizer",
    "image_size",
    "batch_size",
    "seed",
    "data",
    "train_split",
    "format",
    "model_options",
    "ema",
    "freeze",
)


def build_config(args: argparse.Namespace) -> TrainConfig:
    """Defaults < the resumed run's configuration < --config FILE < options given on the command line."""
    config = TrainConfig()
    saved = None
    if args.resume:
        saved = config = _resume_config(args.resume)
    from_file = read_json_object(args.config) if args.config else {}
    config = _updated(config, from_file, args.config)
    given = {key: getattr(args, key) for key in _OPTION_KEYS if hasattr(args, key)}
    for key in ("data", "val_data"):  # repeatable: one data set is recorded as its path, several as a list
        if isinstance(given.get(key), list) and len(given[key]) == 1:
            given[key] = given[key][0]
    config = _updated(config, given, "the command line")
    if saved is not None:
        for key in _FIXED_ON_RESUME:
            if getattr(config, key) != getattr(saved, key):
                raise UserError(
                    f"{option_name(key)} cannot change when resuming {args.resume} (it was "
                    f"{getattr(saved, key)!r}); start a new run with "
                    f"--config {Path(args.resume).parent / 'config.json'}"
                )
        if "out" not in given and "out" not in from_file:  # the run continues where its last.pt is
            config = config.updated({"out": str(Path(args.resume).parent)})
    return _with_backbone_default(config, given, from_file, resumed=saved is not None)


def _with_backbone_default(
    config: TrainConfig, given: dict, from_file: dict, *, resumed: bool
) -> TrainConfig:
    """``--backbone-weights imagenet`` by default for a new model of ``IMAGENET_BACKBONE_MODELS`` (not with
    --weights or --resume, whose weights replace it); refused when given with them."""
    from singleshot.models.zoo import IMAGENET_BACKBONE_MODELS

    chosen = "backbone_weights" in given or "backbone_weights" in from_file
    if config.weights or resumed:
        if given.get("backbone_weights") not in (None, "none"):
            started = f"--weights {config.weights}" if config.weights else "--resume"
            raise UserError(
                f"--backbone-weights {given['backbone_weights']} sets the start of a new model, but {started} "
                "gives every weight; leave --backbone-weights out"
            )
        return config if resumed else config.updated({"backbone_weights": None})
    if not chosen and config.model in IMAGENET_BACKBONE_MODELS:
        return config.updated({"backbone_weights": "imagenet"})
    return config


def _updated(config: TrainConfig, values: dict, source: str) -> TrainConfig:
    """``config.updated(values)``; values naming other validation data but no split also reset the split
    (the one in ``config``, or its 'none', was chosen for the previous validation data)."""
    if values.get("val_data", config.val_data) != config.val_data and "val_split" not in values:
        values = {**values, "val_split": None}
    return config.updated(values, source)


def _resume_config(path: str) -> TrainConfig:
    from singleshot.models import read_checkpoint

    checkpoint = read_checkpoint(path)
    if "optimizer" not in checkpoint or "config" not in checkpoint:
        raise UserError(
            f"{path} holds weights but no training state (best.pt and exported checkpoints do not); "
            "resume from the run's last.pt"
        )
    return TrainConfig.from_dict(checkpoint["config"], str(path))


def run(args: argparse.Namespace) -> int:
    from singleshot.engine import Trainer, distributed
    from singleshot.metrics import format_map

    config = build_config(args)
    config.validate()
    _check_model_name(config.model)
    world = distributed.setup(config.device)
    try:
        trainer = Trainer(
            config, resume=args.resume, world=world, progress=not args.no_progress, overwrite=args.overwrite
        )
        result = trainer.fit()
    finally:
        distributed.teardown()
    if world.is_main and not result.interrupted:
        best = (
            f"best validation mAP ({result.config.metric}) {format_map(result.best_map)}; "
            if result.best_map is not None
            else ""
        )
        print(
            f"{best}wrote {result.out}/last.pt{', best.pt' if result.best_map is not None else ''}, "
            f"metrics.csv, curves.png, config.json"
        )
    if result.interrupted:  # 128 + the signal, as a shell reports a process ended by it (130: Ctrl-C)
        return 128 + (trainer.stop_signal or signal.SIGINT)
    return 0


def _check_model_name(name: str | None) -> None:
    if name is None:
        return
    from singleshot.models import list_models

    names = list_models()
    if name not in names:
        import difflib

        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise UserError(f"--model {name!r} is not a model; choose one of {', '.join(names)}.{hint}")
