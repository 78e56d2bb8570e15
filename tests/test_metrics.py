"""Tests of singleshot.metrics (VOC devkit AP, COCO AP) and singleshot.render.pr.plot_pr_curves.

VOC is compared with a literal re-implementation of the devkit's ``voc_eval.py`` (its loops), COCO with
pycocotools' ``COCOeval`` run here on COCO objects built independently of singleshot's conversion.
"""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from singleshot.errors import UserError
from singleshot.metrics import (
    COCO_ENGINES,
    build_coco,
    coco_data,
    coco_eval_pycocotools,
    format_ap_table,
    format_map,
    mean_average_precision,
)
from singleshot.metrics.coco import evaluate_coco, summarize_coco
from singleshot.render.pr import plot_pr_curves

# ------------------------------------------------------------------------------ the devkit, literally


def devkit_voc_ap(rec, prec, use_07_metric=False):
    """voc_eval.py's voc_ap, line by line."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            if np.sum(rec >= t) == 0:
                p = 0
            else:
                p = np.max(prec[rec >= t])
            ap = ap + p / 11.0
    else:
        mrec = np.concatenate(([0.0], rec, [1.0]))
        mpre = np.concatenate(([0.0], prec, [0.0]))
        for i in range(mpre.size - 1, 0, -1):
            mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
        i = np.where(mrec[1:] != mrec[:-1])[0]
        ap = np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])
    return ap


def devkit_voc_eval(recs, detections, classname, ovthresh=0.5, use_07_metric=False):
    """voc_eval.py's voc_eval with annotations and the class's detection file already parsed.

    recs: {image: [{"name", "bbox" (xmin, ymin, xmax, ymax 1-based inclusive), "difficult"}]};
    detections: the lines of the class's file, [(image, confidence, xmin, ymin, xmax, ymax)].
    """
    class_recs = {}
    npos = 0
    for imagename in recs:
        R = [obj for obj in recs[imagename] if obj["name"] == classname]
        bbox = np.array([x["bbox"] for x in R])
        difficult = np.array([x["difficult"] for x in R]).astype(bool)
        det = [False] * len(R)
        npos = npos + sum(~difficult)
        class_recs[imagename] = {"bbox": bbox, "difficult": difficult, "det": det}
    image_ids = [x[0] for x in detections]
    confidence = np.array([float(x[1]) for x in detections])
    BB = np.array([[float(z) for z in x[2:]] for x in detections]).reshape(-1, 4)
    sorted_ind = np.argsort(-confidence)
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = (
                (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0)
                - inters
            )
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return rec, prec, devkit_voc_ap(rec, prec, use_07_metric)


def random_devkit_set(seed, num_images=40, num_classes=5, integer_detections=True):
    """Devkit-style annotations and detections (difficult objects, duplicates, score ties) and ours."""
    rng = np.random.default_rng(seed)
    recs, lines = {}, {c: [] for c in range(1, num_classes + 1)}
    predictions, targets = [], []
    for i in range(num_images):
        n = int(rng.integers(0, 7))
        xmin = rng.integers(1, 300, (n, 2)).astype(np.float64)
        size = rng.integers(1, 120, (n, 2)).astype(np.float64)
        gt = np.concatenate([xmin, xmin + size - 1], axis=1)  # 1-based inclusive corners
        labels = rng.integers(1, num_classes + 1, n)
        difficult = rng.random(n) < 0.2
        recs[i] = [
            {"name": int(c), "bbox": b.tolist(), "difficult": bool(d)}
            for c, b, d in zip(labels, gt, difficult)
        ]
        k = int(rng.integers(0, 12))
        src = rng.integers(0, max(n, 1), k)
        if n:
            det = gt[src] + rng.normal(0, 6, (k, 4))
            det[: k // 3] = gt[src[: k // 3]]  # exact copies: duplicates of one object
            det_labels = np.where(rng.random(k) < 0.8, labels[src], rng.integers(1, num_classes + 1, k))
        else:
            det = np.concatenate([rng.uniform(1, 200, (k, 2)), rng.uniform(200, 400, (k, 2))], axis=1)
            det_labels = rng.integers(1, num_classes + 1, k)
        det = np.round(det) if integer_detections else np.round(det, 2)
        det[:, 2:] = np.maximum(det[:, 2:], det[:, :2])
        scores = np.round(rng.random(k), 1)  # many ties
        for c, s, b in zip(det_labels, scores, det):
            lines[int(c)].append((i, s, *b.tolist()))
        shift = np.array([1.0, 1.0, 0.0, 0.0])  # ours = devkit - (1, 1, 0, 0)
        predictions.append({"boxes": det - shift, "scores": scores, "labels": det_labels})
        targets.append({"boxes": gt - shift, "labels": labels, "difficult": difficult})
    return recs, lines, predictions, targets


@pytest.mark.parametrize("metric", ["voc07", "voc"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_voc_equals_the_devkit_on_random_data(metric, seed):
    recs, lines, predictions, targets = random_devkit_set(seed, integer_detections=seed != 2)
    result = mean_average_precision(predictions, targets, metric)
    aps = []
    for c, dets in lines.items():
        if not any(o["name"] == c and not o["difficult"] for objs in recs.values() for o in objs):
            assert math.isnan(result["per_class"].get(str(c), math.nan))  # the devkit would divide by 0
            continue
        rec, prec, ap = devkit_voc_eval(recs, dets, c, use_07_metric=metric == "voc07")
        assert result["per_class"][str(c)] == ap  # to the bit
        np.testing.assert_array_equal(result["curves"][str(c)][0], rec)
        np.testing.assert_array_equal(result["curves"][str(c)][1], prec)
        aps.append(ap)
    assert result["map"] == pytest.approx(np.mean(aps), abs=1e-15)


def test_voc_inputs_as_tensors_arrays_or_lists_agree():
    _, _, predictions, targets = random_devkit_set(3)
    as_tensors = [{k: torch.as_tensor(v) for k, v in p.items()} for p in predictions]
    as_lists = [{k: np.asarray(v).tolist() for k, v in p.items()} for p in predictions]
    a = mean_average_precision(predictions, targets, "voc")
    b = mean_average_precision(as_tensors, targets, "voc")
    c = mean_average_precision(
        as_lists, [{k: torch.as_tensor(v) for k, v in t.items()} for t in targets], "voc"
    )
    assert a["per_class"] == b["per_class"] == c["per_class"]


# ----------------------------------------------------------------------------- small hand-computed cases


def _one_image(gt_boxes, gt_labels, det_boxes, scores, det_labels, difficult=None):
    target = {
        "boxes": torch.tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(gt_labels),
    }
    if difficult is not None:
        target["difficult"] = torch.tensor(difficult)
    prediction = {
        "boxes": torch.tensor(det_boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores),
        "labels": torch.tensor(det_labels),
    }
    return [prediction], [target]


def test_duplicate_detection_is_false_and_11_point_differs_from_area():
    # Two objects; detections: object A (0.9), A again (0.8, a duplicate: false), object B (0.7).
    # recall 1/2, 1/2, 1; precision 1, 1/2, 2/3.
    p, t = _one_image(
        [[0, 0, 10, 10], [20, 20, 30, 30]],
        [1, 1],
        [[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]],
        [0.9, 0.8, 0.7],
        [1, 1, 1],
    )
    area = mean_average_precision(p, t, "voc")
    eleven = mean_average_precision(p, t, "voc07")
    assert area["map"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert eleven["map"] == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)  # thresholds 0..0.5 see precision 1
    np.testing.assert_allclose(area["curves"]["1"][0], [0.5, 0.5, 1.0])
    np.testing.assert_allclose(area["curves"]["1"][1], [1.0, 0.5, 2 / 3])
    assert area["num_gt"] == {"1": 2}


def test_detection_of_a_difficult_object_counts_neither_way():
    # A regular, D difficult. Detections: D (0.9), nothing (0.85), A (0.8).
    boxes = [[0, 0, 10, 10], [20, 20, 30, 30]]
    dets = [[20, 20, 30, 30], [50, 50, 60, 60], [0, 0, 10, 10]]
    p, t = _one_image(boxes, [1, 1], dets, [0.9, 0.85, 0.8], [1, 1, 1], difficult=[False, True])
    result = mean_average_precision(p, t, "voc")
    # tp 0 0 1, fp 0 1 0: recall 0, 0, 1; precision 0, 0, 1/2 -> AP 1/2; one positive.
    assert result["map"] == pytest.approx(0.5)
    assert result["num_gt"] == {"1": 1}
    np.testing.assert_allclose(result["curves"]["1"][1], [0.0, 0.0, 0.5])
    # Not difficult: tp 1 0 1, fp 0 1 0 -> 0.5 * 1 + 0.5 * 2/3.
    p, t = _one_image(boxes, [1, 1], dets, [0.9, 0.85, 0.8], [1, 1, 1], difficult=[False, False])
    assert mean_average_precision(p, t, "voc")["map"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    # A crowd object is ignored the same way.
    p, t = _one_image(boxes, [1, 1], dets, [0.9, 0.85, 0.8], [1, 1, 1])
    t[0]["iscrowd"] = torch.tensor([False, True])
    assert mean_average_precision(p, t, "voc")["map"] == pytest.approx(0.5)


def test_overlap_must_exceed_one_half_strictly_with_devkit_pixels():
    # Devkit box (1, 1, 10, 10) is ours (0, 0, 10, 10); devkit (1, 1, 10, 5) is ours (0, 0, 10, 5):
    # the devkit's overlap is 10 * 5 / (10 * 10) = 0.5, not above 0.5.
    p, t = _one_image([[0, 0, 10, 10]], [1], [[0, 0, 10, 5]], [0.9], [1])
    assert mean_average_precision(p, t, "voc")["map"] == 0.0
    p, t = _one_image([[0, 0, 10, 10]], [1], [[0, 0, 10, 6]], [0.9], [1])
    assert mean_average_precision(p, t, "voc")["map"] == 1.0
    assert mean_average_precision(p, t, "voc", iou_threshold=0.7)["map"] == 0.0


def test_classes_without_ground_truth_are_nan_and_left_out_of_the_mean():
    p, t = _one_image([[0, 0, 10, 10]], [1], [[0, 0, 10, 10], [5, 5, 9, 9]], [0.9, 0.8], [1, 3])
    for metric in ("voc07", "voc", "coco"):
        result = mean_average_precision(p, t, metric, class_names=["cat", "dog", "bird"])
        assert list(result["per_class"]) == ["cat", "dog", "bird"]
        assert math.isnan(result["per_class"]["dog"]) and math.isnan(result["per_class"]["bird"])
        assert result["map"] == pytest.approx(1.0)
        assert set(result["curves"]) == {"cat"}
        assert result["num_gt"] == {"cat": 1, "dog": 0, "bird": 0}
    result = mean_average_precision(p, t, "voc")  # without names: the labels that occur
    assert list(result["per_class"]) == ["1", "3"]


def test_empty_sets():
    none = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    target = {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1])}
    for metric in ("voc07", "voc", "coco"):
        assert math.isnan(mean_average_precision([], [], metric)["map"])
        assert mean_average_precision([none], [target], metric)["map"] == 0.0


def test_user_errors():
    p, t = _one_image([[0, 0, 10, 10]], [1], [[0, 0, 10, 10]], [0.9], [2])
    with pytest.raises(UserError, match="metric"):
        mean_average_precision(p, t, "map50")
    with pytest.raises(UserError, match="label 2 has no class name"):
        mean_average_precision(p, t, "voc", class_names=["cat"])
    with pytest.raises(UserError, match="engine"):
        mean_average_precision(p, t, "coco", engine="detectron2")
    with pytest.raises(UserError, match="cannot read"):
        mean_average_precision(p, t, "coco", coco_gt="/nonexistent/instances_val2017.json")
    with pytest.raises(UserError, match="label 2 has no category"):
        mean_average_precision(
            p, t, "coco", coco_gt={"images": [{"id": 1}], "annotations": [], "categories": []}
        )
    two = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    with pytest.raises(UserError, match="image_id"):
        mean_average_precision(
            p, t, "coco", coco_gt={"images": [{"id": 1}], "annotations": [], "categories": two}
        )
    t[0]["image_id"] = 5
    with pytest.raises(UserError, match="image id 5 is not in the COCO annotations"):
        mean_average_precision(
            p, t, "coco", coco_gt={"images": [{"id": 1}], "annotations": [], "categories": two}
        )
    with pytest.raises(ValueError):
        mean_average_precision(p, t + t, "voc")


# ------------------------------------------------------------------------------------------------- COCO


def random_coco_set(seed, num_images=30, num_classes=12, max_objects=12, max_detections=40, grid=False):
    """Crowd regions, small / medium / large objects, score ties, some images with > 100 detections."""
    rng = np.random.default_rng(seed)
    predictions, targets = [], []
    for i in range(num_images):
        n = int(rng.integers(0, max_objects + 1))
        if grid:  # integer boxes: equal IoUs and IoUs exactly at thresholds
            xy = rng.integers(0, 40, (n, 2)) * 4.0
            wh = rng.integers(1, 40, (n, 2)) * 4.0
        else:
            xy = rng.uniform(0, 600, (n, 2))
            wh = np.exp(rng.uniform(np.log(3), np.log(300), (n, 2)))
        gt = np.concatenate([xy, xy + wh], axis=1)
        labels = rng.integers(1, num_classes + 1, n)
        k = int(rng.integers(0, max_detections + 1)) if i % 7 else 130
        src = rng.integers(0, max(n, 1), k)
        if n:
            jitter = (
                rng.integers(-2, 3, (k, 4)) * 4.0
                if grid
                else rng.normal(0, 0.15, (k, 4)) * np.tile(wh[src], 2)
            )
            det = gt[src] + jitter
            det_labels = np.where(rng.random(k) < 0.8, labels[src], rng.integers(1, num_classes + 1, k))
        else:
            det = np.concatenate([rng.uniform(0, 300, (k, 2)), rng.uniform(300, 600, (k, 2))], axis=1)
            det_labels = rng.integers(1, num_classes + 1, k)
        predictions.append(
            {
                "boxes": torch.tensor(det, dtype=torch.float32).reshape(-1, 4),
                "scores": torch.tensor(np.round(rng.random(k), 2), dtype=torch.float32),
                "labels": torch.tensor(det_labels),
            }
        )
        targets.append(
            {
                "boxes": torch.tensor(gt, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor(labels),
                "iscrowd": torch.tensor(rng.random(n) < 0.15),
            }
        )
    return predictions, targets


def pycocotools_reference(gt_json, results, image_ids=None, category_ids=None):
    """pycocotools' own pipeline: COCO, loadRes, COCOeval; returns the evaluator."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = json.loads(json.dumps(gt_json))
        gt.createIndex()
        dt = gt.loadRes(json.loads(json.dumps(results)))
        evaluator = COCOeval(gt, dt, "bbox")
        if image_ids is not None:
            evaluator.params.imgIds = image_ids
        if category_ids is not None:
            evaluator.params.catIds = category_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def coco_json_by_hand(predictions, targets):
    """Image i -> id i + 1, label -> category id, bbox [x1, y1, x2 - x1, y2 - y1] in float64."""
    anns, results, labels = [], [], set()
    for i, (p, t) in enumerate(zip(predictions, targets)):
        for box, label, crowd in zip(
            t["boxes"].double().tolist(), t["labels"].tolist(), t["iscrowd"].tolist()
        ):
            w, h = box[2] - box[0], box[3] - box[1]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": label,
                    "bbox": [box[0], box[1], w, h],
                    "area": w * h,
                    "iscrowd": int(crowd),
                }
            )
            labels.add(label)
        for box, score, label in zip(
            p["boxes"].double().tolist(), p["scores"].double().tolist(), p["labels"].tolist()
        ):
            results.append(
                {
                    "image_id": i + 1,
                    "category_id": label,
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                    "score": score,
                }
            )
            labels.add(label)
    gt = {
        "images": [{"id": i + 1} for i in range(len(targets))],
        "annotations": anns,
        "categories": [{"id": c, "name": str(c)} for c in sorted(labels)],
    }
    return gt, results


