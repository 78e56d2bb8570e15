"""From raw SSD outputs to detections: softmax, thresholds, class-wise NMS, the best per image.

Batched, with no Python loop over images or classes:

1. candidates: the (image, prior, class) triples whose softmax score is above the threshold. A bound that
   needs no exponential (score_c <= sigmoid(x_c - x_0)) skips the priors that cannot have one, so that the
   softmax runs on the few others only (a row-wise softmax gives the same values either way);
2. one sort orders them by (image, class) group, then by descending score; a rank inside the group caps each
   at ``candidates_per_class``; only those boxes are decoded;
3. NMS of every group at once (:func:`nms_sorted_groups`), identical to ``torchvision.ops.nms`` per group;
4. one more sort keeps the best ``max_detections`` of each image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from singleshot.boxes import box_iou, decode

_NMS_BUCKET = 16  # groups are padded to a multiple of this many boxes for the batched NMS
_NMS_CHUNK = 2**21  # at most this many (G * K * K) overlaps at once: 8 MB a buffer in float32


def _empty(device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
    return {
        "boxes": torch.zeros(0, 4, device=device, dtype=dtype),
        "scores": torch.zeros(0, device=device, dtype=dtype),
        "labels": torch.zeros(0, device=device, dtype=torch.int64),
    }


def postprocess(
    cls_logits: Tensor,
    box_deltas: Tensor,
    priors: Tensor,
    image_sizes: Sequence[tuple[int, int]] | Tensor,
    *,
    score_threshold: float = 0.01,
    nms_threshold: float = 0.45,
    candidates_per_class: int = 400,
    max_detections: int = 200,
    variances: tuple[float, float] = (0.1, 0.2),
) -> list[dict[str, Tensor]]:
    """Detections of a batch.

    Args:
        cls_logits: Tensor[B, P, C] class scores before softmax (class 0 is background).
        box_deltas: Tensor[B, P, 4] predicted offsets.
        priors: Tensor[P, 4] default boxes (cx, cy, w, h) relative to the network input.
        image_sizes: B pairs ``(h, w)``: the pixel size to report each image's boxes in.
        score_threshold: keep class scores strictly above this.
        nms_threshold: IoU above which NMS suppresses a box of the same class.
        candidates_per_class: per image and class, at most this many best boxes enter NMS.
        max_detections: per image, at most this many detections after NMS.

    Returns:
        B dicts ``{"boxes": Tensor[K, 4] xyxy pixels clipped to (w, h), "scores": Tensor[K],
        "labels": Tensor[K] int64 in 1..C-1}`` sorted by descending score (equal scores: lower label first);
        K may be 0.
    """
    batch, p, num_classes = cls_logits.shape
    device = cls_logits.device
    sizes = torch.as_tensor(image_sizes, dtype=torch.float32, device=device).reshape(batch, 2)
    scale = sizes[:, [1, 0, 1, 0]].to(box_deltas.dtype)  # (B, 4): w, h, w, h

    row, label, scores = _candidates(cls_logits, score_threshold)  # row = image * P + prior; the host sync
    image = torch.div(row, p, rounding_mode="floor")
    group = image * num_classes + label
    order = _sort_by_group_then_score(group, scores)
    group = group[order]
    counts = torch.bincount(group, minlength=batch * num_classes)  # (B * C,)
    rank = torch.arange(len(group), device=device) - (torch.cumsum(counts, 0) - counts)[group]
    order = order[rank < candidates_per_class]  # the best candidates_per_class of each group, still sorted
    counts = counts.clamp(max=candidates_per_class)
    row, label, scores, image = row[order], label[order], scores[order], image[order]

    prior_boxes = priors.to(box_deltas.dtype).index_select(0, row % p)
    boxes = decode(box_deltas.reshape(batch * p, 4).index_select(0, row), prior_boxes, variances)  # (N, 4)
    image_scale = scale.index_select(0, image)
    boxes = torch.minimum(boxes.mul_(image_scale).clamp_(min=0), image_scale)

    if device.type == "cpu":
        keep = nms_sorted_groups(boxes, scores, counts, nms_threshold)
    else:  # one torchvision kernel for the whole batch, no loop and no synchronisation inside
        keep = _nms_batched(boxes, scores, image * num_classes + label, nms_threshold)
    kept = keep.nonzero().squeeze(1)

    # The best max_detections of each image, by descending score.
    kept = kept[_sort_by_group_then_score(image[kept], scores[kept])]
    kept_images = image[kept]
    per_image = torch.bincount(kept_images, minlength=batch)
    rank = torch.arange(len(kept), device=device) - (torch.cumsum(per_image, 0) - per_image)[kept_images]
    kept = kept[rank < max_detections]
    per_image = per_image.clamp(max=max_detections).tolist()

    results = []
    for b, (out_boxes, out_scores, out_labels) in enumerate(
        zip(boxes[kept].split(per_image), scores[kept].split(per_image), label[kept].split(per_image))
    ):
        if per_image[b] == 0:
            results.append(_empty(device, boxes.dtype))
        else:
            results.append({"boxes": out_boxes, "scores": out_scores, "labels": out_labels})
    return results


def _candidates(cls_logits: Tensor, score_threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """(row, label, score) of every class score above the threshold, each Tensor[N], in (row, label) order,
    with row = image * P + prior; scores exactly ``cls_logits.softmax(-1)``'s.

    softmax_c = e^x_c / sum_k e^x_k <= e^x_c / (e^x_0 + e^x_c) = sigmoid(x_c - x_0), so a score can only pass
    where x_c - x_0 > logit(threshold). That test (with a margin for rounding) picks the rows to softmax.
    """
    batch, p, num_classes = cls_logits.shape
    flat = cls_logits.reshape(batch * p, num_classes)
    if score_threshold <= 0 or flat.device.type != "cpu":  # on a GPU the softmax is cheap, a sync is not
        rows = torch.arange(batch * p, device=flat.device)
    elif score_threshold >= 1:
        rows = torch.zeros(0, dtype=torch.int64, device=flat.device)
    else:
        background = flat[:, :1]  # (B * P, 1)
        logit = math.log(score_threshold) - math.log1p(-score_threshold)
        # 0.01 + 1e-6 |x_0| covers the rounding of x_0 + logit and of the softmax itself, for any logits.
        bound = background + (logit - 0.01) - background.abs() * 1e-6
        rows = (flat[:, 1:].amax(dim=1) > bound[:, 0]).nonzero().squeeze(1)  # NaN rows: no scores anyway
    probs = flat.index_select(0, rows).softmax(dim=-1)  # (R, C)
    row, label = (probs[:, 1:] > score_threshold).nonzero(as_tuple=True)
    label = label + 1
    scores = probs[row, label]
    return rows[row], label, scores


def _sort_by_group_then_score(group: Tensor, scores: Tensor) -> Tensor:
    """Permutation Tensor[N] ordering by ascending ``group`` (int64 >= 0), then descending ``scores``
    (float >= 0), then position: one stable integer sort, since the bits of non-negative floats order them."""
    if scores.dtype == torch.float64:
        rank = torch.argsort(scores, descending=True, stable=True)
        return rank[torch.argsort(group[rank], stable=True)]
    bits = scores.float().view(torch.int32).to(torch.int64)  # monotone in the score
    return torch.argsort(group * 2**31 + (2**31 - 1 - bits), stable=True)


def _threshold_below(threshold: float, dtype: torch.dtype) -> float:
    """The largest ``dtype`` value <= ``threshold``: ``x > it`` in ``dtype`` equals ``x > threshold`` computed
    exactly, as torchvision's kernels compare (in double)."""
    t = torch.tensor(threshold, dtype=torch.float64).to(dtype)
    if t.double() > threshold:
        t = torch.nextafter(t, torch.tensor(-math.inf, dtype=dtype))
    return t.item()


