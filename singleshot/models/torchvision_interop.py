"""Conversion of torchvision's SSD models into singleshot models with the same detections.

``from_torchvision(model_or_state_dict)`` handles ``torchvision.models.detection.ssd300_vgg16`` and
``ssdlite320_mobilenet_v3_large`` of any number of classes. What torchvision does, and how it carries over:

- Pre-processing (``GeneralizedRCNNTransform`` with ``fixed_size``): each float image in [0, 1] is
  normalised, ``(x - image_mean) / image_std``, then resized to the fixed size by
  ``F.interpolate(mode="bilinear", align_corners=False)`` without antialiasing. ``SSD.predict`` does the
  same: converted models get ``antialias=False`` (singleshot's own default is True, as its data
  transforms). ssd300's mean/std are (0.48235, 0.45882, 0.40784) and 1/255 (Caffe's 0..255 pixel
  scale); SSDLite's 0.5 and 0.5.
- Default boxes: ssd300 uses ``default_boxes(**TORCHVISION_SSD300, clip="wh")``; SSDLite's
  ``DefaultBoxGenerator(min_ratio=0.2, max_ratio=0.95)`` has no steps, scales 0.2 .. 0.95 then 1.0,
  and clips w and h (:data:`singleshot.models.zoo.SSDLITE_SCALES`).
- Box coding: weights (10, 10, 5, 5), i.e. variances (0.1, 0.2), and the same exp clamp.
- Post-processing: softmax, per class the scores above the threshold, at most ``topk_candidates`` of
  them, class-wise NMS, the best ``detections_per_img``: ``score_threshold``, ``candidates_per_class``,
  ``nms_threshold`` and ``max_detections`` here (ssd300: 0.01, 400, 0.45, 200; SSDLite: 0.001, 300, 0.55, 300).
"""

from __future__ import annotations

import re

from torch import Tensor, nn

from singleshot.errors import UserError
from singleshot.models.ssd import SSD
from singleshot.models.zoo import SSDLITE_SCALES, build_model
from singleshot.priors import TORCHVISION_SSD300, boxes_per_cell

ARCHS = ("ssd300_vgg16", "ssdlite320_mobilenet_v3_large")

