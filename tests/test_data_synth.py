"""The synthetic data generator: deterministic, every layout, knobs, splits, the command."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from singleshot.cli import main
from singleshot.data import SHAPES, check_dataset, list_splits, open_dataset, synthesize
from singleshot.data.synth import parse_splits, render_image
from singleshot.errors import UserError


def digest(folder) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_files_whatever_the_workers(tmp_path):
    synthesize(tmp_path / "a", 10, seed=4, workers=1)
    synthesize(tmp_path / "b", 10, seed=4, workers=2)
    synthesize(tmp_path / "c", 10, seed=5)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")


def test_voc_default_splits_include_trainval(tmp_path):
    summary = synthesize(tmp_path / "s", 20, image_size=64)
    assert summary.splits == {"train": 14, "val": 2, "test": 4, "trainval": 16}
    assert list_splits(tmp_path / "s") == ["test", "train", "trainval", "val"]
    trainval, test = open_dataset(tmp_path / "s"), open_dataset(tmp_path / "s", "test")
    assert trainval.split == "trainval" and len(trainval) == 16 and len(test) == 4
    assert not {trainval.image_info(i).path for i in range(16)} & {test.image_info(i).path for i in range(4)}
    assert trainval.class_names == list(SHAPES[:5])
    assert check_dataset(tmp_path / "s") == []


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_other_layouts_pass_their_own_checks(tmp_path, fmt):
    summary = synthesize(tmp_path / fmt, 10, format=fmt, image_size=(48, 80), splits="train=0.8,test=0.2")
    assert summary.splits == {"train": 8, "test": 2}
    assert check_dataset(tmp_path / fmt) == []
    image, target = open_dataset(tmp_path / fmt, "test")[0]
    assert image.shape == (3, 48, 80) and len(target["boxes"]) >= 1


def test_render_image_knobs():
    rng = np.random.default_rng(0)
    sizes, counts = [], []
    for _ in range(40):
        im, boxes, classes = render_image(
            rng,
            200,
            160,
            ("circle", "ring"),
            min_size=0.1,
            max_size=0.3,
            min_objects=2,
            max_objects=4,
            clutter=1.0,
            max_overlap=0.2,
        )
        assert im.size == (200, 160) and im.mode == "RGB"
        assert set(classes.tolist()) <= {0, 1}
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 200).all() and (boxes[:, 3] <= 160).all()
        assert (boxes == np.round(boxes)).all()  # on pixel edges, so every layout stores them exactly
        side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        sizes += side.tolist()
        counts.append(len(boxes))
        for i in range(len(boxes)):  # partial overlaps only
            for j in range(len(boxes)):
                if i != j:
                    iw = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
                    ih = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
                    area = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
                    assert max(iw, 0) * max(ih, 0) <= 0.2 * area + 1e-6
    assert 14 <= min(sizes) and max(sizes) <= 0.3 * 160 * 1.4 + 2
    assert min(counts) >= 1 and max(counts) <= 4 and np.mean(counts) > 2.5


def test_objects_differ_from_their_background():
    """Each object's colour stands out from what surrounds it, so shape is learnable, not guessed."""
    rng = np.random.default_rng(1)
    for _ in range(10):
        im, boxes, _ = render_image(
            rng,
            160,
            160,
            SHAPES[:5],
            min_size=0.2,
            max_size=0.3,
            min_objects=1,
            max_objects=1,
            clutter=0.0,
            max_overlap=0.3,
        )
        a = np.asarray(im, dtype=np.float32)
        x1, y1, x2, y2 = boxes[0].astype(int)
        cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
        centre = a[cy - 1 : cy + 2, cx - 1 : cx + 2].reshape(-1, 3).mean(0)
        ring = np.concatenate([a[max(y1 - 3, 0), x1:x2], a[min(y2 + 2, 159), x1:x2]]).mean(0)
        assert np.linalg.norm(centre - ring) > 40


def test_parse_splits_and_bad_arguments(tmp_path):
    assert parse_splits("train=3, test=1") == [("train", 0.75), ("test", 0.25)]
    for bad in ("train", "train=x", "train=0", "a=1,a=1", "=1"):
        with pytest.raises(UserError):
            parse_splits(bad)
    (tmp_path / "x").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        synthesize(tmp_path, 2)
    with pytest.raises(UserError, match="--format"):
        synthesize(tmp_path / "f", 2, format="kitti")
    with pytest.raises(UserError, match="--classes"):
        synthesize(tmp_path / "f", 2, num_classes=len(SHAPES) + 1)
    with pytest.raises(UserError, match="sizes"):
        synthesize(tmp_path / "f", 2, min_size=0.5, max_size=0.2)


