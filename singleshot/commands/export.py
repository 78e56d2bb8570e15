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
  singleshot export runs/a/best.pt --int8 --calibration-data data/shapes   # -> runs/a/best.int8.onnx

The model takes "images": uint8 [batch, 3, H, W] RGB resized to the model's input size, and returns
"boxes" [K, 4] xyxy relative to the image (multiply by its width and height), "scores" [K],
"labels" [K] (class_names[label - 1], stored in the model's metadata) and "batch_index" [K].
Needs onnx and onnxscript: pip install 'singleshot[export]'.

--int8 quantises the network (onnxruntime static quantisation: QDQ, per-channel int8 weights, uint8
activations) calibrated on --calibration-images images of the training split of --calibration-data;
decoding and NMS stay in float32. It then reports the speed (batch 1, onnxruntime) and mAP on the data's
test (else val) split of the int8 graph against the float32 one, printed and in FILE with .json.
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

    parser.add_argument(
        "--int8", action="store_true", help="quantise to int8, calibrated on --calibration-data (see below)"
    )
    parser.add_argument(
        "--calibration-data", metavar="D", help="a data set (VOC, COCO or YOLO) for --int8's calibration"
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=64,
        metavar="N",
        help="images of the training split to calibrate on (default: 64)",
    )


def run(args: argparse.Namespace) -> int:
    from singleshot.export import DEFAULT_OPSET, export_onnx, require_onnx

    require_onnx()  # before the checkpoint: the one sentence that matters first
    from singleshot.models.sources import TORCHVISION_PREFIX, is_torchvision_source, load_source

    checkpoint = Path(args.checkpoint)
    if is_torchvision_source(args.checkpoint):  # torchvision:NAME -> NAME.onnx
        checkpoint = Path(args.checkpoint[len(TORCHVISION_PREFIX) :])
    out = Path(args.out) if args.out else checkpoint.with_suffix(".int8.onnx" if args.int8 else ".onnx")
    if args.int8:
        _check_int8_options(args)
    if out.resolve() == checkpoint.resolve():
        raise UserError(f"--out {out} is the checkpoint itself; give a .onnx file name.")
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    model = load_source(args.checkpoint, map_location="cpu")
    if args.int8:
        return _export_int8(model, out, args, opset)
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


def _check_int8_options(args: argparse.Namespace) -> None:
    if not args.calibration_data:
        raise UserError(
            "--int8 needs --calibration-data D: a data set whose images calibrate the int8 ranges."
        )
    if not Path(args.calibration_data).exists():
        raise UserError(
            f"--calibration-data {args.calibration_data} does not exist; give a VOC, COCO or YOLO data set."
        )
    if args.calibration_images < 1:
        raise UserError(f"--calibration-images {args.calibration_images}: give at least 1.")
    if not args.nms:
        raise UserError("--int8 quantises the graph with NMS; leave out --no-nms.")


def _calibration_batches(data: str, image_size, count: int):
    """Up to ``count`` images of the training split of ``data``, evenly spread: uint8 arrays [1, 3, H, W] at
    ``image_size``."""
    from singleshot.data import EvalTransform, default_split, open_dataset

    dataset = open_dataset(data, split=default_split(data, "train"))
    if len(dataset) == 0:
        raise UserError(f"--calibration-data {data} has no images in its training split.")
    transform = EvalTransform(image_size)
    step = max(1, len(dataset) // count)
    return [transform(*dataset[index])[0][None].numpy() for index in range(0, len(dataset), step)[:count]]


def _export_int8(model, out: Path, args: argparse.Namespace, opset: int) -> int:
    """``export --int8``: the float32 graph (in a temporary folder), its int8 copy at ``out``, and the report
    of their speed and mAP (printed and in ``out`` with ``.json``)."""
    import json
    import tempfile

    import torch

    from singleshot import runtime
    from singleshot.bench import machine_description
    from singleshot.export import export_onnx, quantize_int8
    from singleshot.files import write_text_atomic

    with tempfile.TemporaryDirectory() as tmp:
        float_path = export_onnx(
            model,
            Path(tmp) / "float32.onnx",
            opset=opset,
            dynamic_batch=args.dynamic_batch,
            score_threshold=args.score_threshold,
            nms_threshold=args.nms_threshold,
            max_detections=args.max_detections,
        )
        batches = _calibration_batches(args.calibration_data, model.image_size, args.calibration_images)
        quantize_int8(float_path, out, batches)
        print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, int8, opset {opset})")
        report = {"path": str(out), "calibration_data": str(args.calibration_data)}
        report["calibration_images"] = len(batches)
        threads = torch.get_num_threads()
        for name, path in (("float32", float_path), ("int8", out)):
            engine = runtime.GraphEngine(path, "onnxruntime", threads=threads)
            result, count, split, metric = runtime.evaluate(engine, args.calibration_data)
            report[name] = {"ms_per_image": 1000 * runtime.seconds_per_batch(engine, 1), "map": result["map"]}
        report.update({"metric": metric, "split": split, "validation_images": count, "threads": threads})
    report["speed_up"] = report["float32"]["ms_per_image"] / report["int8"]["ms_per_image"]
    report["map_change"] = report["int8"]["map"] - report["float32"]["map"]
    report["machine"] = machine_description(torch.device("cpu"))
    print(
        f"  onnxruntime, batch 1, {threads} threads: float32 {report['float32']['ms_per_image']:.1f} ms, "
        f"int8 {report['int8']['ms_per_image']:.1f} ms ({report['speed_up']:.2f}x)"
    )
    print(
        f"  {metric} mAP on {split or 'all'} ({count} images): float32 {report['float32']['map']:.4f}, "
        f"int8 {report['int8']['map']:.4f} ({report['map_change']:+.4f})"
    )
    for advice in int8_advice(report):
        print(f"  {advice}")
    report_path = out.with_suffix(".json")
    write_text_atomic(report_path, json.dumps(report, indent=2) + "\n")
    print(f"wrote {report_path}")
    return 0


INT8_MAP_LOSS = 0.02
"""The mAP an int8 graph may lose against its float32 graph before ``export --int8`` advises against it."""

INT8_MIN_SPEED_UP = 1.1
"""The speed-up over float32 below which an int8 graph is not worth its rounding (nor the noise of timing)."""


def int8_advice(report: dict) -> list[str]:
    """Sentences for an int8 graph that does not pay: under :data:`INT8_MIN_SPEED_UP` times as fast as its
    float32 graph here, or losing more than :data:`INT8_MAP_LOSS` mAP. (A trained SSDLite's int8 graph ran
    at 0.79-0.99x of float32 in three runs in onnxruntime on a Zen 4, SSD300's at 3x.)"""
    advice = []
    if report["speed_up"] < INT8_MIN_SPEED_UP:
        advice.append(
            f"the int8 graph runs at {report['speed_up']:.2f}x the speed of float32 on this CPU (under "
            f"{INT8_MIN_SPEED_UP}x); deploy the float32 graph (singleshot export CKPT without --int8)"
        )
    if report["map_change"] < -INT8_MAP_LOSS:
        advice.append(
            f"the int8 graph loses {-report['map_change']:.4f} mAP (more than {INT8_MAP_LOSS}); calibrate on "
            "more images (--calibration-images) or deploy the float32 graph"
        )
    return advice
