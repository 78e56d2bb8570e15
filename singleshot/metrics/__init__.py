"""Mean average precision: the Pascal VOC devkit (VOC07 11-point and VOC2010+ area) and COCO.

    from singleshot.metrics import mean_average_precision, format_ap_table
    from singleshot.render.pr import plot_pr_curves

    result = mean_average_precision(predictions, targets, metric="voc07", class_names=dataset.class_names)
    print(format_ap_table(result))          # per-class AP and the mAP line
    plot_pr_curves(result, "pr.png")         # precision-recall curves from result["curves"]

Inputs, one entry per image and in the same order (tensors on any device, numpy arrays or lists):

- ``predictions``: ``{"boxes": [K, 4] xyxy pixels, "scores": [K], "labels": [K] int}``;
- ``targets``: ``{"boxes": [n, 4] xyxy pixels, "labels": [n] int}`` with optional ``"difficult"`` and
  ``"iscrowd"`` (bool [n]) and, with ``coco_gt``, ``"image_id"``.

``"voc07"`` and ``"voc"`` follow ``voc_eval.py`` of the devkit to the bit (``singleshot.metrics.voc``: the box
convention, tie-breaking and the 11 thresholds are explained there). ``"coco"`` reproduces pycocotools'
``COCOeval`` bit for bit with a vectorised implementation (``singleshot.metrics.coco``);
``engine="pycocotools"`` or ``"faster-coco-eval"`` run those libraries on the same in-memory data instead.
faster-coco-eval agrees with pycocotools only to about 1e-16 (its accumulation rounds differently),
pycocotools is slow, so the default is our own.

Classes without ground truth: the VOC devkit's AP would be 0/0 and COCO marks such a category -1; both are
reported as NaN in ``per_class`` and left out of the mean (COCO's own rule). ``result["stats"]`` keeps
COCO's 12 numbers exactly as pycocotools gives them, -1 included; the named values say NaN instead.
VOC "difficult" objects: for VOC they neither count nor penalise (devkit); crowd objects are treated the
same way. For COCO both are crowd regions (``iscrowd``), COCO's way of ignoring objects.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from singleshot.errors import UserError
from singleshot.metrics.coco import (
    RECALL_THRESHOLDS,
    STAT_NAMES,
    CocoData,
    evaluate_coco,
    run_library,
    summarize_coco,
    to_coco_dicts,
)
from singleshot.metrics.inputs import FlatSet, as_array, class_labels, class_names_of, flatten
from singleshot.metrics.voc import evaluate_voc

__all__ = [
    "METRICS",
    "COCO_ENGINES",
    "mean_average_precision",
    "coco_eval_pycocotools",
    "coco_data",
    "build_coco",
    "format_ap_table",
    "format_map",
]

METRICS = ("voc07", "voc", "coco")
COCO_ENGINES = ("singleshot", "faster-coco-eval", "pycocotools")


def mean_average_precision(
    predictions: Sequence[Mapping],
    targets: Sequence[Mapping],
    metric: str = "voc07",
    class_names: Sequence[str] | None = None,
    *,
    iou_threshold: float = 0.5,
    coco_gt: str | os.PathLike | Mapping | None = None,
    category_ids: Sequence[int] | None = None,
    engine: str = "singleshot",
) -> dict:
    """Mean average precision of detections over a data set.

    Args:
        predictions: per image ``{"boxes": [K, 4] xyxy pixels, "scores": [K], "labels": [K]}``.
        targets: per image ``{"boxes": [n, 4] xyxy pixels, "labels": [n]}``, optionally ``"difficult"``,
            ``"iscrowd"`` (bool [n]) and ``"image_id"``.
        metric: ``"voc07"`` (11-point), ``"voc"`` (area, VOC2010+) or ``"coco"`` (AP at IoU 0.50:0.95).
        class_names: K names; label i is ``class_names[i - 1]``. Then every class 1..K is reported (NaN when
            it has no ground truth); without names, the labels that occur are, named ``str(label)``.
        iou_threshold: VOC only: the overlap a true positive must exceed (the devkit's 0.5).
        coco_gt: COCO only: the data set's own annotations (json path, dict or ``COCO`` object). Ground truth
            then comes from them (areas, crowd flags, annotation order), ``targets[i]["image_id"]`` names each
            image and only those images are evaluated.
        category_ids: COCO only: label i is category ``category_ids[i - 1]``. Default: the label itself, or
            with ``coco_gt`` the category of the same name when all ``class_names`` are found there, else
            the i-th smallest category id.
        engine: COCO only: ``"singleshot"`` (ours, pycocotools' numbers), ``"faster-coco-eval"`` or
            ``"pycocotools"``.

    Returns:
        ``{"metric", "map", "per_class": {name: AP}, "num_gt": {name: objects that count},
        "curves": {name: (recall ndarray, precision ndarray)}}``, APs as fractions in [0, 1]; curves only
        for classes with ground truth (VOC: the devkit's cumulative recall and precision in score order;
        COCO: its 101 recall points and the interpolated precision at IoU 0.5, all areas, 100 detections).
        COCO adds ``map_50``, ``map_75``, ``map_small``, ``map_medium``, ``map_large``, ``mar_1``,
        ``mar_10``, ``mar_100``, ``mar_small``, ``mar_medium``, ``mar_large``, ``"per_class_50"``,
        ``"stats"`` (the 12 numbers as pycocotools prints them) and ``"engine"``.
    """
    if metric not in METRICS:
        raise UserError(f"metric {metric!r} is not one of {', '.join(METRICS)}; pick one of those.")
    flat = flatten(predictions, targets)
    labels = class_labels(flat, class_names)
    names = class_names_of(labels, class_names)
    if metric != "coco":
        return evaluate_voc(flat, labels, names, use_07_metric=metric == "voc07", iou_threshold=iou_threshold)
    if engine not in COCO_ENGINES:
        raise UserError(f"COCO engine {engine!r} is not one of {', '.join(COCO_ENGINES)}; pick one of those.")
    data, cat_names = _coco_data(flat, targets, labels, names, coco_gt, category_ids, class_names is not None)
    return _coco_result(data, cat_names, engine)


def coco_eval_pycocotools(predictions: Sequence[Mapping], targets: Sequence[Mapping], **kwargs) -> dict:
    """``mean_average_precision(..., metric="coco")`` computed by pycocotools' own ``COCOeval``.

    The reference the other engines are compared with (tests, ``singleshot bench``).
    """
    return mean_average_precision(predictions, targets, "coco", engine="pycocotools", **kwargs)


def coco_data(
    predictions: Sequence[Mapping],
    targets: Sequence[Mapping],
    class_names: Sequence[str] | None = None,
    *,
    coco_gt: str | os.PathLike | Mapping | None = None,
    category_ids: Sequence[int] | None = None,
) -> tuple[CocoData, dict[int, str]]:
    """The COCO view of predictions and targets: ``(CocoData, {category id: class name})``.

    Without ``coco_gt``, image i gets id i + 1, a label is its own category id, a ground truth's area is its
    box area and its ``iscrowd`` is its crowd or difficult flag. With ``coco_gt`` (a COCO json path or dict)
    the ground truth is that file's, for the images of ``targets`` (``targets[i]["image_id"]``), and labels
    map to its categories as ``mean_average_precision`` says. Boxes: COCO [x, y, w, h] = our
    (x1, y1, x2 - x1, y2 - y1) in float64.
    """
    flat = flatten(predictions, targets)
    labels = class_labels(flat, class_names)
    names = class_names_of(labels, class_names)
    return _coco_data(flat, targets, labels, names, coco_gt, category_ids, class_names is not None)


def build_coco(predictions: Sequence[Mapping], targets: Sequence[Mapping], class_names=None, **kwargs):
    """COCO json-style ``(ground truth dict, results list)`` in memory, as pycocotools' ``COCO`` and
    ``loadRes`` take them (see ``coco_data`` for the conventions; fresh objects on every call)."""
    data, _ = coco_data(predictions, targets, class_names, **kwargs)
    return to_coco_dicts(data)


# ------------------------------------------------------------------------------------------------- COCO


def _xywh(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def _load_coco_json(coco_gt: str | os.PathLike | Mapping) -> Mapping:
    if hasattr(coco_gt, "dataset") and isinstance(coco_gt.dataset, Mapping):  # a pycocotools-style COCO
        coco_gt = coco_gt.dataset
    if isinstance(coco_gt, Mapping):
        data, where = coco_gt, "coco_gt"
    else:
        where = repr(os.fspath(coco_gt))
        try:
            with open(coco_gt) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise UserError(
                f"cannot read the COCO annotation file {where} ({e}); pass a COCO json file."
            ) from e
    if not isinstance(data, Mapping) or "images" not in data or "annotations" not in data:
        raise UserError(f"{where} is not a COCO annotation file: it has no 'images' and 'annotations'.")
    return data


def _category_map(labels, names, source, category_ids, named) -> dict[int, int]:
    """label -> COCO category id."""
    if category_ids is not None:
        if labels and max(labels) > len(category_ids):
            raise UserError(f"category_ids holds {len(category_ids)} ids but label {max(labels)} occurs.")
        return {c: int(category_ids[c - 1]) for c in labels}
    if source is None:
        return {c: c for c in labels}
    categories = source.get("categories", [])
    by_name = {str(cat.get("name")): int(cat["id"]) for cat in categories}
    if named and all(n in by_name for n in names):
        return {c: by_name[n] for c, n in zip(labels, names)}
    ids = sorted(int(cat["id"]) for cat in categories)
    if labels and (min(labels) < 1 or max(labels) > len(ids)):
        raise UserError(
            f"label {max(labels)} has no category: the COCO annotations list {len(ids)} categories."
        )
    return {c: ids[c - 1] for c in labels}


def _coco_data(flat: FlatSet, targets, labels, names, coco_gt, category_ids, named: bool):
    source = None if coco_gt is None else _load_coco_json(coco_gt)
    to_cat = _category_map(labels, names, source, category_ids, named)
    cat_names = {to_cat[c]: n for c, n in zip(labels, names)}
    if len(cat_names) < len(labels):
        raise UserError("two labels map to the same COCO category; pass distinct category_ids.")
    if source is not None and not named:  # the data set's own names
        own = {int(cat["id"]): str(cat.get("name", cat["id"])) for cat in source.get("categories", [])}
        cat_names = {cat: own.get(cat, n) for cat, n in cat_names.items()}
    category_ids_sorted = np.array(sorted(cat_names), dtype=np.int64)
    label_to_index = np.full(max(labels, default=0) + 1, -1, dtype=np.int64)
    for c in labels:
        label_to_index[c] = int(np.searchsorted(category_ids_sorted, to_cat[c]))

    det_xywh = _xywh(flat.det_boxes)
    if source is None:
        image_ids = np.arange(1, flat.num_images + 1, dtype=np.int64)
        image_of_input = np.arange(flat.num_images, dtype=np.int64)
        gt_xywh = _xywh(flat.gt_boxes)
        gt = dict(
            image=flat.gt_image,
            category=label_to_index[flat.gt_labels],
            xywh=gt_xywh,
            area=gt_xywh[:, 2] * gt_xywh[:, 3],
            crowd=flat.gt_crowd | flat.gt_difficult,
        )
    else:
        image_ids, image_of_input, gt = _coco_source_gt(source, targets, category_ids_sorted)
    data = CocoData(
        image_ids=image_ids,
        category_ids=category_ids_sorted,
        gt_image=gt["image"],
        gt_category=gt["category"],
        gt_xywh=gt["xywh"],
        gt_area=gt["area"],
        gt_crowd=gt["crowd"],
        det_image=image_of_input[flat.det_image],
        det_category=label_to_index[flat.det_labels],
        det_xywh=det_xywh,
        det_score=flat.det_scores,
    )
    return data, cat_names


def _coco_source_gt(source: Mapping, targets, category_ids_sorted: np.ndarray):
    """Ground truth of the evaluated images from a COCO json; image ids from ``targets[i]["image_id"]``."""
    ids = []
    for t in targets:
        if t.get("image_id") is None:
            raise UserError("targets need an 'image_id' to be evaluated against a COCO annotation file.")
        ids.append(int(as_array(t["image_id"], np.int64).reshape(())))
    known = {int(img["id"]) for img in source["images"]}
    missing = sorted(set(ids) - known)
    if missing:
        raise UserError(
            f"image id {missing[0]} is not in the COCO annotations; evaluate against the annotation "
            "file the data set was read from."
        )
    image_ids = np.unique(np.asarray(ids, dtype=np.int64))
    image_of_input = np.searchsorted(image_ids, np.asarray(ids, dtype=np.int64))
    wanted_images, wanted_cats = set(image_ids.tolist()), set(category_ids_sorted.tolist())
    anns = [
        a
        for a in source["annotations"]
        if int(a["image_id"]) in wanted_images and int(a["category_id"]) in wanted_cats
    ]
    xywh = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    gt = dict(
        image=np.searchsorted(image_ids, np.asarray([int(a["image_id"]) for a in anns], dtype=np.int64)),
        category=np.searchsorted(
            category_ids_sorted, np.asarray([int(a["category_id"]) for a in anns], dtype=np.int64)
        ),
        xywh=xywh,
        area=np.asarray([a["area"] if "area" in a else 0.0 for a in anns], dtype=np.float64),
        crowd=np.asarray([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
    )
    return image_ids, image_of_input, gt


def _coco_result(data: CocoData, cat_names: dict[int, str], engine: str) -> dict:
    if engine == "singleshot":
        precision, recall = evaluate_coco(data)
        stats = summarize_coco(precision, recall)
    else:
        stats, precision, recall = run_library(data, engine)
    result = {"metric": "coco", "engine": engine}
    result.update({key: (math.nan if s == -1 else s) for key, s in zip(STAT_NAMES, stats)})
    result["stats"] = stats
    counts = np.bincount(data.gt_category[~data.gt_crowd], minlength=len(data.category_ids))
    per_class, per_class_50, num_gt, curves = {}, {}, {}, {}
    for k, cat in enumerate(data.category_ids.tolist()):
        name = cat_names[cat]
        p = precision[:, :, k, 0, -1]  # (T, R): all areas, 100 detections
        defined = p[p > -1]
        per_class[name] = float(defined.mean()) if defined.size else math.nan
        p50 = p[0][p[0] > -1]  # the first IoU threshold is 0.5
        per_class_50[name] = float(p50.mean()) if p50.size else math.nan
        num_gt[name] = int(counts[k])
        if defined.size:
            curves[name] = (RECALL_THRESHOLDS.copy(), p[0].astype(np.float64))
    result.update(per_class=per_class, per_class_50=per_class_50, num_gt=num_gt, curves=curves)
    return result


# ------------------------------------------------------------------------------------------------ table


def format_map(value: float | None) -> str:
    """A mAP or AP (a fraction in [0, 1], as the results and JSON keep it) as a person reads it: percent
    with one decimal and a % sign, ``0.8034 -> "80.3 %"``; ``"-"`` for None or NaN (no ground truth).

    Every printed or drawn mAP/AP goes through this function, so the terminal, the logs and the plots use
    one scale; JSON files keep the fraction.
    """
    if value is None or math.isnan(value):
        return "-"
    return f"{100 * float(value):.1f} %"


def format_ap_table(result: Mapping) -> str:
    """A plain-text table of per-class AP (:func:`format_map`: percent) and the mean, for the terminal.

    Classes without ground truth show "-" and are not in the mean. COCO adds an AP50 column and the lines
    AP50, AP75 and AP for small, medium and large objects.
    """
    metric = result.get("metric", "")
    per_class = result["per_class"]
    per_class_50 = result.get("per_class_50")
    num_gt = result.get("num_gt", {})
    width = max([len("class"), len(f"mAP ({metric})")] + [len(n) for n in per_class])

    head = "AP@[.5:.95]" if metric == "coco" else "AP"
    columns = [f"{head:>11}"] + ([f"{'AP50':>7}"] if per_class_50 is not None else []) + [f"{'objects':>8}"]
    lines = [f"{'class':<{width}}  " + " ".join(columns)]
    for name, ap in per_class.items():
        row = [f"{format_map(ap):>11}"]
        if per_class_50 is not None:
            row.append(f"{format_map(per_class_50.get(name)):>7}")
        row.append(f"{num_gt.get(name, ''):>8}")
        lines.append(f"{name:<{width}}  " + " ".join(row))
    lines.append("-" * len(lines[0]))
    lines.append(f"{f'mAP ({metric})':<{width}}  {format_map(result['map']):>11}")
    if metric == "coco":
        for key, label in (
            ("map_50", "AP50"),
            ("map_75", "AP75"),
            ("map_small", "AP small"),
            ("map_medium", "AP medium"),
            ("map_large", "AP large"),
        ):
            lines.append(f"{label:<{width}}  {format_map(result.get(key)):>11}")
    return "\n".join(lines)
