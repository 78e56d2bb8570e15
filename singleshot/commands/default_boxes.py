"""``singleshot default-boxes``: how many training objects a model's default boxes can match, and a fit."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

HELP = (
    "Measure how many training objects the default boxes can match (IoU >= 0.5); --fit proposes better ones."
)
EXAMPLES = """\
examples:
  singleshot default-boxes --data data/shapes                        # the default model at its input size
  singleshot default-boxes --data data/shapes --fit --json boxes.json  # + scales/ratios for train --config
  singleshot default-boxes --data VOCdevkit/VOC2007 --model ssd300_vgg16 --plot sizes.png
An object whose best IoU with every default box is under 0.5 gets a single forced match in training and is
barely learned. --fit keeps the model's feature maps and proposes, within --budget x the default boxes,
per-map scales, aspect ratios and densities; put "model_options" of the JSON into a 'singleshot train
--config' file. The PNG (default-boxes.png next to --json, or --plot) shows object sizes over box sizes.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="PATH", help="data set folder or annotation file")
    parser.add_argument(
        "--format", choices=["voc", "coco", "yolo"], default=None, help="data format (default: detected)"
    )
    parser.add_argument("--split", default=None, help="the split to measure (default: the training split)")
    parser.add_argument(
        "--model", default=None, metavar="NAME", help="zoo model (default: the default model of train)"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="S",
        help="input side in pixels (default: the one train chooses for these objects)",
    )
    parser.add_argument("--fit", action="store_true", help="propose default boxes that cover more objects")
    parser.add_argument(
        "--budget",
        type=float,
        default=2.0,
        metavar="X",
        help="--fit may use up to X times the model's default boxes (default: 2)",
    )
    parser.add_argument("--json", default=None, metavar="FILE", help="write the numbers as JSON")
    parser.add_argument(
        "--plot", default=None, metavar="FILE", help="PNG of object sizes (default: next to --json)"
    )


def _layer_shapes(scales, aspect_ratios) -> list[list[tuple[float, float]]]:
    from singleshot.priors import cell_shapes

    return [
        [(min(w, 1.0), min(h, 1.0)) for w, h in cell_shapes(scales[k], scales[k + 1], ratios)]
        for k, ratios in enumerate(aspect_ratios)
    ]


def _table(before, after=None) -> list[str]:
    head = f"{'':<24}{'objects':>9}{'covered':>10}" + (f"{'fitted':>10}" if after else "")

    def pct(x):
        return f"{'-':>10}" if x is None else f"{100 * x:>9.1f}%"

    lines = [f"objects with a default box of IoU >= 0.5: {100 * before.coverage:.1f} %"]
    if after:
        lines[-1] += f" -> {100 * after.coverage:.1f} % fitted"
    lines.append(
        f"mean best IoU {before.mean_best_iou:.3f}, default boxes of IoU >= 0.5 per object "
        f"{before.positives_per_object:.2f}"
        + (f" -> {after.mean_best_iou:.3f}, {after.positives_per_object:.2f} fitted" if after else "")
    )
    for caption, name in (("size sqrt(w h) / side", "by_size"), ("shape w / h", "by_ratio")):
        lines += ["", caption + head[len(caption) :]]
        fitted = getattr(after, name) if after else [None] * len(getattr(before, name))
        for b, f in zip(getattr(before, name), fitted):
            lines.append(f"  {b.label:<22}{b.count:>9}{pct(b.coverage)}" + (pct(f.coverage) if f else ""))
    return lines


def _write_json(path: Path, data: dict) -> None:
    """Write JSON atomically: a temporary file in the same folder, then renamed over ``path``."""
    from singleshot.errors import UserError

    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp.write_text(json.dumps(data, indent=2) + "\n")
        temp.replace(path)
    except OSError as e:
        temp.unlink(missing_ok=True)
        raise UserError(
            f"cannot write {str(path)!r} ({e.strerror or e}); choose a writable --json path."
        ) from e


def run(args: argparse.Namespace) -> int:
    from singleshot.coverage import check_learnable_boxes, coverage, fit_for_model
    from singleshot.data import open_dataset
    from singleshot.engine.recipe import choose_image_size
    from singleshot.models import DEFAULT_MODEL, build_model

    args.model = args.model or DEFAULT_MODEL
    dataset = open_dataset(args.data, split=args.split, format=args.format)
    where = f"{args.data}" + (f" (split {dataset.split})" if dataset.split else "")
    boxes = dataset.training_boxes()
    size = args.image_size
    if size is None:  # the input size train's recipe takes for these objects (None: the model's own)
        size, why = choose_image_size(args.model, boxes.numpy())
        if why:
            print(f"input size {why} (as singleshot train chooses it; --image-size to change)")
    options = {} if size is None else {"image_size": size}
    model = build_model(args.model, max(2, dataset.num_classes), **options)
    check_learnable_boxes(boxes, model.image_size, where)
    h, w = model.image_size
    fit = fit_for_model(model, boxes, budget=args.budget) if args.fit else None
    before = fit.before if fit else coverage(boxes, model.priors)  # the fit measures the model's boxes too
    print(
        f"{args.model} at {h}x{w}: {before.num_priors} default boxes; {before.num_boxes} objects in {where}"
    )
    print("\n".join(_table(before, fit.after if fit else None)))
    report = {"model": args.model, "image_size": [h, w], **before.to_dict()}
    if fit:
        model_options = {**options, **fit.model_options}
        print("\n" + "\n".join(fit.changes))
        print(f"\nfor singleshot train --config: {json.dumps({'model_options': model_options})}")
        report.update(
            fitted_coverage=fit.after.coverage,
            fitted_num_default_boxes=fit.after.num_priors,
            fitted=fit.after.to_dict(),
            model_options=model_options,
            changes=fit.changes,
        )
    plot = args.plot or (Path(args.json).with_name("default-boxes.png") if args.json else None)
    if plot:
        from singleshot.render.coverage import plot_coverage

        panels = [(f"{args.model}: {before.num_priors} boxes", before.best_iou >= 0.5, _shapes(model))]
        if fit:
            panels.append(
                (
                    f"fitted: {fit.after.num_priors} boxes",
                    fit.after.best_iou >= 0.5,
                    _layer_shapes(fit.scales, fit.aspect_ratios),
                )
            )
        plot_coverage(plot, boxes, panels, title=f"{where} at {h}x{w}: object sizes over default-box sizes")
        print(f"wrote {plot}")
    if args.json:
        _write_json(Path(args.json), report)
        print(f"wrote {args.json}")
    return 0


def _shapes(model) -> list[list[tuple[float, float]]]:
    return _layer_shapes(model.scales, model.aspect_ratios)
