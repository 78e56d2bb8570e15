"""Coverage of objects by default boxes, the default-box fit, and default boxes of density d > 1."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from singleshot.coverage import check_learnable_boxes, coverage, fit_default_boxes, learnable_boxes_problem
from singleshot.errors import UserError
from singleshot.models import build_model
from singleshot.priors import SSD300_VOC, boxes_per_cell, default_boxes

SMALL = dict(
    feature_sizes=[24, 12, 6, 3],
    image_size=192,
    scales=[0.15, 0.3, 0.5, 0.75, 0.95],
    aspect_ratios=[[2], [2, 3], [2, 3], [2]],
)


def _priors(**kw):
    options = {**SMALL, **kw}
    return default_boxes(
        options["feature_sizes"],
        options["aspect_ratios"],
        image_size=options["image_size"],
        scales=options["scales"],
        clip=options.get("clip", "cxcywh"),
        densities=options.get("densities"),
    )


def _xyxy(cxcywh):
    return torch.cat([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], 1)


def _boxes(n, size, ratio=1.0, seed=0, jitter=0.0):
    """n boxes of relative size sqrt(w h) = size (times 1 +- jitter) and w / h = ratio, inside the image."""
    g = torch.Generator().manual_seed(seed)
    s = torch.as_tensor(size, dtype=torch.float64) * (
        1 + jitter * (2 * torch.rand(n, generator=g, dtype=torch.float64) - 1)
    )
    w, h = s * math.sqrt(ratio), s / math.sqrt(ratio)
    cx = w / 2 + torch.rand(n, generator=g, dtype=torch.float64) * (1 - w)
    cy = h / 2 + torch.rand(n, generator=g, dtype=torch.float64) * (1 - h)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)


def _fit(boxes, **kw):
    model = {k: v for k, v in SMALL.items()}
    return fit_default_boxes(boxes, model.pop("feature_sizes"), **{**model, "clip": "cxcywh", **kw})


def _numpy_counts(boxes, priors):
    """Brute force, independent of the library: every pair's IoU in numpy float64."""
    b = boxes.numpy().astype(np.float64)[:, None, :]
    p = priors.numpy().astype(np.float64)
    p = np.concatenate([p[:, :2] - p[:, 2:] / 2, p[:, :2] + p[:, 2:] / 2], 1)[None]
    iw = np.clip(np.minimum(b[..., 2], p[..., 2]) - np.maximum(b[..., 0], p[..., 0]), 0, None)
    ih = np.clip(np.minimum(b[..., 3], p[..., 3]) - np.maximum(b[..., 1], p[..., 1]), 0, None)
    inter = iw * ih
    union = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) + (p[..., 2] - p[..., 0]) * (
        p[..., 3] - p[..., 1]
    )
    iou = inter / (union - inter)
    return iou.max(1), (iou >= 0.5).sum(1)


# --- coverage --------------------------------------------------------------------------------------


def test_boxes_equal_to_priors_are_all_covered_with_iou_one():
    priors = _priors()
    boxes = _xyxy(priors[::7].double())
    result = coverage(boxes, priors)
    assert result.coverage == 1.0 and result.num_boxes == len(boxes) and result.num_priors == 3420
    assert result.mean_best_iou == pytest.approx(1.0, abs=1e-6)
    assert result.positives_per_object >= 1


@pytest.mark.parametrize("clip", ["cxcywh", "corners"])  # corners: border priors off the grid path
def test_coverage_agrees_with_a_numpy_brute_force_count(clip):
    priors = _priors(clip=clip)
    g = torch.Generator().manual_seed(3)
    centres = torch.rand(3000, 2, generator=g, dtype=torch.float64)
    sizes = torch.exp(torch.empty(3000, 2, dtype=torch.float64).uniform_(-4, 0, generator=g))
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], 1).clamp(0, 1)
    best, positives = _numpy_counts(boxes, priors)
    result = coverage(boxes, priors)
    assert result.coverage == pytest.approx((best >= 0.5).mean(), abs=0.01)
    assert result.mean_best_iou == pytest.approx(best.mean(), abs=0.01)
    assert result.positives_per_object == pytest.approx(positives.mean(), abs=0.01)
    assert np.abs(result.best_iou.numpy() - best).max() < 1e-5
    assert 0 < result.coverage < 1