# torchvision's settings of each architecture (what its builders pass to SSD and DefaultBoxGenerator).
_DEFAULTS = {
    "ssd300_vgg16": {
        "image_size": [300, 300],
        "scales": list(TORCHVISION_SSD300["scales"]),
        "steps": list(TORCHVISION_SSD300["steps"]),
        "clip": "wh",
        "antialias": False,
        "mean": [0.48235, 0.45882, 0.40784],
        "std": [1.0 / 255.0] * 3,
        "score_threshold": 0.01,
        "nms_threshold": 0.45,
        "candidates_per_class": 400,
        "max_detections": 200,
    },
    "ssdlite320_mobilenet_v3_large": {
        "image_size": [320, 320],
        "scales": list(SSDLITE_SCALES),
        "steps": None,
        "clip": "wh",
        "antialias": False,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "score_threshold": 0.001,
        "nms_threshold": 0.55,
        "candidates_per_class": 300,
        "max_detections": 300,
    },
}
_ASPECT_RATIOS = {
    "ssd300_vgg16": [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
    "ssdlite320_mobilenet_v3_large": [[2, 3]] * 6,
}


def _detect_arch(state: dict[str, Tensor]) -> str:
    if "backbone.scale_weight" in state:
        if any(k.startswith("backbone.extra.5.") for k in state):
            raise UserError(
                "torchvision's high-resolution (SSD512-style) VGG extractor is not supported; convert ssd300_vgg16"
            )
        return "ssd300_vgg16"
    if "head.classification_head.module_list.0.1.weight" in state and "backbone.extra.0.0.0.weight" in state:
        return "ssdlite320_mobilenet_v3_large"
    raise UserError(
        "the weights are not those of torchvision's ssd300_vgg16 or ssdlite320_mobilenet_v3_large "
        "(unknown state dict keys); pass one of these models or its state_dict()"
    )


def _vgg_key(key: str) -> str:
    rules = [
        (r"^backbone\.features\.(\d+)\.", r"backbone.conv4.\1."),
        (r"^backbone\.scale_weight$", "backbone.l2norm.weight"),
        (r"^backbone\.extra\.0\.7\.1\.", "backbone.fc6."),
        (r"^backbone\.extra\.0\.7\.3\.", "backbone.fc7."),
        (r"^backbone\.extra\.0\.(\d+)\.", r"backbone.conv5.\1."),
    ]
    for pattern, repl in rules:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    m = re.match(r"^backbone\.extra\.(\d+)\.(.*)$", key)
    if m:
        return f"backbone.extras.{int(m.group(1)) - 1}.{m.group(2)}"
    return key


def _head_key(key: str) -> str:
    key = key.replace("head.classification_head.module_list.", "head.classification.")
    return key.replace("head.regression_head.module_list.", "head.regression.")


def convert_state_dict(state: dict[str, Tensor], arch: str) -> dict[str, Tensor]:
    """torchvision SSD state dict keys -> singleshot keys (tensors unchanged)."""
    rename = _vgg_key if arch == "ssd300_vgg16" else (lambda k: k)
    return {_head_key(rename(k)): v for k, v in state.items()}


def _settings_from_module(model: nn.Module, arch: str) -> dict:
    """Pre-processing, default boxes and post-processing settings of a torchvision SSD module."""
    transform, anchors = model.transform, model.anchor_generator
    if [list(r) for r in anchors.aspect_ratios] != _ASPECT_RATIOS[arch]:
        raise UserError(
            f"aspect ratios {anchors.aspect_ratios} differ from {arch}'s; this model cannot be converted"
        )
    if tuple(model.box_coder.weights) != (10.0, 10.0, 5.0, 5.0):
        raise UserError(
            f"box coder weights {model.box_coder.weights} differ from (10, 10, 5, 5); cannot convert"
        )
    if transform.fixed_size is None:
        raise UserError(
            "the torchvision model does not resize to a fixed size; SSD models do, and singleshot needs it"
        )
    width, height = transform.fixed_size
    return {
        "image_size": [int(height), int(width)],
        "scales": [float(s) for s in anchors.scales],
        "steps": None if anchors.steps is None else list(anchors.steps),
        "clip": "wh" if anchors.clip else None,
        "antialias": False,  # GeneralizedRCNNTransform's F.interpolate(mode="bilinear") does not antialias
        "mean": [float(v) for v in transform.image_mean],
        "std": [float(v) for v in transform.image_std],
        "score_threshold": float(model.score_thresh),
        "nms_threshold": float(model.nms_thresh),
        "candidates_per_class": int(model.topk_candidates),
        "max_detections": int(model.detections_per_img),
    }


def from_torchvision(model_or_state_dict: nn.Module | dict[str, Tensor], arch: str | None = None) -> SSD:
    """A singleshot SSD equal to a torchvision ``ssd300_vgg16`` or ``ssdlite320_mobilenet_v3_large``.

    Args:
        model_or_state_dict: the torchvision model (its settings are read from it) or its state dict
            (torchvision's default settings of that architecture are used).
        arch: ``"ssd300_vgg16"`` or ``"ssdlite320_mobilenet_v3_large"``; None: recognised from the weights.

    Returns:
        an SSD with the same raw head outputs, default boxes, pre- and post-processing, hence the same
        ``predict`` detections as torchvision's model on the same images; in the module's train/eval mode
        (eval for a state dict).
    """
    module = model_or_state_dict if isinstance(model_or_state_dict, nn.Module) else None
    state = module.state_dict() if module is not None else dict(model_or_state_dict)
    detected = _detect_arch(state)
    if arch is not None and arch != detected:
        if arch not in ARCHS:
            raise UserError(f"from_torchvision converts {' and '.join(ARCHS)}, not {arch!r}")
        raise UserError(f"the weights are those of torchvision's {detected}, not {arch}")
    arch = detected
    settings = _settings_from_module(module, arch) if module is not None else dict(_DEFAULTS[arch])

    if arch == "ssd300_vgg16":
        first_cls = state["head.classification_head.module_list.0.weight"]
    else:
        first_cls = state["head.classification_head.module_list.0.1.weight"]
        settings["reduced_tail"] = int(state["backbone.extra.0.0.0.weight"].shape[1]) != 960
    num_classes, rest = divmod(int(first_cls.shape[0]), boxes_per_cell(_ASPECT_RATIOS[arch])[0])
    if rest:
        raise UserError(
            f"the classification head of this {arch} has {first_cls.shape[0]} outputs, not a multiple of its boxes"
        )

    model = build_model(arch, num_classes, **settings)
    missing, unexpected = model.load_state_dict(convert_state_dict(state, arch), strict=False)
    if missing or unexpected:
        raise UserError(
            f"the torchvision {arch} weights do not fit (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "only the standard torchvision architectures can be converted"
        )
    return model.train(module.training) if module is not None else model.eval()
