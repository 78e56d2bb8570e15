"""Post-processing: hand cases for each rule, batch consistency, torchvision's postprocess_detections, and the
README's core API example."""

from __future__ import annotations

import contextlib
import io
import math
import re
from pathlib import Path

import pytest
import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import nms

import singleshot.postprocess as postprocess_module
from singleshot.boxes import decode, encode, xyxy_to_cxcywh
from singleshot.postprocess import (
    _candidates,
    _foreground_max,
    _merge_sizes,
    _nms_batched,
    nms_sorted_groups,
    postprocess,
)
from singleshot.priors import TORCHVISION_SSD300, default_boxes

README = Path(__file__).resolve().parents[1] / "README.md"

# Three priors: 0 and 1 overlap (IoU 0.818), 2 is apart. Zero deltas decode to the priors themselves.
PRIORS = xyxy_to_cxcywh(torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.05, 0.0, 0.55, 0.5], [0.5, 0.5, 1.0, 1.0]]))
PROBS = torch.tensor(  # (background, class 1, class 2) per prior
    [[0.1, 0.6, 0.3], [0.25, 0.5, 0.25], [0.975, 0.005, 0.02]]
)


def _run(**kwargs):
    logits = PROBS.log()[None]  # softmax gives PROBS back
    return postprocess(logits, torch.zeros(1, 3, 4), PRIORS, [(200, 400)], **kwargs)[0]


def _assert_detections(det, expected):
    """expected: (score, label, prior index) rows."""
    assert det["scores"].tolist() == pytest.approx([s for s, _, _ in expected], abs=1e-6)
    assert det["labels"].tolist() == [label for _, label, _ in expected]
    pixels = torch.tensor([[0.0, 0.0, 200.0, 100.0], [20.0, 0.0, 220.0, 100.0], [200.0, 100.0, 400.0, 200.0]])
    torch.testing.assert_close(det["boxes"], pixels[[i for _, _, i in expected]].reshape(-1, 4))


def test_hand_case_threshold_classwise_nms_and_order():
    # Class 1: prior 1 (0.5) is suppressed by prior 0 (0.6); prior 2 (0.005) is below 0.01.
    # Class 2: prior 0 (0.3) stays although prior 0 also won class 1; prior 1 suppressed; prior 2 (0.02) kept.
    _assert_detections(_run(), [(0.6, 1, 0), (0.3, 2, 0), (0.02, 2, 2)])


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (dict(max_detections=2), [(0.6, 1, 0), (0.3, 2, 0)]),
        (dict(candidates_per_class=1), [(0.6, 1, 0), (0.3, 2, 0)]),
        (dict(score_threshold=0.3), [(0.6, 1, 0)]),  # strictly above the threshold
        (dict(score_threshold=0.0), [(0.6, 1, 0), (0.3, 2, 0), (0.02, 2, 2), (0.005, 1, 2)]),
        (dict(nms_threshold=0.9), [(0.6, 1, 0), (0.5, 1, 1), (0.3, 2, 0), (0.25, 2, 1), (0.02, 2, 2)]),
    ],
)
def test_each_setting(kwargs, expected):
    _assert_detections(_run(**kwargs), expected)


def test_boxes_clipped_to_each_image_in_its_pixels():
    deltas = torch.zeros(2, 3, 4)
    deltas[:, 2] = torch.tensor(
        [0.0, 0.0, 5 * math.log(3.0), 0.0]
    )  # prior 2 three times wider: x in [0, 1.5]
    logits = PROBS.log()[None].repeat(2, 1, 1)
    first, second = postprocess(logits, deltas, PRIORS, [(200, 400), (50, 60)])
    torch.testing.assert_close(first["boxes"][2], torch.tensor([0.0, 100.0, 400.0, 200.0]))
    torch.testing.assert_close(
        second["boxes"],
        torch.tensor([[0.0, 0.0, 30.0, 25.0], [0.0, 0.0, 30.0, 25.0], [0.0, 25.0, 60.0, 50.0]]),
    )
    # image_sizes may be a tensor too.
    again = postprocess(logits, deltas, PRIORS, torch.tensor([[200, 400], [50, 60]]))
    torch.testing.assert_close(again[1]["boxes"], second["boxes"])


