"""Matching ground truths to default boxes: every rule by hand, ties, degenerate boxes, torchvision's SSDMatcher."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection._utils import SSDMatcher
from torchvision.ops import box_iou as tv_box_iou

from singleshot.boxes import box_iou, cxcywh_to_xyxy, xyxy_to_cxcywh
from singleshot.matching import _maxima_dense, _maxima_sparse, match_priors, pad_targets
from singleshot.priors import TORCHVISION_SSD300, default_boxes

# Priors given as xyxy (dyadic numbers, so every IoU below is exact), converted to centre form.
PRIORS_XYXY = torch.tensor(
    [
        [0.0, 0.0, 0.5, 0.5],  # 0: equal to gt 0 (IoU 1)
        [0.0, 0.0, 0.5, 0.25],  # 1: IoU 0.5 with gt 0 -> positive (>= threshold)
        [0.0, 0.0, 0.5, 0.125],  # 2: IoU 0.25 with gt 0 -> background
        [0.5, 0.5, 1.0, 1.0],  # 3: IoU 0.125 with gt 1 but its best prior -> forced positive
        [0.75, 0.75, 1.0, 1.0],  # 4: overlaps nothing
    ]
)
PRIORS = xyxy_to_cxcywh(PRIORS_XYXY)


def _match(gt_lists, priors=PRIORS, **kwargs):
    boxes, _, valid = pad_targets(
        [{"boxes": b, "labels": torch.ones(len(b), dtype=torch.int64)} for b in gt_lists]
    )
    return match_priors(boxes, valid, priors, **kwargs)


def test_forced_and_threshold_matches_by_hand():
    gt = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 0.75, 0.625]])
    iou = box_iou(gt, PRIORS_XYXY)
    assert iou[0].tolist() == [1.0, 0.5, 0.25, 0.0, 0.0] and iou[1].tolist() == [0.0, 0.0, 0.0, 0.125, 0.0]
    assert _match([gt]).tolist() == [[0, 0, -1, 1, -1]]
    # With a higher threshold only the forced matches stay.
    assert _match([gt], iou_threshold=0.6).tolist() == [[0, -1, -1, 1, -1]]
    # A prior above the threshold for one gt but the forced match of another goes to the forced one.
    assert _match([gt[[1, 0]]]).tolist() == [[1, 1, -1, 0, -1]]


def test_image_without_ground_truth_is_all_background():
    gt = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    matched = _match([gt, torch.zeros(0, 4), gt])
    assert matched.shape == (3, 5)
    assert matched[1].tolist() == [-1] * 5
    assert matched[0].tolist() == matched[2].tolist() == [0, 0, -1, -1, -1]
    assert _match([torch.zeros(0, 4)]).tolist() == [[-1] * 5]


def test_prior_tied_between_two_ground_truths_goes_to_the_lower_index():
    priors = xyxy_to_cxcywh(
        torch.tensor([[0.0, 0.0, 1.0, 0.5], [0.0, 0.0, 0.5, 0.375], [0.5, 0.0, 1.0, 0.375]])
    )
    # Two gts of IoU 0.5 each with prior 0 (each is half of it); their own best priors are 1 and 2 (IoU 0.75).
    gt = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 0.5]])
    assert box_iou(gt, cxcywh_to_xyxy(priors)).tolist() == [[0.5, 0.75, 0.0], [0.5, 0.0, 0.75]]
    assert _match([gt], priors).tolist() == [[0, 0, 1]]
    assert _match([gt.flip(0)], priors).tolist() == [[0, 1, 0]]


def test_ground_truths_with_the_same_best_prior_higher_index_keeps_it():
    priors = xyxy_to_cxcywh(torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.125, 0.125]]))
    gt = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])  # both: best prior 0 (IoU 0.25)
    assert _match([gt], priors).tolist() == [[1, -1]]
    # The loser still gets every prior above the threshold.
    assert _match(
        [torch.cat([gt, torch.tensor([[0.0, 0.0, 0.25, 0.25]])])[[0, 2, 1]]], priors, iou_threshold=0.2
    ).tolist() == [[2, 1]]


def test_forced_match_of_equally_good_priors_is_the_lowest_index():
    priors = xyxy_to_cxcywh(torch.tensor([[0.5, 0.0, 1.0, 0.5], [0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]))
    gt = torch.tensor([[0.25, 0.25, 0.75, 0.75]])  # a quarter of it in each prior: IoU 1/7 with all three
    assert _match([gt], priors).tolist() == [[0, -1, -1]]


def test_degenerate_and_outside_ground_truths_are_ignored():
    gt = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 0.75, 0.625]])
    expected = _match([gt])
    zero_size = torch.tensor([[0.1, 0.1, 0.1, 0.4], [0.2, 0.2, 0.6, 0.2], [0.3, 0.3, 0.3, 0.3]])
    inverted = torch.tensor([[0.6, 0.6, 0.55, 0.9]])
    outside = torch.tensor([[2.0, 2.0, 3.0, 3.0]])  # overlaps no prior: no forced match
    for extra in (zero_size, inverted, outside):
        assert torch.equal(_match([torch.cat([gt, extra])]), expected)
        assert torch.equal(
            _match([torch.cat([extra, gt])]), torch.where(expected >= 0, expected + len(extra), -1)
        )
    assert _match([zero_size]).tolist() == [[-1] * 5]


def test_pad_targets_shapes_and_padding():
    targets = [
        {"boxes": torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 1.0, 1.0]]), "labels": torch.tensor([3, 7])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    boxes, labels, valid = pad_targets(targets)
    assert boxes.shape == (2, 2, 4) and labels.shape == (2, 2) and valid.shape == (2, 2)
    assert torch.equal(boxes[0], targets[0]["boxes"]) and labels[0].tolist() == [3, 7]
    assert valid.tolist() == [[True, True], [False, False]] and labels[1].tolist() == [0, 0]
    assert boxes[1].tolist() == [[0.0, 0.0, 1.0, 1.0]] * 2  # padding: the unit box, never degenerate
    boxes, labels, valid = pad_targets(targets[1:])
    assert boxes.shape == (1, 1, 4) and not valid.any()


def _reference_match(gt: torch.Tensor, priors_xyxy: torch.Tensor, threshold: float) -> torch.Tensor:
    """The paper's two rules, one ground truth at a time (gts of positive size, no ties)."""
    matched = torch.full((len(priors_xyxy),), -1, dtype=torch.int64)
    if len(gt) == 0:
        return matched
    iou = box_iou(gt, priors_xyxy)  # (G, P)
    best_iou, best_gt = iou.max(0)
    matched[best_iou >= threshold] = best_gt[best_iou >= threshold]
    for j in range(len(gt)):
        matched[iou[j].argmax()] = j
    return matched


