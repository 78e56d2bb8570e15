"""Per-image predictions and targets -> flat arrays of the whole set, and the classes to report."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from singleshot.errors import UserError


@dataclass
class FlatSet:
    """All detections and ground truths of a set, concatenated in image order (image i is ``targets[i]``)."""

    num_images: int
    det_image: np.ndarray  # int64 [N]
    det_boxes: np.ndarray  # float64 [N, 4] xyxy pixels
    det_scores: np.ndarray  # float64 [N]
    det_labels: np.ndarray  # int64 [N]
    gt_image: np.ndarray  # int64 [G]
    gt_boxes: np.ndarray  # float64 [G, 4] xyxy pixels
    gt_labels: np.ndarray  # int64 [G]
    gt_difficult: np.ndarray  # bool [G]
    gt_crowd: np.ndarray  # bool [G]


_TORCH_DTYPES = {np.float64: torch.float64, np.int64: torch.int64, bool: torch.bool}


def as_array(x, dtype) -> np.ndarray:
    """A tensor (any device or dtype, bfloat16 included), array or list as a numpy array of ``dtype``."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=_TORCH_DTYPES[dtype]).numpy()
    return np.asarray(x, dtype=dtype)


def _column(values: list, dtype, tail: tuple[int, ...]) -> np.ndarray:
    """Concatenate per-image values (rows of shape ``tail``): one copy when all are tensors of a device."""
    if values and all(isinstance(v, torch.Tensor) for v in values):
        try:
            joined = torch.cat([v.detach().reshape(-1, *tail) for v in values])
            return joined.to(device="cpu", dtype=_TORCH_DTYPES[dtype]).numpy()
        except RuntimeError:  # tensors on several devices
            pass
    parts = [as_array(v, dtype).reshape(-1, *tail) for v in values]
    return np.concatenate(parts) if parts else np.zeros((0, *tail), dtype=dtype)


def _lengths(values: list) -> np.ndarray:
    return np.array([len(v) for v in values], dtype=np.int64)


def flatten(predictions: Sequence[Mapping], targets: Sequence[Mapping]) -> FlatSet:
    """Concatenate per-image predictions and targets.

    Args:
        predictions: per image ``{"boxes": [K, 4], "scores": [K], "labels": [K]}``.
        targets: per image ``{"boxes": [n, 4], "labels": [n]}``, optionally ``"difficult"``, ``"iscrowd"``.
    """
    if len(predictions) != len(targets):
        raise ValueError(
            f"{len(predictions)} predictions for {len(targets)} targets: pass one of each per image"
        )
    images = np.arange(len(targets), dtype=np.int64)
    det_boxes = _column([p["boxes"] for p in predictions], np.float64, (4,))
    det_scores = _column([p["scores"] for p in predictions], np.float64, ())
    det_labels = _column([p["labels"] for p in predictions], np.int64, ())
    det_counts = _lengths([p["scores"] for p in predictions])
    if not len(det_boxes) == len(det_scores) == len(det_labels):
        raise ValueError("predictions hold different numbers of boxes, scores and labels")
    gt_boxes = _column([t["boxes"] for t in targets], np.float64, (4,))
    gt_labels = _column([t["labels"] for t in targets], np.int64, ())
    gt_counts = _lengths([t["labels"] for t in targets])
    if len(gt_boxes) != len(gt_labels):
        raise ValueError("targets hold different numbers of boxes and labels")
    flags = {}
    for key in ("difficult", "iscrowd"):
        values = [t.get(key) for t in targets]
        if all(v is None for v in values):
            flags[key] = np.zeros(len(gt_labels), dtype=bool)
        else:
            flags[key] = _column(
                [np.zeros(n, dtype=bool) if v is None else v for v, n in zip(values, gt_counts)], bool, ()
            )
            if len(flags[key]) != len(gt_labels):
                raise ValueError(f"targets hold different numbers of boxes and {key!r} flags")
    return FlatSet(
        num_images=len(targets),
        det_image=np.repeat(images, det_counts),
        det_boxes=det_boxes,
        det_scores=det_scores,
        det_labels=det_labels,
        gt_image=np.repeat(images, gt_counts),
        gt_boxes=gt_boxes,
        gt_labels=gt_labels,
        gt_difficult=flags["difficult"],
        gt_crowd=flags["iscrowd"],
    )


def class_labels(flat: FlatSet, class_names: Sequence[str] | None) -> list[int]:
    """The labels to report: 1..K with K names, else every label that occurs, sorted."""
    seen = np.union1d(flat.det_labels, flat.gt_labels)
    if len(seen) and seen[0] < 0:
        raise ValueError(f"labels must be >= 0, got {int(seen[0])}")
    if class_names is None:
        return [int(c) for c in seen]
    bad = seen[(seen < 1) | (seen > len(class_names))]
    if len(bad):
        raise UserError(
            f"label {int(bad[0])} has no class name: class_names holds {len(class_names)} names for labels "
            f"1..{len(class_names)}; evaluate the model on a data set with the classes it was trained on."
        )
    return list(range(1, len(class_names) + 1))


def class_names_of(labels: list[int], class_names: Sequence[str] | None) -> list[str]:
    """``class_names[label - 1]``, or ``str(label)`` without names."""
    return [str(c) if class_names is None else str(class_names[c - 1]) for c in labels]


def nanmean(values) -> float:
    """Mean of the values that are not NaN; NaN when there are none."""
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan
