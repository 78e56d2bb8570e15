"""Box formats, IoU and SSD's box coding: hand cases, properties (hypothesis), torchvision's BoxCoder."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import box_iou as tv_box_iou

from singleshot.boxes import (
    box_area,
    box_iou,
    cxcywh_to_xyxy,
    decode,
    encode,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)

FAST = settings(max_examples=60, deadline=None)


def _box(lo: float, hi: float, min_size: float, max_size: float):
    """Strategy: one valid xyxy box, corner in [lo, hi], each side in [min_size, max_size]."""
    coord = st.floats(lo, hi, allow_nan=False, allow_infinity=False)
    size = st.floats(min_size, max_size, allow_nan=False, allow_infinity=False)
    return st.tuples(coord, coord, size, size).map(lambda b: (b[0], b[1], b[0] + b[2], b[1] + b[3]))


def _boxes(lo=-2.0, hi=2.0, min_size=0.0, max_size=3.0, min_n=1, max_n=6):
    return st.lists(_box(lo, hi, min_size, max_size), min_size=min_n, max_size=max_n).map(
        lambda rows: torch.tensor(rows, dtype=torch.float64)
    )


def test_conversions_by_hand():
    xyxy = torch.tensor([[1.0, 2.0, 5.0, 8.0]])
    assert xyxy_to_cxcywh(xyxy).tolist() == [[3.0, 5.0, 4.0, 6.0]]
    assert cxcywh_to_xyxy(torch.tensor([[3.0, 5.0, 4.0, 6.0]])).tolist() == [[1.0, 2.0, 5.0, 8.0]]
    assert xyxy_to_xywh(xyxy).tolist() == [[1.0, 2.0, 4.0, 6.0]]
    assert xywh_to_xyxy(torch.tensor([[1.0, 2.0, 4.0, 6.0]])).tolist() == [[1.0, 2.0, 5.0, 8.0]]
    # Any leading shape.
    assert xyxy_to_cxcywh(torch.zeros(2, 3, 4)).shape == (2, 3, 4)


@FAST
@given(_boxes())
def test_conversions_invert(boxes):
    torch.testing.assert_close(cxcywh_to_xyxy(xyxy_to_cxcywh(boxes)), boxes, rtol=0, atol=1e-12)
    torch.testing.assert_close(xywh_to_xyxy(xyxy_to_xywh(boxes)), boxes, rtol=0, atol=1e-12)
    cxcywh = xyxy_to_cxcywh(boxes)
    torch.testing.assert_close(xyxy_to_cxcywh(cxcywh_to_xyxy(cxcywh)), cxcywh, rtol=0, atol=1e-12)


def test_area_and_iou_by_hand():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 2.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [0.5, 0.5, 1.5, 1.5]])
    assert box_area(b).tolist() == [4.0, 1.0, 4.0, 1.0]
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1 / 7, 0.0, 1.0, 0.25]]))  # touching corners: 0


def test_iou_of_degenerate_boxes_is_zero_never_nan():
    good = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    bad = torch.tensor(
        [[0.5, 0.5, 0.5, 0.5], [0.2, 0.2, 0.2, 0.9], [0.9, 0.9, 0.1, 0.1], [0.8, 0.1, 0.2, 0.9]]
    )
    assert box_area(bad).tolist() == [0.0, 0.0, 0.0, 0.0]  # inverted boxes have no area
    for iou in (
        box_iou(good, bad),
        box_iou(bad, good).T,
        box_iou(bad, bad),
        box_iou(good[None], bad[None])[0],
    ):
        assert torch.isfinite(iou).all() and (iou == 0).all()


@FAST
@given(_boxes(), _boxes())
def test_iou_symmetric_and_in_unit_interval(boxes1, boxes2):
    iou = box_iou(boxes1, boxes2)
    assert iou.shape == (len(boxes1), len(boxes2))
    assert torch.equal(iou, box_iou(boxes2, boxes1).T)
    assert ((iou >= 0) & (iou <= 1)).all()
    positive = box_area(boxes1) > 1e-6
    torch.testing.assert_close(
        box_iou(boxes1, boxes1).diagonal()[positive], torch.ones(int(positive.sum()), dtype=torch.float64)
    )


@FAST
@given(_boxes(min_n=2, max_n=2), _boxes(min_n=3, max_n=3), _boxes(min_n=3, max_n=3))
def test_batched_iou_equals_per_image(gt, priors_a, priors_b):
    batch = torch.stack([gt, gt.flip(0)])  # (2, 2, 4)
    priors = torch.stack([priors_a, priors_b])  # (2, 3, 4)
    iou = box_iou(batch, priors)
    assert torch.equal(iou[0], box_iou(gt, priors_a)) and torch.equal(iou[1], box_iou(gt.flip(0), priors_b))
    shared = box_iou(batch, priors_a)  # one set of priors for the whole batch
    assert torch.equal(shared[1], box_iou(gt.flip(0), priors_a))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_iou_of_valid_boxes_is_bitwise_torchvisions(dtype, rng):
    """Same arithmetic as torchvision.ops.box_iou (and its NMS kernel): (a1 + a2) - inter, then divide."""
    a = torch.rand(30, 4, generator=rng, dtype=dtype) * 100
    b = torch.rand(40, 4, generator=rng, dtype=dtype) * 100
    a, b = torch.cat([a[:, :2], a[:, :2] + a[:, 2:]], 1), torch.cat([b[:, :2], b[:, :2] + b[:, 2:] / 4], 1)
    assert torch.equal(box_iou(a, b), tv_box_iou(a, b))
    assert torch.equal(box_iou(a[None].expand(3, -1, -1), b)[2], tv_box_iou(a, b))


def test_iou_gradient_equals_torchvisions(rng):
    # With gradients on, box_iou must not write into buffers with out= (no autograd there).
    a, b = (torch.rand(n, 4, generator=rng, dtype=torch.float64).cumsum(1).requires_grad_() for n in (5, 6))
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    weights = torch.arange(30.0, dtype=torch.float64).view(5, 6)
    (box_iou(a, b) * weights).sum().backward()
    (tv_box_iou(a2, b2) * weights).sum().backward()
    torch.testing.assert_close(a.grad, a2.grad)
    torch.testing.assert_close(b.grad, b2.grad)


def test_encode_with_unit_variances_is_the_seed_formula_by_hand():
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.4]])  # (cx, cy, w, h)
    gt = torch.tensor([[0.4, 0.4, 0.8, 0.8]])  # centre (0.6, 0.6), size 0.4 x 0.4
    # g-hat: (0.1 / 0.2, 0.1 / 0.4, log(0.4 / 0.2), log(0.4 / 0.4))
    torch.testing.assert_close(encode(gt, prior, (1.0, 1.0)), torch.tensor([[0.5, 0.25, math.log(2.0), 0.0]]))
    # The usual variances divide by 0.1 (centre) and 0.2 (size).
    torch.testing.assert_close(encode(gt, prior), torch.tensor([[5.0, 2.5, math.log(2.0) / 0.2, 0.0]]))
    torch.testing.assert_close(decode(torch.tensor([[5.0, 2.5, math.log(2.0) / 0.2, 0.0]]), prior), gt)


_positive_cxcywh = st.tuples(
    st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.floats(0.05, 1.0), st.floats(0.05, 1.0)
)


@FAST
@given(st.lists(st.tuples(_positive_cxcywh, _box(-0.5, 1.0, 0.01, 1.0)), min_size=1, max_size=8))
def test_encode_matches_seed_formula_and_decode_inverts_it(pairs):
    priors = torch.tensor([p for p, _ in pairs], dtype=torch.float64)
    boxes = torch.tensor([b for _, b in pairs], dtype=torch.float64)
    seed = []
    for (dcx, dcy, dw, dh), (x1, y1, x2, y2) in pairs:  # the seed's g-hat, one box at a time
        gcx, gcy, gw, gh = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
        seed.append([(gcx - dcx) / dw, (gcy - dcy) / dh, math.log(gw / dw), math.log(gh / dh)])
    seed = torch.tensor(seed, dtype=torch.float64)
    torch.testing.assert_close(encode(boxes, priors, (1.0, 1.0)), seed)
    torch.testing.assert_close(
        encode(boxes, priors), seed / torch.tensor([0.1, 0.1, 0.2, 0.2], dtype=torch.float64)
    )
    for variances in [(0.1, 0.2), (1.0, 1.0), (0.5, 0.3)]:
        round_trip = decode(encode(boxes, priors, variances), priors, variances)
        torch.testing.assert_close(round_trip, boxes, rtol=0, atol=1e-12)


@FAST
@given(st.lists(st.tuples(_positive_cxcywh, st.tuples(*[st.floats(-4.0, 4.0)] * 4)), min_size=1, max_size=8))
def test_decode_then_encode_gives_the_deltas_back(pairs):
    priors = torch.tensor([p for p, _ in pairs], dtype=torch.float64)
    deltas = torch.tensor([d for _, d in pairs], dtype=torch.float64)
    torch.testing.assert_close(encode(decode(deltas, priors), priors), deltas, rtol=0, atol=1e-9)


def test_coding_batches_over_leading_dimensions():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.3, 0.6, 0.5, 0.1]])
    boxes = torch.rand(3, 2, 2) * 0.4
    boxes = torch.cat([boxes, boxes + 0.1 + torch.rand(3, 2, 2) * 0.5], -1)  # (B 3, P 2, 4)
    codes = encode(boxes, priors)
    assert codes.shape == (3, 2, 4)
    for b in range(3):
        torch.testing.assert_close(codes[b], encode(boxes[b], priors))
    torch.testing.assert_close(decode(codes, priors), boxes)


def test_decode_stays_finite_for_wild_deltas():
    priors = torch.tensor([[0.5, 0.5, 0.1, 0.1]])
    boxes = decode(torch.tensor([[0.0, 0.0, 1e6, 1e30]]), priors)
    assert torch.isfinite(boxes).all()
    # Size offsets are clamped at log(1000 / 16): at most 62.5 times the prior.
    torch.testing.assert_close(boxes[0, 2] - boxes[0, 0], torch.tensor(0.1 * 62.5))


@pytest.mark.parametrize("seed", [0, 1])
def test_coding_agrees_with_torchvision_box_coder(seed):
    g = torch.Generator().manual_seed(seed)
    priors = torch.cat([torch.rand(50, 2, generator=g), 0.05 + torch.rand(50, 2, generator=g)], 1).double()
    xy = torch.rand(50, 2, generator=g, dtype=torch.float64)
    boxes = torch.cat([xy, xy + 0.01 + torch.rand(50, 2, generator=g, dtype=torch.float64)], 1)
    size = torch.tensor([300.0, 200.0, 300.0, 200.0], dtype=torch.float64)  # w, h, w, h of a 300 x 200 image
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))  # torchvision's SSD: 1 / variances
    priors_px = cxcywh_to_xyxy(priors) * size
    torch.testing.assert_close(encode(boxes, priors), coder.encode_single(boxes * size, priors_px))
    deltas = torch.randn(50, 4, generator=g, dtype=torch.float64) * 3
    torch.testing.assert_close(decode(deltas, priors) * size, coder.decode_single(deltas, priors_px))
