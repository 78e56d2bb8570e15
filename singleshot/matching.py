"""Assignment of ground-truth boxes to default boxes (paper section 2.2, "Matching strategy").

1. Each ground truth's best-overlapping prior is positive for that ground truth (the forced match).
2. Every other prior whose best Jaccard overlap with some ground truth is >= ``iou_threshold`` is positive,
   assigned to that best ground truth.
Everything else is background. Batched: one computation for the whole batch, no loop over images.
"""

from __future__ import annotations

import torch
from torch import Tensor

from singleshot.boxes import box_iou, cxcywh_to_xyxy


def pad_targets(targets: list[dict[str, Tensor]], device: torch.device | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Stack a list of per-image targets into padded tensors.

    Args:
        targets: B dicts with ``"boxes"`` Tensor[n_i, 4] and ``"labels"`` Tensor[n_i].

    Returns:
        boxes Tensor[B, G, 4] (padding rows are the unit box), labels Tensor[B, G] int64 (padding 0) and
        valid Tensor[B, G] bool, with G = max(1, max_i n_i).
    """
    batch = len(targets)
    if device is None:
        device = targets[0]["boxes"].device if batch else torch.device("cpu")
    dtype = targets[0]["boxes"].dtype if batch and targets[0]["boxes"].is_floating_point() else torch.float32
    g = max([1] + [len(t["boxes"]) for t in targets])
    boxes = torch.zeros(batch, g, 4, dtype=dtype, device=device)
    boxes[..., 2:] = 1.0
    labels = torch.zeros(batch, g, dtype=torch.int64, device=device)
    valid = torch.zeros(batch, g, dtype=torch.bool, device=device)
    for i, t in enumerate(targets):  # a copy per image; all arithmetic below is batched
        n = len(t["boxes"])
        if n:
            boxes[i, :n] = t["boxes"].to(device=device, dtype=dtype)
            labels[i, :n] = t["labels"].to(device=device)
            valid[i, :n] = True
    return boxes, labels, valid


def match_priors(
    gt_boxes: Tensor,
    gt_valid: Tensor,
    priors_cxcywh: Tensor,
    *,
    iou_threshold: float = 0.5,
) -> Tensor:
    """Match ground-truth boxes to priors, for a batch at once.

    Args:
        gt_boxes: Tensor[B, G, 4] xyxy ground truths, in the priors' coordinates (relative).
        gt_valid: Tensor[B, G] bool, False for padding. Ground truths with zero width or height
            are treated as padding too: they overlap nothing and would give infinite size targets.
        priors_cxcywh: Tensor[P, 4] default boxes in centre form.
        iou_threshold: a prior with IoU >= this with its best ground truth is positive.

    Returns:
        Tensor[B, P] int64: the index in [0, G) of the ground truth each prior is assigned to, or -1 for
        background. An image without (valid) ground truth is all -1.

    Ties: a prior that overlaps two ground truths equally goes to the lower index; when several priors
    overlap a ground truth equally well, its forced match is the lowest prior index; when two ground
    truths have the same best prior, the higher ground-truth index keeps it (the other still gets every
    prior above the threshold). A ground truth that overlaps no prior at all (IoU 0) gets no forced match.
    """
    batch, g = gt_valid.shape
    p = priors_cxcywh.shape[0]
    size = gt_boxes[..., 2:] - gt_boxes[..., :2]
    valid = gt_valid & (size > 0).all(-1)  # (B, G)
    priors_xyxy = cxcywh_to_xyxy(priors_cxcywh).to(gt_boxes.dtype)
    iou = box_iou(gt_boxes, priors_xyxy)  # (B, G, P)
    iou = iou.masked_fill(~valid[..., None], -1.0)

    best_gt_iou, best_gt = iou.max(dim=1)  # (B, P): first maximal ground truth
    best_prior_iou, best_prior = iou.max(dim=2)  # (B, G): first maximal prior

    # Forced matches: prior best_prior[b, j] -> ground truth j. Column p is a sink for ground truths
    # that must not force anything (padding, zero overlap); "amax" makes the higher index win a clash.
    forces = valid & (best_prior_iou > 0)
    target_col = torch.where(forces, best_prior, p)
    gt_index = torch.arange(g, device=gt_boxes.device).expand(batch, g)
    forced = torch.full((batch, p + 1), -1, dtype=torch.int64, device=gt_boxes.device)
    forced.scatter_reduce_(1, target_col, gt_index, reduce="amax")
    forced = forced[:, :p]  # (B, P)

    matched = torch.where(best_gt_iou >= iou_threshold, best_gt, -1)
    return torch.where(forced >= 0, forced, matched)
