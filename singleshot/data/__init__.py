"""Data: VOC / COCO / YOLO readers, the data-set policy of training, synthetic data, the paper's augmentation and data checks.

::

    from singleshot.data import open_dataset, TrainTransform, EvalTransform, collate
    train = open_dataset("data/shapes", split="trainval", transform=TrainTransform(300, mean=model.mean))
    loader = DataLoader(train, batch_size=32, shuffle=True, num_workers=2, collate_fn=collate)
    for images, targets in loader:  # images uint8 (B, 3, 300, 300); targets[i]["boxes"] xyxy in [0, 1]
        ...
"""

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

__all__ = [
    "FORMATS", "SHAPES", "VOC_CLASSES", "CheckReport", "DetectionDataset", "EvalTransform", "ImageInfo", "Problem",
    "TrainTransform", "check_data", "check_dataset", "collate", "default_split", "describe_drops", "detect_format",
    "list_splits", "load_image", "open_dataset", "photometric_distort", "read_class_names", "read_image_header",
    "sample_iou_crop", "synthesize",
]  # fmt: skip
