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