def test_overwrite_replaces_only_what_synth_writes(tmp_path):
    synthesize(tmp_path / "s", 6, image_size=48)
    (tmp_path / "s" / "notes.txt").write_text("mine")
    synthesize(tmp_path / "s", 3, image_size=48, overwrite=True, splits="train=1")
    assert (tmp_path / "s" / "notes.txt").read_text() == "mine"
    assert list_splits(tmp_path / "s") == ["train"] and len(open_dataset(tmp_path / "s", "train")) == 3


def test_synth_command(tmp_path, capsys):
    out = tmp_path / "cmd"
    assert (
        main(
            [
                "synth",
                str(out),
                "--images",
                "6",
                "--format",
                "yolo",
                "--image-size",
                "96x64",
                "--classes",
                "3",
                "--objects",
                "2-3",
                "--splits",
                "train=0.5,val=0.5",
            ]
        )
        == 0
    )
    assert "wrote 6 images" in capsys.readouterr().out
    ds = open_dataset(out, "val")
    assert ds.class_names == list(SHAPES[:3]) and ds[0][0].shape == (3, 64, 96)
    assert all(2 <= len(ds.annotation(i)["labels"]) <= 3 for i in range(len(ds)))
    assert main(["synth", str(out), "--images", "2"]) == 2  # not empty: a one-line error, exit 2
    assert "not empty" in capsys.readouterr().err
    assert main(["synth", str(tmp_path / "x"), "--image-size", "big"]) == 2
    assert main(["synth", str(tmp_path / "y"), "--objects", "3-"]) == 2


def test_synthesized_boxes_frame_their_shapes(tmp_path):
    """The pixels of the shape's colour around each box have that box as their bounding box (shapes without
    thin tips, whose anti-aliased points are too faint to find by colour)."""
    synthesize(
        tmp_path / "s",
        8,
        image_size=128,
        splits="train=1",
        min_objects=1,
        max_objects=1,
        min_size=0.2,
        max_size=0.4,
        clutter=0.0,
        shapes=("square", "circle", "cross", "ring"),
    )
    ds = open_dataset(tmp_path / "s", "train")
    for i in range(len(ds)):
        image, target = ds[i]
        box = target["boxes"][0]
        x1, y1, x2, y2 = box.long().tolist()
        cy = (y1 + y2) // 2 if target["labels"][0] != 4 else y1 + 2  # a ring is hollow: its top instead
        colour = image[:, cy, (x1 + x2) // 2].float()
        lo_x, lo_y = max(x1 - 3, 0), max(y1 - 3, 0)
        region = image[:, lo_y : y2 + 3, lo_x : x2 + 3].float()
        ys, xs = torch.nonzero((region - colour[:, None, None]).abs().amax(0) < 40, as_tuple=True)
        found = torch.tensor([xs.min() + lo_x, ys.min() + lo_y, xs.max() + 1 + lo_x, ys.max() + 1 + lo_y])
        assert (found - box).abs().max() <= 2, (i, found, box)


def _boxes_inside(ds) -> None:
    for i in range(len(ds)):
        info, ann = ds.image_info(i), ds.annotation(i)
        b = ann["boxes"]
        if len(b):
            assert (b[:, :2] >= 0).all() and (b[:, 2] <= info.width).all() and (b[:, 3] <= info.height).all()
            assert (b[:, 2:] > b[:, :2]).all()


@pytest.mark.parametrize("background", ["texture", "photo", "clutter", "mixed", "texture,photo"])
def test_backgrounds_are_deterministic_and_differ(tmp_path, background):
    kw = dict(image_size=(72, 96), splits="train=1", background=background, workers=1)
    synthesize(tmp_path / "a", 4, seed=2, **kw)
    synthesize(tmp_path / "b", 4, seed=2, **kw)
    synthesize(tmp_path / "g", 4, seed=2, image_size=(72, 96), splits="train=1", workers=1)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "g")
    _boxes_inside(open_dataset(tmp_path / "a", "train"))


def test_background_kinds_look_different():
    """Texture has more fine detail than the smooth photo-like field; clutter adds many edges; each kind
    keeps the requested size."""
    from singleshot.data.backgrounds import draw_background

    def detail(kind):
        values = []
        for s in range(6):
            im = draw_background(np.random.default_rng(s), 160, 120, kind, 0.0)
            assert im.size == (160, 120) and im.mode == "RGB"
            a = np.asarray(im, np.float32).mean(-1)
            values.append(np.abs(np.diff(a, axis=1)).mean())
        return float(np.mean(values))

    assert detail("photo") < detail("texture")
    assert detail("gradient") < detail("clutter")


