"""The MultiBox loss of SSD with hard negative mining (paper section 2.2, eq. 1-3).

    L = (L_conf + alpha L_loc) / N,   N = number of positive priors in the batch,  L = 0 when N = 0.

L_loc is smooth L1 (beta 1) between predicted and encoded offsets over positives; L_conf is softmax
cross-entropy over positives plus, per image, the negatives with the highest confidence loss, at most
``neg_pos_ratio`` per positive of that image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from singleshot.boxes import encode
from singleshot.matching import match_priors, pad_targets


def mine_hard_negatives(conf_loss: Tensor, positive: Tensor, neg_pos_ratio: float) -> Tensor:
    """Select the hardest negatives of each image.

    Args:
        conf_loss: Tensor[B, P] per-prior confidence loss (no gradient needed).
        positive: Tensor[B, P] bool.
        neg_pos_ratio: at most this many negatives per positive of the same image.

    Returns:
        Tensor[B, P] bool: the chosen negatives, exactly min(floor(ratio * n_pos), n_neg) per image;
        among equal losses the lower prior index is preferred.
    """
    batch, p = conf_loss.shape
    num_pos = positive.sum(dim=1, keepdim=True)  # (B, 1)
    num_neg = torch.minimum((num_pos * neg_pos_ratio).floor().long(), p - num_pos)
    loss = conf_loss.detach().masked_fill(positive, -float("inf"))
    order = loss.sort(dim=1, descending=True, stable=True).indices  # (B, P)
    arange = torch.arange(p, device=loss.device).expand(batch, p)
    rank = torch.empty_like(order).scatter_(1, order, arange)  # rank of each prior in its image
    return rank < num_neg


class MultiBoxLoss(nn.Module):
    """SSD's training loss, batched over images.

    Args:
        priors: Tensor[P, 4] default boxes (cx, cy, w, h), relative to the input.
        neg_pos_ratio: hard negatives per positive (3 in the paper).
        alpha: weight of the localisation term (1 in the paper).
        iou_threshold: matching threshold (0.5).
        variances: box-coding divisors (0.1, 0.2).

    Call as ``loss_fn(cls_logits, box_deltas, targets)`` with ``cls_logits`` Tensor[B, P, C] (class 0 is
    background), ``box_deltas`` Tensor[B, P, 4] and ``targets`` a list of B dicts with ``"boxes"``
    Tensor[n, 4] xyxy relative to the input and ``"labels"`` Tensor[n] int64 in 1..C-1.

    Returns a dict: ``"loss"`` = conf + alpha * loc, ``"loc"``, ``"conf"`` (each divided by N) and
    ``"num_pos"`` (N, a tensor, so that reading it does not synchronise a GPU).
    """

    def __init__(
        self,
        priors: Tensor,
        *,
        neg_pos_ratio: float = 3.0,
        alpha: float = 1.0,
        iou_threshold: float = 0.5,
        variances: tuple[float, float] = (0.1, 0.2),
    ) -> None:
        super().__init__()
        self.register_buffer("priors", priors.detach().clone(), persistent=False)
        self.neg_pos_ratio = neg_pos_ratio
        self.alpha = alpha
        self.iou_threshold = iou_threshold
        self.variances = tuple(variances)

    def match(self, targets: list[dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
        """Class and regression targets of every prior.

        Returns:
            labels Tensor[B, P] int64 (0 = background) and boxes Tensor[B, P, 4] encoded offsets
            (meaningful where labels > 0, zero elsewhere).
        """
        priors = self.priors
        gt_boxes, gt_labels, gt_valid = pad_targets(targets, device=priors.device)
        gt_boxes = gt_boxes.to(priors.dtype)
        matched = match_priors(gt_boxes, gt_valid, priors, iou_threshold=self.iou_threshold)  # (B, P)
        positive = matched >= 0
        index = matched.clamp(min=0)
        labels = torch.where(positive, gt_labels.gather(1, index), 0)
        boxes = gt_boxes.gather(1, index[..., None].expand(-1, -1, 4))  # (B, P, 4)
        offsets = torch.where(positive[..., None], encode(boxes, priors, self.variances), 0.0)
        return labels, offsets

    def forward(self, cls_logits: Tensor, box_deltas: Tensor, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        if cls_logits.shape[:2] != box_deltas.shape[:2] or cls_logits.shape[1] != len(self.priors):
            raise ValueError(
                f"cls_logits {tuple(cls_logits.shape)} and box_deltas {tuple(box_deltas.shape)} must both have "
                f"{len(self.priors)} priors"
            )
        if len(targets) != cls_logits.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {cls_logits.shape[0]} images")
        with torch.no_grad():
            labels, offsets = self.match(targets)
        return self.from_matched(cls_logits, box_deltas, labels, offsets)

    def from_matched(self, cls_logits: Tensor, box_deltas: Tensor, labels: Tensor, offsets: Tensor) -> dict[str, Tensor]:
        """The loss from targets that :meth:`match` already computed (e.g. in data-loader workers)."""
        positive = labels > 0  # (B, P)
        num_pos = positive.sum()
        num_classes = cls_logits.shape[-1]
        conf = F.cross_entropy(
            cls_logits.reshape(-1, num_classes).float(), labels.reshape(-1), reduction="none"
        ).view_as(labels)  # (B, P)
        with torch.no_grad():
            negative = mine_hard_negatives(conf, positive, self.neg_pos_ratio)
        conf_sum = (conf * (positive | negative)).sum()
        loc = F.smooth_l1_loss(box_deltas.float(), offsets.float(), reduction="none", beta=1.0).sum(-1)  # (B, P)
        loc_sum = (loc * positive).sum()
        n = num_pos.clamp(min=1).to(conf_sum.dtype)
        loc_term, conf_term = loc_sum / n, conf_sum / n
        return {"loss": conf_term + self.alpha * loc_term, "loc": loc_term, "conf": conf_term, "num_pos": num_pos}