@pytest.mark.parametrize("seed,grid", [(0, False), (1, True), (2, False)])
def test_coco_equals_pycocotools_to_the_bit(seed, grid):
    predictions, targets = random_coco_set(seed, grid=grid)
    reference = pycocotools_reference(*coco_json_by_hand(predictions, targets))
    result = mean_average_precision(predictions, targets, "coco")
    assert result["stats"] == [float(s) for s in reference.stats]
    assert result["map"] == reference.stats[0] and result["map_large"] == reference.stats[5]
    precision, recall = evaluate_coco(coco_data(predictions, targets)[0])
    np.testing.assert_array_equal(precision, reference.eval["precision"])
    np.testing.assert_array_equal(recall, reference.eval["recall"])
    assert summarize_coco(precision, recall) == result["stats"]
    # per class: mean over IoU thresholds and recall points, all areas, 100 detections
    for k, cat in enumerate(reference.params.catIds):
        p = reference.eval["precision"][:, :, k, 0, -1]
        expected = np.mean(p[p > -1]) if (p > -1).any() else math.nan
        assert result["per_class"][str(cat)] == pytest.approx(expected, nan_ok=True)


def test_coco_engines_agree_with_pycocotools():
    predictions, targets = random_coco_set(4, num_images=20)
    reference = coco_eval_pycocotools(predictions, targets)
    for engine in COCO_ENGINES:
        result = mean_average_precision(predictions, targets, "coco", engine=engine)
        assert result["engine"] == engine
        # faster-coco-eval rounds its accumulation differently, by about 1e-16; ours is exact.
        np.testing.assert_allclose(
            result["stats"], reference["stats"], rtol=0, atol=0 if engine == "singleshot" else 1e-12
        )
        assert result.keys() == reference.keys()


