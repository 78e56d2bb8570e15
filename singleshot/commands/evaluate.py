"""``singleshot eval``: mean average precision of a checkpoint (or an exported ``.onnx`` graph) on a data set
split, in the runtime of ``--runtime`` (see :mod:`singleshot.runtime`)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from singleshot.errors import UserError

RUNTIME_CHOICES = ("auto", "torch", "onnxruntime", "openvino")  # singleshot.runtime.RUNTIMES, without torch
HELP = "evaluate a checkpoint: per-class AP and mAP (VOC07, VOC or COCO), JSON and precision-recall curves"

EXAMPLES = """\
examples:
  singleshot eval runs/a/best.pt --data data/shapes                     # the test (else val) split, VOC07 mAP
  singleshot eval runs/a/best.pt --data VOCdevkit/VOC2007 --metric voc --json runs/a/voc07-test.json
  singleshot eval runs/coco/best.pt --data coco/annotations/instances_val2017.json --plots runs/coco/plots
  torchrun --nproc_per_node 2 -m singleshot eval runs/a/best.pt --data data/shapes   # split over processes
  singleshot eval model.onnx --data data/shapes                         # the exported graph, as deployed
  singleshot eval runs/a/best.pt --data data/shapes --runtime openvino  # the checkpoint's cached graph

--json FILE writes {"map", "per_class": {name: AP}, "metric", ...} and the precision-recall curves as
FILE's name with _pr.png; --plots DIR writes DIR/pr_curves.png.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        metavar="CKPT",
        help="a checkpoint written by train (RUN/best.pt, RUN/last.pt), torchvision:NAME (COCO), or an "
        ".onnx file written by export",
    )
    parser.add_argument(
        "--data", metavar="PATH", required=True, help="a VOC root, COCO instances JSON or YOLO folder"
    )
    parser.add_argument("--format", choices=("voc", "coco", "yolo"), help="data format (default: detected)")
    parser.add_argument("--split", metavar="NAME", help="split to evaluate (default: test, else val)")
    parser.add_argument(
        "--metric",
        choices=("voc07", "voc", "coco"),
        help="voc07: 11-point VOC2007 AP; voc: area under the curve (VOC2010+); coco: AP@[.5:.95] "
        "(default: coco for COCO data, else voc07)",
    )
    parser.add_argument(
        "--json", metavar="FILE", help="write the results as JSON (and the PR curves beside it)"
    )
    parser.add_argument(
        "--plots", metavar="DIR", help="write the precision-recall curves to DIR/pr_curves.png"
    )
    parser.add_argument(
        "--batch-size", type=int, default=16, metavar="B", help="images per batch (default: 16)"
    )
    parser.add_argument(
        "--workers", type=int, metavar="N", help="data-loading processes (default: one per spare core)"
    )
    parser.add_argument(
        "--device", default="auto", metavar="D", help="cpu, cuda, cuda:N or auto (default: auto)"
    )
    add_runtime_argument(parser)
    parser.add_argument("--skip-invalid", action="store_true", help="leave broken images and objects out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_runtime_argument(parser: argparse.ArgumentParser) -> None:
    """``--runtime auto|torch|onnxruntime|openvino`` (shared with ``detect``)."""
    parser.add_argument(
        "--runtime",
        choices=RUNTIME_CHOICES,
        default="auto",
        help="torch, or the exported graph in onnxruntime or openvino (cached per checkpoint and settings); "
        "auto: PyTorch on a GPU; on the CPU the fastest of them at --batch-size, measured once per model, "
        "machine and batch size and kept with the cached graphs (default: auto)",
    )


def run(args: argparse.Namespace) -> int:
    from singleshot import runtime
    from singleshot.data import default_split, open_dataset
    from singleshot.engine import distributed, predict_dataset
    from singleshot.engine.evaluation import score
    from singleshot.engine.loader import default_workers
    from singleshot.metrics import format_ap_table
    from singleshot.models.sources import load_source
    from singleshot.runtime import is_graph_file

    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: give at least 1")
    if args.workers is not None and args.workers < 0:
        raise UserError(f"--workers {args.workers}: give 0 or more")
    world = distributed.setup(args.device)
    try:
        if is_graph_file(args.checkpoint) or world.size == 1:  # one process: any runtime
            engine = runtime.load(
                args.checkpoint, runtime=args.runtime, device=world.device, batch=args.batch_size
            )
        else:
            engine = runtime.TorchEngine(load_source(args.checkpoint, map_location="cpu").to(world.device))
        split = args.split or default_split(args.data, "eval", args.format)
        dataset = open_dataset(
            args.data,
            split=split,
            format=args.format,
            classes=engine.class_names,
            skip_invalid=args.skip_invalid,
        )
        metric = args.metric or ("coco" if dataset.format == "coco" else "voc07")
        workers = default_workers() if args.workers is None else args.workers
        desc = f"evaluate {split or ''}".strip()
        if engine.runtime == "torch":
            predictions, targets = predict_dataset(
                engine.model,
                dataset,
                batch_size=args.batch_size,
                workers=workers,
                world=world,
                amp=world.device.type == "cuda",
                progress=not args.no_progress,
                desc=desc,
            )
        else:
            predictions, targets = runtime.predict_dataset(
                engine,
                dataset,
                batch_size=args.batch_size,
                workers=workers,
                progress=not args.no_progress,
                desc=desc,
            )
        if not world.is_main:
            return 0
        result = score(predictions, targets, dataset, metric, engine.class_names)
    finally:
        distributed.teardown()

    where = f"{args.data}" + (f" (split {split})" if split else "")
    print(
        f"{args.checkpoint} on {where}: {len(dataset)} image{'s' if len(dataset) != 1 else ''} "
        f"(runtime {engine.runtime})"
    )
    choice = runtime.describe_choice(engine)
    if choice:
        print(choice)
    print(format_ap_table(result))
    for path in write_reports(result, args, len(dataset), split):
        print(f"wrote {path}")
    return 0


def write_reports(result: dict, args: argparse.Namespace, num_images: int, split: str | None) -> list[Path]:
    """The JSON and the precision-recall PNG that --json / --plots ask for; returns the paths written."""
    from singleshot.engine.state import write_json
    from singleshot.render.pr import plot_pr_curves

    written = []
    pr_paths = []
    if args.json:
        path = Path(args.json)
        write_json(
            path,
            results_json(
                result, checkpoint=args.checkpoint, data=args.data, split=split, num_images=num_images
            ),
        )
        written.append(path)
        pr_paths.append(path.with_name(path.stem + "_pr.png"))
    if args.plots:
        pr_paths.append(Path(args.plots) / "pr_curves.png")
    for path in pr_paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        plot_pr_curves(result, path)
        written.append(path)
    return written


def results_json(result: dict, **about) -> dict:
    """The JSON of ``eval --json``: ``{"map", "per_class", "metric", ...}``; NaN (a class without ground
    truth) becomes null, curves are left out."""

    def clean(value):
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            return clean(value.item())
        return value

    out = {k: clean(v) for k, v in result.items() if k != "curves"}
    out.update(about)
    json.dumps(out)  # fails here, not half-way through writing, if something is not serialisable
    return out
