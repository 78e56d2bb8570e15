"""The columnar COCO index: the objects of every image as pycocotools indexes them, checked box by box with
``validate_box``; and the table's round trips (records, selections, subsets)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from singleshot.data import open_dataset
from singleshot.data.records import ImageRecord, RecordTable, validate_box

SIZES = [(64, 48), (48, 64), (100, 30)]


def _messy_coco(tmp_path, seed=0, num_images=120):
    """A COCO file whose annotations hold every kind of box the reader must keep, clip or drop."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for k in range(num_images):
        w, h = SIZES[k % len(SIZES)]
        images.append({"id": 1000 + 7 * k, "file_name": f"im{k:04d}.jpg", "width": w, "height": h})
    images.append(dict(images[3], file_name="repeat.jpg"))  # a repeated image id: left out
    for n in range(6 * num_images):
        im = images[int(rng.integers(num_images))]
        w, h = im["width"], im["height"]
        kind = rng.integers(12)
        x, y = float(rng.uniform(-1, w - 2)), float(rng.uniform(-1, h - 2))
        bw, bh = float(rng.uniform(0.5, w)), float(rng.uniform(0.5, h))
        bbox = [
            round(x, 2),
            round(y, 2),
            round(bw, 2),
            round(bh, 2),
        ]  # inside, or out by up to ~w: clip or drop
        if kind == 0:
            bbox[2] = 0  # zero width
        elif kind == 1:
            bbox = [x, y, "3", bh]  # not a number
        elif kind == 2:
            bbox = [x, y, bw]  # three numbers
        elif kind == 3:
            bbox = [int(x), int(y), int(bw) + 1, int(bh) + 1]  # integers
        ann = {"id": n + 1, "image_id": im["id"], "category_id": int(rng.choice([3, 5, 9])), "bbox": bbox}
        if kind == 4:
            ann["iscrowd"] = 1
        elif kind == 5:
            ann["category_id"] = 4  # unknown category
        elif kind == 6:
            ann["image_id"] = 5  # unknown image
        elif kind == 7 and n > 0:
            ann["id"] = n  # the id of the annotation before: the repeat is left out
        annotations.append(ann)
    categories = [{"id": c, "name": f"c{c}"} for c in (9, 3, 5)]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    for im in images:
        (tmp_path / im["file_name"]).write_bytes(b"")
    return path


def _expected(path):
    """image id -> (boxes, labels, iscrowd) from pycocotools' index (``imgToAnns``, file order), each box
    checked by ``validate_box``; and the number of annotations left out."""
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO

    coco = COCO(str(path))
    label_of = {c: i + 1 for i, c in enumerate(sorted(coco.cats))}
    first_of_id, seen = set(), set()  # an annotation id given twice: the first in the file is kept
    for a in coco.dataset["annotations"]:
        if a["id"] not in seen:
            first_of_id.add(id(a))
            seen.add(a["id"])
    images = {}
    for im in coco.dataset["images"]:  # an image id given twice: the first is kept
        images.setdefault(im["id"], im)
    expected = {}
    for iid, im in images.items():
        boxes, labels, crowd = [], [], []
        for a in coco.imgToAnns[iid]:
            bbox = a["bbox"]
            if id(a) not in first_of_id or a["category_id"] not in label_of:
                continue
            ok = len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)
            x, y, w, h = [float(v) for v in bbox] if ok else [np.nan] * 4
            box, message = validate_box([x, y, x + w, y + h], im["width"], im["height"], "")
            if message is None:
                boxes.append(box)
                labels.append(label_of[a["category_id"]])
                crowd.append(bool(a.get("iscrowd", 0)))
        expected[iid] = (np.array(boxes, np.float32).reshape(-1, 4), np.array(labels), np.array(crowd, bool))
    dropped = len(coco.dataset["annotations"]) - sum(len(v[1]) for v in expected.values())
    return expected, dropped


