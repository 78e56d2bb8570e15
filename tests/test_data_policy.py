"""Which splits a training run and ``singleshot eval`` read when none is given (singleshot.data.policy)."""

from __future__ import annotations

import json

import pytest

from singleshot.data import default_split, synthesize
from singleshot.data.policy import open_training_data
from singleshot.data.records import pick_split
from singleshot.errors import UserError


@pytest.fixture(scope="module")
def coco_2017(tmp_path_factory):
    """COCO's own layout: annotations/instances_train2017.json and annotations/instances_val2017.json."""
    root = tmp_path_factory.mktemp("coco2017")
    synthesize(
        root, 10, format="coco", image_size=64, seed=3, num_classes=2, splits="train2017=0.7,val2017=0.3"
    )
    return root


def _images_in(path) -> int:
    return len(json.loads(path.read_text())["images"])


def test_coco_2017_trains_on_train2017_and_validates_and_evaluates_on_val2017(coco_2017, tmp_path):
    from singleshot.engine import TrainConfig, Trainer

    annotations = coco_2017 / "annotations"
    assert sorted(p.name for p in annotations.iterdir()) == [
        "instances_train2017.json",
        "instances_val2017.json",
    ]
    notes = []
    data = open_training_data(data=str(coco_2017), say=notes.append)
    assert (data.format, data.train_split, data.val_split) == ("coco", "train2017", "val2017")
    assert (data.train.split, data.val.split) == ("train2017", "val2017")
    assert len(data.train) == _images_in(annotations / "instances_train2017.json")
    assert len(data.val) == _images_in(annotations / "instances_val2017.json") and len(data.val) > 0
    assert data.val.class_names == data.train.class_names and notes == []

    trainer = Trainer(TrainConfig(data=str(coco_2017), out=str(tmp_path / "run")), progress=False)
    trainer._open_data()
    assert (trainer.config.train_split, trainer.config.val_split) == ("train2017", "val2017")
    assert default_split(coco_2017, "eval") == trainer.config.val_split
    assert default_split(coco_2017, "train") == trainer.config.train_split


def test_the_split_rule():
    # evaluation: test before val, a name counts by its prefix (val2017, test-dev)
    assert pick_split(["train", "val2017", "test-dev"], "eval") == "test-dev"
    assert pick_split(["train2017", "val2017"], "eval") == "val2017"
    assert pick_split(["train", "valid"], "eval") == "valid"
    assert pick_split(["train", "extra"], "eval") is None
    # training: trainval, then train, then the first split
    assert pick_split(["train", "trainval", "val"], "train") == "trainval"
    assert pick_split(["b", "a"], "train") == "b"
    assert pick_split([], "train") is None


def test_validation_split_none_and_missing(coco_2017, tmp_path):
    data = open_training_data(data=str(coco_2017), val_split="none")
    assert data.val is None and data.val_split == "none"
    synthesize(
        tmp_path / "d", 6, format="coco", image_size=64, seed=1, num_classes=2, splits="train=0.5,extra=0.5"
    )
    notes = []
    data = open_training_data(data=str(tmp_path / "d"), say=notes.append)
    assert data.val is None and data.val_split == "none"
    assert notes == [f"{tmp_path / 'd'} has no test or val split: training without validation (no best.pt)"]
    with pytest.raises(UserError, match=r"has no test or val split \(it has: extra, train\); give --split"):
        default_split(tmp_path / "d", "eval")