def test_twenty_classes_by_shape_and_style(tmp_path):
    from singleshot.data.synth import class_parts

    assert len(SHAPES) == 20 and len(set(SHAPES)) == 20
    assert class_parts("square-outline") == ("square", "outline") and class_parts("l-shape") == (
        "l-shape",
        "solid",
    )
    assert class_parts("square-dotted") is None
    summary = synthesize(tmp_path / "s", 30, image_size=128, num_classes=20, splits="train=1", max_objects=6)
    ds = open_dataset(tmp_path / "s", "train")
    assert ds.class_names == list(SHAPES) and summary.class_names == list(SHAPES)
    seen = {int(c) for i in range(len(ds)) for c in ds.annotation(i)["labels"]}
    assert len(seen) >= 15 and max(seen) <= 20
    _boxes_inside(ds)
    with pytest.raises(UserError, match="unknown class"):
        synthesize(tmp_path / "x", 2, shapes=("circle", "circle-dotted"))


def test_styles_and_shading_change_the_fill():
    """A striped or two-tone object has two colours inside it, an outline has the background in its
    middle, a shaded object a range of brightness; a solid flat one has one colour."""

    def centre_spread(cls, shaded=False, clutter=0.0):
        spreads = []
        for s in range(6):
            im, boxes, _ = render_image(
                np.random.default_rng(s),
                160,
                160,
                (cls,),
                min_size=0.5,
                max_size=0.6,
                min_objects=1,
                max_objects=1,
                clutter=clutter,
                max_overlap=0.3,
                shaded=shaded,
            )
            a = np.asarray(im, np.float32)
            x1, y1, x2, y2 = boxes[0].astype(int)
            cx, cy, r = (x1 + x2) // 2, (y1 + y2) // 2, (x2 - x1) // 6
            patch = a[cy - r : cy + r, cx - r : cx + r].reshape(-1, 3)
            spreads.append(float(patch.std(0).max()))
        return np.median(spreads)

    flat = centre_spread("square")
    assert flat < 3
    assert centre_spread("square-striped") > 30 and centre_spread("square-two-tone") > 30
    assert centre_spread("square", shaded=True) > 8


def test_outline_has_a_hole():
    im, boxes, _ = render_image(
        np.random.default_rng(0),
        160,
        160,
        ("square-outline",),
        min_size=0.5,
        max_size=0.6,
        min_objects=1,
        max_objects=1,
        clutter=0.0,
        max_overlap=0.3,
    )
    bg, _, _ = render_image(
        np.random.default_rng(0),
        160,
        160,
        ("square-outline",),
        min_size=0.5,
        max_size=0.6,
        min_objects=0,
        max_objects=0,
        clutter=0.0,
        max_overlap=0.3,
    )
    a, b = np.asarray(im, np.float32), np.asarray(bg, np.float32)
    x1, y1, x2, y2 = boxes[0].astype(int)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    assert np.abs(a[cy, cx] - b[cy, cx]).max() < 2  # the middle shows the background
    solid, _, _ = render_image(
        np.random.default_rng(0),
        160,
        160,
        ("square",),
        min_size=0.5,
        max_size=0.6,
        min_objects=1,
        max_objects=1,
        clutter=0.0,
        max_overlap=0.3,
    )
    painted = np.abs(a - b).max(-1)[y1:y2, x1:x2] > 20
    painted_solid = np.abs(np.asarray(solid, np.float32) - b).max(-1)[y1:y2, x1:x2] > 20
    # the stroke is the square less its middle scaled by 0.6: 1 - 0.36 of the solid square's pixels
    assert abs(painted.sum() / painted_solid.sum() - 0.64) < 0.06


def test_occlusion_lets_later_objects_cover_more():
    def worst(occlusion):
        most = 0.0
        for s in range(40):
            _, boxes, _ = render_image(
                np.random.default_rng(s),
                128,
                128,
                SHAPES[:5],
                min_size=0.3,
                max_size=0.5,
                min_objects=6,
                max_objects=6,
                clutter=0.0,
                max_overlap=0.3,
                occlusion=occlusion,
                occluders=0.5,
            )
            for i in range(len(boxes)):  # what the later boxes cover of box i, summed
                total = 0.0
                for j in range(i + 1, len(boxes)):
                    iw = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
                    ih = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
                    total += (
                        max(iw, 0) * max(ih, 0) / ((boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1]))
                    )
                assert total <= (occlusion if occlusion is not None else 1.0) + 1e-6
                most = max(most, total)
        return most

    assert worst(None) <= 0.3 * 5 + 1e-6
    assert worst(0.7) > 0.45


