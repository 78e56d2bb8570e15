"""Pascal VOC average precision, exactly as the official devkit's ``voc_eval.py`` computes it, vectorised.

Box convention: our boxes are continuous pixels; a VOC box with 1-based inclusive corners
(xmin, ymin, xmax, ymax) is (xmin - 1, ymin - 1, xmax, ymax) here. Every box, detection or ground truth,
is converted back with xmin = x1 + 1, ymin = y1 + 1, xmax = x2, ymax = y2 and the devkit's overlap with its
"+1" widths is applied to those numbers. Algebraically that is the plain IoU of our boxes (a width
xmax - xmin + 1 is x2 - x1); computing it the devkit's way also reproduces its rounding, so devkit
annotations and detections shifted this way give exactly the devkit's numbers.

The devkit's rules, all kept:

- per class, the detections of the whole set are sorted with its own call ``np.argsort(-confidence)``
  over the detections in file order (here: images in input order, each image's detections in order), so
  even ties between equal scores break the same way;
- a detection is true when its overlap with the best-overlapping ground truth of its image and class
  (the first of equal maxima, as ``np.argmax``) is *strictly* above the threshold (0.5) and that object was
  not detected before; a second detection of an object is false; a detection whose best ground truth is
  difficult counts neither way (it stays in the curve with no change); difficult objects are not in the
  positive count. Crowd objects (``iscrowd``) are treated as difficult ones;
- ``use_07_metric``: the mean over the devkit's recall thresholds ``np.arange(0.0, 1.1, 0.1)`` (including
  its float quirks: the fourth is 0.30000000000000004) of the best precision at recall >= t; otherwise
  the area under the monotone precision envelope (VOC2010+).

The devkit's greedy loop is sequential, but its only state is "this object was detected": which ground
truth a detection overlaps best does not depend on it. So the best overlaps are computed for all
detections at once, and a detection is true exactly when it is the first, in score order, to hit its object.
"""

from __future__ import annotations

import math

import numpy as np

from singleshot.metrics.inputs import FlatSet, nanmean

# The devkit's 11 recall thresholds, computed as voc_eval.py does.
VOC07_RECALLS = np.arange(0.0, 1.1, 0.1)

_TO_DEVKIT = np.array([1.0, 1.0, 0.0, 0.0])  # (x1, y1, x2, y2) + this = (xmin, ymin, xmax, ymax)


