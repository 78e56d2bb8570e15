"""Default boxes: hand-computed goldens, every clip mode, the reference configurations, torchvision."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList

from singleshot.priors import (
    SSD300_COCO,
    SSD300_VOC,
    SSD512_VOC,
    TORCHVISION_SSD300,
    boxes_per_cell,
    default_boxes,
    scales_from_sizes,
    ssd_scales,
)

R2 = math.sqrt(2.0)


def test_golden_two_layers_sizes_2_and_1():
    # s = 0.2 + 0.7 (k - 1) for k = 1, 2, 3: 0.2, 0.9, 1.6. Layer 1: 2 x 2 cells, ratios {2}; layer 2: one cell.
    got = default_boxes([2, 1], [[2], []], clip=None, dtype=torch.float64)
    s1, e1 = 0.2, math.sqrt(0.2 * 0.9)  # 0.2, 0.42426...
    cell = [(s1, s1), (e1, e1), (0.2 * R2, 0.2 / R2), (0.2 / R2, 0.2 * R2)]
    expected = []
    for cy, cx in [(0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75)]:  # y outer, x inner
        expected += [(cx, cy, w, h) for w, h in cell]
    expected += [(0.5, 0.5, 0.9, 0.9), (0.5, 0.5, 1.2, 1.2)]  # sqrt(0.9 * 1.6) = 1.2
    assert got.shape == (18, 4)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
    # The same numbers written out, for the record.
    torch.testing.assert_close(
        got[:4, 2:],
        torch.tensor(
            [
                [0.2, 0.2],
                [0.4242640687, 0.4242640687],
                [0.2828427125, 0.1414213562],
                [0.1414213562, 0.2828427125],
            ],
            dtype=torch.float64,
        ),
        rtol=0,
        atol=1e-10,
    )


def test_seed_scale_formula():
    # s_k = 0.2 + 0.7 (k - 1) / 5, k = 1 .. 7 (the 7th only feeds the last layer's extra box).
    assert ssd_scales(6) == pytest.approx([0.2, 0.34, 0.48, 0.62, 0.76, 0.9, 1.04])
    assert ssd_scales(3, 0.1, 0.5) == pytest.approx([0.1, 0.3, 0.5, 0.7])
    assert ssd_scales(1, 0.3, 0.8) == pytest.approx([0.3, 0.8])
    boxes = default_boxes([1] * 6, [[]] * 6, clip=None, dtype=torch.float64)  # two squares per layer
    s = ssd_scales(6)
    torch.testing.assert_close(boxes[0::2, 2], torch.tensor(s[:6], dtype=torch.float64))
    torch.testing.assert_close(
        boxes[1::2, 2], torch.tensor([math.sqrt(a * b) for a, b in zip(s, s[1:])], dtype=torch.float64)
    )
    assert scales_from_sizes([30, 60], 90, 300) == pytest.approx([0.1, 0.2, 0.3])


def test_order_inside_a_cell_with_two_ratios():
    boxes = default_boxes([1], [[2, 3]], scales=[0.4, 0.9], clip=None, dtype=torch.float64)
    r2, r3 = math.sqrt(2), math.sqrt(3)
    expected_wh = [
        (0.4, 0.4),
        (0.6, 0.6),
        (0.4 * r2, 0.4 / r2),
        (0.4 / r2, 0.4 * r2),
        (0.4 * r3, 0.4 / r3),
        (0.4 / r3, 0.4 * r3),
    ]
    torch.testing.assert_close(boxes[:, 2:], torch.tensor(expected_wh, dtype=torch.float64))
    assert (boxes[:, :2] == 0.5).all()


def test_rectangular_maps_and_steps_place_centres_row_major():
    with_steps = default_boxes(
        [(2, 3)], [[]], image_size=(200, 300), steps=[100], scales=[0.1, 0.1], clip=None, dtype=torch.float64
    )
    without = default_boxes([(2, 3)], [[]], scales=[0.1, 0.1], clip=None, dtype=torch.float64)
    xs, ys = [1 / 6, 0.5, 5 / 6], [0.25, 0.75]
    centres = torch.tensor([(x, y) for y in ys for x in xs for _ in range(2)], dtype=torch.float64)
    torch.testing.assert_close(with_steps[:, :2], centres)
    torch.testing.assert_close(without[:, :2], centres)
    # Steps that do not tile the image: (j + 0.5) * step / size, here x = 40 / 100, 120 / 100.
    stepped = default_boxes(
        [2], [[]], image_size=100, steps=[(30, 80)], scales=[0.1, 0.1], clip=None, dtype=torch.float64
    )
    torch.testing.assert_close(
        stepped[::2, :2],
        torch.tensor([[0.4, 0.15], [1.2, 0.15], [0.4, 0.45], [1.2, 0.45]], dtype=torch.float64),
    )


# A 2 x 2 map at image 100 with step 80: centres 0.4 and 1.2; scales 0.8 and the extra box sqrt(0.8 * 1.8) = 1.2.
# The expected values are the two boxes of cell (x 1.2, y 0.4), worked out by hand for each mode.
CLIP_CASES = {
    None: [(1.2, 0.4, 0.8, 0.8), (1.2, 0.4, 1.2, 1.2)],
    "wh": [(1.2, 0.4, 0.8, 0.8), (1.2, 0.4, 1.0, 1.0)],
    "cxcywh": [(1.0, 0.4, 0.8, 0.8), (1.0, 0.4, 1.0, 1.0)],
    # corners: x [0.8, 1.6] -> [0.8, 1], y [0, 0.8]; x [0.6, 1.8] -> [0.6, 1], y [-0.2, 1.0] -> [0, 1].
    "corners": [(0.9, 0.4, 0.2, 0.8), (0.8, 0.5, 0.4, 1.0)],
}


@pytest.mark.parametrize("clip", list(CLIP_CASES))
def test_every_clip_mode_by_hand(clip):
    boxes = default_boxes(
        [2], [[]], image_size=100, steps=[80], scales=[0.8, 1.8], clip=clip, dtype=torch.float64
    )
    assert boxes.shape == (8, 4)
    torch.testing.assert_close(
        boxes[2:4], torch.tensor(CLIP_CASES[clip], dtype=torch.float64), rtol=0, atol=1e-12
    )


def test_clip_modes_on_ssd300():
    raw = default_boxes(**SSD300_VOC, clip=None, dtype=torch.float64)
    assert raw[:, :2].max() > 1 and raw[:, 2:].max() > 1  # there is something to clip
    clamped = default_boxes(**SSD300_VOC, clip="cxcywh", dtype=torch.float64)
    torch.testing.assert_close(clamped, raw.clamp(0, 1))
    wh = default_boxes(**SSD300_VOC, clip="wh", dtype=torch.float64)
    assert torch.equal(wh[:, :2], raw[:, :2]) and torch.equal(wh[:, 2:], raw[:, 2:].clamp(0, 1))
    corners = default_boxes(**SSD300_VOC, clip="corners", dtype=torch.float64)
    x1y1, x2y2 = corners[:, :2] - corners[:, 2:] / 2, corners[:, :2] + corners[:, 2:] / 2
    assert x1y1.min() >= -1e-12 and x2y2.max() <= 1 + 1e-12
    inside = ((raw[:, :2] - raw[:, 2:] / 2 >= 0) & (raw[:, :2] + raw[:, 2:] / 2 <= 1)).all(1)
    torch.testing.assert_close(corners[inside], raw[inside])  # boxes already inside are untouched
    assert not torch.allclose(corners[~inside], raw[~inside])


@pytest.mark.parametrize(("config", "count"), [(SSD300_VOC, 8732), (SSD300_COCO, 8732), (SSD512_VOC, 24564)])
def test_reference_configurations_count(config, count):
    boxes = default_boxes(**config)
    assert boxes.shape == (count, 4) and boxes.dtype == torch.float32
    sizes = [f * f for f in config["feature_sizes"]]
    assert sum(n * s for n, s in zip(boxes_per_cell(config["aspect_ratios"]), sizes)) == count


def test_ssd300_voc_values():
    boxes = default_boxes(**SSD300_VOC, dtype=torch.float64)
    c = 4 / 300  # (0 + 0.5) * 8 / 300
    e = math.sqrt(0.1 * 0.2)  # s' = sqrt(30 * 60) / 300
    expected = [[c, c, 0.1, 0.1], [c, c, e, e], [c, c, 0.1 * R2, 0.1 / R2], [c, c, 0.1 / R2, 0.1 * R2]]
    torch.testing.assert_close(boxes[:4], torch.tensor(expected, dtype=torch.float64))
    # First box of the 19 x 19 layer (after 38 * 38 * 4 = 5776 boxes): centre 8 / 300, scale 60 / 300.
    torch.testing.assert_close(boxes[5776], torch.tensor([8 / 300, 8 / 300, 0.2, 0.2], dtype=torch.float64))
    # Last box: the single 1 x 1 cell, ratio 1/2 of s = 264 / 300: (0.6223, 1.2445) clamped to 1.
    torch.testing.assert_close(boxes[-1], torch.tensor([0.5, 0.5, 0.88 / R2, 1.0], dtype=torch.float64))
    boxes512 = default_boxes(**SSD512_VOC, dtype=torch.float64)
    torch.testing.assert_close(boxes512[0], torch.tensor([4 / 512, 4 / 512, 0.07, 0.07], dtype=torch.float64))


def _torchvision_boxes(generator: DefaultBoxGenerator, feature_sizes, image_size) -> torch.Tensor:
    """Its boxes through its public forward: xyxy pixels of the (h, w) image."""
    h, w = image_size
    images = ImageList(torch.zeros(1, 3, h, w), [(h, w)])
    maps = [torch.zeros(1, 1, *((f, f) if isinstance(f, int) else f)) for f in feature_sizes]
    return generator(images, maps)[0]


def _in_pixels_like_torchvision(priors: torch.Tensor, image_size) -> torch.Tensor:
    """The same float32 operations torchvision applies to its relative boxes."""
    xy = torch.tensor([image_size[1], image_size[0]])
    return torch.cat(
        [(priors[:, :2] - 0.5 * priors[:, 2:]) * xy, (priors[:, :2] + 0.5 * priors[:, 2:]) * xy], -1
    )


def test_torchvision_ssd300_boxes_exactly():
    cfg = TORCHVISION_SSD300
    generator = DefaultBoxGenerator(cfg["aspect_ratios"], scales=cfg["scales"], steps=cfg["steps"])
    ours = default_boxes(**cfg, clip="wh")
    assert ours.shape == (8732, 4)
    assert ours[:, 0].max().item() == pytest.approx(304 / 300)  # its centre past the border, kept
    theirs = _torchvision_boxes(generator, cfg["feature_sizes"], (300, 300))
    assert torch.equal(_in_pixels_like_torchvision(ours, (300, 300)), theirs)


@pytest.mark.parametrize("clip", [True, False])
def test_torchvision_without_steps_exactly(clip):
    sizes, ratios, scales = [(3, 5), 2, 1], [[2], [2, 3], []], [0.2, 0.45, 0.7, 1.1]
    generator = DefaultBoxGenerator(ratios, scales=scales, clip=clip)
    ours = default_boxes(sizes, ratios, scales=scales, clip="wh" if clip else None)
    theirs = _torchvision_boxes(generator, sizes, (240, 400))
    assert torch.equal(_in_pixels_like_torchvision(ours, (240, 400)), theirs)


def test_dtype_and_device():
    boxes = default_boxes([2], [[2]], dtype=torch.float64, device="cpu")
    assert boxes.dtype == torch.float64 and boxes.device.type == "cpu"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(feature_sizes=[2, 1], aspect_ratios=[[2]]), "aspect-ratio lists"),
        (dict(feature_sizes=[2], aspect_ratios=[[2]], clip="xyxy"), "clip must be one of"),
        (dict(feature_sizes=[2], aspect_ratios=[[2]], scales=[0.1, 0.2, 0.3]), "scales needs 2 values"),
        (dict(feature_sizes=[2], aspect_ratios=[[2]], steps=[8]), "need image_size"),
        (dict(feature_sizes=[2], aspect_ratios=[[2]], steps=[8, 16], image_size=16), "steps"),
        (dict(feature_sizes=[2], aspect_ratios=[[-2]]), "positive"),
        (dict(feature_sizes=[(2, 3, 4)], aspect_ratios=[[2]]), "pair"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        default_boxes(**kwargs)
