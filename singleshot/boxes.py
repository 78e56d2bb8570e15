"""Box formats, overlaps and SSD's box coding.

One convention: boxes are ``Tensor[..., 4]``. ``xyxy`` is (x1, y1, x2, y2) with x1 <= x2, y1 <= y2;
``cxcywh`` is (centre x, centre y, width, height); ``xywh`` is COCO's (x1, y1, width, height).
Whether coordinates are relative ([0, 1] of the image) or pixels is said where they are used.

Coding (paper eq. 2, with the "variances" every implementation divides by)::

    t_cx = (g_cx - d_cx) / (v0 d_w)      t_w = log(g_w / d_w) / v1
    t_cy = (g_cy - d_cy) / (v0 d_h)      t_h = log(g_h / d_h) / v1

Invariant: ``decode(encode(b, priors), priors) == b`` (up to rounding) for boxes of positive size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# exp() of anything above this overflows nothing and is already a box 50x the prior's size.
_MAX_LOG_SCALE = math.log(1000.0 / 16)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``Tensor[..., 4]`` (x1, y1, x2, y2) -> (cx, cy, w, h)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``Tensor[..., 4]`` (cx, cy, w, h) -> (x1, y1, x2, y2)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``Tensor[..., 4]`` COCO (x1, y1, w, h) -> (x1, y1, x2, y2)."""
    x1, y1, w, h = boxes.unbind(-1)
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=-1)


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """``Tensor[..., 4]`` (x1, y1, x2, y2) -> COCO (x1, y1, w, h)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1, y1, x2 - x1, y2 - y1], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Areas of ``Tensor[..., 4]`` xyxy boxes; a box with x2 < x1 or y2 < y1 has area 0."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Jaccard overlap of xyxy boxes.

    Args:
        boxes1: Tensor[N, 4] or Tensor[B, N, 4]; boxes2: Tensor[M, 4] or Tensor[B, M, 4]
            (leading dimensions broadcast: Tensor[B, N, 4] against one Tensor[M, 4] is fine).

    Returns:
        Tensor[N, M] (or Tensor[B, N, M]) in [0, 1], symmetric in its arguments. A box with x2 < x1 or
        y2 < y1 has area 0 (as in :func:`box_area`), and a pair whose union is empty has IoU 0, never NaN.
        (``torchvision.ops.box_iou`` gives negative or NaN values for such boxes, hence this version.)
    """
    area1 = box_area(boxes1)  # (..., N)
    area2 = box_area(boxes2)  # (..., M)
    # One (..., N, M) tensor per coordinate rather than (..., N, M, 2) pairs, from contiguous coordinate
    # columns (strided ones defeat vectorisation), and three (..., N, M) buffers in all: fresh large tensors
    # cost page faults on the CPU, more than the arithmetic.
    x1a, y1a, x2a, y2a = (c.contiguous()[..., :, None] for c in boxes1.unbind(-1))  # (..., N, 1) each
    x1b, y1b, x2b, y2b = (c.contiguous()[..., None, :] for c in boxes2.unbind(-1))  # (..., 1, M) each
    # Writing into existing buffers (out=) has no gradient: only without autograd.
    reuse = not (torch.is_grad_enabled() and (boxes1.requires_grad or boxes2.requires_grad))
    inter = torch.minimum(x2a, x2b)
    tmp = torch.maximum(x1a, x1b)
    inter.sub_(tmp).clamp_(min=0)  # overlap width
    h = torch.minimum(y2a, y2b, out=tmp if reuse else None)
    h.sub_(torch.maximum(y1a, y1b)).clamp_(min=0)  # overlap height
    inter.mul_(h)  # (..., N, M)
    union = torch.add(area1[..., :, None], area2[..., None, :], out=h if reuse else None).sub_(inter)
    # inter <= min(area1, area2) <= union, so an empty union has inter = 0 and 0 / tiny = 0: no NaN.
    return inter.div_(union.clamp_(min=torch.finfo(union.dtype).tiny))


def encode(boxes_xyxy: Tensor, priors_cxcywh: Tensor, variances: tuple[float, float] = (0.1, 0.2)) -> Tensor:
    """Regression targets of ground-truth boxes against their priors.

    Args:
        boxes_xyxy: Tensor[..., P, 4] boxes, same coordinates as the priors (relative in SSD).
        priors_cxcywh: Tensor[P, 4] (or broadcastable) default boxes in centre form.
        variances: (centre, size) divisors; (1, 1) gives exactly the paper's g-hat.

    Returns:
        Tensor[..., P, 4] offsets (t_cx, t_cy, t_w, t_h).
    """
    g = xyxy_to_cxcywh(boxes_xyxy)
    v_c, v_s = variances
    t_xy = (g[..., :2] - priors_cxcywh[..., :2]) / (v_c * priors_cxcywh[..., 2:])
    t_wh = torch.log(g[..., 2:] / priors_cxcywh[..., 2:]) / v_s
    return torch.cat([t_xy, t_wh], dim=-1)


def decode(deltas: Tensor, priors_cxcywh: Tensor, variances: tuple[float, float] = (0.1, 0.2)) -> Tensor:
    """Boxes from predicted offsets; the inverse of :func:`encode`.

    Args:
        deltas: Tensor[..., P, 4] offsets (t_cx, t_cy, t_w, t_h).
        priors_cxcywh: Tensor[P, 4] default boxes in centre form.

    Returns:
        Tensor[..., P, 4] xyxy boxes in the priors' coordinates. Size offsets are clamped at
        log(1000/16) before exp (as torchvision does) so that wild predictions stay finite.
    """
    v_c, v_s = variances
    cxcy = priors_cxcywh[..., :2] + deltas[..., :2] * v_c * priors_cxcywh[..., 2:]
    wh = priors_cxcywh[..., 2:] * torch.exp((deltas[..., 2:] * v_s).clamp(max=_MAX_LOG_SCALE))
    return torch.cat([cxcy - wh / 2, cxcy + wh / 2], dim=-1)
