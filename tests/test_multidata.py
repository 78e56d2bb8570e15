"""Several --data sets in one run: the union of data sets with the same class names, in any order and any
mix of formats, labels in the first set's order; different class sets get one sentence."""

from __future__ import annotations

import json

import pytest
import torch

from singleshot.data import synthesize
from singleshot.data.policy import open_training_data
from singleshot.errors import UserError


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    """A VOC set and a YOLO set of 96 px images with the same three classes listed in other orders."""
    root = tmp_path_factory.mktemp("multidata")
    synthesize(root / "voc", 8, "voc", 96, 0, num_classes=3, shapes=("triangle", "circle", "square"))
    synthesize(root / "yolo", 8, "yolo", 96, 1, num_classes=3, shapes=("square", "triangle", "circle"))
    return root / "voc", root / "yolo"


def _names(dataset, labels):
    return [dataset.class_names[int(label) - 1] for label in labels]


def test_the_union_has_every_image_with_its_labels_named_as_in_its_own_set(two_sets):
    voc, yolo = two_sets
    first = open_training_data(data=str(voc), val_split="none").train
    second = open_training_data(data=str(yolo), val_split="none").train
    assert first.class_names != second.class_names and sorted(first.class_names) == sorted(second.class_names)
    union = open_training_data(data=[str(voc), str(yolo)], val_split="none").train
    assert union.class_names == first.class_names and len(union) == len(first) + len(second)
    assert union.num_objects == first.num_objects + second.num_objects
    moved = 0
    for i in range(len(union)):
        part, j = (first, i) if i < len(first) else (second, i - len(first))
        image, target = union[i]
        own_image, own = part[j]
        assert torch.equal(image, own_image) and torch.equal(target["boxes"], own["boxes"])
        assert _names(union, target["labels"]) == _names(part, own["labels"])
        moved += int((target["labels"] != own["labels"]).sum())
    assert moved > 0  # the second set's labels were renumbered
    assert torch.equal(union.training_boxes(), torch.cat([first.training_boxes(), second.training_boxes()]))
    counts = {n: int(c) for n, c in zip(union.class_names, union.class_counts()[1:])}
    for part in (first, second):
        for name, count in zip(part.class_names, part.class_counts()[1:]):
            counts[name] -= int(count)
    assert set(counts.values()) == {0}


def test_data_sets_with_other_classes_get_one_sentence_naming_them(two_sets, tmp_path):
    voc, _ = two_sets
    other = tmp_path / "other"
    synthesize(other, 6, "voc", 96, 2, num_classes=3, shapes=("triangle", "circle", "star"))
    with pytest.raises(UserError) as error:
        open_training_data(data=[str(voc), str(other)], val_split="none")
    message = str(error.value)
    assert message == (
        f"--data {other} does not have the classes of --data {voc}: it has class 'star' but not class "
        "'square'; train on data sets with the same class names (in any order)"
    )


def test_training_on_two_data_sets_records_both_and_resumes(two_sets, tmp_path, capsys):
    from singleshot.cli import main
    from singleshot.models import read_checkpoint

    voc, yolo = two_sets
    out = tmp_path / "run"
    argv = ["train", "--data", str(voc), "--data", str(yolo), "--out", str(out), "--model", "ssd_small"]
    argv += ["--image-size", "64", "--batch-size", "4", "--epochs", "1", "--workers", "0", "--no-progress"]
    assert main([*argv, "--val-split", "none"]) == 0
    assert "training on 11 images of" in capsys.readouterr().err  # VOC trainval 6 + YOLO train 5
    config = json.loads((out / "config.json").read_text())
    assert config["data"] == [str(voc), str(yolo)]
    assert read_checkpoint(out / "last.pt")["epoch"] == 1
    argv = ["train", "--resume", str(out / "last.pt"), "--epochs", "2", "--no-progress"]
    assert main(argv) == 0
    last = read_checkpoint(out / "last.pt")
    assert last["epoch"] == 2 and last["config"]["data"] == [str(voc), str(yolo)]
    assert last["schedule"]["last_step"] == 2 * (11 // 4)