def test_coco_with_the_data_sets_own_json():
    """Non-contiguous ids, areas that are not the box areas, a subset of images, classes mapped by name."""
    rng = np.random.default_rng(5)
    predictions, targets = random_coco_set(5, num_images=12, num_classes=3)
    names = ["cat", "dog", "bird"]
    cat_ids = {1: 12, 2: 3, 3: 7}  # label -> category id (names: 1 cat, 2 dog, 3 bird)
    gt, results = coco_json_by_hand(predictions, targets)
    for a in gt["annotations"]:
        a["image_id"] += 1000
        a["category_id"] = cat_ids[a["category_id"]]
        a["area"] *= float(rng.uniform(0.3, 1.0))  # segmentation area, smaller than the box
        a["id"] += 500
    gt["annotations"] = gt["annotations"][::-1]
    gt["images"] = [{"id": im["id"] + 1000, "width": 640, "height": 480} for im in gt["images"]]
    gt["categories"] = [
        {"id": 3, "name": "dog"},
        {"id": 7, "name": "bird"},
        {"id": 12, "name": "cat"},
        {"id": 20, "name": "unused"},
    ]
    for r in results:
        r["image_id"] += 1000
        r["category_id"] = cat_ids[r["category_id"]]
    for i, t in enumerate(targets):
        t["image_id"] = i + 1001
    subset = slice(0, 9)
    result = mean_average_precision(
        predictions[subset], targets[subset], "coco", class_names=names, coco_gt=gt
    )
    wanted = [i + 1001 for i in range(9)]
    reference = pycocotools_reference(
        gt, [r for r in results if r["image_id"] in wanted], image_ids=wanted, category_ids=[3, 7, 12]
    )
    assert result["stats"] == [float(s) for s in reference.stats]
    assert list(result["per_class"]) == ["dog", "bird", "cat"]  # category id order
    # Without names the labels map to the i-th smallest category id and take the json's names.
    by_rank = mean_average_precision(
        predictions[subset], targets[subset], "coco", coco_gt=gt, category_ids=[12, 3, 7]
    )
    assert by_rank["stats"] == result["stats"] and list(by_rank["per_class"]) == ["dog", "bird", "cat"]