def _nms_batched(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """Tensor[N] bool of the boxes ``torchvision.ops.batched_nms`` keeps. In float64: it separates the groups
    by shifting each by group * (largest coordinate + 1), which in float32 would cost up to 0.06 px at 64 x 81
    groups of 300 px images, enough to change a decision."""
    keep = torch.zeros(len(scores), dtype=torch.bool, device=boxes.device)
    keep[batched_nms(boxes.double(), scores.double(), groups, iou_threshold)] = True
    return keep


def nms_sorted_groups(boxes: Tensor, scores: Tensor, counts: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS inside each group, for all groups at once.

    Args:
        boxes: Tensor[N, 4] xyxy, in consecutive groups, each sorted by descending score.
        scores: Tensor[N] (only its length and order matter: the order is given).
        counts: Tensor[G] int64 size of each group (zeros allowed), summing to N.
        iou_threshold: a box is suppressed by a kept, better box of its group with IoU above this.

    Returns:
        Tensor[N] bool, the kept boxes: exactly ``torchvision.ops.nms`` applied to each group (same IoU
        arithmetic, same comparison).

    Groups are padded to a multiple of 16 boxes and processed by size bucket as Tensor[G, K, K] overlap
    matrices, at most 2^21 overlaps at a time (which bounds the memory). Greedy NMS is the unique solution of
    keep[j] = not any(keep[i] and iou[i, j] > t for i < j), found by iterating that equation from keep = all
    ("Cluster-NMS", Zheng et al. 2021): iteration k fixes at least the first k boxes of every group, and in
    practice it settles in a handful of iterations.
    """
    del scores  # the order carries them
    n = len(boxes)
    keep = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    if n == 0:
        return keep
    threshold = _threshold_below(iou_threshold, boxes.dtype)
    starts = torch.cumsum(counts, 0) - counts
    padded = (counts + _NMS_BUCKET - 1) // _NMS_BUCKET * _NMS_BUCKET
    for k in padded.unique().tolist():  # a few size buckets, not a loop over groups
        if k == 0:
            continue
        above = torch.ones(k, k, dtype=torch.bool, device=boxes.device).triu_(1)
        bound = torch.where(above, threshold, math.inf).to(boxes.dtype)  # (K, K), inf on/below the diagonal
        slot = torch.arange(k, device=boxes.device)
        for groups in (padded == k).nonzero().squeeze(1).split(max(1, _NMS_CHUNK // (k * k))):
            valid = slot < counts[groups, None]  # (G, K)
            index = torch.where(valid, starts[groups, None] + slot, 0)  # (G, K) into boxes
            group_boxes = boxes.index_select(0, index.view(-1)).view(*index.shape, 4)  # (G, K, 4)
            # over[g, i, j] = 1 where box i precedes box j and overlaps it above the threshold.
            over = box_iou(group_boxes, group_boxes).gt_(bound)  # (G, K, K), 0/1 floats
            alive = valid
            for _ in range(k):
                suppressed = torch.bmm(alive.to(over.dtype)[:, None, :], over)[:, 0] > 0  # (G, K)
                settled = valid & ~suppressed
                if torch.equal(settled, alive):
                    break
                alive = settled
            keep[index[alive]] = True
    return keep