def test_image_sizes_per_image(tmp_path):
    from singleshot.data.synth import parse_image_sizes

    assert parse_image_sizes(300) == (((300, 300), (300, 300)),)
    assert parse_image_sizes((48, 80)) == (((48, 48), (80, 80)),)
    assert parse_image_sizes("320x240,40-60") == (((240, 240), (320, 320)), ((40, 60), (40, 60)))
    assert parse_image_sizes([(40, 50), (50, 40)]) == (((40, 40), (50, 50)), ((50, 50), (40, 40)))
    for bad in ("big", "10", "64-40", "64x"):
        with pytest.raises(UserError, match="--image-size"):
            parse_image_sizes(bad)
    for fmt in ("voc", "coco", "yolo"):
        synthesize(tmp_path / fmt, 16, format=fmt, image_size="48-96", splits="train=1", workers=1)
        ds = open_dataset(tmp_path / fmt, "train")
        shapes = {(ds.image_info(i).height, ds.image_info(i).width) for i in range(len(ds))}
        assert all(48 <= h <= 96 and 48 <= w <= 96 for h, w in shapes)
        assert any(h > w for h, w in shapes) and any(w > h for h, w in shapes)
        for i in range(len(ds)):
            image, _ = ds[i]
            assert image.shape[1:] == (ds.image_info(i).height, ds.image_info(i).width)
        _boxes_inside(ds)
        assert check_dataset(tmp_path / fmt) == []


def test_large_objects_still_fit():
    placed = 0
    for s in range(30):
        _, boxes, _ = render_image(
            np.random.default_rng(s),
            200,
            120,
            SHAPES,
            min_size=0.6,
            max_size=0.7,
            min_objects=1,
            max_objects=1,
            clutter=0.0,
            max_overlap=0.3,
        )
        placed += len(boxes)
        if len(boxes):
            assert boxes[0, 3] <= 120 and boxes[0, 2] <= 200
            assert max(boxes[0, 2] - boxes[0, 0], boxes[0, 3] - boxes[0, 1]) >= 0.6 * 120 * 0.7
    assert placed >= 28


@pytest.mark.parametrize("fmt", ["voc", "coco", "yolo"])
def test_background_only_images_have_no_objects(tmp_path, fmt):
    synthesize(
        tmp_path / fmt, 40, format=fmt, image_size=64, splits="train=1", background_only=0.3, workers=1
    )
    ds = open_dataset(tmp_path / fmt, "train")
    assert len(ds) == 40
    empty = [i for i in range(len(ds)) if len(ds.annotation(i)["boxes"]) == 0]
    assert 4 <= len(empty) <= 22
    assert check_dataset(tmp_path / fmt) == []


def test_difficult_marks_small_objects_in_voc_only(tmp_path):
    synthesize(
        tmp_path / "v",
        12,
        image_size=200,
        splits="train=1",
        min_size=0.03,
        max_size=0.3,
        max_objects=6,
        difficult_below=14,
    )
    ds = open_dataset(tmp_path / "v", "train")
    n_hard = 0
    for i in range(len(ds)):
        ann = ds.annotation(i)
        b = np.asarray(ann["boxes"])
        short = np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
        assert (np.asarray(ann["difficult"]) == (short < 14)).all()
        n_hard += int((short < 14).sum())
    assert 0 < n_hard < sum(len(ds.annotation(i)["boxes"]) for i in range(len(ds)))
    with pytest.raises(UserError, match="VOC"):
        synthesize(tmp_path / "c", 2, format="coco", difficult_below=14)


def test_synth_command_new_options(tmp_path, capsys):
    out = tmp_path / "cmd"
    args = ["synth", str(out), "--images", "8", "--format", "coco", "--image-size", "96x64,64x96"]
    args += ["--background", "mixed", "--shaded", "--occlusion", "0.6", "--occluders", "0.3"]
    args += ["--background-only", "0.2", "--shapes", "heart,arrow,square-outline", "--splits", "train=1"]
    assert main(args) == 0
    ds = open_dataset(out, "train")
    assert ds.class_names == ["heart", "arrow", "square-outline"]
    assert {(ds.image_info(i).width, ds.image_info(i).height) for i in range(8)} <= {(96, 64), (64, 96)}
    capsys.readouterr()
    assert main(["synth", str(tmp_path / "x"), "--background", "fog"]) == 2
    assert "--background" in capsys.readouterr().err