def test_coco_difficult_objects_are_ignored_like_crowds():
    predictions, targets = random_coco_set(6, num_images=10)
    as_difficult = [{"boxes": t["boxes"], "labels": t["labels"], "difficult": t["iscrowd"]} for t in targets]
    a = mean_average_precision(predictions, targets, "coco")
    b = mean_average_precision(predictions, as_difficult, "coco")
    assert a["stats"] == b["stats"]


def test_build_coco_gives_pycocotools_inputs():
    predictions, targets = random_coco_set(7, num_images=5)
    gt, results = build_coco(predictions, targets)
    assert len(gt["annotations"]) == sum(len(t["labels"]) for t in targets)
    assert len(results) == sum(len(p["labels"]) for p in predictions)
    box = targets[0]["boxes"][0].double().tolist()
    assert gt["annotations"][0]["bbox"] == pytest.approx([box[0], box[1], box[2] - box[0], box[3] - box[1]])
    reference = pycocotools_reference(gt, results)
    assert mean_average_precision(predictions, targets, "coco")["stats"] == [
        float(s) for s in reference.stats
    ]


# ------------------------------------------------------------------------------------------ table, plots


def test_format_ap_table():
    p, t = _one_image([[0, 0, 10, 10]], [1], [[0, 0, 10, 10]], [0.9], [1])
    table = format_ap_table(mean_average_precision(p, t, "voc07", class_names=["cat", "dog"]))
    lines = table.splitlines()
    assert lines[1].split() == ["cat", "100.0", "%", "1"]
    assert lines[2].split() == ["dog", "-", "0"]
    assert lines[-1].split() == ["mAP", "(voc07)", "100.0", "%"]
    coco = format_ap_table(mean_average_precision(p, t, "coco", class_names=["cat", "dog"]))
    assert "AP50" in coco and "AP large" in coco and coco.splitlines()[1].split()[0] == "cat"


