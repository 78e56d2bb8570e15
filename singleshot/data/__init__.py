"""Data: VOC / COCO / YOLO readers, the data-set policy of training, synthetic data, the paper's augmentation and data checks.

::

    from singleshot.data import open_dataset, TrainTransform, EvalTransform, collate
    train = open_dataset("data/shapes", split="trainval", transform=TrainTransform(300, mean=model.mean))
    loader = DataLoader(train, batch_size=32, shuffle=True, num_workers=2, collate_fn=collate)
    for images, targets in loader:  # images uint8 (B, 3, 300, 300); targets[i]["boxes"] xyxy in [0, 1]
        ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from singleshot._lazy import lazy_exports

# name -> the module that defines it; imported on first use (PEP 562), so that the command line's parser
# can read ``singleshot.data.synth``'s defaults without importing torch (``transforms``).
_EXPORTS = {
    **dict.fromkeys(("CheckReport", "check_data", "check_dataset"), "check"),
    **dict.fromkeys(("DetectionDataset", "collate"), "dataset"),
    **dict.fromkeys(
        (
            "default_split",
            "describe_drops",
            "detect_format",
            "list_splits",
            "open_dataset",
            "read_class_names",
        ),
        "formats",
    ),
    **dict.fromkeys(("FORMATS", "VOC_CLASSES", "ImageInfo", "Problem"), "records"),
    **dict.fromkeys(("load_image", "read_image_header"), "images"),
    **dict.fromkeys(("SHAPES", "synthesize"), "synth"),
    **dict.fromkeys(
        ("EvalTransform", "TrainTransform", "photometric_distort", "sample_iou_crop"), "transforms"
    ),
}

__all__ = [
    "FORMATS", "SHAPES", "VOC_CLASSES", "CheckReport", "DetectionDataset", "EvalTransform", "ImageInfo", "Problem",
    "TrainTransform", "check_data", "check_dataset", "collate", "default_split", "describe_drops", "detect_format",
    "list_splits", "load_image", "open_dataset", "photometric_distort", "read_class_names", "read_image_header",
    "sample_iou_crop", "synthesize",
]  # fmt: skip


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from singleshot.data.check import CheckReport, check_data, check_dataset
    from singleshot.data.dataset import DetectionDataset, collate
    from singleshot.data.formats import (
        default_split,
        describe_drops,
        detect_format,
        list_splits,
        open_dataset,
        read_class_names,
    )
    from singleshot.data.images import load_image, read_image_header
    from singleshot.data.records import FORMATS, VOC_CLASSES, ImageInfo, Problem
    from singleshot.data.synth import SHAPES, synthesize
    from singleshot.data.transforms import EvalTransform, TrainTransform, photometric_distort, sample_iou_crop
