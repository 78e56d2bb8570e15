"""Readers: VOC, COCO and YOLO on files the tests write; conventions, class names, splits, detection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from singleshot.data import (
    VOC_CLASSES,
    EvalTransform,
    TrainTransform,
    collate,
    default_split,
    detect_format,
    list_splits,
    open_dataset,
    synthesize,
)
from singleshot.data.voc import annotation_xml
from singleshot.data.yolo import label_path, parse_simple_yaml
from singleshot.errors import UserError


def write_image(path: Path, width: int = 50, height: int = 40, colour=(120, 30, 200)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), colour).save(path)


def voc_xml(objects, width=50, height=40, filename="a.jpg") -> str:
    """objects: (name, xmin, ymin, xmax, ymax, difficult)."""
    parts = [
        f"<annotation><filename>{filename}</filename><size><width>{width}</width><height>{height}</height>"
        "<depth>3</depth></size>"
    ]
    for name, x1, y1, x2, y2, diff in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>{diff}</difficult><bndbox><xmin>{x1}</xmin>"
            f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def make_voc(root: Path, images: dict[str, list], splits: dict[str, list[str]], size=(50, 40)) -> Path:
    for image_id, objects in images.items():
        write_image(root / "JPEGImages" / f"{image_id}.jpg", *size)
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{image_id}.xml").write_text(
            voc_xml(objects, *size, filename=f"{image_id}.jpg")
        )
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for name, ids in splits.items():
        (root / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


# -- VOC -----------------------------------------------------------------------------------------------------
def test_voc_box_convention_difficult_and_tolerance(tmp_path):
    root = make_voc(
        tmp_path / "voc",
        {
            "a": [("dog", 1, 1, 10, 20, 0), ("cat", 5, 6, 5, 6, 1)],  # the second: one pixel, difficult
            "b": [("person", 0, 3, 52, 41, 0)],  # 1-2 px outside the 50x40 image: clipped silently
        },
        {"train": ["a", "b"]},
    )
    ds = open_dataset(root, "train")
    assert ds.format == "voc" and ds.class_names == list(VOC_CLASSES) and ds.problems == []
    image, t = ds[0]
    assert image.shape == (3, 40, 50) and image.dtype == torch.uint8
    # x1 = xmin - 1, x2 = xmax: a box from pixel 1 to 10 (inclusive, 1-based) is 10 wide
    torch.testing.assert_close(t["boxes"], torch.tensor([[0.0, 0, 10, 20], [4, 5, 5, 6]]))
    assert t["labels"].tolist() == [VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("cat") + 1]
    assert t["difficult"].tolist() == [False, True] and t["iscrowd"].tolist() == [False, False]
    assert t["image_id"] == 0 and t["path"].endswith("a.jpg")
    _, t = ds[1]
    torch.testing.assert_close(t["boxes"], torch.tensor([[0.0, 2, 50, 40]]))
    assert ds.image_info(1) == (str(root / "JPEGImages" / "b.jpg"), 50, 40)


def test_voc_writer_is_the_inverse_of_the_reader(tmp_path):
    boxes = np.array([[0, 0, 10, 20], [3, 4, 50, 40]], dtype=np.float32)
    xml = annotation_xml("a.jpg", 50, 40, boxes, ["x", "y"], [False, True])
    assert "<xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>20</ymax>" in xml
    root = tmp_path / "voc"
    write_image(root / "JPEGImages" / "a.jpg")
    (root / "Annotations").mkdir()
    (root / "Annotations" / "a.xml").write_text(xml)
    ds = open_dataset(root)  # no ImageSets: every annotation
    t = ds.annotation(0)
    torch.testing.assert_close(t["boxes"], torch.from_numpy(boxes))
    assert ds.class_names == ["x", "y"] and t["difficult"].tolist() == [False, True]


def test_voc_class_names_from_all_splits_and_overrides(tmp_path):
    root = make_voc(
        tmp_path / "voc",
        {"a": [("zebra", 1, 1, 5, 5, 0)], "b": [("apple", 1, 1, 5, 5, 0)]},
        {"train": ["a"], "test": ["b"]},
    )
    train, test = open_dataset(root, "train"), open_dataset(root, "test")
    assert train.class_names == test.class_names == ["apple", "zebra"]  # sorted, from every annotation
    assert train[0][1]["labels"].tolist() == [2]
    given = open_dataset(root, "train", classes=["zebra", "apple"])
    assert given[0][1]["labels"].tolist() == [1]
    (tmp_path / "names.txt").write_text("# my classes\nzebra\n\napple\n")
    assert open_dataset(root, "test", classes=tmp_path / "names.txt").class_names == ["zebra", "apple"]
    (root / "classes.txt").write_text("apple\nzebra\nkiwi\n")
    assert open_dataset(root, "train").class_names == ["apple", "zebra", "kiwi"]
    with pytest.raises(UserError, match="twice"):
        open_dataset(root, "train", classes=["a", "a"])


def test_voc_splits_and_default_split(tmp_path):
    root = make_voc(
        tmp_path / "voc",
        {"a": [], "b": []},
        {"train": ["a"], "val": ["b"], "trainval": ["a", "b"], "test": ["b"], "dog_train": ["a"]},
    )
    assert list_splits(root) == ["test", "train", "trainval", "val"]  # per-class lists left out
    assert default_split(root, "train") == "trainval" and default_split(root, "eval") == "test"
    assert len(open_dataset(root)) == 2  # trainval
    with pytest.raises(UserError, match="split 'nope' not found.*test, train, trainval, val"):
        open_dataset(root, "nope")
    devkit = tmp_path / "VOCdevkit"
    devkit.mkdir()
    (tmp_path / "voc").rename(devkit / "VOC2007")
    assert detect_format(devkit) == "voc" and len(open_dataset(devkit, "train")) == 1


# -- COCO ----------------------------------------------------------------------------------------------------
def coco_json(images, annotations, categories) -> dict:
    return {"images": images, "annotations": annotations, "categories": categories}


def test_coco_categories_ids_crowd_and_layout(tmp_path):
    root = tmp_path / "coco"
    write_image(root / "val2017" / "x.jpg", 64, 48)
    write_image(root / "val2017" / "y.jpg", 64, 48)
    data = coco_json(
        [
            {"id": 42, "file_name": "x.jpg", "width": 64, "height": 48},
            {"id": 7, "file_name": "y.jpg", "width": 64, "height": 48},
        ],
        [
            {"id": 1, "image_id": 42, "category_id": 18, "bbox": [10.5, 4, 20, 30], "iscrowd": 0},
            {"id": 2, "image_id": 42, "category_id": 1, "bbox": [0, 0, 64, 48], "iscrowd": 1},
            {"id": 3, "image_id": 7, "category_id": 90, "bbox": [1, 2, 3, 4]},
        ],
        [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
    )
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    assert detect_format(root) == "coco" and list_splits(root) == ["val2017"]
    ds = open_dataset(root, "val2017")
    assert ds.class_names == ["person", "dog", "toothbrush"]  # ordered by category id
    assert ds.coco_category_ids == [1, 18, 90]
    assert ds.annotation_file == str(root / "annotations" / "instances_val2017.json")
    image, t = ds[0]
    assert image.shape == (3, 48, 64) and t["image_id"] == 42
    torch.testing.assert_close(t["boxes"], torch.tensor([[10.5, 4, 30.5, 34], [0, 0, 64, 48]]))
    assert t["labels"].tolist() == [2, 1] and t["iscrowd"].tolist() == [False, True]
    assert [ds.coco_category_ids[i - 1] for i in t["labels"].tolist()] == [18, 1]
    assert ds[1][1]["image_id"] == 7 and ds[1][1]["labels"].tolist() == [3]
    # the JSON file itself as the path finds the same images
    same = open_dataset(root / "annotations" / "instances_val2017.json")
    assert len(same) == 2 and same[0][1]["path"] == t["path"]
    # a model's class list maps categories by name
    mapped = open_dataset(root, "val2017", classes=["dog", "person", "toothbrush"])
    assert mapped[0][1]["labels"].tolist() == [1, 2] and mapped.coco_category_ids == [18, 1, 90]


def test_coco_roboflow_layout(tmp_path):
    root = tmp_path / "rf"
    for split in ("train", "valid"):
        write_image(root / split / "p.jpg")
        (root / split / "_annotations.coco.json").write_text(
            json.dumps(
                coco_json(
                    [{"id": 0, "file_name": "p.jpg", "width": 50, "height": 40}],
                    [{"id": 0, "image_id": 0, "category_id": 0, "bbox": [1, 1, 5, 5]}],
                    [{"id": 0, "name": "thing"}],
                )
            )
        )
    assert detect_format(root) == "coco" and list_splits(root) == ["train", "valid"]
    assert default_split(root, "eval") == "valid"
    assert open_dataset(root, "valid")[0][1]["boxes"].tolist() == [[1.0, 1.0, 6.0, 6.0]]


# -- YOLO ----------------------------------------------------------------------------------------------------
def test_simple_yaml_subset():
    text = """# a data.yaml
