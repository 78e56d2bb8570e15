"""COCO box AP: pycocotools' ``COCOeval`` (bbox) reproduced bit for bit, vectorised; and the engines.

``evaluate_coco(data)`` computes the same ``precision`` [T, R, K, A, M] and ``recall`` [T, K, A, M] arrays
as ``COCOeval.evaluate(); accumulate()`` with the default parameters, and ``summarize_coco`` the same 12
``stats``, every number identical to the last bit (the tests compare them with pycocotools on random data
with crowd regions, all area ranges, ties and more than 100 detections per image). What it keeps:

- per (image, category), detections sorted by score (stable), only the best 100 are evaluated;
- box IoU as pycocotools' C ``bbIou`` on [x, y, w, h] in float64 (a crowd region's "union" is the
  detection's area), ground-truth ``area`` from the annotations for the area ranges, detection area w * h;
- at each IoU threshold t in 0.50:0.05:0.95, detections in score order take the available ground truth of
  highest IoU >= min(t, 1 - 1e-10) (the last of equal ones), regular objects before ignored ones
  (crowd, or outside the area range); crowd regions can be matched any number of times; unmatched
  detections outside the area range are ignored;
- per category, area range and 1 / 10 / 100 detections per image: the detections of all images sorted by
  score (stable, images in id order), cumulative TP / FP, precision ``tp / (fp + tp + eps)`` made
  monotone, read at 101 recall points; -1 where a category has no ground truth.

pycocotools' greedy matching is a Python loop over thresholds x detections x ground truths per image;
here the loop runs over the detection rank only, for all (image, category, area range, threshold) groups
at once, and only over detections that overlap some ground truth by at least 0.5 (the others never match).
Its accumulation loops over categories x areas x limits; here each (area, limit, threshold) is one pass
over all categories, with integer cumulative counts and the same float operations where floats are made.
Bit-identity rests on IEEE double arithmetic without fused multiply-add, as numpy and pycocotools'
x86-64 builds compute.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np

# pycocotools' Params.setDetParams, written the same way for the same floats.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETECTIONS = (1, 10, 100)
AREA_RANGES = ((0**2, 1e5**2), (0**2, 32**2), (32**2, 96**2), (96**2, 1e5**2))
AREA_NAMES = ("all", "small", "medium", "large")

# The names of pycocotools' 12 summary numbers, in the order of ``COCOeval.stats``.
STAT_NAMES = (
    "map",
    "map_50",
    "map_75",
    "map_small",
    "map_medium",
    "map_large",
    "mar_1",
    "mar_10",
    "mar_100",
    "mar_small",
    "mar_medium",
    "mar_large",
)


@dataclass
class CocoData:
    """Ground truth and detections of the evaluated images and categories, COCO style.

    ``*_image`` index ``image_ids`` (sorted ids) and ``*_category`` index ``category_ids`` (sorted ids).
    Ground truths keep their annotation order and detections their result order, which break ties as in
    pycocotools. Boxes are COCO [x, y, w, h] float64 pixels.
    """

    image_ids: np.ndarray  # int64 [I] sorted
    category_ids: np.ndarray  # int64 [K] sorted
    gt_image: np.ndarray  # int64 [G]
    gt_category: np.ndarray  # int64 [G]
    gt_xywh: np.ndarray  # float64 [G, 4]
    gt_area: np.ndarray  # float64 [G]
    gt_crowd: np.ndarray  # bool [G]
    det_image: np.ndarray  # int64 [N]
    det_category: np.ndarray  # int64 [N]
    det_xywh: np.ndarray  # float64 [N, 4]
    det_score: np.ndarray  # float64 [N]


def bbox_iou(dt_xywh: np.ndarray, gt_xywh: np.ndarray, gt_crowd: np.ndarray) -> np.ndarray:
    """pycocotools' ``bbIou`` for paired rows: Tensor[T, 4] detections, Tensor[T, 4] ground truths -> [T].

    Same float64 operations in the same order: w = min(x+w) - max(x), union da + ga - i, or da for a
    crowd region; 0 where w <= 0 or h <= 0.
    """
    da = dt_xywh[:, 2] * dt_xywh[:, 3]
    ga = gt_xywh[:, 2] * gt_xywh[:, 3]
    w = np.fmin(dt_xywh[:, 2] + dt_xywh[:, 0], gt_xywh[:, 2] + gt_xywh[:, 0]) - np.fmax(
        dt_xywh[:, 0], gt_xywh[:, 0]
    )
    h = np.fmin(dt_xywh[:, 3] + dt_xywh[:, 1], gt_xywh[:, 3] + gt_xywh[:, 1]) - np.fmax(
        dt_xywh[:, 1], gt_xywh[:, 1]
    )
    i = w * h
    u = np.where(gt_crowd, da, da + ga - i)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((w > 0) & (h > 0), i / u, 0.0)


def _group_pairs(
    det_keys: np.ndarray, gt_keys_sorted: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(detection, ground truth) pairs sharing a key; ground truths given sorted by key (stable).

    Returns pair_det [P], pair_gt [P] (positions in the sorted ground truths) and each detection's count.
    """
    start = np.searchsorted(gt_keys_sorted, det_keys, side="left")
    counts = np.searchsorted(gt_keys_sorted, det_keys, side="right") - start
    total = int(counts.sum())
    first = np.cumsum(counts) - counts
    pair_det = np.repeat(np.arange(len(det_keys)), counts)
    pair_gt = np.repeat(start - first, counts) + np.arange(total)
    return pair_det, pair_gt, counts