def best_overlaps(flat: FlatSet) -> tuple[np.ndarray, np.ndarray]:
    """Every detection's best devkit overlap with a ground truth of its image and class, and which one.

    Pairs (detection, ground truth) are formed only within an (image, class) group, all overlaps are
    computed at once and reduced per detection.

    Returns:
        ovmax float64 [N] (-inf without a candidate, as the devkit) and jmax int64 [N]: index of that
        ground truth in ``flat`` (the first of equal maxima in annotation order; -1 without a candidate).
    """
    n = len(flat.det_scores)
    ovmax = np.full(n, -np.inf)
    jmax = np.full(n, -1, dtype=np.int64)
    if n == 0 or len(flat.gt_labels) == 0:
        return ovmax, jmax
    span = int(max(flat.gt_labels.max(), flat.det_labels.max())) + 1
    gt_keys = flat.gt_image * span + flat.gt_labels
    gt_order = np.argsort(gt_keys, kind="stable")  # within a group: annotation order, the devkit's BBGT
    sorted_keys = gt_keys[gt_order]
    det_keys = flat.det_image * span + flat.det_labels
    start = np.searchsorted(sorted_keys, det_keys, side="left")
    counts = np.searchsorted(sorted_keys, det_keys, side="right") - start
    total = int(counts.sum())
    if total == 0:
        return ovmax, jmax
    first_pair = np.cumsum(counts) - counts  # (N,) where each detection's pairs begin
    pair_det = np.repeat(np.arange(n), counts)  # (T,) a detection's pairs are contiguous
    pair_gt = gt_order[np.repeat(start - first_pair, counts) + np.arange(total)]  # (T,)

    bb = flat.det_boxes[pair_det] + _TO_DEVKIT  # (T, 4) devkit coordinates
    gt = flat.gt_boxes[pair_gt] + _TO_DEVKIT
    iw = np.maximum(np.minimum(gt[:, 2], bb[:, 2]) - np.maximum(gt[:, 0], bb[:, 0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(gt[:, 3], bb[:, 3]) - np.maximum(gt[:, 1], bb[:, 1]) + 1.0, 0.0)
    inters = iw * ih
    uni = (
        (bb[:, 2] - bb[:, 0] + 1.0) * (bb[:, 3] - bb[:, 1] + 1.0)
        + (gt[:, 2] - gt[:, 0] + 1.0) * (gt[:, 3] - gt[:, 1] + 1.0)
        - inters
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        overlaps = inters / uni  # (T,)

    has = counts > 0
    ovmax[has] = np.maximum.reduceat(overlaps, first_pair[has])
    # The first pair reaching the maximum. A NaN maximum matches nothing: the devkit's NaN ovmax is
    # never > 0.5 either, so such a detection is false in both.
    hit = np.flatnonzero(overlaps == ovmax[pair_det])
    dets, first = np.unique(pair_det[hit], return_index=True)
    jmax[dets] = pair_gt[hit[first]]
    return ovmax, jmax


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """The devkit's ``voc_ap``: 11-point interpolated AP, or the area under the precision envelope.

    Args:
        recall: float64 [D], non-decreasing; precision: float64 [D].
    """
    if use_07_metric:
        suffix_max = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at index >= i
        first = np.searchsorted(recall, VOC07_RECALLS, side="left")  # first index with recall >= t
        ap = 0.0
        for i in first:  # one by one, as the devkit, for the same rounding
            ap = ap + (suffix_max[i] if i < len(recall) else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def evaluate_voc(
    flat: FlatSet, labels: list[int], names: list[str], *, use_07_metric: bool, iou_threshold: float = 0.5
) -> dict:
    """VOC AP of every class in ``labels``; see the module docstring for the rules.

    Returns:
        ``{"metric", "map", "per_class", "num_gt", "curves"}``; a class without positives has AP NaN, no
        curve, and is left out of the mean (the devkit would divide by zero).
    """
    ovmax, jmax = best_overlaps(flat)
    ignored_gt = flat.gt_difficult | flat.gt_crowd
    matched = ovmax > iou_threshold  # strictly, as the devkit
    ignored = np.zeros(len(matched), dtype=bool)
    ignored[matched] = ignored_gt[jmax[matched]]
    candidate = matched & ~ignored

    by_label = np.argsort(flat.det_labels, kind="stable")  # image order within a class
    sorted_labels = flat.det_labels[by_label]
    positives = np.bincount(flat.gt_labels[~ignored_gt], minlength=max(labels, default=0) + 1)
    per_class, num_gt, curves = {}, {}, {}
    for label, name in zip(labels, names):
        npos = int(positives[label]) if label >= 0 else 0
        num_gt[name] = npos
        if npos == 0:
            per_class[name] = math.nan
            continue
        lo, hi = np.searchsorted(sorted_labels, [label, label + 1])
        idx = by_label[lo:hi]
        order = idx[np.argsort(-flat.det_scores[idx])]  # the devkit's very call, for its tie-breaking
        tp = np.zeros(len(order))
        cand = np.flatnonzero(candidate[order])
        _, first = np.unique(jmax[order[cand]], return_index=True)  # the first detection of each object
        tp[cand[first]] = 1.0
        fp = 1.0 - tp - ignored[order]
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall = tp / float(npos)
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        per_class[name] = voc_ap(recall, precision, use_07_metric)
        curves[name] = (recall, precision)
    return {
        "metric": "voc07" if use_07_metric else "voc",
        "map": nanmean(per_class.values()),
        "per_class": per_class,
        "num_gt": num_gt,
        "curves": curves,
    }
