"""``singleshot default-boxes`` as a user runs it: the table, the JSON, the PNG and the refusals."""

from __future__ import annotations

import json
import re

import pytest

from singleshot.cli import main
from singleshot.coverage import coverage
from singleshot.models import build_model


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from singleshot.data import synthesize

    path = tmp_path_factory.mktemp("db") / "shapes"
    synthesize(path, 40, image_size=(120, 160), seed=1, num_classes=2, min_size=0.05, max_size=0.6)
    return path


def test_report_and_fit_as_json(shapes, tmp_path, capsys):
    out = tmp_path / "out" / "db.json"
    assert main(["default-boxes", "--data", str(shapes), "--fit", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "objects with a default box of IoU >= 0.5" in printed and "fitted" in printed
    report = json.loads(out.read_text())
    for key in ("coverage", "by_size", "by_ratio", "num_default_boxes", "fitted_coverage"):
        assert key in report
    # the input size train's recipe takes for these objects, said in the output
    from singleshot.data import open_dataset
    from singleshot.engine.recipe import choose_image_size

    boxes = open_dataset(shapes).training_boxes()
    size, _ = choose_image_size("ssd_small", boxes.numpy())
    assert f"input size {size} px" in printed and report["image_size"] == [size, size]
    zoo = build_model("ssd_small", 3, image_size=size)
    assert report["num_default_boxes"] == len(zoo.priors)
    assert 0 <= report["coverage"] <= report["fitted_coverage"] <= 1
    assert isinstance(report["changes"], list) and report["changes"]
    model = build_model("ssd_small", 3, **report["model_options"])
    assert len(model.priors) == report["fitted_num_default_boxes"] <= 2 * len(zoo.priors)
    assert (out.parent / "default-boxes.png").stat().st_size > 10_000
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]

    assert coverage(boxes, model.priors).coverage == pytest.approx(report["fitted_coverage"])
    assert coverage(boxes, zoo.priors).coverage == pytest.approx(report["coverage"])


def test_training_boxes_are_the_annotations_relative_to_their_image(shapes):
    """The columnar DetectionDataset.training_boxes against one annotation at a time."""
    import torch

    from singleshot.data import open_dataset

    dataset = open_dataset(shapes)
    expected = []
    for i in range(len(dataset)):
        target, info = dataset.annotation(i), dataset.image_info(i)
        keep = ~(target["difficult"].bool() | target["iscrowd"].bool())
        scale = torch.tensor([info.width, info.height, info.width, info.height], dtype=torch.float32)
        expected.append(target["boxes"][keep] / scale)
    torch.testing.assert_close(dataset.training_boxes(), torch.cat(expected))


def test_other_model_and_size_keep_the_image_size_in_the_options(shapes, tmp_path, capsys):
    out, plot = tmp_path / "a.json", tmp_path / "sizes.png"
    args = ["default-boxes", "--data", str(shapes), "--image-size", "128", "--fit", "--budget", "1.5"]
    assert main([*args, "--json", str(out), "--plot", str(plot)]) == 0
    report = json.loads(out.read_text())
    assert report["image_size"] == [128, 128] and report["model_options"]["image_size"] == 128
    model = build_model("ssd_small", 3, **report["model_options"])
    assert len(model.priors) == report["fitted_num_default_boxes"] <= 1.5 * report["num_default_boxes"]
    assert plot.exists()


def _rewrite_boxes(src, dst, keep_objects: bool):
    import shutil

    shutil.copytree(src, dst)
    for xml in (dst / "Annotations").glob("*.xml"):
        text = xml.read_text()
        if keep_objects:  # every box 1 px wide and high
            text = re.sub(r"<xmax>\d+</xmax>", "", text)
            text = re.sub(
                r"<xmin>(\d+)</xmin>", lambda m: f"<xmin>{m[1]}</xmin><xmax>{int(m[1]) + 1}</xmax>", text
            )
            text = re.sub(r"<ymax>\d+</ymax>", "", text)
            text = re.sub(
                r"<ymin>(\d+)</ymin>", lambda m: f"<ymin>{m[1]}</ymin><ymax>{int(m[1]) + 1}</ymax>", text
            )
        else:
            text = re.sub(r"<object>.*?</object>", "", text, flags=re.S)
        xml.write_text(text)
    return dst


@pytest.mark.parametrize("keep_objects, words", [(False, "no objects"), (True, "under 2 pixels")])
def test_bad_data_is_one_sentence_naming_the_data_set(shapes, tmp_path, capsys, keep_objects, words):
    bad = _rewrite_boxes(shapes, tmp_path / "bad", keep_objects)
    # 1 px boxes (VOC's inclusive corners: 2 px) of 120x160 images are about 1 px at a 64 px input
    assert main(["default-boxes", "--data", str(bad), "--image-size", "64"]) == 2
    err = capsys.readouterr().err
    assert words in err and str(bad) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