def test_background_never_returned_and_empty_images_have_the_right_shapes():
    logits = torch.zeros(3, 3, 3)
    logits[0, :, 0] = 20.0  # image 0: background everywhere
    logits[2, :, 0] = 20.0
    logits[2, 1, 2] = 25.0  # image 2: one confident class-2 box
    dets = postprocess(logits, torch.zeros(3, 3, 4), PRIORS, [(10, 10)] * 3)
    assert len(dets) == 3
    empty = dets[0]
    assert empty["boxes"].shape == (0, 4) and empty["scores"].shape == (0,) and empty["labels"].shape == (0,)
    assert empty["boxes"].dtype == torch.float32 and empty["labels"].dtype == torch.int64
    assert (dets[1]["labels"] > 0).all() and len(dets[1]["labels"]) > 0  # uniform scores 1/3: no background
    assert dets[2]["labels"].tolist() == [2]
    none_at_all = postprocess(
        torch.zeros(2, 3, 3), torch.zeros(2, 3, 4), PRIORS, [(10, 10)] * 2, score_threshold=0.5
    )
    assert all(d["boxes"].shape == (0, 4) for d in none_at_all)


def test_batch_equals_one_image_at_a_time(rng):
    priors = default_boxes([5, 3, 1], [[2], [2, 3], [2]])
    logits = torch.randn(3, len(priors), 6, generator=rng) * 2
    deltas = torch.randn(3, len(priors), 4, generator=rng)
    sizes = [(100, 200), (300, 300), (64, 48)]
    kwargs = dict(score_threshold=0.05, candidates_per_class=30, max_detections=25)
    batched = postprocess(logits, deltas, priors, sizes, **kwargs)
    for b in range(3):
        alone = postprocess(logits[b : b + 1], deltas[b : b + 1], priors, sizes[b : b + 1], **kwargs)[0]
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(batched[b][key], alone[key])
        assert 0 < len(alone["scores"]) <= 25
        assert (alone["scores"][:-1] >= alone["scores"][1:]).all()


def test_many_groups_do_not_cost_nms_precision():
    # Two boxes of IoU 0.4501 in the last class of the last of 64 images (81 classes): NMS at 0.45 must drop
    # the second one. batched_nms separates the 5184 (image, class) groups by shifting coordinates ~1e6 px,
    # where float32 steps are 0.06 px, enough to read the IoU as below 0.45; singleshot runs it in float64.
    iou, batch, num_classes = 0.4501, 64, 81
    x = 100 * (1 - iou) / (1 + iou)  # shift of a 100 px square giving that IoU with the unshifted one
    priors = xyxy_to_cxcywh(torch.tensor([[0.0, 0.0, 100.0, 100.0], [x, 0.0, 100 + x, 100.0]]) / 300)
    logits = torch.zeros(batch, 2, num_classes)
    logits[-1, :, -1] = torch.tensor([10.0, 9.0])
    dets = postprocess(logits, torch.zeros(batch, 2, 4), priors, [(300, 300)] * batch, score_threshold=0.5)
    assert [len(d["scores"]) for d in dets] == [0] * (batch - 1) + [1]
    alone = postprocess(logits[-1:], torch.zeros(1, 2, 4), priors, [(300, 300)], score_threshold=0.5)[0]
    assert torch.equal(dets[-1]["boxes"], alone["boxes"]) and torch.equal(dets[-1]["scores"], alone["scores"])