path: ../datasets/x   # root
train: images/train
val: [images/val, 'images/extra # not a comment']
nc: 3
names:
  0: person
  1: "traffic light"
  2: dog
"""
    data = parse_simple_yaml(text)
    assert data == {
        "path": "../datasets/x",
        "train": "images/train",
        "val": ["images/val", "images/extra # not a comment"],
        "nc": 3,
        "names": {0: "person", 1: "traffic light", 2: "dog"},
    }
    assert parse_simple_yaml("names:\n  - a\n  - 'b c'\n") == {"names": ["a", "b c"]}
    assert parse_simple_yaml("names: [a, b]\ntest:\n") == {"names": ["a", "b"], "test": None}


def test_yolo_layout_labels_polygons_and_names(tmp_path):
    root = tmp_path / "yolo"
    write_image(root / "images" / "train" / "a.jpg", 100, 50)
    write_image(root / "images" / "train" / "b.png", 100, 50)  # no label file: no objects
    write_image(root / "images" / "val" / "c.jpg", 100, 50)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text(
        "1 0.5 0.5 0.2 0.4\n\n0 0.1 0.1 0.3 0.1 0.3 0.5 0.1 0.5\n"
    )
    (root / "labels" / "val" / "c.txt").write_text("0 0.25 0.5 0.5 1.0\n")
    (root / "data.yaml").write_text(
        "path: .\ntrain: images/train\nval: images/val\nnames:\n  - cat\n  - dog\n"
    )
    (root / "results.json").write_text("{}")  # a stray JSON does not make it COCO
    assert detect_format(root) == "yolo" and detect_format(root / "data.yaml") == "yolo"
    assert list_splits(root) == ["train", "val"]
    ds = open_dataset(root, "train")
    assert ds.class_names == ["cat", "dog"] and len(ds) == 2 and ds.normalized
    image, t = ds[0]
    assert image.shape == (3, 50, 100)
    # centre (50, 25), size (20, 20); the polygon's bounding box (10..30, 5..25)
    torch.testing.assert_close(t["boxes"], torch.tensor([[40.0, 15, 60, 35], [10, 5, 30, 25]]))
    assert t["labels"].tolist() == [2, 1]
    assert ds[1][1]["boxes"].shape == (0, 4)
    assert ds.image_info(0) == (str(root / "images" / "train" / "a.jpg"), 100, 50)
    assert open_dataset(root / "data.yaml", "val")[0][1]["boxes"].tolist() == [[0.0, 0.0, 50.0, 50.0]]
    # a checkpoint's class list is matched by name, not by position
    remapped = open_dataset(root, "train", classes=["dog", "cat"])
    assert remapped[0][1]["labels"].tolist() == [1, 2]
    with pytest.raises(UserError, match="'cat' \\(id 0\\) is not in the class list"):
        open_dataset(root, "val", classes=["dog"])
    # without data.yaml: splits from images/<split>, names from classes.txt
    (root / "data.yaml").unlink()
    (root / "classes.txt").write_text("cat\ndog\n")
    assert list_splits(root) == ["train", "val"] and open_dataset(root, "val").class_names == ["cat", "dog"]


def test_yolo_label_path_rule():
    assert label_path(Path("/d/images/train/x/a.jpg")) == Path("/d/labels/train/x/a.txt")
    assert label_path(Path("/images/d/images/a.png")) == Path("/images/d/labels/a.txt")
    assert label_path(Path("/d/flat/a.jpeg")) == Path("/d/flat/a.txt")


def test_yolo_txt_split_lists_and_roboflow_valid(tmp_path):
    root = tmp_path / "rf"
    write_image(root / "train" / "images" / "a.jpg")
    write_image(root / "valid" / "images" / "b.jpg")
    (root / "train" / "labels").mkdir(parents=True)
    (root / "valid" / "labels").mkdir(parents=True)
    (root / "train" / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "valid" / "labels" / "b.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "data.yaml").write_text("train: train/images\nvalid: valid/images\nnames: ['thing']\n")
    assert list_splits(root) == ["train", "val"] and len(open_dataset(root, "valid")) == 1
    (root / "list.txt").write_text("train/images/a.jpg\nvalid/images/b.jpg\n")
    (root / "data.yaml").write_text("train: list.txt\nnames: ['thing']\n")
    assert len(open_dataset(root, "train")) == 2


# -- all formats -----------------------------------------------------------------------------------------------
def test_the_three_formats_of_one_synthetic_set_agree(tmp_path):
    sets = {
        f: synthesize(tmp_path / f, 12, format=f, image_size=(96, 128), seed=3, splits="train=0.75,test=0.25")
        for f in ("voc", "coco", "yolo")
    }
    assert {s.num_objects for s in sets.values()} == {sets["voc"].num_objects} and sets[
        "voc"
    ].num_objects > 12
    for split in ("train", "test"):
        voc, coco, yolo = (open_dataset(tmp_path / f, split) for f in ("voc", "coco", "yolo"))
        assert voc.class_names == coco.class_names == yolo.class_names
        assert len(voc) == len(coco) == len(yolo) == (9 if split == "train" else 3)
        for i in range(len(voc)):
            a, b, c = voc.annotation(i), coco.annotation(i), yolo.annotation(i)
            torch.testing.assert_close(a["boxes"], b["boxes"])
            torch.testing.assert_close(a["boxes"], c["boxes"], atol=1e-3, rtol=0)
            assert a["labels"].tolist() == b["labels"].tolist() == c["labels"].tolist()
            assert voc.image_info(i)[1:] == coco.image_info(i)[1:] == yolo.image_info(i)[1:] == (128, 96)
        image, _ = yolo[0]
        assert image.shape == (3, 96, 128)
    assert list_splits(tmp_path / "voc") == ["test", "train"]


def test_loader_with_transforms_and_collate(tmp_path):
    synthesize(tmp_path / "s", 8, image_size=80, seed=1, splits="train=1")
    train = open_dataset(tmp_path / "s", "train", transform=TrainTransform(64))
    images, targets = next(iter(DataLoader(train, batch_size=4, collate_fn=collate)))
    assert images.shape == (4, 3, 64, 64) and images.dtype == torch.uint8 and len(targets) == 4
    assert all(((t["boxes"] >= 0) & (t["boxes"] <= 1)).all() for t in targets)
    test = open_dataset(tmp_path / "s", "train", transform=EvalTransform(64))
    images, targets = collate([test[0], test[1]])
    assert targets[0]["orig_size"] == (80, 80) and images.shape == (2, 3, 64, 64)


def test_detect_format_and_bad_paths(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        detect_format(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="give --format"):
        detect_format(tmp_path / "empty")
    with pytest.raises(UserError, match="unknown"):
        open_dataset(tmp_path / "empty", format="pascal")
    with pytest.raises(UserError, match="not a Pascal VOC folder"):
        open_dataset(tmp_path / "empty", format="voc")


def test_coco_folder_without_annotation_files_is_one_clear_sentence(tmp_path):
    from singleshot.data import open_dataset
    from singleshot.errors import UserError

    (tmp_path / "annotations").mkdir()
    with pytest.raises(
        UserError, match=r"holds no COCO annotation file: expected annotations/instances_<split>\.json"
    ):
        open_dataset(tmp_path, format="coco")
