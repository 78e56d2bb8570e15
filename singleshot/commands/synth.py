"""``singleshot synth``: write a synthetic shapes data set (real image files) in VOC, COCO or YOLO layout."""

from __future__ import annotations

import argparse
import re

from singleshot.errors import UserError

HELP = "Write a synthetic data set of coloured shapes (images + annotations) in VOC, COCO or YOLO layout."
EXAMPLES = """\
examples:
  singleshot synth data/shapes --images 500                       # VOC: trainval/test (and train/val)
  singleshot synth data/shapes-coco --images 2000 --format coco --image-size 320
  singleshot synth data/shapes-yolo --images 300 --format yolo --splits train=0.8,val=0.2
  singleshot synth data/hard --images 500 --classes 8 --min-size 0.04 --objects 2-10 --clutter 1
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from singleshot.data.synth import DEFAULT_SPLITS, SHAPES

    parser.add_argument("out", metavar="OUT", help="folder to create")
    parser.add_argument(
        "--images", type=int, default=500, metavar="N", help="images in all splits (default: 500)"
    )
    parser.add_argument(
        "--format", default="voc", choices=["voc", "coco", "yolo"], help="layout (default: voc)"
    )
    parser.add_argument(
        "--image-size",
        default="300",
        metavar="S",
        help="image side S, WxH (width x height), a range A-B for each side, or a list such as "
        "320x240,240x320 (each image takes one) (default: 300)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="the same seed writes the same files (default: 0)"
    )
    parser.add_argument(
        "--splits",
        default=DEFAULT_SPLITS,
        help=f"name=fraction pairs (default: {DEFAULT_SPLITS}; VOC also gets trainval)",
    )
    parser.add_argument(
        "--classes",
        type=int,
        default=5,
        metavar="K",
        help=f"number of shape classes, 1..{len(SHAPES)}, from: {', '.join(SHAPES)} (default: 5)",
    )
    parser.add_argument(
        "--min-size",
        type=float,
        default=0.08,
        help="smallest object, fraction of the image side (default: 0.08)",
    )
    parser.add_argument(
        "--max-size",
        type=float,
        default=0.5,
        help="largest object, fraction of the image side (default: 0.5)",
    )
    parser.add_argument(
        "--objects", default="1-5", metavar="MIN-MAX", help="objects per image (default: 1-5)"
    )
    parser.add_argument("--clutter", type=float, default=0.5, help="background clutter, 0..1 (default: 0.5)")
    parser.add_argument(
        "--shapes", default=None, metavar="NAMES", help="comma-separated class names instead of --classes"
    )
    parser.add_argument(
        "--background",
        default="gradient",
        help="gradient, texture, photo, clutter, mixed, or a list such as texture,photo (default: gradient)",
    )
    parser.add_argument("--shaded", action="store_true", help="objects shaded like lit 3-D objects")
    parser.add_argument(
        "--occlusion",
        type=float,
        default=None,
        metavar="F",
        help="later objects may cover up to F of each earlier box (default: --max-overlap 0.3 rules)",
    )
    parser.add_argument(
        "--max-overlap", type=float, default=0.3, help="most one box may cover of another (default: 0.3)"
    )
    parser.add_argument(
        "--occluders", type=float, default=0.0, metavar="P", help="chance per object of a blob over it"
    )
    parser.add_argument(
        "--background-only", type=float, default=0.0, metavar="F", help="share of images with no objects"
    )
    parser.add_argument(
        "--difficult-below",
        type=float,
        default=0.0,
        metavar="PX",
        help="VOC: mark objects whose shorter side is under PX pixels difficult",
    )
    parser.add_argument("--workers", type=int, default=None, help="processes (default: up to 4)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT")


def parse_range(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+))?\s*", text)
    if not m:
        raise UserError(f"--objects {text!r} is malformed; give a count such as 3 or a range such as 1-5.")
    lo = int(m.group(1))
    return lo, int(m.group(2)) if m.group(2) else lo


def run(args: argparse.Namespace) -> int:
    from singleshot.data.synth import synthesize

    lo, hi = parse_range(args.objects)
    summary = synthesize(
        args.out,
        args.images,
        format=args.format,
        image_size=args.image_size,
        seed=args.seed,
        splits=args.splits,
        num_classes=args.classes,
        min_size=args.min_size,
        max_size=args.max_size,
        min_objects=lo,
        max_objects=hi,
        clutter=args.clutter,
        shapes=tuple(n.strip() for n in args.shapes.split(",") if n.strip()) if args.shapes else None,
        background=args.background,
        shaded=args.shaded,
        occlusion=args.occlusion,
        max_overlap=args.max_overlap,
        occluders=args.occluders,
        background_only=args.background_only,
        difficult_below=args.difficult_below,
        overwrite=args.overwrite,
        workers=args.workers,
        progress=True,
    )
    splits = ", ".join(f"{n} {c}" for n, c in summary.splits.items())
    print(
        f"wrote {summary.num_images} images with {summary.num_objects} objects of {len(summary.class_names)} "
        f"classes ({', '.join(summary.class_names)}) to {summary.path} in {summary.format.upper()} layout; "
        f"splits: {splits}"
    )
    return 0