@pytest.mark.parametrize(
    "settings",
    [
        dict(score_threshold=0.01, nms_threshold=0.45, candidates_per_class=400, max_detections=200),
        dict(score_threshold=0.08, nms_threshold=0.6, candidates_per_class=50, max_detections=30),
    ],
)
def test_agrees_with_torchvision_postprocess_detections(settings, torchvision_ssd300, rng):
    model = torchvision_ssd300.eval()
    model.score_thresh, model.nms_thresh = settings["score_threshold"], settings["nms_threshold"]
    model.topk_candidates, model.detections_per_img = (
        settings["candidates_per_class"],
        settings["max_detections"],
    )
    priors = default_boxes(**TORCHVISION_SSD300, clip="wh")
    batch = 2
    logits = torch.randn(batch, len(priors), 21, generator=rng) * 2
    deltas = torch.randn(batch, len(priors), 4, generator=rng)
    sizes = TORCHVISION_SSD300["feature_sizes"]
    anchors = model.anchor_generator(
        ImageList(torch.zeros(batch, 3, 300, 300), [(300, 300)] * batch),
        [torch.zeros(batch, 1, s, s) for s in sizes],
    )
    theirs = model.postprocess_detections(
        {"cls_logits": logits, "bbox_regression": deltas}, anchors, [(300, 300)] * batch
    )
    # torchvision then rescales from the 300 x 300 input to each original image size.
    originals = [(375, 500), (300, 200)]
    theirs_original = model.transform.postprocess([dict(d) for d in theirs], [(300, 300)] * batch, originals)
    for image_sizes, reference in [([(300, 300)] * batch, theirs), (originals, theirs_original)]:
        ours = postprocess(logits, deltas, priors, image_sizes, **settings)
        for mine, tv in zip(ours, reference):
            assert len(mine["scores"]) == len(tv["scores"]) > 0
            assert torch.equal(mine["labels"], tv["labels"])
            torch.testing.assert_close(mine["scores"], tv["scores"], rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(mine["boxes"], tv["boxes"], rtol=1e-5, atol=1e-3)
    assert len(theirs[0]["scores"]) == settings["max_detections"]  # the cap is exercised


def _readme_core_api_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## The core API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_core_api_example_runs_as_written():
    code = _readme_core_api_block()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    loss, shape = out.getvalue().strip().split(" ", 1)
    assert math.isfinite(float(loss)) and float(loss) > 0
    assert shape.startswith("torch.Size([") and shape.endswith(", 4])")


# --- the batched NMS and the candidate selection against simple references -------------------------------


def _random_groups(rng, num_groups, max_size, dtype=torch.float32):
    """Boxes in consecutive groups, each sorted by descending score; clustered so that NMS has work."""
    counts = torch.randint(0, max_size + 1, (num_groups,), generator=rng)
    n = int(counts.sum())
    centres = torch.rand(n, 2, generator=rng, dtype=dtype) * 60
    sizes = 5 + torch.rand(n, 2, generator=rng, dtype=dtype) * 20
    clustered = torch.rand(n, 1, generator=rng) < 0.5  # around a few grid points, of similar sizes
    centres = torch.where(
        clustered, centres.round(decimals=-1) + torch.randn(n, 2, generator=rng, dtype=dtype), centres
    )
    sizes = torch.where(clustered, 12 + torch.randn(n, 2, generator=rng, dtype=dtype), sizes)
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], 1)
    scores = torch.rand(n, generator=rng, dtype=dtype)
    scores[torch.rand(n, generator=rng) < 0.1] = 0.5  # equal scores: the given order decides
    starts = torch.cumsum(counts, 0) - counts
    order = torch.cat(
        [
            s + torch.sort(scores[s : s + c], descending=True, stable=True).indices
            for s, c in zip(starts.tolist(), counts.tolist())
        ]
    )
    boxes[2] = boxes[1]  # identical boxes (IoU 1)
    return boxes[order], scores[order], counts


@pytest.mark.parametrize(
    ("seed", "threshold", "dtype"),
    [(0, 0.45, torch.float32), (1, 0.3, torch.float32), (2, 0.7, torch.float64), (3, 0.5, torch.float32)],
)
def test_nms_sorted_groups_equals_torchvision_nms_per_group(seed, threshold, dtype, monkeypatch):
    rng = torch.Generator().manual_seed(seed)
    boxes, scores, counts = _random_groups(rng, 40, 70, dtype)
    keep = nms_sorted_groups(boxes, scores, counts, threshold)
    monkeypatch.setattr(postprocess_module, "_NMS_CHUNK", 5000)  # a few groups at a time: the same result
    assert torch.equal(nms_sorted_groups(boxes, scores, counts, threshold), keep)
    expected = torch.zeros(len(boxes), dtype=torch.bool)
    start = 0
    for c in counts.tolist():  # the reference: torchvision's kernel one group at a time
        expected[start + nms(boxes[start : start + c], scores[start : start + c], threshold)] = True
        start += c
    assert torch.equal(keep, expected)
    assert 0 < int(keep.sum()) < len(boxes) * 0.97  # NMS did suppress, and kept
    groups = torch.repeat_interleave(torch.arange(len(counts)), counts)
    assert torch.equal(_nms_batched(boxes, scores, groups, threshold), expected)  # the CUDA path


