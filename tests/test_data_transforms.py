"""Augmentation: boxes follow pixels, the crop sampler keeps its constraints, evaluation only resizes."""

from __future__ import annotations

import pytest
import torch

from singleshot.boxes import box_iou
from singleshot.data import EvalTransform, TrainTransform, collate, photometric_distort, sample_iou_crop

W, H = 256, 200  # coordinates fit in one byte
CODES = (50, 100, 150, 200)  # blue channel of objects 1..4; background 0, zoom-out fill 255
OBJECTS = torch.tensor(
    [[10, 12, 80, 70], [150, 20, 240, 90], [30, 110, 110, 190], [160, 120, 230, 185]], dtype=torch.float32
)


def coordinate_image() -> torch.Tensor:
    """R = x, G = y everywhere; B = the object's code inside object k, 0 elsewhere."""
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    blue = torch.zeros(H, W, dtype=torch.long)
    for (x1, y1, x2, y2), code in zip(OBJECTS.long().tolist(), CODES):
        blue[y1:y2, x1:x2] = code
    return torch.stack([xs, ys, blue]).to(torch.uint8)


def target(n: int = 4) -> dict:
    return {
        "boxes": OBJECTS[:n].clone(),
        "labels": torch.arange(1, n + 1),
        "difficult": torch.zeros(n, dtype=torch.bool),
        "iscrowd": torch.zeros(n, dtype=torch.bool),
        "image_id": 7,
        "path": "x.png",
    }


@pytest.mark.parametrize("size", [(150, 200), (120, 120)])
def test_boxes_follow_pixels(size):
    """Through zoom-out, crop, flip and resize, each box still frames its object's colour, and every object
    left out had its centre outside the crop."""
    gen = torch.Generator().manual_seed(1)
    transform = TrainTransform(size, mean=(0.0, 0.0, 1.0), photometric=False, generator=gen)
    image = coordinate_image()
    out_h, out_w = size
    saw = {"flip": 0, "fill": 0, "dropped": 0, "cropped": 0}
    for _ in range(40):
        out, t = transform(image, target())
        assert out.dtype == torch.uint8 and out.shape == (3, out_h, out_w)
        assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64
        assert ((t["boxes"] >= 0) & (t["boxes"] <= 1)).all()
        assert (t["boxes"][:, 2:] > t["boxes"][:, :2]).all()
        r, g, b = out.long()
        pure = b <= 4  # background pixels not blended with the fill or an object: (r, g) are true coordinates
        seen_x, seen_y = r[pure], g[pure]
        assert len(seen_x) > 0
        lo_x, hi_x, lo_y, hi_y = seen_x.min(), seen_x.max(), seen_y.min(), seen_y.max()
        saw["fill"] += int((b >= 250).any())
        xs = r[out_h // 2][pure[out_h // 2]]
        saw["flip"] += int(len(xs) > 1 and xs[0] > xs[-1])
        kept = set(t["labels"].tolist())
        saw["dropped"] += int(len(kept) < 4)
        for box, label in zip(t["boxes"], t["labels"].tolist()):
            src = OBJECTS[label - 1]
            region = (
                ((b - CODES[label - 1]).abs() <= 4)
                & (r >= src[0] - 1)
                & (r <= src[2])
                & (g >= src[1] - 1)
                & (g <= src[3])
            )
            vs, us = torch.nonzero(region, as_tuple=True)
            assert len(us) > 0, "a kept object is invisible"
            found = torch.tensor([us.min(), vs.min(), us.max() + 1, vs.max() + 1], dtype=torch.float32)
            expected = box * torch.tensor([out_w, out_h, out_w, out_h])
            # the colour region is the box, up to the blur of one resampled pixel on each side
            assert (found - expected).abs().max() <= 2.0, (found, expected)
            saw["cropped"] += int(found[2] - found[0] < (src[2] - src[0]) * out_w / W * 0.5)
        for label in set(range(1, 5)) - kept:
            cx, cy = (OBJECTS[label - 1, :2] + OBJECTS[label - 1, 2:]) / 2
            inside = (lo_x + 1 < cx < hi_x - 1) and (lo_y + 1 < cy < hi_y - 1)
            assert not inside, f"object {label} was dropped though its centre lies in the crop"
    # the draws covered the interesting cases
    assert saw["flip"] > 4 and saw["fill"] > 4 and saw["dropped"] > 4


def test_train_transform_drops_difficult_and_crowd_unless_asked():
    t = target()
    t["difficult"][0] = True
    t["iscrowd"][1] = True
    plain = TrainTransform(100, photometric=False, expand=False, crop=False, flip=False)
    _, out = plain(coordinate_image(), t)
    assert out["labels"].tolist() == [3, 4]
    assert len(out["difficult"]) == len(out["iscrowd"]) == 2 and out["image_id"] == 7
    keep = TrainTransform(
        100, photometric=False, expand=False, crop=False, flip=False, keep_difficult=True, keep_crowd=True
    )
    _, out = keep(coordinate_image(), t)
    assert out["labels"].tolist() == [1, 2, 3, 4] and out["difficult"].tolist() == [True, False, False, False]


def test_train_transform_resize_only_is_exact():
    image = coordinate_image()
    out, t = TrainTransform((100, 128), photometric=False, expand=False, crop=False, flip=False)(
        image, target()
    )
    expected = OBJECTS / torch.tensor([W, H, W, H])
    torch.testing.assert_close(t["boxes"], expected)
    assert out.shape == (3, 100, 128)


def test_train_transform_handles_images_without_objects():
    gen = torch.Generator().manual_seed(0)
    transform = TrainTransform(64, generator=gen)
    for _ in range(10):
        out, t = transform(coordinate_image(), target(0))
        assert out.shape == (3, 64, 64) and t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)