def test_every_image_holds_the_objects_pycocotools_indexes_that_validate_box_keeps(tmp_path):
    path = _messy_coco(tmp_path)
    expected, dropped = _expected(path)
    dataset = open_dataset(path, skip_invalid=True)
    assert len(dataset) == len(expected) and dataset.num_dropped_images == 1  # the repeated image id
    assert dataset.num_dropped_objects == dropped > 100
    assert dataset.class_names == ["c3", "c5", "c9"] and dataset.coco_category_ids == [3, 5, 9]
    for i in range(len(dataset)):
        target = dataset.annotation(i)
        boxes, labels, crowd = expected[target["image_id"]]
        assert np.array_equal(target["boxes"].numpy(), boxes), i
        assert target["labels"].tolist() == labels.tolist()
        assert target["iscrowd"].tolist() == crowd.tolist() and not target["difficult"].any()
    assert sum(len(v[1]) for v in expected.values()) == dataset.num_objects
    # The problems come in file order, each naming its annotation.
    where = [p.where for p in dataset.problems if p.drops == "object"]
    numbers = [int(w.split()[-1]) for w in where]
    assert len(where) == dropped and all(w.startswith("annotation") for w in where)
    assert numbers == sorted(numbers)


COLUMNS = ("paths", "names", "image_ids", "sizes", "offsets", "boxes", "labels", "difficult", "iscrowd")


def test_the_index_is_arrays_only_and_its_records_round_trip(tmp_path):
    dataset = open_dataset(_messy_coco(tmp_path, seed=1, num_images=30), skip_invalid=True)
    table = dataset._table
    for name in COLUMNS:
        assert getattr(table, name).dtype != object, name  # no Python object per image or box
    records = list(table)
    assert all(isinstance(r, ImageRecord) for r in records) and len(records) == len(dataset)
    again = RecordTable.from_records(records)
    for name in COLUMNS:
        assert np.array_equal(getattr(again, name), getattr(table, name)), name
    pick = np.array([5, 0, 17, 5])
    chosen = table.select(pick)
    for j, i in enumerate(pick):
        a, b = chosen[j], records[i]
        assert (a.path, a.image_id, a.width, a.height) == (b.path, b.image_id, b.width, b.height)
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.labels, b.labels)
        assert np.array_equal(a.iscrowd, b.iscrowd)
    mask = np.arange(len(table)) % 3 == 0
    assert [r.image_id for r in table.select(mask)] == [r.image_id for r in records[::3]]
    sub = dataset.subset(pick)
    assert [sub.annotation(j)["image_id"] for j in range(4)] == [records[i].image_id for i in pick]
    assert table[-1].image_id == records[-1].image_id
    with pytest.raises(IndexError):
        table[len(table)]


def test_an_image_without_a_size_is_kept_and_its_boxes_only_checked_for_size(tmp_path):
    data = {
        "images": [
            {"id": 1, "file_name": "a.jpg"},
            {"id": 2, "file_name": "b.jpg", "width": 10, "height": 10},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [500, 500, 20, 10]},  # no size: kept as is
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [-1.5, 2, 5, 20]},  # 12 px out of 10: dropped
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [-1.5, 2, 5, 9.5]},  # 1.5 px out: clipped
            {"id": 4, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, -1]},  # negative height: dropped
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / name).write_bytes(b"")
    dataset = open_dataset(path, skip_invalid=True)
    table = dataset._table
    assert table.sizes.tolist() == [[-1, -1], [10, 10]]
    assert table.boxes.tolist() == [[500, 500, 520, 510], [0, 2, 3.5, 10]]
    assert table.offsets.tolist() == [0, 1, 2]
    messages = [p.message for p in dataset.problems]
    assert messages == [
        "b.jpg: box lies 12 px outside the 10x10 image (bbox [-1.5, 2, 5, 20])",
        "a.jpg: box has zero or negative size (bbox [1, 1, 2, -1])",
    ]
