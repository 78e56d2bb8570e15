"""``singleshot check-data``: list every problem of a data set in one run; exit 1 when any is an error."""

from __future__ import annotations

import argparse
import sys

HELP = "Check a VOC, COCO or YOLO data set: every broken image, annotation and split, in one run."
EXAMPLES = """\
examples:
  singleshot check-data --data VOCdevkit/VOC2007
  singleshot check-data --data coco/annotations/instances_val2017.json
  singleshot check-data --data datasets/mine --format yolo --split train
  singleshot check-data --data data/shapes --no-decode      # faster: headers only, misses truncated files
exit status: 0 when no errors were found (warnings allowed), 1 otherwise.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="PATH", help="data set folder or annotation file")
    parser.add_argument(
        "--format",
        choices=["voc", "coco", "yolo"],
        default=None,
        help="data format (default: detected from PATH)",
    )
    parser.add_argument("--split", default=None, help="check only this split (default: every split)")
    parser.add_argument(
        "--classes", default=None, metavar="FILE", help="class names, one per line (default: from the data)"
    )
    parser.add_argument(
        "--exif",
        choices=["auto", "upright", "stored"],
        default="auto",
        help="how EXIF orientation relates to the boxes (default: auto, see docs/data.md)",
    )
    parser.add_argument("--no-decode", action="store_true", help="read image headers only (faster)")
    parser.add_argument(
        "--max-shown", type=int, default=0, metavar="N", help="print at most N problems (default: all)"
    )


def run(args: argparse.Namespace) -> int:
    from singleshot.data.check import check_data

    report = check_data(
        args.data,
        args.format,
        args.split,
        args.classes,
        decode=not args.no_decode,
        exif=args.exif,
        progress=sys.stderr.isatty(),
    )
    shown = report.problems if args.max_shown <= 0 else report.problems[: args.max_shown]
    for p in shown:
        print(f"{p.severity}: {p}")
    if len(shown) < len(report.problems):
        print(f"... {len(report.problems) - len(shown)} more not shown")
    splits = "; ".join(
        f"{name}: {n} image{'s' if n != 1 else ''}, {m} object{'s' if m != 1 else ''}"
        for name, (n, m) in report.splits.items()
    )
    errors, warnings = len(report.errors), len(report.warnings)
    print(f"{report.path} ({report.format.upper()}) {splits or 'nothing readable'}")
    print(
        f"{errors} error{'s' if errors != 1 else ''}, {warnings} warning{'s' if warnings != 1 else ''}"
        + ("" if errors else ": the data is usable.")
    )
    return 1 if errors else 0