def test_format_map_is_percent_with_one_decimal():
    assert format_map(0.8034) == "80.3 %"
    assert format_map(0.00043) == "0.0 %" and format_map(0.0043) == "0.4 %"
    assert format_map(1.0) == "100.0 %" and format_map(np.float32(0.25)) == "25.0 %"
    assert format_map(None) == "-" and format_map(math.nan) == "-"


def test_pr_curve_titles_use_format_map(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    titles = []
    set_title = Axes.set_title
    monkeypatch.setattr(
        Axes, "set_title", lambda ax, text, *a, **k: titles.append(text) or set_title(ax, text, *a, **k)
    )
    predictions, targets = random_coco_set(3, num_images=6, num_classes=2)
    result = mean_average_precision(predictions, targets, "voc07", class_names=["cat", "dog"])
    plot_pr_curves(result, tmp_path / "pr.png")
    assert titles == [f"voc07 mAP {format_map(result['map'])}"]
    assert titles[0].endswith(" %") and 0 < result["map"] <= 1


@pytest.mark.parametrize("num_classes,metric", [(3, "voc"), (14, "coco")])  # one axes; a grid
def test_plot_pr_curves_writes_a_png(tmp_path, num_classes, metric):
    predictions, targets = random_coco_set(8, num_images=15, num_classes=num_classes)
    result = mean_average_precision(predictions, targets, metric)
    path = plot_pr_curves(result, tmp_path / "runs" / f"pr_{metric}.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
        assert image.size[0] >= 600 and image.size[1] >= 500
    empty = plot_pr_curves(mean_average_precision([], [], "voc"), tmp_path / "empty.png", title="nothing")
    assert empty.stat().st_size > 0
