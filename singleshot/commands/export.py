"""``singleshot export``: a checkpoint -> an ONNX model with decoding and NMS inside (see singleshot.export)."""

from __future__ import annotations

import argparse
from pathlib import Path

from singleshot.errors import UserError

HELP = "Export a checkpoint to ONNX: uint8 images in, boxes/scores/labels out (decoding and NMS inside)."
EXAMPLES = """\
examples:
  singleshot export runs/a/best.pt --out model.onnx           # detections out; any batch size
  singleshot export runs/a/best.pt --score-threshold 0.3       # -> runs/a/best.onnx, fewer boxes out
  singleshot export runs/a/best.pt --no-nms --out raw.onnx     # decoded boxes and class scores, no NMS

The model takes "images": uint8 [batch, 3, H, W] RGB resized to the model's input size, and returns
"boxes" [K, 4] xyxy relative to the image (multiply by its width and height), "scores" [K],
"labels" [K] (class_names[label - 1], stored in the model's metadata) and "batch_index" [K].
Needs onnx and onnxscript: pip install 'singleshot[export]'.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        metavar="CKPT",
        help="a checkpoint written by 'singleshot train', or torchvision:NAME (COCO)",
    )
    parser.add_argument("--out", metavar="FILE", help="the .onnx file to write (default: CKPT with .onnx)")
    parser.add_argument(
        "--opset", type=int, default=None, metavar="N", help="ONNX opset, 17 or newer (default: 18)"
    )
    parser.add_argument(
        "--no-dynamic-batch",
        dest="dynamic_batch",
        action="store_false",
        help="fix the batch size at 1 (default: any batch size)",
    )
    parser.add_argument(
        "--no-nms",
        dest="nms",
        action="store_false",
        help="stop before NMS: outputs boxes [batch, P, 4] and softmax scores [batch, P, C]",
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        metavar="T",
        help="keep scores above this (default: the model's, 0.01 for SSD)",
    )
    parser.add_argument(
        "--nms-threshold",
        type=float,
        default=None,
        metavar="T",
        help="IoU above which NMS suppresses a box of the same class (default: the model's)",
    )
    parser.add_argument(
        "--max-detections",
        type=int,
        default=None,
        metavar="N",
        help="at most this many detections per image (default: the model's)",
    )


def run(args: argparse.Namespace) -> int:
    from singleshot.export import DEFAULT_OPSET, export_onnx, require_onnx

    require_onnx()  # before the checkpoint: the one sentence that matters first
    from singleshot.models.sources import TORCHVISION_PREFIX, is_torchvision_source, load_source

    checkpoint = Path(args.checkpoint)
    if is_torchvision_source(args.checkpoint):  # torchvision:NAME -> NAME.onnx
        checkpoint = Path(args.checkpoint[len(TORCHVISION_PREFIX) :])
    out = Path(args.out) if args.out else checkpoint.with_suffix(".onnx")
    if out.resolve() == checkpoint.resolve():
        raise UserError(f"--out {out} is the checkpoint itself; give a .onnx file name.")
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    model = load_source(args.checkpoint, map_location="cpu")
    export_onnx(
        model,
        out,
        opset=opset,
        dynamic_batch=args.dynamic_batch,
        postprocess=args.nms,
        score_threshold=args.score_threshold,
        nms_threshold=args.nms_threshold,
        max_detections=args.max_detections,
    )

    height, width = model.image_size
    batch = "batch" if args.dynamic_batch else "1"
    size_mb = out.stat().st_size / 2**20
    print(f"wrote {out} ({size_mb:.1f} MiB, opset {opset}, {model.num_classes - 1} classes)")
    print(f"  input   images uint8 [{batch}, 3, {height}, {width}] RGB, resized to {height}x{width}")
    if args.nms:
        print("  outputs boxes [K, 4] xyxy relative to the image, scores [K], labels [K], batch_index [K]")
    else:
        print(f"  outputs boxes [{batch}, P, 4] xyxy relative to the image, scores [{batch}, P, C] softmax")
    return 0
