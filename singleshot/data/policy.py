"""Which data a training run reads: the training split, the validation split or ``--val-data``, and the
checks that the two agree.

    data = open_training_data(data="data/coco", val_split=None, say=print)
    data.train.split, data.val_split   # "train2017", "val2017"

The training split is ``train_split``, else ``trainval``, ``train`` or the first split. Validation is on
``val_split`` of ``data``; when it is None, on the first other split starting with ``test``, then ``val``
... (:func:`~singleshot.data.records.pick_split`, the rule ``singleshot eval`` uses too), and without one on
nothing; ``"none"`` turns validation off. ``val_data`` names another data set to validate on (its
``val_split``, else its test or val split, else all of it), whose classes must be the training data's.

``data`` (and ``val_data``) may list several data sets, of any formats: the run trains on their union
(:class:`~singleshot.data.union.DatasetUnion`), e.g. ``["VOC2007", "VOC2012"]`` is VOC07+12. They need the
same class names, in any order; labels follow the first set's order. ``train_split`` (and ``format``, when
given) apply to each; without ``val_data``, validation is on a split of the first set (VOC2007's test).
Several ``val_data`` sets are validated on as one, each with the training classes in their order.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from singleshot.data.dataset import DetectionDataset
from singleshot.data.formats import describe_drops, detect_format, list_splits, open_dataset
from singleshot.data.records import pick_split
from singleshot.data.union import DatasetUnion
from singleshot.errors import UserError


@dataclass
class TrainingData:
    """What :func:`open_training_data` opened.

    Attributes:
        train: the training set; ``format`` and ``train_split`` (None: a data set without splits) are its.
        val: the validation set, or None when the run does not validate.
        val_split: the validation split's name; ``""`` for a ``val_data`` without splits, ``"none"`` when
            the run does not validate.
    """

    train: DetectionDataset | DatasetUnion
    val: DetectionDataset | DatasetUnion | None
    format: str
    train_split: str | None
    val_split: str


def open_training_data(
    *,
    data: str | list[str],
    format: str | None = None,
    train_split: str | None = None,
    val_split: str | None = None,
    val_data: str | list[str] | None = None,
    skip_invalid: bool = False,
    say: Callable[[str], None] = lambda text: None,
) -> TrainingData:
    """Open the training and validation sets of a run (see the module docstring).

    Problems stop the run here, before the first step, with the first few of them and a pointer to
    check-data (:func:`open_dataset`'s message), unless ``skip_invalid`` leaves the broken images out.
    Images are opened (``check_images="header"``). ``say`` receives the notes: what was skipped, where the
    run validates, or that it does not.

    Raises:
        UserError: a path, split or format is wrong, the data has errors, the ``data`` sets have different
            classes, or ``val_data``'s classes are not ``data``'s.
    """
    options = {"format": format, "skip_invalid": skip_invalid, "check_images": "header"}
    datas = [data] if isinstance(data, (str, os.PathLike)) else [str(d) for d in data]
    val_datas = [val_data] if isinstance(val_data, (str, os.PathLike)) else list(val_data or [])
    other_val_data = bool(val_datas) and val_split != "none"  # not a split of data
    for path in datas[1:]:  # the first one's problems are open_dataset's to say
        _check_readable(path, "--data")
    for path in (
        val_datas if other_val_data else []
    ):  # a wrong path fails at once, not after the training data
        _check_readable(path, "--val-data")
    train_sets = [open_dataset(path, split=train_split, **options) for path in datas]
    for path, dataset in zip(datas[1:], train_sets[1:]):
        check_union_classes(train_sets[0], dataset, datas[0], path)
    train_set = train_sets[0] if len(train_sets) == 1 else DatasetUnion(train_sets)
    data = datas[0]
    if len(train_sets) > 1:
        say(f"training on {len(train_set)} images of {' + '.join(datas)}")
    val_set = None
    if other_val_data:
        val_sets = [_open_val_data(train_set, data, path, val_split, options, say) for path in val_datas]
        val_set = val_sets[0] if len(val_sets) == 1 else DatasetUnion(val_sets)
        val_split = val_set.split if len(val_sets) == 1 else val_split
    else:
        if val_split is None:  # the data set's test or val split (or val2017 ...); none: no validation
            splits = [s for s in list_splits(data, train_sets[0].format) if s != train_sets[0].split]
            val_split = pick_split(splits, "eval") or ""
            if not val_split:
                say(f"{data} has no test or val split: training without validation (no best.pt)")
        if val_split and val_split != "none":
            val_set = open_dataset(data, split=val_split, classes=train_set.class_names, **options)
        val_split = val_split or "none"
    for dataset in [*train_sets, *(val_set.parts if isinstance(val_set, DatasetUnion) else [val_set])]:
        note = dataset is not None and describe_drops(dataset)
        if note:
            say(note)
    return TrainingData(train_set, val_set, train_set.format, train_set.split, val_split)


def _open_val_data(
    train_set: DetectionDataset, data: str, val_data: str, split: str | None, options: dict, say
) -> DetectionDataset:
    """The data set ``val_data`` names (its ``split``, else its test or val split, else all of it); its
    format is detected (``options["format"]`` is ``data``'s), and its classes must be ``train_set``'s."""
    path = Path(val_data)
    try:
        format = detect_format(path)
    except UserError:
        raise UserError(
            f"cannot tell the format of --val-data {path}: expected a VOC root (Annotations/, JPEGImages/), "
            "a COCO instances JSON or a YOLO folder (images/, labels/, data.yaml)"
        ) from None
    if split is None:
        splits = list_splits(path, format)
        split = pick_split(splits, "eval")
        if splits and split is None:
            raise UserError(
                f"--val-data {path} has no test or val split (it has: {', '.join(splits)}); "
                "give --val-split with one of them"
            )
    val_set = open_dataset(path, split=split, **{**options, "format": format})
    check_same_classes(train_set, val_set, data, val_data)
    if _needs_renumbering(train_set, val_set):  # the same names in another order, or other COCO ids
        classes = list(train_set.class_names)
        val_set = open_dataset(path, split=split, **{**options, "format": format, "classes": classes})
    images = f"{len(val_set)} image{'s' if len(val_set) != 1 else ''}"
    say(f"validating on {images} of {path}" + (f" (split {split})" if split else ""))
    return val_set


def _check_readable(path: str, option: str) -> None:
    """UserError naming ``option`` unless ``path`` (a data set's folder or annotation file) can be read."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{option} {p} does not exist; give a VOC root, COCO instances JSON or YOLO folder")
    if not os.access(p, os.R_OK | (os.X_OK if p.is_dir() else 0)):
        raise UserError(f"{option} {p} cannot be read (permission denied); make it readable or give another")


def check_union_classes(first: DetectionDataset, other: DetectionDataset, data: str, other_data: str) -> None:
    """UserError unless ``other`` has the class names of ``first`` (in any order): a run trains on the union
    of several ``--data`` sets only when they have the same classes."""
    what = _name_difference(list(first.class_names), list(other.class_names))
    if what:
        raise UserError(
            f"--data {other_data} does not have the classes of --data {data}: {what}; train on data sets "
            "with the same class names (in any order)"
        )


def _name_difference(train: list[str], val: list[str]) -> str | None:
    """What names ``val`` has or lacks compared to ``train``, as a clause; None when the sets are equal."""
    extra = [n for n in val if n not in train]
    missing = [n for n in train if n not in val]
    if extra and missing:
        return f"it has {_listed(extra)} but not {_listed(missing)}"
    if extra:
        return f"it also has {_listed(extra)}"
    if missing:
        return f"it lacks {_listed(missing)}"
    return None


def check_same_classes(train_set, val_set: DetectionDataset, data: str, val_data: str) -> None:
    """UserError unless ``val_set`` has ``train_set``'s class names (in any order: validation reads them by
    name, :func:`_needs_renumbering`)."""
    what = _name_difference(list(train_set.class_names), list(val_set.class_names))
    if what is None:
        return
    hint = (
        " (a VOC root without classes.txt takes its classes from its annotations)"
        if val_set.format == "voc"
        else ""
    )
    raise UserError(
        f"--val-data {val_data} does not have the classes of --data {data}: {what}; validate on data with "
        f"the same classes{hint}"
    )


def _needs_renumbering(train_set, val_set: DetectionDataset) -> bool:
    """Whether ``val_set`` (with ``train_set``'s names) numbers its classes otherwise: another order, or, for
    COCO data, other category ids; it is then read again with the training classes, matched by name."""
    if list(val_set.class_names) != list(train_set.class_names):
        return True
    return (
        train_set.format == val_set.format == "coco"
        and train_set.coco_category_ids != val_set.coco_category_ids
    )


def _listed(names: list[str], shown: int = 5) -> str:
    """``class 'a'`` or ``classes 'a', 'b'`` (the first ``shown`` names, then how many more)."""
    text = ", ".join(repr(n) for n in names[:shown])
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"class{'es' if len(names) > 1 else ''} {text}{more}"