def test_nms_threshold_is_strict_and_exact():
    # Two 4x4 squares, shifted by 4/3 px: IoU = (8/3 * 4) / (32 - 8/3 * 4) = 0.5 exactly in float32? Use a
    # dyadic case instead: overlap 2x4 of two 4x4 squares -> 8 / 24 = 1/3; and the float32 neighbours of t.
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [2.0, 0.0, 6.0, 4.0]])
    scores = torch.tensor([0.9, 0.8])
    iou = 1 / 3
    for threshold in (iou, float(torch.tensor(iou, dtype=torch.float32)), math.nextafter(iou, 0), 0.3):
        expected = torch.zeros(2, dtype=torch.bool)
        expected[nms(boxes, scores, threshold)] = True
        assert torch.equal(nms_sorted_groups(boxes, scores, torch.tensor([2]), threshold), expected), (
            threshold
        )
    assert nms_sorted_groups(boxes, scores, torch.tensor([2]), 0.3).tolist() == [True, False]
    assert nms_sorted_groups(boxes, scores, torch.tensor([1, 1]), 0.3).tolist() == [True, True]  # other group
    assert nms_sorted_groups(boxes[:0], scores[:0], torch.tensor([0, 0]), 0.3).shape == (0,)


@pytest.mark.parametrize("threshold", [0.0, 0.01, 0.2, 0.9, 1.0])
def test_candidates_equal_thresholding_the_full_softmax(threshold, rng):
    logits = torch.randn(3, 200, 6, generator=rng) * 3
    logits[0, :20, 0] += 12.0  # confident background: the prefilter skips these rows
    logits[1, 0] = torch.tensor([1e4, 1e4 + 3, 0, 0, 0, 0])  # huge logits: rounding of the bound
    logits[1, 1] = torch.tensor([-1e4, 0, 0, 0, 0, 0])
    logits[2, 0, 3] = math.inf  # a row softmax turns into NaN: never a candidate
    row, label, scores = _candidates(logits, threshold)
    probs = logits.reshape(-1, 6).softmax(-1)
    want_row, want_label = (probs[:, 1:] > threshold).nonzero(as_tuple=True)
    assert torch.equal(row, want_row) and torch.equal(label, want_label + 1)
    assert torch.equal(scores, probs[want_row, want_label + 1])
    if 0 < threshold < 1:
        assert 0 < len(row) < probs[:, 1:].numel()


@pytest.mark.parametrize("num_classes", [2, 3, 6, 9, 17, 21, 81, 92])
def test_foreground_max_equals_amax(num_classes, rng, monkeypatch):
    logits = torch.randn(300, num_classes, generator=rng) * 5
    logits[3, 1] = math.nan
    logits[4, -1] = math.inf
    logits[5, 1:] = -math.inf
    logits[6, 0] = 1e30  # the background column never counts
    expected = logits[:, 1:].amax(1)
    for chunk in (2**19, 50, 1):  # one pass; slices of a few rows; one row at a time
        monkeypatch.setattr(postprocess_module, "_MAX_CHUNK", chunk)
        torch.testing.assert_close(_foreground_max(logits), expected, rtol=0, atol=0, equal_nan=True)


def test_merge_sizes_hand_case(monkeypatch):
    monkeypatch.setattr(postprocess_module, "_NMS_BUCKET_COST", 2**16)
    # 100 groups of 16, one of 32, one of 128 (costs in overlaps, 65 536 a bucket): alone 3 * 65 536 +
    # 100 * 256 + 1024 + 16 384 = 239 616; 16 with 32: 250 880; 32 with 128: 189 440; all three: 1.7 million.
    assert _merge_sizes([16, 32, 128], [100, 1, 1]) == [(16, 16), (32, 128)]
    assert _merge_sizes([16, 32], [1, 1]) == [(16, 32)]  # padding 16 boxes to 32 is cheaper than a bucket
    assert _merge_sizes([400], [3]) == [(400, 400)]


@pytest.mark.parametrize("bucket_cost", [0, 2**40])  # every size its own bucket; one bucket for all
def test_nms_sorted_groups_any_buckets_equal_torchvision_nms(bucket_cost, rng, monkeypatch):
    monkeypatch.setattr(postprocess_module, "_NMS_BUCKET_COST", bucket_cost)
    boxes, scores, counts = _random_groups(rng, 30, 70)
    expected = torch.zeros(len(boxes), dtype=torch.bool)
    start = 0
    for c in counts.tolist():
        expected[start + nms(boxes[start : start + c], scores[start : start + c], 0.45)] = True
        start += c
    assert torch.equal(nms_sorted_groups(boxes, scores, counts, 0.45), expected)


