"""Which reader a data set needs, its splits, and :func:`open_dataset`.

:func:`detect_format` tells VOC, COCO and YOLO apart from what lies at a path, :func:`format_module` gives the
reader (``voc``, ``coco``, ``yolo``: ``looks_like``, ``list_splits``, ``read``), :func:`open_dataset` reads
a split into a :class:`DetectionDataset` and refuses data with errors unless ``skip_invalid=True``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from singleshot.data import coco, voc, yolo
from singleshot.data.image_check import check_image_files
from singleshot.data.records import (
    FORMATS,
    MAX_PROBLEMS_SHOWN,
    check_class_names,
    pick_split,
    read_names_file,
)
from singleshot.errors import UserError

if TYPE_CHECKING:
    from singleshot.data.dataset import DetectionDataset

_READERS = {"voc": voc, "coco": coco, "yolo": yolo}


# -- class names -------------------------------------------------------------------------------------------
def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names from a file: one per line (``#`` comments and blank lines skipped), or a YOLO data.yaml.

    Raises:
        UserError: missing file, no names, or a name given twice.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"classes file {p} does not exist; give a text file with one class name per line.")
    if p.suffix.lower() in (".yaml", ".yml"):
        return check_class_names(yolo.read_names_from_yaml(p), str(p))
    return read_names_file(p)


def resolve_classes(classes) -> list[str] | None:
    """``classes`` argument -> list of names: None, a list/tuple of names, or a path to a classes file."""
    if classes is None:
        return None
    if isinstance(classes, (str, os.PathLike)):
        return read_class_names(classes)
    return check_class_names(list(classes), "the class list")


# -- formats ---------------------------------------------------------------------------------------------
def format_module(format: str):
    """The reader module of a format (``voc``, ``coco``, ``yolo``): ``looks_like``, ``list_splits``, ``read``."""
    if format not in _READERS:
        raise UserError(f"data format {format!r} is unknown; use one of {', '.join(FORMATS)}.")
    return _READERS[format]


def detect_format(path: str | os.PathLike) -> str:
    """``"voc"``, ``"coco"`` or ``"yolo"`` from what lies at ``path``.

    Raises:
        UserError: the path does not exist or looks like none of the three layouts.
    """
    p = Path(path)
    if not p.exists():
        raise UserError(
            f"data path {p} does not exist; give a VOC, COCO or YOLO data set "
            "(or make one with 'singleshot synth')."
        )
    for name in FORMATS:
        if format_module(name).looks_like(p):
            return name
    if format_module("coco").looks_like(p, strict=False):  # a lone JSON beside the images
        return "coco"
    raise UserError(
        f"cannot tell the format of {p}: expected a VOC root (Annotations/, JPEGImages/), "
        "a COCO instances JSON or a YOLO folder (images/, labels/, data.yaml); give --format."
    )


def list_splits(path: str | os.PathLike, format: str | None = None) -> list[str]:
    """Names of the splits found at ``path`` (empty when the data set has no splits)."""
    format = format or detect_format(path)
    return format_module(format).list_splits(Path(path))


def default_split(path: str | os.PathLike, purpose: str = "train", format: str | None = None) -> str | None:
    """The split to use when none is given (:func:`~singleshot.data.records.pick_split`): ``trainval``/``train``
    for training; for evaluation the first split starting with ``test``, then ``val`` ... (``val2017`` counts).

    Returns None for a data set without splits (the whole folder is used).

    Raises:
        UserError: ``purpose="eval"`` and the data set has splits but no test or val split.
    """
    splits = list_splits(path, format)
    if not splits:
        return None
    split = pick_split(splits, purpose)
    if split is not None:
        return split
    raise UserError(f"{path} has no test or val split (it has: {', '.join(splits)}); give --split.")


def open_dataset(
    path: str | os.PathLike,
    split: str | None = None,
    format: str | None = None,
    classes=None,
    *,
    transform=None,
    skip_invalid: bool = False,
    check_images: str = "exists",
    exif: str = "auto",
) -> DetectionDataset:
    """Open a VOC, COCO or YOLO data set.

    Args:
        path: a VOC root, a COCO instances JSON (or a folder with ``annotations/``), a YOLO folder or data.yaml.
        split: ``"train"``, ``"test"`` ...; None takes the training split (``trainval`` or ``train``), or the
            whole data set when it has no splits.
        format: ``"voc"``, ``"coco"`` or ``"yolo"``; None detects it from the path.
        classes: None (from the data: VOC's 20 names when only those occur, else the sorted names; COCO's
            categories; YOLO's data.yaml or classes.txt), a list of names (e.g. a checkpoint's) or a file.
        transform: callable ``(image, target) -> (image, target)`` applied by ``__getitem__``.
        skip_invalid: drop broken images and objects (counted in ``dataset.problems``) instead of refusing.
        check_images: ``"exists"`` (default, cheap), ``"header"`` (open each file: readable, size matches the
            annotation) or ``"decode"`` (decode each image: finds truncated files; what check-data does).
        exif: ``"auto"``, ``"upright"`` or ``"stored"``: how EXIF orientation relates to the boxes.

    Raises:
        UserError: the path, format, split or classes are wrong, the split is empty, or the data has errors
            and ``skip_invalid`` is False (the message shows the first problems and points to check-data).
    """
    if check_images not in ("exists", "header", "decode"):
        raise UserError(f"check_images={check_images!r} is not one of exists, header, decode.")
    format = (format or detect_format(path)).lower()
    module = format_module(format)
    p = Path(path)
    if not p.exists():
        raise UserError(f"data path {p} does not exist; give a VOC, COCO or YOLO data set.")
    if split is None:
        split = default_split(p, "train", format)
    result = module.read(p, split, resolve_classes(classes))
    problems = list(result.problems)
    records = result.records
    if check_images != "exists":
        records, image_problems = check_image_files(
            records, decode=check_images == "decode", exif=exif, normalized=result.normalized
        )
        problems += image_problems
    from singleshot.data.dataset import DetectionDataset

    dataset = DetectionDataset(
        records,
        result.class_names,
        format=format,
        root=str(p),
        split=split,
        normalized=result.normalized,
        problems=problems,
        transform=transform,
        exif=exif,
        **result.extra,
    )
    where = f"{p}" + (f" (split {split})" if split else "")
    errors = dataset.errors
    if errors and not skip_invalid:
        shown = "; ".join(str(e) for e in errors[:MAX_PROBLEMS_SHOWN])
        more = f" and {len(errors) - MAX_PROBLEMS_SHOWN} more" if len(errors) > MAX_PROBLEMS_SHOWN else ""
        raise UserError(
            f"{where} has {len(errors)} problem{'s' if len(errors) != 1 else ''}: {shown}{more}; "
            f"run 'singleshot check-data --data {p}' for the full list, or pass --skip-invalid "
            "to drop the broken images and objects."
        )
    if len(dataset) == 0:
        raise UserError(f"{where} has no usable images; run 'singleshot check-data --data {p}'.")
    return dataset


def describe_drops(dataset: DetectionDataset) -> str | None:
    """One sentence saying what ``skip_invalid`` dropped, or None when nothing was."""
    images, objects = dataset.num_dropped_images, dataset.num_dropped_objects
    if not images and not objects:
        return None
    return (
        f"skipped {images} broken image{'s' if images != 1 else ''} and {objects} broken "
        f"object{'s' if objects != 1 else ''} in {dataset.root}; run 'singleshot check-data --data "
        f"{dataset.root}' for details."
    )