def test_buckets_count_sizes_and_shapes():
    boxes = torch.cat([_boxes(10, 0.03), _boxes(20, 0.5, ratio=5.0), _boxes(30, 0.2, ratio=1.0)])
    result = coverage(boxes, _priors())
    by_size = {b.label: b.count for b in result.by_size}
    assert by_size == {"<4%": 10, "4-8%": 0, "8-16%": 0, "16-32%": 30, "32-64%": 20, ">=64%": 0}
    by_ratio = {b.label: b.count for b in result.by_ratio}
    assert by_ratio[">3:1"] == 20 and by_ratio["~1:1"] == 40 and sum(by_ratio.values()) == 60
    tiny = next(b for b in result.by_size if b.label == "<4%")
    assert tiny.coverage == 0.0  # 6 px boxes against 29 px and larger default boxes
    assert next(b for b in result.by_size if b.label == "4-8%").coverage is None


# --- the fit ---------------------------------------------------------------------------------------


def _check_proposal(fit, boxes, budget=2.0):
    model = build_model("ssd_small", 3, **fit.model_options)
    priors = model.priors
    assert len(priors) == fit.after.num_priors <= budget * fit.before.num_priors
    assert coverage(boxes, priors).coverage == pytest.approx(fit.after.coverage, abs=1e-9)
    assert fit.after.coverage >= fit.before.coverage
    assert float(priors[:, 2:].min()) * 192 >= 1.0 and float(priors[:, 2:].max()) <= 1.0
    # the proposal itself, not only the clipped boxes, stays within the image
    for k, ratios in enumerate(fit.aspect_ratios):
        q = math.sqrt(max(ratios))
        assert fit.scales[k] * q <= 1.0 and math.sqrt(fit.scales[k] * fit.scales[k + 1]) <= 1.0
        assert fit.scales[k] / q * 192 >= 1.0
    return model


def test_fit_moves_the_scales_to_one_size_cluster():
    boxes = _boxes(400, 0.07, jitter=0.05)  # ~13 px, under the smallest default box (29 px)
    fit = _fit(boxes)
    assert fit.before.coverage < 0.5 and fit.after.coverage >= 0.98
    _check_proposal(fit, boxes)
    assert fit.changes and "scales" in fit.model_options


def test_fit_covers_two_clusters():
    boxes = torch.cat([_boxes(300, 0.11, seed=1, jitter=0.1), _boxes(300, 0.45, seed=2, jitter=0.1)])
    fit = _fit(boxes)
    assert fit.after.coverage >= 0.95 > fit.before.coverage
    _check_proposal(fit, boxes)


def test_ratio_3_is_added_for_5_to_1_objects():
    boxes = _boxes(300, 0.2, ratio=5.0, jitter=0.1)
    without = _fit(boxes, tune=())
    fit = _fit(boxes)
    assert any(3.0 in r for r in fit.aspect_ratios) and fit.after.coverage > without.after.coverage
    assert "aspect_ratios" in fit.model_options and "gains the shapes 3:1" in " ".join(fit.changes)
    _check_proposal(fit, boxes)


def test_tiny_boxes_stay_uncovered_and_are_refused():
    boxes = _boxes(50, 0.5 / 192)  # half a pixel at the input: nothing of >= 1 px reaches IoU 0.5
    fit = _fit(boxes)
    assert fit.before.coverage == 0.0 and fit.after.coverage == 0.0
    _check_proposal(fit, boxes)
    with pytest.raises(UserError, match="under 2 pixels") as info:
        check_learnable_boxes(boxes, 192, "data/x")
    assert "data/x" in str(info.value) and "\n" not in str(info.value)
    assert "no objects" in learnable_boxes_problem(torch.zeros(0, 4), 192, "data/x")
    assert learnable_boxes_problem(_boxes(5, 0.2), 192, "data/x") is None


def test_fit_respects_every_budget():
    boxes = torch.cat([_boxes(400, 0.05, seed=4, jitter=0.3), _boxes(200, 0.3, ratio=3.0, seed=5)])
    for budget in (1.0, 1.3, 2.0):
        fit = _fit(boxes, budget=budget)
        _check_proposal(fit, boxes, budget)
    assert fit.densities[0] >= 2  # small objects: the finest map gets a sub-grid when the budget allows