def _match(
    ious: np.ndarray, gt_ignore: np.ndarray, gt_crowd: np.ndarray, det_counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools' greedy matching for a batch of (image, category) groups padded to G ground truths.

    Args:
        ious: float64 [P, D, G] IoU of each group's detections (score order) with its ground truths;
            padding -1.
        gt_ignore: bool [P, A, G] ignored ground truths per area range (padding: anything).
        gt_crowd: bool [P, G].
        det_counts: int [P] detections per group, non-increasing.

    Returns:
        matched, matched_ignored: bool [P, A, T, D] (a detection matched an object, an ignored one).
    """
    p, d, g = ious.shape
    a = gt_ignore.shape[1]
    t = len(IOU_THRESHOLDS)
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[None, None, :, None]  # (1, 1, T, 1)
    taken = np.zeros((p, a, t, g), dtype=bool)  # non-crowd objects already matched
    matched = np.zeros((p, a, t, d), dtype=bool)
    matched_ignored = np.zeros((p, a, t, d), dtype=bool)
    ignore = gt_ignore[:, :, None, :]  # (P, A, 1, G)
    crowd = gt_crowd[:, None, None, :]  # (P, 1, 1, G)
    reversed_index = g - 1 - np.arange(g)
    for r in range(d):
        n = int(np.count_nonzero(det_counts > r))  # groups with an r-th detection: a prefix
        iou = ious[:n, r, None, None, :]  # (n, 1, 1, G)
        ok = ~taken[:n] & (iou >= thresholds)  # (n, A, T, G)
        regular = ok & ~ignore[:n]
        use = np.where(regular.any(-1, keepdims=True), regular, ok)  # regular objects first
        value = np.where(use, iou, -np.inf)
        best = value.max(-1, keepdims=True)
        hit = use & (value == best)
        last = reversed_index[np.argmax(hit[..., ::-1], axis=-1)]  # the last of equal maxima, (n, A, T)
        found = hit.any(-1)
        ig = np.take_along_axis(np.broadcast_to(ignore[:n], hit.shape), last[..., None], -1)[..., 0]
        matched[:n, :, :, r] = found
        matched_ignored[:n, :, :, r] = found & ig
        not_crowd = ~np.take_along_axis(np.broadcast_to(crowd[:n], hit.shape), last[..., None], -1)[..., 0]
        np.put_along_axis(
            taken[:n],
            last[..., None],
            (found & not_crowd)[..., None] | np.take_along_axis(taken[:n], last[..., None], -1),
            -1,
        )
    return matched, matched_ignored


def evaluate_coco(data: CocoData) -> tuple[np.ndarray, np.ndarray]:
    """``COCOeval(..., "bbox").evaluate(); accumulate()`` with default parameters.

    Returns:
        precision float64 [T=10, R=101, K, A=4, M=3] and recall float64 [T, K, A, M]; -1 where undefined.
    """
    num_k = len(data.category_ids)
    num_t, num_r, num_a, num_m = (
        len(IOU_THRESHOLDS),
        len(RECALL_THRESHOLDS),
        len(AREA_RANGES),
        len(MAX_DETECTIONS),
    )
    precision = -np.ones((num_t, num_r, num_k, num_a, num_m))
    recall = -np.ones((num_t, num_k, num_a, num_m))
    max_det = MAX_DETECTIONS[-1]

    # Detections per (image, category) group in score order (stable), the best 100 of each.
    det_group = data.det_image * num_k + data.det_category
    order = np.lexsort((-data.det_score, det_group))
    group_sorted = det_group[order]
    group_start = np.searchsorted(group_sorted, group_sorted, side="left")
    rank_sorted = np.arange(len(order)) - group_start
    keep = order[rank_sorted < max_det]
    rank = rank_sorted[rank_sorted < max_det]
    det_group, det_xywh, det_score = det_group[keep], data.det_xywh[keep], data.det_score[keep]
    det_category, det_image = data.det_category[keep], data.det_image[keep]
    num_det = len(keep)

    gt_group = data.gt_image * num_k + data.gt_category
    gt_order = np.argsort(gt_group, kind="stable")  # annotation order within a group
    gt_group_sorted = gt_group[gt_order]
    gt_xywh, gt_area = data.gt_xywh[gt_order], data.gt_area[gt_order]
    gt_crowd, gt_category = data.gt_crowd[gt_order], data.gt_category[gt_order]
    ranges = np.asarray(AREA_RANGES, dtype=np.float64)  # (A, 2)
    gt_ignore = (
        gt_crowd[None, :] | (gt_area[None, :] < ranges[:, :1]) | (gt_area[None, :] > ranges[:, 1:])
    )  # (A, G)
    det_area = det_xywh[:, 2] * det_xywh[:, 3]
    det_outside = (det_area[None, :] < ranges[:, :1]) | (det_area[None, :] > ranges[:, 1:])  # (A, N)

    # Overlaps within groups; detections without any overlap >= 0.5 can never match.
    pair_det, pair_gt, _ = _group_pairs(det_group, gt_group_sorted)
    pair_iou = bbox_iou(det_xywh[pair_det], gt_xywh[pair_gt], gt_crowd[pair_gt])
    candidate = np.zeros(num_det, dtype=bool)
    candidate[pair_det[pair_iou >= IOU_THRESHOLDS[0]]] = True

    matched = np.zeros((num_a, num_t, num_det), dtype=bool)
    matched_ignored = np.zeros((num_a, num_t, num_det), dtype=bool)
    if candidate.any():
        _match_all(
            candidate,
            det_group,
            pair_det,
            pair_iou,
            gt_group_sorted,
            gt_ignore,
            gt_crowd,
            matched,
            matched_ignored,
        )
    det_ignored = matched_ignored | (~matched & det_outside[:, None, :])  # (A, T, N)

    # Accumulate: per category, detections of all images by score (stable; image order, then rank).
    acc = np.lexsort((rank, det_image, -det_score, det_category))
    counted = ~det_ignored[:, :, acc]  # (A, T, N)
    positives = np.stack(
        [np.bincount(gt_category[~gt_ignore[a]], minlength=num_k) for a in range(num_a)]
    )  # (A, K)
    present = np.zeros(num_k, dtype=bool)
    present[gt_category] = True
    present[det_category] = True
    _accumulate(
        matched[:, :, acc] & counted,
        ~matched[:, :, acc] & counted,
        det_category[acc],
        rank[acc],
        positives,
        present,
        precision,
        recall,
    )
    return precision, recall


def _accumulate(tps, fps, category, rank, positives, present, precision, recall) -> None:
    """pycocotools' ``accumulate`` for all categories at once, into ``precision`` and ``recall``.

    Args:
        tps, fps: bool [A, T, N] true / false positives, detections sorted by category, then as
            pycocotools concatenates and sorts them (score, stable over image order and rank).
        category: int [N] (sorted), rank: int [N] rank of each detection within its image.
        positives: int [A, K] objects that count; present: bool [K] categories with any object or detection.

    Per category the cumulative counts are integers, so segmented cumulative sums are exact, and
    precision ``tp / (fp + tp + eps)`` and recall ``tp / npig`` are the same float operations as
    pycocotools'. Its envelope read at 101 recall points is, for each point, the maximum precision from
    the first detection whose recall reaches the point: found by integer search (the smallest count c with
    c / npig >= point) and taken as maxima of the chunks between consecutive points.
    """
    num_a, num_t, _ = tps.shape
    num_k = len(present)
    if num_k == 0:
        return
    thresholds = RECALL_THRESHOLDS
    max_rank = int(rank.max(initial=0)) + 1
    for m, limit in enumerate(MAX_DETECTIONS):
        keep = rank < limit
        cat = category[keep]
        n = len(cat)
        start = np.searchsorted(cat, np.arange(num_k), side="left")
        end = np.searchsorted(cat, np.arange(num_k), side="right")
        stride = n + 2  # keys cat * stride + count separate the categories; counts <= n
        cat_keys = cat * stride
        for a in range(num_a):
            npig = positives[a].astype(np.float64)  # (K,)
            valid = present & (positives[a] > 0)
            npig_safe = np.where(valid, npig, 1.0)
            # The smallest count c with fl(c / npig) >= point, for every category and recall point.
            guess = np.floor(thresholds[None, :] * npig_safe[:, None])  # (K, R)
            need = np.full(guess.shape, np.inf)
            for delta in (2.0, 1.0, 0.0, -1.0):
                trial = guess + delta
                need = np.where(
                    (trial >= 0) & (trial / npig_safe[:, None] >= thresholds[None, :]), trial, need
                )
            need = np.minimum(need, n + 1).astype(np.int64)  # beyond every count of the category
            if n == 0:  # no detections: precision and recall 0 where defined
                recall[:, valid, a, m] = 0.0
                precision[:, :, valid, a, m] = 0.0
                continue
            tp_a, fp_a = (tps[a], fps[a]) if limit >= max_rank else (tps[a][:, keep], fps[a][:, keep])
            tp_cum = np.cumsum(tp_a, axis=1, dtype=np.int32)  # (T, n) integer counts
            fp_cum = np.cumsum(fp_a, axis=1, dtype=np.int32)
            tp_before = np.where(start > 0, tp_cum[:, np.maximum(start - 1, 0)], 0)  # (T, K)
            fp_before = np.where(start > 0, fp_cum[:, np.maximum(start - 1, 0)], 0)
            tp = tp_cum - np.repeat(tp_before, end - start, axis=1)  # per-category cumulative counts
            fp = fp_cum - np.repeat(fp_before, end - start, axis=1)
            tp_last = np.where(end > start, tp_cum[:, np.maximum(end - 1, 0)] - tp_before, 0)  # (T, K)
            rec = tp_last / npig_safe  # pycocotools: rc[-1], or 0 without detections
            recall[:, valid, a, m] = rec[:, valid]
            tp_f = tp.astype(np.float64)
            pr = np.zeros((num_t, n + 1))  # a last 0 so that every chunk bound is an index
            np.divide(tp_f, fp.astype(np.float64) + tp_f + np.spacing(1), out=pr[:, :n])
            queries = (np.arange(num_k)[:, None] * stride + need).ravel()  # (K * R,)
            for t in range(num_t):
                first = np.searchsorted(cat_keys + tp[t], queries, side="left").reshape(num_k, -1)  # (K, R)
                bounds = np.concatenate([first, end[:, None]], axis=1)  # (K, R + 1)
                chunks = np.maximum.reduceat(pr[t], bounds.ravel()).reshape(num_k, -1)[:, :-1]  # (K, R)
                chunks = np.where(bounds[:, 1:] > bounds[:, :-1], chunks, 0.0)
                q = np.maximum.accumulate(chunks[:, ::-1], axis=1)[:, ::-1]  # envelope from each point on
                precision[t, :, valid, a, m] = q[valid]


def _match_all(
    candidate, det_group, pair_det, pair_iou, gt_group_sorted, gt_ignore, gt_crowd, matched, matched_ignored
) -> None:
    """Run ``_match`` over every (image, category) group holding a candidate detection.

    Groups are batched in buckets of similar sizes (powers of two of ground truths and candidates) so that
    padding stays below a factor of two. Writes ``matched`` and ``matched_ignored`` [A, T, N] in place.
    """
    cand = np.flatnonzero(candidate)  # in (group, rank) order: each group's candidates are contiguous
    groups, group_first, det_counts = np.unique(det_group[cand], return_index=True, return_counts=True)
    gt_first = np.searchsorted(gt_group_sorted, groups, side="left")
    gt_counts = np.searchsorted(gt_group_sorted, groups, side="right") - gt_first
    pair_first = np.searchsorted(pair_det, cand, side="left")  # a detection's pairs: contiguous, gt order
    bucket = np.ceil(np.log2(gt_counts)).astype(np.int64) * 64 + np.ceil(np.log2(det_counts)).astype(np.int64)
    for b in np.unique(bucket):
        members = np.flatnonzero(bucket == b)
        members = members[np.argsort(-det_counts[members], kind="stable")]  # active groups form a prefix
        counts, n_gt = det_counts[members], gt_counts[members]
        p, d, g = len(members), int(counts.max()), int(n_gt.max())
        slot_group = np.repeat(np.arange(p), counts)  # one slot per candidate
        slot_rank = np.arange(len(slot_group)) - np.repeat(np.cumsum(counts) - counts, counts)
        slot_cand = group_first[members][slot_group] + slot_rank  # index into cand
        rows = np.repeat(np.arange(len(slot_cand)), n_gt[slot_group])  # one row per (candidate, gt) pair
        col = np.arange(len(rows)) - np.repeat(
            np.cumsum(n_gt[slot_group]) - n_gt[slot_group], n_gt[slot_group]
        )
        ious = np.full((p, d, g), -1.0)
        ious[slot_group[rows], slot_rank[rows], col] = pair_iou[pair_first[slot_cand][rows] + col]
        valid = np.arange(g)[None, :] < n_gt[:, None]  # (p, g)
        gt_index = np.where(valid, gt_first[members][:, None] + np.arange(g)[None, :], 0)
        ignore = np.moveaxis(gt_ignore[:, gt_index], 0, 1)  # (p, A, g)
        m, mi = _match(ious, ignore, gt_crowd[gt_index] & valid, counts)
        dets = cand[slot_cand]
        matched[:, :, dets] = np.moveaxis(m[slot_group, :, :, slot_rank], 0, -1)
        matched_ignored[:, :, dets] = np.moveaxis(mi[slot_group, :, :, slot_rank], 0, -1)


def summarize_coco(precision: np.ndarray, recall: np.ndarray) -> list[float]:
    """``COCOeval.summarize()``'s 12 numbers from ``evaluate_coco``'s arrays (same slicing, same means)."""

    def summarize(ap: bool, iou=None, area="all", max_dets=100) -> float:
        aind = [AREA_NAMES.index(area)]
        mind = [MAX_DETECTIONS.index(max_dets)]
        s = precision if ap else recall
        if iou is not None:
            s = s[np.where(iou == IOU_THRESHOLDS)[0]]
        s = s[:, :, :, aind, mind] if ap else s[:, :, aind, mind]
        return -1.0 if len(s[s > -1]) == 0 else float(np.mean(s[s > -1]))

    return [
        summarize(True),
        summarize(True, iou=0.5),
        summarize(True, iou=0.75),
        summarize(True, area="small"),
        summarize(True, area="medium"),
        summarize(True, area="large"),
        summarize(False, max_dets=1),
        summarize(False, max_dets=10),
        summarize(False),
        summarize(False, area="small"),
        summarize(False, area="medium"),
        summarize(False, area="large"),
    ]


# ------------------------------------------------------------------------------------ the other engines


def to_coco_dicts(data: CocoData) -> tuple[dict, list[dict]]:
    """COCO json-style ground truth and results of ``data`` (fresh objects: the engines modify them)."""
    images = data.image_ids.tolist()
    cats = data.category_ids.tolist()
    gt = {
        "images": [{"id": i} for i in images],
        "categories": [{"id": c, "name": str(c)} for c in cats],
        "annotations": [
            {
                "id": n + 1,
                "image_id": images[i],
                "category_id": cats[c],
                "bbox": b,
                "area": area,
                "iscrowd": int(crowd),
            }
            for n, (i, c, b, area, crowd) in enumerate(
                zip(
                    data.gt_image.tolist(),
                    data.gt_category.tolist(),
                    data.gt_xywh.tolist(),
                    data.gt_area.tolist(),
                    data.gt_crowd.tolist(),
                )
            )
        ],
    }
    results = [
        {"image_id": images[i], "category_id": cats[c], "bbox": b, "score": s}
        for i, c, b, s in zip(
            data.det_image.tolist(),
            data.det_category.tolist(),
            data.det_xywh.tolist(),
            data.det_score.tolist(),
        )
    ]
    return gt, results


def _api(cls, dataset: dict):
    api = cls()
    api.dataset = dataset
    api.createIndex()
    return api


def _results_dataset(gt: dict, results: list[dict]) -> dict:
    """What ``COCO.loadRes`` makes of box results, without its unused polygons: area w * h, id from 1."""
    for n, r in enumerate(results):
        r["area"] = r["bbox"][2] * r["bbox"][3]
        r["id"] = n + 1
        r["iscrowd"] = 0
    return {"images": list(gt["images"]), "categories": list(gt["categories"]), "annotations": results}


def run_library(data: CocoData, engine: str) -> tuple[list[float], np.ndarray, np.ndarray]:
    """The same evaluation by ``"pycocotools"`` or ``"faster-coco-eval"`` (silenced).

    Returns:
        (stats [12], precision [T, R, K, A, M], recall [T, K, A, M]) as the library computes them.
    """
    gt, results = to_coco_dicts(data)
    dt = _results_dataset(gt, results)
    with contextlib.redirect_stdout(io.StringIO()):
        if engine == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            evaluator = COCOeval(_api(COCO, gt), _api(COCO, dt), "bbox")
        elif engine == "faster-coco-eval":
            from faster_coco_eval import COCO, COCOeval_faster

            def quiet(*args, **kwargs):
                pass

            evaluator = COCOeval_faster(_api(COCO, gt), _api(COCO, dt), "bbox", print_function=quiet)
        else:
            raise ValueError(f"unknown COCO engine {engine!r}")
        evaluator.params.imgIds = data.image_ids.tolist()
        evaluator.params.catIds = data.category_ids.tolist()
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return (
        [float(s) for s in evaluator.stats[:12]],
        np.asarray(evaluator.eval["precision"]),
        np.asarray(evaluator.eval["recall"]),
    )