def test_train_transform_is_reproducible_with_a_generator():
    a = TrainTransform(96, generator=torch.Generator().manual_seed(5))
    b = TrainTransform(96, generator=torch.Generator().manual_seed(5))
    for _ in range(5):
        (ia, ta), (ib, tb) = a(coordinate_image(), target()), b(coordinate_image(), target())
        assert torch.equal(ia, ib) and torch.equal(ta["boxes"], tb["boxes"])


def test_zoom_out_ratio_and_fill():
    """With zoom-out forced and nothing else, the image occupies 1/r of each side, the rest is the mean."""
    gen = torch.Generator().manual_seed(3)
    transform = TrainTransform(
        200,
        mean=(0.0, 0.0, 1.0),
        photometric=False,
        crop=False,
        flip=False,
        expand_p=1.0,
        expand_max=3.0,
        generator=gen,
    )
    for _ in range(10):
        out, t = transform(coordinate_image(), target())
        width = t["boxes"][:, 2] - t["boxes"][:, 0]
        ratio = (OBJECTS[:, 2] - OBJECTS[:, 0]) / W / width
        assert (
            torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-4)
            and 1.0 <= float(ratio[0]) <= 3.0 + 1e-4
        )
        image_cols = ((out[2] < 250).sum(0) > 0).sum()
        assert abs(int(image_cols) - 200 / float(ratio[0])) <= 2


def test_sample_iou_crop_constraints():
    gen = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[20.0, 30, 120, 140], [200, 50, 260, 90], [150, 150, 290, 230]])
    width, height = 300, 240
    drawn = {}
    for _ in range(700):
        window, option = sample_iou_crop(boxes, width, height, generator=gen)
        drawn[option] = drawn.get(option, 0) + 1
        if window is None:
            continue
        x0, y0, x1, y1 = window
        w, h = x1 - x0, y1 - y0
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert int(0.3 * width) <= w <= width and int(0.3 * height) <= h <= height
        assert 0.5 <= w / h <= 2.0
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = (centres[:, 0] > x0) & (centres[:, 0] < x1) & (centres[:, 1] > y0) & (centres[:, 1] < y1)
        assert inside.any()
        iou = box_iou(torch.tensor([window], dtype=torch.float32), boxes)[0]
        assert float(iou.max()) >= option - 1e-6
    assert set(drawn) == {None, 0.1, 0.3, 0.5, 0.7, 0.9, 0.0}
    assert all(60 <= n <= 140 for n in drawn.values())  # uniform over 7 options: 100 each