def _reference_postprocess(
    cls_logits,
    box_deltas,
    priors,
    image_sizes,
    *,
    score_threshold,
    nms_threshold,
    candidates_per_class,
    max_detections,
):
    """The documented rule, one image and one class at a time: scores above the threshold, the best
    candidates_per_class by (descending score, prior), torchvision's nms in that order, then the best
    max_detections by (descending score, label, prior)."""
    results = []
    for logits, deltas, (h, w) in zip(cls_logits, box_deltas, image_sizes):
        probs = logits.softmax(-1)
        scale = torch.tensor([w, h, w, h], dtype=deltas.dtype)
        boxes = torch.minimum((decode(deltas, priors.to(deltas.dtype)) * scale).clamp(min=0), scale)
        found = []  # (score, label, prior)
        for label in range(1, logits.shape[1]):
            prior = (probs[:, label] > score_threshold).nonzero().squeeze(1)
            prior = prior[torch.argsort(probs[prior, label], descending=True, stable=True)][
                :candidates_per_class
            ]
            order = -torch.arange(len(prior), dtype=boxes.dtype)  # nms in exactly this order
            found += [
                (probs[i, label].item(), label, i)
                for i in prior[nms(boxes[prior], order, nms_threshold)].tolist()
            ]
        found = sorted(found, key=lambda f: (-f[0], f[1], f[2]))[:max_detections]
        prior = torch.tensor([f[2] for f in found], dtype=torch.int64)
        results.append(
            {
                "boxes": boxes[prior].reshape(-1, 4),
                "labels": torch.tensor([f[1] for f in found]),
                "scores": probs[prior, [f[1] for f in found]],
            }
        )
    return results


@pytest.mark.parametrize("first_round", [3, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rounds_equal_reference_ties_and_heavy_suppression_included(first_round, dtype, rng, monkeypatch):
    # Clusters of confident, overlapping priors (most of them suppressed) and rounded logits (many equal
    # scores, also where a round cuts): NMS must often run more than once, and the result must not change.
    monkeypatch.setattr(postprocess_module, "_FIRST_ROUND", first_round)
    rounds = []
    monkeypatch.setattr(
        postprocess_module, "nms_sorted_groups", lambda *args: rounds.append(1) or nms_sorted_groups(*args)
    )
    priors = default_boxes([6, 3, 1], [[2], [2, 3], [2]])
    batch, num_classes = 4, 5
    logits = (torch.randn(batch, len(priors), num_classes, generator=rng) * 1.5).round()
    logits[..., 0] += 2.0
    deltas = (torch.randn(batch, len(priors), 4, generator=rng) * 0.2).round(decimals=1)
    for b in range(batch):  # one class confident on 20 + 20 b priors that all predict about the same box
        cluster = slice(0, 20 + 20 * b)
        logits[b, cluster, 1 + b % (num_classes - 1)] += 6.0
        target = torch.tensor([[0.1, 0.1, 0.4, 0.5]]) + 0.1 * b
        deltas[b, cluster] = (
            encode(target, priors[cluster]) + torch.randn(20 + 20 * b, 4, generator=rng) * 0.01
        )
    logits, deltas = logits.to(dtype), deltas.to(dtype)
    sizes = [(300, 300), (120, 200), (64, 48), (300, 500)]
    calls_before = 0
    for settings in (
        dict(max_detections=4, candidates_per_class=50),
        dict(max_detections=10),
        dict(max_detections=3, candidates_per_class=5, nms_threshold=0.3, score_threshold=0.05),
    ):
        settings = dict(dict(score_threshold=0.01, nms_threshold=0.45, candidates_per_class=400), **settings)
        ours = postprocess(logits, deltas, priors, sizes, **settings)
        reference = _reference_postprocess(logits, deltas, priors, sizes, **settings)
        for mine, expected in zip(ours, reference):
            assert len(mine["scores"]) == len(expected["scores"]) > 0
            assert torch.equal(mine["labels"], expected["labels"])
            assert torch.equal(mine["scores"], expected["scores"])
            assert torch.equal(mine["boxes"], expected["boxes"])
        assert len(rounds) - calls_before > 1  # the images did not all finish in one round
        calls_before = len(rounds)


def test_outputs_that_require_grad_are_accepted():
    gen = torch.Generator().manual_seed(7)
    priors = default_boxes(**TORCHVISION_SSD300)[:500]
    logits = torch.randn(2, 500, 4, generator=gen)
    deltas = torch.randn(2, 500, 4, generator=gen)
    expected = postprocess(logits, deltas, priors, [(300, 300)] * 2)
    got = postprocess(logits.requires_grad_(), deltas.requires_grad_(), priors, [(300, 300)] * 2)
    for a, b in zip(got, expected):
        assert not a["scores"].requires_grad
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
