"""From raw SSD outputs to detections: softmax, thresholds, class-wise NMS, the best per image.

Batched, with no Python loop over images or classes:

1. candidates: the (image, prior, class) triples whose softmax score is above the threshold. A bound that
   needs no exponential (score_c <= sigmoid(x_c - x_0)) skips the priors that cannot have one, so that the
   softmax runs on the few others only (a row-wise softmax gives the same values either way);
2. the best of each image only: greedy NMS decides a box from the better boxes of its (image, class) group,
   and an image returns its best ``max_detections`` kept boxes. So NMS of an image's candidates scoring at
   least some s decides each of them exactly, and once ``max_detections`` of them are kept, no candidate
   scoring below s can be returned (it would come after all of them). The first round takes the candidates
   down to each image's ``3 * max_detections``-th score; an image with fewer boxes kept runs again with twice
   as many (rarely: in the benchmark's detector outputs, the 200th kept box is at most the 465th candidate);
3. in a round, one sort orders the candidates by group, then by descending score; a rank inside the group
   caps each at ``candidates_per_class``; only those boxes are decoded;
4. NMS of every group at once (:func:`nms_sorted_groups`), identical to ``torchvision.ops.nms`` per group;
5. one more sort puts each image's kept boxes in the result order, and keeps the first ``max_detections``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torchvision.ops import batched_nms

from singleshot.boxes import box_area, decode

_FIRST_ROUND = 3  # NMS first runs on each image's best max_detections * this many candidates
_NEXT_ROUND = 2  # and then, for the images with too few boxes kept, on this many times more
_MAX_CHUNK = 2**19  # numbers per pass of the foreground maximum over the class scores: 2 MB in float32
_NMS_BUCKET = 16  # groups are padded to a multiple of this many boxes for the batched NMS
_NMS_BUCKET_COST = 2**16  # the fixed work of one more size bucket, in (K x K) overlaps
_NMS_CHUNK = 2**19  # at most this many (G * K * K) overlaps at once: 2 MB a buffer in float32 (larger ones
# are mapped afresh on every call, and the first touch of each 4 KB page costs more than the arithmetic)


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
    cls_logits, box_deltas = cls_logits.detach(), box_deltas.detach()  # not differentiable (out= buffers)
    batch, p, num_classes = cls_logits.shape
    device = cls_logits.device
    sizes = torch.as_tensor(image_sizes, dtype=torch.float32, device=device).reshape(batch, 2)
    scale = sizes[:, [1, 0, 1, 0]].to(box_deltas.dtype)  # (B, 4): w, h, w, h

    row, label, scores = _candidates(cls_logits, score_threshold)  # row = image * P + prior; the host sync
    if len(row) == 0 or max_detections <= 0:
        return [_empty(device, box_deltas.dtype) for _ in range(batch)]
    image = torch.div(row, p, rounding_mode="floor")
    group = image * num_classes + label
    per_image = torch.bincount(image, minlength=batch)  # (B,)
    by_image = pad_sequence(
        scores.split(per_image.tolist()), batch_first=True, padding_value=-math.inf
    )  # (B, W)
    width = by_image.shape[1]
    deltas = box_deltas.reshape(batch * p, 4)
    priors = priors.to(box_deltas.dtype)

    # In the loop, index_select rather than x[index]: on the CPU it costs a quarter as much at these sizes.
    finished = []  # per round, the returned candidates and their boxes, in result order
    todo = per_image > 0  # (B,) the images to finish
    take = _FIRST_ROUND * max_detections
    while True:
        # The candidates scoring at least their image's take-th score, by group, then descending score.
        cut = by_image.kthvalue(width + 1 - min(take, width), dim=1).values  # (B,)
        picked = scores >= cut.index_select(0, image)
        if not bool(todo.all()):
            picked &= todo.index_select(0, image)
        picked = picked.nonzero().squeeze(1)
        picked_groups = group.index_select(0, picked)
        order = _sort_by_group_then_score(picked_groups, scores.index_select(0, picked))
        picked, picked_groups = picked.index_select(0, order), picked_groups.index_select(0, order)
        counts = torch.bincount(picked_groups, minlength=batch * num_classes)  # (B * C,)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(picked), device=device) - starts.index_select(0, picked_groups)
        capped = (
            (rank < candidates_per_class).nonzero().squeeze(1)
        )  # the best candidates_per_class of a group
        picked, picked_groups = picked.index_select(0, capped), picked_groups.index_select(0, capped)
        counts = counts.clamp(max=candidates_per_class)

        rows = row.index_select(0, picked)
        boxes = decode(deltas.index_select(0, rows), priors.index_select(0, rows % p), variances)  # (N, 4)
        image_scale = scale.index_select(0, image.index_select(0, picked))
        boxes = torch.minimum(boxes.mul_(image_scale).clamp_(min=0), image_scale)
        if device.type == "cpu":
            keep = nms_sorted_groups(boxes, scores.index_select(0, picked), counts, nms_threshold)
        else:  # one torchvision kernel for the whole batch, no loop and no synchronisation inside
            keep = _nms_batched(boxes, scores.index_select(0, picked), picked_groups, nms_threshold)
        keep = keep.nonzero().squeeze(1)  # into picked and boxes

        # Result order: image, descending score, then label (picked is by group), then prior.
        kept = picked.index_select(0, keep)
        order = _sort_by_group_then_score(image.index_select(0, kept), scores.index_select(0, kept))
        kept, keep = kept.index_select(0, order), keep.index_select(0, order)
        kept_images = image.index_select(0, kept)
        num_kept = torch.bincount(kept_images, minlength=batch)  # (B,)
        done = todo & (
            (num_kept >= max_detections) | (per_image <= take)
        )  # enough kept, or all candidates in
        starts = torch.cumsum(num_kept, 0) - num_kept
        rank = torch.arange(len(kept), device=device) - starts.index_select(0, kept_images)
        final = ((rank < max_detections) & done.index_select(0, kept_images)).nonzero().squeeze(1)
        finished.append((kept.index_select(0, final), boxes.index_select(0, keep.index_select(0, final))))
        todo &= ~done
        if not bool(todo.any()):
            break
        take *= _NEXT_ROUND

    kept, boxes = (torch.cat(parts) for parts in zip(*finished))
    if len(finished) > 1:  # by image again
        order = torch.argsort(image[kept], stable=True)
        kept, boxes = kept[order], boxes[order]
    counts = torch.bincount(image[kept], minlength=batch).tolist()
    results = []
    for out_boxes, out_scores, out_labels in zip(
        boxes.split(counts), scores[kept].split(counts), label[kept].split(counts)
    ):
        if len(out_scores):
            results.append({"boxes": out_boxes, "scores": out_scores, "labels": out_labels})
        else:
            results.append(_empty(device, boxes.dtype))
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
        background = flat[:, 0].contiguous()  # (B * P,)
        logit = math.log(score_threshold) - math.log1p(-score_threshold)
        # 0.01 + 1e-6 |x_0| covers the rounding of x_0 + logit and of the softmax itself, for any logits.
        bound = (background + (logit - 0.01)).sub_(background.abs().mul_(1e-6))
        rows = (_foreground_max(flat) > bound).nonzero().squeeze(1)  # NaN rows: no scores anyway
    probs = flat.index_select(0, rows).softmax(dim=-1)  # (R, C)
    probs[:, 0] = -math.inf  # background never passes; a flat, contiguous mask is the fastest to search
    index = (probs.view(-1) > score_threshold).nonzero().squeeze(1)
    row = torch.div(index, num_classes, rounding_mode="floor")
    return rows.index_select(0, row), index - row * num_classes, probs.view(-1).index_select(0, index)


def _foreground_max(flat: Tensor) -> Tensor:
    """``flat[:, 1:].amax(1)`` (NaN included) of a Tensor[N, C], C >= 2: Tensor[N].

    A reduction along rows of ~20 numbers runs at ~2 ns a number on a CPU, an element-wise maximum of two
    long vectors ~20x faster. So, over the flat buffer v, in slices of at most ``_MAX_CHUNK`` numbers (small
    temporaries are reused by the allocator, large ones mapped afresh, page by page): w[i] = max(v[i], ...,
    v[i + width - 1]) by doubling the window, then each row's C - 1 numbers are a few windows.
    """
    rows, c = flat.shape
    width = 1
    while 8 * width <= c - 1:
        width *= 2
    offsets = [*range(1, c - width, width), c - width]  # windows from these columns cover 1..C-1
    parts = []
    for part in flat.split(max(1, _MAX_CHUNK // c)):
        w = part.contiguous().view(-1)
        span = 1
        while span < width:
            w = torch.maximum(w[:-span], w[span:])
            span *= 2
        out = w[offsets[0] :: c].clone()  # (rows of the part,)
        for offset in offsets[1:]:
            torch.maximum(out, w[offset::c], out=out)
        parts.append(out)
    return torch.cat(parts)


def _sort_by_group_then_score(group: Tensor, scores: Tensor) -> Tensor:
    """Permutation Tensor[N] ordering by ascending ``group`` (int64 >= 0), then descending ``scores``
    (float >= 0), then position: one stable integer sort."""
    return torch.argsort(group * 2**31 + _descending_rank(scores), stable=True)


def _descending_rank(scores: Tensor) -> Tensor:
    """Tensor[N] int64 in [0, 2^31), smaller for larger ``scores`` (float >= 0), equal for equal ones: the
    bits of a non-negative float32 order it; a float64 gets its rank among the distinct values."""
    if scores.dtype == torch.float64:
        values, inverse = torch.unique(scores, sorted=True, return_inverse=True)
        return len(values) - 1 - inverse
    return 2**31 - 1 - scores.float().view(torch.int32).to(torch.int64)


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

    Groups are padded to a multiple of 16 boxes and processed by size bucket (sizes merged where the padding
    costs less than another bucket, :func:`_merge_sizes`) as Tensor[G, K, K] overlap matrices, at most 2^19
    overlaps at a time (which bounds the memory). Greedy NMS is the unique solution of
    keep[j] = not any(keep[i] and iou[i, j] > t for i < j), found by iterating that equation from keep = all
    ("Cluster-NMS", Zheng et al. 2021): iteration k fixes at least the first k boxes of every group, and in
    practice it settles in a handful of iterations.
    """
    del scores  # the order carries them
    n = len(boxes)
    device = boxes.device
    if n == 0:
        return torch.zeros(0, dtype=torch.bool, device=device)
    threshold = _threshold_below(iou_threshold, boxes.dtype)
    tiny = torch.finfo(boxes.dtype).tiny
    # (5, N + 1): x1, y1, x2, y2 and area of each box, then an empty box for the padding to point to.
    columns = torch.cat([boxes, box_area(boxes)[:, None]], 1).t()
    columns = torch.cat([columns, columns.new_zeros(5, 1)], 1)
    keep = torch.zeros(n + 1, dtype=torch.bool, device=device)  # the padding writes into the last one
    starts = torch.cumsum(counts, 0) - counts
    padded = (counts + _NMS_BUCKET - 1) // _NMS_BUCKET * _NMS_BUCKET
    sizes, groups_per_size = padded[padded > 0].unique(return_counts=True)
    buckets = _merge_sizes(sizes.tolist(), groups_per_size.tolist())
    largest = buckets[-1][1]
    above = torch.ones(largest, largest, dtype=torch.bool, device=device).triu_(1)
    bounds = torch.where(above, threshold, math.inf).to(boxes.dtype)  # inf on and below the diagonal
    for smallest, k in buckets:
        bound, slot = bounds[:k, :k], torch.arange(k, device=device)
        in_bucket = ((padded >= smallest) & (padded <= k)).nonzero().squeeze(1)
        for groups in in_bucket.split(max(1, _NMS_CHUNK // (k * k))):
            valid = slot < counts.index_select(0, groups)[:, None]  # (G, K)
            index = torch.where(
                valid, starts.index_select(0, groups)[:, None] + slot, n
            )  # (G, K) into columns
            x1, y1, x2, y2, area = columns.index_select(1, index.view(-1)).view(
                5, *index.shape, 1
            )  # (G, K, 1)
            x1_, y1_, x2_, y2_, area_ = (c.transpose(1, 2) for c in (x1, y1, x2, y2, area))  # (G, 1, K)
            # IoU as box_iou (and torchvision) computes it, in two (G, K, K) buffers.
            inter = torch.minimum(x2, x2_)
            tmp = torch.maximum(x1, x1_)
            inter.sub_(tmp).clamp_(min=0)  # overlap width
            h = torch.minimum(y2, y2_, out=tmp)
            h.sub_(torch.maximum(y1, y1_)).clamp_(min=0)  # overlap height
            inter.mul_(h)
            union = torch.add(area, area_, out=h).sub_(inter).clamp_(min=tiny)
            # over[g, i, j] = 1 where box i precedes box j and overlaps it above the threshold.
            over = inter.div_(union).gt_(bound)  # (G, K, K), 0/1 floats
            alive = valid
            for _ in range(k):
                suppressed = torch.bmm(alive.to(over.dtype)[:, None, :], over)[:, 0] > 0  # (G, K)
                settled = valid & ~suppressed
                if torch.equal(settled, alive):
                    break
                alive = settled
            keep[index.view(-1)] = alive.view(-1)
    return keep[:n]


def _merge_sizes(sizes: list[int], groups: list[int]) -> list[tuple[int, int]]:
    """The buckets of :func:`nms_sorted_groups`: (smallest, largest) runs of the ascending padded group
    ``sizes`` (``groups[i]`` groups of size ``sizes[i]``), each run padded to its largest size.

    A bucket costs some 40 small tensor operations, about the work of ``_NMS_BUCKET_COST`` overlaps, plus its
    G * K * K overlaps: the cheapest runs, by dynamic programming over the few sizes.
    """
    cost = [0] + [math.inf] * len(sizes)  # cost[b]: of the first b sizes
    first = [0] * (len(sizes) + 1)  # where the last run of that cheapest split starts
    for b in range(1, len(sizes) + 1):
        members = 0
        for a in range(b - 1, -1, -1):  # the last run: sizes a .. b - 1
            members += groups[a]
            total = cost[a] + _NMS_BUCKET_COST + members * sizes[b - 1] ** 2
            if total < cost[b]:
                cost[b], first[b] = total, a
    runs, b = [], len(sizes)
    while b > 0:
        runs.append((sizes[first[b]], sizes[b - 1]))
        b = first[b]
    return runs[::-1]