@pytest.mark.parametrize("seed", range(3))
def test_agrees_with_torchvision_ssd_matcher_and_a_plain_loop(seed, separated_boxes):
    rng = torch.Generator().manual_seed(seed)
    priors = default_boxes(**TORCHVISION_SSD300, clip="wh")
    priors_px = cxcywh_to_xyxy(priors) * 300  # torchvision matches in pixels of the 300 x 300 input
    gts = separated_boxes(rng, 6, 9)
    matched = _match(gts, priors)  # (B, P)
    matcher = SSDMatcher(0.5)
    assert matched.shape == (6, len(priors))
    for b, gt in enumerate(gts):
        if len(gt) == 0:  # torchvision's SSD.forward skips the matcher for an empty image
            assert (matched[b] == -1).all()
            continue
        theirs = matcher(tv_box_iou(gt * 300, priors_px)).clamp(min=-1)  # -1 below threshold, -2 between
        assert torch.equal(matched[b], theirs)
        assert torch.equal(matched[b], _reference_match(gt, cxcywh_to_xyxy(priors), 0.5))
        assert set(matched[b][matched[b] >= 0].tolist()) == set(range(len(gt)))  # every gt has a prior
    assert (matched >= 0).sum() > 30  # the comparison is not vacuous


@pytest.mark.parametrize("seed", range(3))
def test_sparse_maxima_equal_the_dense_ones_where_used(seed):
    """The CPU path finds argmax indices only where matching reads them; CUDA's finds all. Boxes on a coarse
    grid make many equal overlaps, so the "first maximum" rules are exercised."""
    rng = torch.Generator().manual_seed(seed)
    grid = torch.tensor(
        [
            [0.0, 0.0, 0.5, 0.5],
            [0.5, 0.0, 1.0, 0.5],
            [0.0, 0.5, 0.5, 1.0],
            [0.5, 0.5, 1.0, 1.0],
            [0.25, 0.25, 0.75, 0.75],
            [0.0, 0.0, 1.0, 1.0],
            [0.0, 0.0, 0.5, 1.0],
            [0.0, 0.0, 0.25, 0.25],
        ]
    )
    priors_xyxy = torch.cat([grid, grid * 0.5, grid * 0.5 + 0.5])
    gt = grid[torch.randint(0, len(grid), (4, 5), generator=rng)]  # (B, G, 4), repeated boxes included
    valid = torch.rand(4, 5, generator=rng) < 0.8
    iou = box_iou(gt, priors_xyxy).masked_fill_(~valid[..., None], -1.0)
    for threshold in (0.2, 0.5):
        sparse = _maxima_sparse(iou, valid, threshold)
        dense = _maxima_dense(iou, valid)
        assert torch.equal(sparse[0], dense[0]) and torch.equal(sparse[2], dense[2])
        used = sparse[0] >= threshold
        assert used.any() and torch.equal(sparse[1][used], dense[1][used])
        assert torch.equal(sparse[3][sparse[2]], dense[3][dense[2]])
    matched = match_priors(gt, valid, xyxy_to_cxcywh(priors_xyxy))
    for b in range(4):  # and the whole matching against the one-ground-truth-at-a-time reference
        if valid[b].any():
            keep = valid[b].nonzero().flatten()
            reference = _reference_match_ties(gt[b][keep], priors_xyxy, 0.5)
            assert torch.equal(matched[b], torch.where(reference >= 0, keep[reference.clamp(min=0)], -1))


def _reference_match_ties(gt, priors_xyxy, threshold):
    """The documented tie rules, one ground truth at a time: lower gt index wins a tied prior; a gt's forced
    prior is its first best; a later gt takes over a shared forced prior."""
    iou = box_iou(gt, priors_xyxy)
    matched = torch.full((len(priors_xyxy),), -1, dtype=torch.int64)
    for p in range(len(priors_xyxy)):
        best = iou[:, p].max()
        if best >= threshold:
            matched[p] = int((iou[:, p] == best).nonzero()[0])
    for j in range(len(gt)):
        if iou[j].max() > 0:
            matched[int((iou[j] == iou[j].max()).nonzero()[0])] = j
    return matched