def test_sample_iou_crop_gives_up_after_its_trials():
    tiny = torch.tensor([[10.0, 10, 14, 14]])
    window, option = sample_iou_crop(
        tiny, 1000, 1000, options=(0.9,), trials=50, generator=torch.Generator().manual_seed(0)
    )
    assert window is None and option == 0.9


def test_photometric_distort():
    gen = torch.Generator().manual_seed(0)
    image = coordinate_image()
    assert torch.equal(photometric_distort(image, p=0.0, generator=gen), image)
    # with neutral ranges only the channel swap is left: a permutation of the channels
    out = photometric_distort(
        image, p=1.0, brightness=(1, 1), contrast=(1, 1), saturation=(1, 1), hue=(0, 0), generator=gen
    )
    assert sorted(out[:, 5, 7].tolist()) == sorted(image[:, 5, 7].tolist())
    assert any(
        torch.equal(out, image[list(p)])
        for p in [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
    )
    changed = photometric_distort(image, p=1.0, generator=gen)
    assert changed.dtype == torch.uint8 and changed.shape == image.shape and not torch.equal(changed, image)


def test_eval_transform_resizes_only():
    t = target()
    t["difficult"][2] = True
    out, res = EvalTransform((100, 120))(coordinate_image(), t)
    assert out.shape == (3, 100, 120) and out.dtype == torch.uint8
    torch.testing.assert_close(res["boxes"], OBJECTS / torch.tensor([W, H, W, H]))
    assert res["orig_size"] == (H, W) and res["difficult"].tolist() == [False, False, True, False]


def test_collate_stacks_and_refuses_mixed_sizes():
    batch = [EvalTransform(64)(coordinate_image(), target()) for _ in range(3)]
    images, targets = collate(batch)
    assert images.shape == (3, 3, 64, 64) and images.dtype == torch.uint8 and len(targets) == 3
    with pytest.raises(ValueError, match="one size"):
        collate(
            [(torch.zeros(3, 4, 4, dtype=torch.uint8), {}), (torch.zeros(3, 5, 4, dtype=torch.uint8), {})]
        )


def test_matches_torchvision_pad_crop_flip_resize():
    """The fused zoom-out/crop/flip/resize equals torchvision's v2 ops on tv_tensors done one after another."""
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import functional as F

    gen = torch.Generator().manual_seed(11)
    size = (150, 180)
    transform = TrainTransform(size, mean=(0.2, 0.4, 0.6), photometric=False, expand_p=0.7, generator=gen)
    image = coordinate_image()
    fill = [51, 102, 153]
    exact = 0
    for _ in range(16):
        p = transform.make_params((H, W), target())
        out, t = transform.apply(image, target(), p)
        (ox, oy), (cw, ch), (x0, y0, x1, y1) = p["offset"], p["canvas"], p["window"]
        img = tv_tensors.Image(image)
        boxes = tv_tensors.BoundingBoxes(OBJECTS[p["keep"]], format="XYXY", canvas_size=(H, W))
        padding = [ox, oy, cw - W - ox, ch - H - oy]
        img, boxes = F.pad(img, padding, fill=fill), F.pad(boxes, padding)
        img, boxes = F.crop(img, y0, x0, y1 - y0, x1 - x0), F.crop(boxes, y0, x0, y1 - y0, x1 - x0)
        if p["flip"]:
            img, boxes = F.horizontal_flip(img), F.horizontal_flip(boxes)
        img, boxes = F.resize(img, list(size), antialias=True), F.resize(boxes, list(size))
        torch.testing.assert_close(
            t["boxes"] * torch.tensor([size[1], size[0]] * 2),
            boxes.as_subclass(torch.Tensor),
            atol=1e-3,
            rtol=0,
        )
        diff = (out.int() - img.as_subclass(torch.Tensor).int()).abs()
        if x0 >= ox and y0 >= oy and x1 <= ox + W and y1 <= oy + H:  # no canvas visible: the same pixels
            assert diff.max() <= 1
            exact += 1
        else:  # the image edge may sit half an output pixel apart and blend differently with the fill
            assert diff.float().mean() < 3 and (diff > 40).float().mean() < 0.03
    assert 3 <= exact < 16