# --- densities ---------------------------------------------------------------------------------------


def _loop_default_boxes(feature_sizes, aspect_ratios, scales, image_size, steps):
    """The paper's default boxes written out cell by cell (float64 then float32), for comparison."""
    out = []
    for k, f in enumerate(feature_sizes):
        s, extra = scales[k], math.sqrt(scales[k] * scales[k + 1])
        shapes = [(s, s), (extra, extra)]
        for r in aspect_ratios[k]:
            shapes += [(s * math.sqrt(r), s / math.sqrt(r)), (s / math.sqrt(r), s * math.sqrt(r))]
        for i in range(f):
            for j in range(f):
                cx, cy = (j + 0.5) * steps[k] / image_size, (i + 0.5) * steps[k] / image_size
                out += [(cx, cy, w, h) for w, h in shapes]
    return torch.tensor(out, dtype=torch.float64).float()


def test_no_densities_give_the_paper_boxes_bit_for_bit():
    reference = _loop_default_boxes(
        SSD300_VOC["feature_sizes"],
        SSD300_VOC["aspect_ratios"],
        SSD300_VOC["scales"],
        300,
        SSD300_VOC["steps"],
    )
    assert torch.equal(default_boxes(**SSD300_VOC, clip=None), reference)
    assert torch.equal(default_boxes(**SSD300_VOC, clip=None, densities=[1] * 6), reference)


def test_densities_repeat_the_smallest_square_on_a_sub_grid():
    assert boxes_per_cell([[2], [2, 3]], [2, 3]) == [4 + 1 + 2, 9 + 1 + 4]
    dense = _priors(densities=[2, 1, 1, 1])
    assert len(dense) == 3420 + 24 * 24 * 3  # 576 cells of stride 8 with 3 more small squares each
    assert len(_priors(densities=[1, 3, 1, 1])) == 3420 + 12 * 12 * 8
    step = 1 / 24
    first_cell = dense[:7].double()  # 4 squares of 0.15, the extra square, the two ratio-2 boxes
    expected_centres = [
        (0.25, 0.25),
        (0.75, 0.25),
        (0.25, 0.75),
        (0.75, 0.75),
        (0.5, 0.5),
        (0.5, 0.5),
        (0.5, 0.5),
    ]
    assert torch.allclose(first_cell[:, :2], torch.tensor(expected_centres, dtype=torch.float64) * step)
    assert torch.allclose(first_cell[:4, 2:], torch.full((4, 2), 0.15, dtype=torch.float64))
    # the other layers are the layers of the plain boxes, in the same order
    assert torch.equal(dense[24 * 24 * 7 :], _priors()[24 * 24 * 4 :])
    model = build_model("ssd_small", 3, width=4, densities=[2, 1, 1, 1])
    assert torch.equal(model.priors, dense)
    cls_logits, box_deltas = model(torch.zeros(1, 3, 192, 192))
    assert cls_logits.shape == (1, len(dense), 3) and box_deltas.shape == (1, len(dense), 4)
    with pytest.raises(UserError, match="densities"):
        build_model("ssd_small", 3, densities=[0, 1, 1, 1])


def test_fit_repairs_reference_scales_whose_boxes_leave_the_image():
    # SSD300's last maps have ratio-2 boxes of 0.71 * sqrt(2) and 0.88 * sqrt(2) of the image: the fit's
    # proposal keeps every box inside, with the ratios fixed (the VGG builders take no aspect_ratios).
    boxes = torch.cat([_boxes(200, 0.05, seed=6, jitter=0.3), _boxes(200, 0.5, seed=7, jitter=0.3)])
    options = {k: v for k, v in SSD300_VOC.items() if k != "feature_sizes"}
    fit = fit_default_boxes(boxes, SSD300_VOC["feature_sizes"], **options, clip=None, tune=("densities",))
    assert fit.aspect_ratios == SSD300_VOC["aspect_ratios"] and "aspect_ratios" not in fit.model_options
    assert fit.after.num_priors <= 2 * 8732 and fit.after.coverage >= fit.before.coverage
    priors = default_boxes(**{**SSD300_VOC, **fit.model_options}, clip=None)
    assert len(priors) == fit.after.num_priors
    assert float(priors[:, 2:].max()) <= 1.0 and float(priors[:, 2:].min()) * 300 >= 1.0
