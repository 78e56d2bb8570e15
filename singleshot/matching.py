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


def pad_targets(
    targets: list[dict[str, Tensor]], device: torch.device | None = None
) -> tuple[Tensor, Tensor, Tensor]:
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
    counts = [len(t["boxes"]) for t in targets]
    g = max([1] + counts)
    boxes = torch.zeros(batch, g, 4, dtype=dtype, device=device)
    boxes[..., 2:] = 1.0
    labels = torch.zeros(batch, g, dtype=torch.int64, device=device)
    valid = torch.arange(g).expand(batch, g) < torch.tensor(counts).reshape(batch, 1)  # (B, G), on the host
    if sum(counts):  # one copy for the whole batch: concatenate, then scatter into the padded slots
        slots = tuple(i.to(device) for i in valid.nonzero(as_tuple=True))  # (image, slot) in target order
        flat_boxes = torch.cat([t["boxes"].reshape(-1, 4) for t in targets])
        flat_labels = torch.cat([t["labels"].reshape(-1) for t in targets])
        boxes.index_put_(slots, flat_boxes.to(device=device, dtype=dtype))
        labels.index_put_(slots, flat_labels.to(device=device, dtype=torch.int64))
    return boxes, labels, valid.to(device)


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
    iou = box_iou(gt_boxes, priors_xyxy)  # (B, G, P) in [0, 1]
    keep = valid[..., None].to(iou.dtype)
    iou.mul_(keep).sub_(1 - keep)  # -1 for invalid ground truths (two cheap passes; masked_fill_ is slower)
    if iou.device.type == "cpu":
        best_gt_iou, best_gt, forces, best_prior = _maxima_sparse(iou, valid, iou_threshold)
    else:
        best_gt_iou, best_gt, forces, best_prior = _maxima_dense(iou, valid)

    # Forced matches: prior best_prior[b, j] -> ground truth j. Column p is a sink for ground truths
    # that must not force anything (padding, zero overlap); "amax" makes the higher index win a clash.
    target_col = torch.where(forces, best_prior, p)
    gt_index = torch.arange(g, device=gt_boxes.device).expand(batch, g)
    forced = torch.full((batch, p + 1), -1, dtype=torch.int64, device=gt_boxes.device)
    forced.scatter_reduce_(1, target_col, gt_index, reduce="amax")
    forced = forced[:, :p]  # (B, P)

    matched = torch.where(best_gt_iou >= iou_threshold, best_gt, -1)
    return torch.where(forced >= 0, forced, matched)


def _maxima_dense(iou: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`_maxima_sparse` with every index computed (``Tensor.max``): no host synchronisation."""
    best_gt_iou, best_gt = iou.max(dim=1)  # (B, P): first maximal ground truth
    best_prior_iou, best_prior = iou.max(dim=2)  # (B, G): first maximal prior
    return best_gt_iou, best_gt, valid & (best_prior_iou > 0), best_prior


def _maxima_sparse(iou: Tensor, valid: Tensor, iou_threshold: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The maxima of ``iou`` Tensor[B, G, P] over ground truths and over priors, with the index of the first
    maximum only where it is used (priors at or above the threshold, ground truths that force a match).

    ``Tensor.max(dim)`` finds values and indices in one pass that does not vectorise (on the CPU ~20x slower
    than ``amax`` over G); here the indices come from small gathered slices. Indices elsewhere are 0.

    Returns:
        best_gt_iou Tensor[B, P], best_gt Tensor[B, P], forces Tensor[B, G] bool, best_prior Tensor[B, G].
    """
    best_gt_iou = iou.amax(dim=1)  # (B, P)
    best_prior_iou = iou.amax(dim=2)  # (B, G)
    best_gt = torch.zeros(best_gt_iou.shape, dtype=torch.int64, device=iou.device)
    image, prior = (best_gt_iou >= iou_threshold).nonzero(as_tuple=True)
    best_gt[image, prior] = iou[image, :, prior].argmax(dim=1)  # argmax: the first maximum
    forces = valid & (best_prior_iou > 0)
    best_prior = torch.zeros(forces.shape, dtype=torch.int64, device=iou.device)
    image, gt = forces.nonzero(as_tuple=True)
    best_prior[image, gt] = iou[image, gt].argmax(dim=1)
    return best_gt_iou, best_gt, forces, best_prior
