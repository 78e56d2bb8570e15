"""Bad data is named (file and object), never a traceback, never silently lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from singleshot.cli import main
from singleshot.data import check_data, check_dataset, describe_drops, open_dataset
from singleshot.errors import UserError

from .test_data_readers import make_voc, voc_xml, write_image


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def broken_voc(root: Path) -> Path:
    make_voc(
        root,
        {
            "good": [("dog", 1, 1, 10, 10, 0), ("cat", 0, 0, 51, 41, 0)],  # the second is 1 px out: fine
            "flat": [("dog", 10, 10, 5, 20, 0), ("dog", 2, 2, 8, 8, 0)],  # object 1: negative width
            "out": [("cat", 20, 20, 70, 30, 0)],  # 20 px beyond the 50 px width
            "trunc": [("dog", 1, 1, 10, 10, 0)],
            "gone": [("dog", 1, 1, 10, 10, 0)],
            "badxml": [],
        },
        {"train": ["good", "flat", "out", "trunc", "gone", "badxml", "nofile", "good"], "test": []},
    )
    # a large noisy JPEG so that cutting it in half really truncates the entropy-coded data
    Image.effect_noise((400, 300), 60).convert("RGB").save(root / "JPEGImages" / "trunc.jpg", quality=95)
    (root / "Annotations" / "trunc.xml").write_text(
        voc_xml([("dog", 1, 1, 10, 10, 0)], 400, 300, "trunc.jpg")
    )
    truncate(root / "JPEGImages" / "trunc.jpg")
    (root / "JPEGImages" / "gone.jpg").unlink()
    (root / "Annotations" / "badxml.xml").write_text("<annotation><object><name>dog</name>")
    return root


def test_check_data_names_every_voc_problem(tmp_path):
    root = broken_voc(tmp_path / "voc")
    report = check_data(root)
    text = [str(p) for p in report.errors]
    ann, img, main_dir = root / "Annotations", root / "JPEGImages", root / "ImageSets" / "Main"

    def has(*parts):
        return any(all(part in t for part in parts) for t in text)

    assert has(str(ann / "flat.xml"), "object 1", "zero or negative size")
    assert has(str(ann / "out.xml"), "object 1", "outside the 50x40 image")
    assert has(str(img / "trunc.jpg"), "cannot read the image", "truncated")
    assert has(str(img / "gone.jpg"), "image file is missing")
    assert has(str(ann / "badxml.xml"), "malformed XML")
    assert has(str(ann / "nofile.xml"), "annotation file is missing")
    assert has(str(main_dir / "train.txt"), "line 8", "listed twice")
    assert has(str(main_dir / "test.txt"), "lists no images")
    assert len(report.errors) == 8, text
    assert not any("good.xml" in t for t in text)  # the 1-px overhang is clipped silently
    assert report.splits["train"] == (3, 3)  # good (2 objects), flat (1 left), out (0 left)


def test_check_data_command_reports_all_and_exits_nonzero(tmp_path, capsys):
    root = broken_voc(tmp_path / "voc")
    assert main(["check-data", "--data", str(root)]) == 1
    out = capsys.readouterr().out
    assert out.count("error: ") == 8 and "8 errors, 0 warnings" in out
    good = make_voc(tmp_path / "fine", {"a": [("dog", 1, 1, 10, 10, 0)]}, {"train": ["a"]})
    assert main(["check-data", "--data", str(good)]) == 0
    assert "0 errors" in capsys.readouterr().out


def test_training_refuses_broken_data_unless_skip_invalid(tmp_path):
    root = broken_voc(tmp_path / "voc")
    with pytest.raises(UserError) as err:
        open_dataset(root, "train")
    message = str(err.value)
    assert "problems" in message and "check-data --data" in message and "--skip-invalid" in message
    assert "flat.xml (object 1): dog: box has zero or negative size" in message
    ds = open_dataset(root, "train", skip_invalid=True)
    # the truncated image is only found by decoding; "exists" checks keep it
    assert len(ds) == 4 and ds.num_dropped_images == 3 and ds.num_dropped_objects == 2
    assert "skipped 3 broken images and 2 broken objects" in describe_drops(ds)
    decoded = open_dataset(root, "train", skip_invalid=True, check_images="decode")
    assert len(decoded) == 3 and decoded.num_dropped_images == 4
    with pytest.raises(UserError, match="truncated"):
        ds[[ds.image_name(i) for i in range(len(ds))].index("trunc")]
    assert ds.num_objects == 4
    with pytest.raises(UserError, match="no usable images"):
        open_dataset(root, "test", skip_invalid=True)


def write_coco(root: Path, data, name="instances_train.json") -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    path = root / "annotations" / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_a_coco_json_file_names_its_split_after_the_file(tmp_path):
    root = tmp_path / "coco"
    write_image(root / "train" / "a.jpg")
    path = write_coco(
        root,
        {
            "images": [{"id": 1, "file_name": "a.jpg", "width": 50, "height": 40}],
            "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}],
            "categories": [{"id": 1, "name": "thing"}],
        },
    )
    report = check_data(path)
    assert report.splits == {"instances_train.json": (1, 1)} and not report.errors, report


def test_coco_problems(tmp_path):
    root = tmp_path / "coco"
    for name in ("a.jpg", "b.jpg"):
        write_image(root / "train" / name)
    (root / "train" / "c.jpg").write_bytes(b"not an image at all")
    write_coco(
        root,
        {
            "images": [
                {"id": 1, "file_name": "a.jpg", "width": 50, "height": 40},
                {"id": 1, "file_name": "b.jpg", "width": 50, "height": 40},
                {"id": 2, "file_name": "c.jpg", "width": 50, "height": 40},
                {"id": 3, "file_name": "missing.jpg", "width": 50, "height": 40},
                {"id": 4, "file_name": "b.jpg", "width": 60, "height": 40},
            ],
            "annotations": [
                {"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]},
                {"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 2, 5, 5]},
                {"id": 11, "image_id": 1, "category_id": 5, "bbox": [1, 1, 5, 5]},
                {"id": 12, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 5]},
                {"id": 13, "image_id": 9, "category_id": 1, "bbox": [1, 1, 5, 5]},
                {"id": 14, "image_id": 1, "category_id": 1, "bbox": [1, 1, "x", 5]},
            ],
            "categories": [{"id": 1, "name": "thing"}],
        },
    )
    write_coco(root, '{"images": [', name="instances_val.json")
    report = check_data(root)
    text = [str(p) for p in report.errors]
    ann = str(root / "annotations" / "instances_train.json")

    def has(*parts):
        return any(all(part in t for part in parts) for t in text)

    assert has(ann, "image 2", "image id 1 is used twice")
    assert has(ann, "annotation 2", "annotation id 10 is used twice")
    assert has(ann, "annotation id 11", "unknown category id 5")
    assert has(ann, "annotation id 12", "zero or negative size")
    assert has(ann, "annotation id 13", "unknown image id 9")
    assert has(ann, "annotation id 14", "non-numeric")
    assert has(str(root / "train" / "missing.jpg"), "missing")
    assert has(str(root / "train" / "c.jpg"), "cannot read the image", "not an image")
    assert has(str(root / "train" / "b.jpg"), "says the image is 60x40 but it is 50x40")
    assert has(str(root / "annotations" / "instances_val.json"), "malformed JSON")
    assert len(text) == 10, text


def test_yolo_problems(tmp_path):
    root = tmp_path / "yolo"
    for name in ("a", "b", "c"):
        write_image(root / "images" / "train" / f"{name}.jpg")
    (root / "images" / "train" / "a.png").write_bytes((root / "images" / "train" / "a.jpg").read_bytes())
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text(
        "0 0.5 0.5 0.2 0.2\n"  # fine
        "2 0.5 0.5 0.2 0.2\n"  # class out of range
        "0 0.5 0.5 0.2\n"  # four numbers
        "0 0.5 zero 0.2 0.2\n"  # not a number
        "0 0.5 0.5 0 0.2\n"  # zero width
        "0 0.9 0.5 0.5 0.2\n"  # x2 = 1.15: outside
        "0 0.5 0.5 0.2 0.2\n"  # a repeat: warning
        "1.5 0.5 0.5 0.2 0.2\n"  # not an integer class
        "1 0.995 0.5 0.02 0.2\n"
    )  # x2 = 1.005: within tolerance, clipped
    (root / "data.yaml").write_text("train: images/train\nnames: [a, b]\n")
    problems = check_dataset(root)
    label = str(root / "labels" / "train" / "a.txt")
    errors = {(p.file, p.where): p.message for p in problems if p.severity == "error"}
    assert "out of range" in errors[(label, "line 2")]
    assert "found 4" in errors[(label, "line 3")]
    assert "non-numeric" in errors[(label, "line 4")]
    assert "zero or negative size" in errors[(label, "line 5")]
    assert "outside" in errors[(label, "line 6")]
    assert "not a non-negative integer" in errors[(label, "line 8")]
    assert any("share the label file a.txt" in m for m in errors.values())
    assert len(errors) == 7, errors
    warnings = [p for p in problems if p.severity == "warning"]
    assert len(warnings) == 1 and warnings[0].where == "line 7"
    ds = open_dataset(root, "train", skip_invalid=True)
    torch.testing.assert_close(
        ds.annotation(0)["boxes"], torch.tensor([[20.0, 16, 30, 24], [49.25, 16, 50, 24]])
    )


def test_yolo_without_any_label_files_is_an_error(tmp_path):
    root = tmp_path / "yolo"
    write_image(root / "images" / "train" / "a.jpg")
    (root / "data.yaml").write_text("train: images/train\nnames: [a]\n")
    problems = check_dataset(root)
    assert len(problems) == 1 and "no label files found" in problems[0].message


def test_missing_split_is_a_user_error_not_a_traceback(tmp_path, capsys):
    root = make_voc(tmp_path / "voc", {"a": []}, {"train": ["a"]})
    assert main(["check-data", "--data", str(root), "--split", "nope"]) == 1
    assert "split 'nope' not found" in capsys.readouterr().out
    with pytest.raises(UserError, match="split 'nope'"):
        open_dataset(root, "nope")


def test_problems_of_a_bad_image_at_load_time_are_user_errors(tmp_path):
    root = make_voc(tmp_path / "voc", {"a": [("thing", 1, 1, 5, 5, 0)]}, {"train": ["a"]})
    ds = open_dataset(root, "train")
    (root / "JPEGImages" / "a.jpg").write_bytes(b"garbage")
    with pytest.raises(UserError, match=r"cannot read image .*a\.jpg .*check-data"):
        ds[0]
    assert ds.annotation(0)["labels"].tolist() == [1]  # annotations need no pixels
