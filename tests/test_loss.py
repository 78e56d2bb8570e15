"""The MultiBox loss: a hand-computed case, the 3:1 cap per image, N = 0, degenerate boxes, a plain-loop
reference and torchvision's SSD.compute_loss (values and gradients)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou as tv_box_iou

from singleshot.boxes import encode, xyxy_to_cxcywh
from singleshot.loss import (
    MultiBoxLoss,
    _background_loss,
    _loss_sums_dense,
    _loss_sums_sparse,
    _mine,
    _targets_dense,
    _targets_sparse,
    mine_hard_negatives,
)
from singleshot.matching import match_priors, pad_targets
from singleshot.priors import TORCHVISION_SSD300, default_boxes

# Four quadrant priors and a small one in the middle.
QUADRANTS = xyxy_to_cxcywh(
    torch.tensor(
        [
            [0.0, 0.0, 0.5, 0.5],
            [0.5, 0.0, 1.0, 0.5],
            [0.0, 0.5, 0.5, 1.0],
            [0.5, 0.5, 1.0, 1.0],
            [0.45, 0.45, 0.55, 0.55],
        ]
    )
)


def _targets(*boxes_and_labels):
    return [
        {"boxes": torch.tensor(b, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(lab).long()}
        for b, lab in boxes_and_labels
    ]


def _hand_case():
    """Image 0: one object (label 2) shifted 0.05 right of prior 0; image 1: nothing."""
    targets = _targets(([[0.05, 0.0, 0.55, 0.5]], [2]), ([], []))
    logits = torch.zeros(2, 5, 3)
    logits[0, 1:, 1] = torch.tensor([0.0, 1.0, 2.0, 3.0])  # negatives of image 0: CE log(2 + e^a)
    logits[1, :, 2] = 10.0  # image 1 has no positive, so none of its (large) losses may count
    deltas = torch.zeros(2, 5, 4)
    deltas[0, 0] = torch.tensor([0.5, -2.0, 0.0, 0.0])
    return logits.requires_grad_(), deltas.requires_grad_(), targets


def test_hand_computed_case():
    logits, deltas, targets = _hand_case()
    loss_fn = MultiBoxLoss(QUADRANTS)
    labels, offsets = loss_fn.match(targets)
    assert labels.tolist() == [[2, 0, 0, 0, 0], [0] * 5]
    # g = (0.3, 0.25, 0.5, 0.5) against d = (0.25, 0.25, 0.5, 0.5): t = (0.05 / (0.1 * 0.5), 0, 0, 0).
    torch.testing.assert_close(offsets[0, 0], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert (offsets[0, 1:] == 0).all() and (offsets[1] == 0).all()
    out = loss_fn(logits, deltas, targets)
    # loc: smooth L1 of (0.5 - 1, -2 - 0, 0, 0) = 0.125 + 1.5.
    loc = 0.125 + 1.5
    # conf: the positive (all logits 0, 3 classes) log 3, plus the 3 hardest of the 4 negatives (a = 1, 2, 3).
    conf = math.log(3) + sum(math.log(2 + math.exp(a)) for a in (1.0, 2.0, 3.0))
    assert out["num_pos"].item() == 1
    assert out["loc"].item() == pytest.approx(loc, rel=1e-6)
    assert out["conf"].item() == pytest.approx(conf, rel=1e-6)
    assert out["loss"].item() == pytest.approx(conf + loc, rel=1e-6)
    out["loss"].backward()
    # Gradients only where the loss looks: prior 0 and the three mined negatives of image 0.
    assert logits.grad[1].abs().sum() == 0 and logits.grad[0, 1].abs().sum() == 0
    assert (logits.grad[0, [0, 2, 3, 4]].abs().sum(-1) > 0).all()
    assert (
        deltas.grad[0, 0].tolist() == pytest.approx([-0.5, -1.0, 0.0, 0.0])
        and deltas.grad[0, 1:].abs().sum() == 0
    )

    weighted = MultiBoxLoss(QUADRANTS, alpha=2.0)(logits, deltas, targets)
    assert weighted["loss"].item() == pytest.approx(conf + 2 * loc, rel=1e-6)
    one_to_one = MultiBoxLoss(QUADRANTS, neg_pos_ratio=1.0)(logits, deltas, targets)
    assert one_to_one["conf"].item() == pytest.approx(math.log(3) + math.log(2 + math.exp(3.0)), rel=1e-6)


def test_mine_hard_negatives_by_hand():
    conf = torch.tensor(
        [
            [5.0, 1.0, 4.0, 3.0, 2.0, 9.0, 0.5, 0.1],
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
            [2.0, 2.0, 2.0, 1.0, 2.0, 2.0, 2.0, 2.0],
        ]
    )
    positive = torch.zeros(3, 8, dtype=torch.bool)
    positive[0, 5] = True  # image 0: 1 positive -> its 3 hardest negatives (5.0, 4.0, 3.0; 9.0 is positive)
    # image 1: no positive -> no negative, however large its losses
    positive[2, [0, 1, 2]] = True  # image 2: 3 positives -> 9 allowed, but only 5 negatives exist
    chosen = mine_hard_negatives(conf, positive, 3.0)
    assert chosen[0].nonzero().flatten().tolist() == [0, 2, 3]
    assert not chosen[1].any()
    assert chosen[2].nonzero().flatten().tolist() == [3, 4, 5, 6, 7]
    assert not (chosen & positive).any()
    # Ties go to the lower prior index; a fractional ratio rounds down (1.5 x 3 = 4).
    assert mine_hard_negatives(conf[2:], positive[2:], 1.5)[0].nonzero().flatten().tolist() == [4, 5, 6, 7]
    assert mine_hard_negatives(conf[2:] * 0, positive[2:], 1.0)[0].nonzero().flatten().tolist() == [3, 4, 5]


def test_negatives_capped_by_what_the_image_has():
    # Three of five priors positive: 9 negatives allowed, 2 exist; each prior counts once.
    targets = _targets(([[0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 0.5], [0.0, 0.5, 0.5, 1.0]], [1, 1, 2]))
    logits = torch.randn(1, 5, 3, generator=torch.Generator().manual_seed(0))
    out = MultiBoxLoss(QUADRANTS)(logits, torch.zeros(1, 5, 4), targets)
    assert out["num_pos"].item() == 3
    total = F.cross_entropy(logits[0], torch.tensor([1, 1, 2, 0, 0]), reduction="sum")
    assert out["conf"].item() == pytest.approx(total.item() / 3, rel=1e-6)


@pytest.mark.parametrize("with_degenerate", [False, True])
def test_no_positive_gives_zero_loss_and_zero_finite_gradients(with_degenerate):
    priors = default_boxes(**TORCHVISION_SSD300, clip="wh")
    logits = (torch.randn(2, len(priors), 21) * 5).requires_grad_()
    deltas = (torch.randn(2, len(priors), 4) * 5).requires_grad_()
    degenerate = [[0.3, 0.3, 0.3, 0.3], [0.1, 0.2, 0.6, 0.2]] if with_degenerate else []
    targets = _targets((degenerate, [1] * len(degenerate)), ([], []))
    out = MultiBoxLoss(priors)(logits, deltas, targets)
    assert out["num_pos"].item() == 0
    for key in ("loss", "loc", "conf"):
        assert out[key].item() == 0.0
    out["loss"].backward()
    for grad in (logits.grad, deltas.grad):
        assert torch.isfinite(grad).all() and (grad == 0).all()


def test_degenerate_ground_truth_changes_nothing():
    logits, deltas, targets = _hand_case()
    loss_fn = MultiBoxLoss(QUADRANTS)
    clean = loss_fn(logits, deltas, targets)
    dirty_targets = _targets(
        ([[0.2, 0.2, 0.2, 0.8], [0.05, 0.0, 0.55, 0.5], [0.7, 0.7, 0.7, 0.7]], [1, 2, 1]),
        ([[0.5, 0.5, 0.5, 0.5]], [1]),
    )
    dirty = loss_fn(logits, deltas, dirty_targets)
    for key in clean:
        assert torch.equal(clean[key], dirty[key])
    dirty["loss"].backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(deltas.grad).all()


def _smooth_l1(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def _reference_loss(priors, logits, deltas, targets, ratio=3.0, variances=(0.1, 0.2)):
    """Eq. 1-3 of the paper written out with loops over images and priors (matching reused)."""
    total_loc = total_conf = 0.0
    num_pos = 0
    for b, target in enumerate(targets):
        boxes, _, valid = pad_targets([target])
        matched = match_priors(boxes, valid, priors)[0]
        positives = [i for i in range(len(priors)) if matched[i] >= 0]
        ce = [(torch.logsumexp(logits[b, i], 0) - logits[b, i, 0]).item() for i in range(len(priors))]
        for i in positives:
            label = int(target["labels"][matched[i]])
            total_conf += (torch.logsumexp(logits[b, i], 0) - logits[b, i, label]).item()
            g = encode(target["boxes"][matched[i]][None].double(), priors[i][None].double(), variances)[0]
            total_loc += sum(_smooth_l1(float(deltas[b, i, k]) - float(g[k])) for k in range(4))
        negatives = sorted((i for i in range(len(priors)) if matched[i] < 0), key=lambda i: -ce[i])
        total_conf += sum(ce[i] for i in negatives[: int(ratio * len(positives))])
        num_pos += len(positives)
    n = max(num_pos, 1)
    return total_loc / n, total_conf / n, num_pos


@pytest.mark.parametrize("seed", range(3))
def test_agrees_with_a_plain_loop_reference(seed, separated_boxes):
    rng = torch.Generator().manual_seed(seed)
    priors = default_boxes([4, 2, 1], [[2], [2, 3], [2]], s_min=0.3)  # 92 priors
    targets = [
        {"boxes": b, "labels": torch.randint(1, 6, (len(b),), generator=rng)}
        for b in separated_boxes(rng, 4, 4)
    ]
    logits = torch.randn(4, len(priors), 6, generator=rng) * 3
    deltas = torch.randn(4, len(priors), 4, generator=rng)
    out = MultiBoxLoss(priors)(logits, deltas, targets)
    loc, conf, num_pos = _reference_loss(priors, logits, deltas, targets)
    assert out["num_pos"].item() == num_pos > 0
    assert out["loc"].item() == pytest.approx(loc, rel=1e-5)
    assert out["conf"].item() == pytest.approx(conf, rel=1e-5)


def test_match_then_from_matched_equals_the_call():
    logits, deltas, targets = _hand_case()
    loss_fn = MultiBoxLoss(QUADRANTS)
    direct = loss_fn(logits, deltas, targets)
    split = loss_fn.from_matched(logits, deltas, *loss_fn.match(targets))
    for key in direct:
        assert torch.equal(direct[key], split[key])


def test_shape_errors():
    loss_fn = MultiBoxLoss(QUADRANTS)
    with pytest.raises(ValueError, match="5 priors"):
        loss_fn(torch.zeros(1, 4, 3), torch.zeros(1, 4, 4), _targets(([], [])))
    with pytest.raises(ValueError, match="2 targets for a batch of 1"):
        loss_fn(torch.zeros(1, 5, 3), torch.zeros(1, 5, 4), _targets(([], []), ([], [])))


def _torchvision_anchors(model, batch):
    sizes = TORCHVISION_SSD300["feature_sizes"]
    images = ImageList(torch.zeros(batch, 3, 300, 300), [(300, 300)] * batch)
    return model.anchor_generator(images, [torch.zeros(batch, 1, s, s) for s in sizes])


def _torchvision_matches(model, anchors, targets_px):
    """What SSD.forward does before compute_loss."""
    return [
        model.proposal_matcher(tv_box_iou(t["boxes"], a)) if len(t["boxes"]) else torch.full((len(a),), -1)
        for a, t in zip(anchors, targets_px)
    ]


@pytest.mark.parametrize("seed", range(2))
def test_loss_and_gradients_equal_torchvision(seed, torchvision_ssd300, separated_boxes):
    model = torchvision_ssd300
    rng = torch.Generator().manual_seed(seed)
    batch = 4
    priors = default_boxes(**TORCHVISION_SSD300, clip="wh")
    targets = [
        {"boxes": b, "labels": torch.randint(1, 21, (len(b),), generator=rng)}
        for b in separated_boxes(rng, batch, 9)
    ]
    targets_px = [{"boxes": t["boxes"] * 300, "labels": t["labels"]} for t in targets]
    logits = torch.randn(batch, len(priors), 21, generator=rng) * 3
    deltas = torch.randn(batch, len(priors), 4, generator=rng) * 2

    ours_logits, ours_deltas = logits.clone().requires_grad_(), deltas.clone().requires_grad_()
    ours = MultiBoxLoss(priors)(ours_logits, ours_deltas, targets)
    ours["loss"].backward()

    tv_logits, tv_deltas = logits.clone().requires_grad_(), deltas.clone().requires_grad_()
    anchors = _torchvision_anchors(model, batch)
    theirs = model.compute_loss(
        targets_px,
        {"cls_logits": tv_logits, "bbox_regression": tv_deltas},
        anchors,
        _torchvision_matches(model, anchors, targets_px),
    )
    (theirs["classification"] + theirs["bbox_regression"]).backward()

    assert ours["num_pos"].item() > 20
    torch.testing.assert_close(ours["loc"], theirs["bbox_regression"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours["conf"], theirs["classification"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_logits.grad, tv_logits.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours_deltas.grad, tv_deltas.grad, rtol=1e-4, atol=1e-6)
    assert (ours_logits.grad != 0).any(-1).sum() == (tv_logits.grad != 0).any(-1).sum()


def test_torchvision_ssd_forward_end_to_end(torchvision_ssd300, separated_boxes, rng):
    """Through the whole torchvision model (its head's output order, its matching in forward)."""
    model = torchvision_ssd300.train()
    priors = default_boxes(**TORCHVISION_SSD300, clip="wh")
    targets = [
        {"boxes": b, "labels": torch.randint(1, 21, (len(b),), generator=rng)}
        for b in separated_boxes(rng, 2, 6)
    ]
    heads = {}

    def keep(module, inputs, outputs):
        for value in outputs.values():
            value.retain_grad()
        heads.update(outputs)

    handle = model.head.register_forward_hook(keep)
    try:
        images = [torch.rand(3, 300, 300, generator=rng) for _ in targets]
        theirs = model(images, [{"boxes": t["boxes"] * 300, "labels": t["labels"]} for t in targets])
    finally:
        handle.remove()
    sum(theirs.values()).backward()
    logits = heads["cls_logits"].detach().clone().requires_grad_()
    deltas = heads["bbox_regression"].detach().clone().requires_grad_()
    ours = MultiBoxLoss(priors)(logits, deltas, targets)
    ours["loss"].backward()
    torch.testing.assert_close(ours["loc"], theirs["bbox_regression"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours["conf"], theirs["classification"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits.grad, heads["cls_logits"].grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(deltas.grad, heads["bbox_regression"].grad, rtol=1e-4, atol=1e-6)


# --- the CPU fast paths against the dense reference paths (the ones CUDA runs) ---------------------------


def _batch(rng, separated_boxes, batch=6, scale=3.0):
    priors = default_boxes(**TORCHVISION_SSD300, clip="wh")
    targets = [
        {"boxes": b, "labels": torch.randint(1, 21, (len(b),), generator=rng)}
        for b in separated_boxes(rng, batch, 9)
    ]
    logits = torch.randn(batch, len(priors), 21, generator=rng) * scale
    deltas = torch.randn(batch, len(priors), 4, generator=rng)
    return priors, targets, logits, deltas


@pytest.mark.parametrize("seed", range(3))
def test_sparse_targets_equal_dense_targets(seed, separated_boxes):
    rng = torch.Generator().manual_seed(seed)
    priors, targets, _, _ = _batch(rng, separated_boxes)
    boxes, labels, valid = pad_targets(targets)
    matched = match_priors(boxes, valid, priors)
    dense = _targets_dense(matched, boxes, labels, priors, (0.1, 0.2))
    sparse = _targets_sparse(matched, boxes, labels, priors, (0.1, 0.2))
    assert (dense[0] > 0).sum() > 30
    for a, b in zip(dense, sparse):
        assert torch.equal(a, b)


@pytest.mark.parametrize("seed", range(3))
def test_sparse_loss_sums_and_gradients_equal_the_dense_ones(seed, separated_boxes):
    rng = torch.Generator().manual_seed(seed)
    priors, targets, logits, deltas = _batch(rng, separated_boxes)
    labels, offsets = MultiBoxLoss(priors).match(targets)
    results = []
    for sums in (_loss_sums_dense, _loss_sums_sparse):
        lg, dl = logits.clone().requires_grad_(), deltas.clone().requires_grad_()
        loc, conf = sums(lg, dl, labels, offsets, 3.0)
        (loc + 2 * conf).backward()
        results.append((loc, conf, lg.grad, dl.grad))
    (loc_d, conf_d, glg_d, gdl_d), (loc_s, conf_s, glg_s, gdl_s) = results
    torch.testing.assert_close(loc_s, loc_d, rtol=1e-5, atol=0)
    torch.testing.assert_close(conf_s, conf_d, rtol=1e-5, atol=0)
    torch.testing.assert_close(glg_s, glg_d, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gdl_s, gdl_d)
    assert torch.equal(glg_s != 0, glg_d != 0)  # the same rows count: same mining


def test_background_loss_equals_cross_entropy_also_for_extreme_logits(rng):
    logits = torch.randn(2, 50, 7, generator=rng) * 4
    logits[0, 0] = torch.tensor([200.0, 0, 0, 0, 0, 0, 0])  # exp overflows: redone with logsumexp
    logits[0, 1] = torch.tensor([0.0, 0, 300, 0, 0, 0, 0])
    logits[0, 2] = -150.0  # exp underflows to 0 / subnormals
    logits[0, 3, 3] = -1e4
    reference = F.cross_entropy(logits.reshape(-1, 7), torch.zeros(100, dtype=torch.int64), reduction="none")
    ours = _background_loss(logits).reshape(-1)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=2e-6)
    assert ours[1].item() == pytest.approx(300.0) and ours[0].item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_mining_by_topk_equals_mining_by_full_sort_with_ties(seed):
    rng = torch.Generator().manual_seed(seed)
    conf = torch.randint(0, 6, (5, 300), generator=rng).float()  # many equal losses
    positive = torch.rand(5, 300, generator=rng) < torch.tensor([0.0, 0.01, 0.05, 0.2, 0.4])[:, None]
    for ratio in (0.5, 1.0, 3.0, 10.0):
        partial = _mine(conf, positive, ratio, partial=True)
        full = _mine(conf, positive, ratio, partial=False)
        assert torch.equal(partial, full)
        # the same as a stable descending sort of the negatives' losses, first n of each image
        for b in range(5):
            n = min(int(positive[b].sum() * ratio), int((~positive[b]).sum()))
            order = torch.sort(
                conf[b].masked_fill(positive[b], -math.inf), descending=True, stable=True
            ).indices
            assert partial[b].nonzero().flatten().tolist() == sorted(order[:n].tolist())
