"""The detection data set every reader produces, format detection and :func:`open_dataset`.

A data set yields ``(image, target)``: ``image`` is ``Tensor[3, H, W]`` uint8 RGB and ``target`` holds

- ``"boxes"``: float32 ``Tensor[n, 4]`` xyxy in pixels of that image, ``0 <= x1 < x2 <= W`` (continuous
  coordinates: pixel ``i`` covers ``[i, i + 1)``, so a box's width is ``x2 - x1``);
- ``"labels"``: int64 ``Tensor[n]`` in ``1..K``; label ``i`` is ``dataset.class_names[i - 1]`` (0 is background);
- ``"difficult"``, ``"iscrowd"``: bool ``Tensor[n]``; ``"image_id"``: int (COCO's own id for COCO data,
  the index in the split otherwise); ``"path"``: the image file.

Readers never raise on bad content: they drop what is broken and describe it as a :class:`Problem`.
:func:`open_dataset` then refuses data with errors unless ``skip_invalid=True``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from singleshot.data.images import EXIF_MODES, load_annotated_image, read_image_header
from singleshot.errors import UserError

FORMATS = ("voc", "coco", "yolo")
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
# Split names tried, in order, when none is given.
TRAIN_SPLITS = ("trainval", "train")
EVAL_SPLITS = ("test", "val", "valid", "validation")
# Boxes at most this many pixels outside the image are clipped silently (real VOC annotations have them).
BOX_TOLERANCE_PX = 2.0
MAX_PROBLEMS_SHOWN = 5


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a data set, located precisely.

    Attributes:
        file: the file at fault (annotation, image or split list).
        message: what is wrong, in words.
        where: inside the file: ``"object 3"`` (1-based), ``"line 7"``, ``"annotation id 12"``; or None.
        severity: ``"error"`` (the data cannot be used as is) or ``"warning"`` (used, but worth a look).
        drops: what a reader left out because of it: ``"image"``, ``"object"`` or None.
    """

    file: str
    message: str
    where: str | None = None
    severity: str = "error"
    drops: str | None = None

    def __str__(self) -> str:
        where = f" ({self.where})" if self.where else ""
        return f"{self.file}{where}: {self.message}"


@dataclass
class ImageRecord:
    """One image and its objects as a reader found them.

    ``boxes`` are float32 (n, 4) xyxy pixels, or relative to the image when the data set is ``normalized``
    (YOLO, whose files do not record image sizes). ``width``/``height`` are the annotated size (None when the
    annotation does not say).
    """

    path: str
    image_id: int
    name: str
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray | None = None
    iscrowd: np.ndarray | None = None
    width: int | None = None
    height: int | None = None
    source: str = ""


class ImageInfo(NamedTuple):
    """``dataset.image_info(i)``: the image file and the size of the image the targets refer to."""

    path: str
    width: int
    height: int


@dataclass
class ReadResult:
    """What a format reader returns."""

    records: list[ImageRecord]
    class_names: list[str]
    problems: list[Problem] = field(default_factory=list)
    normalized: bool = False
    extra: dict = field(default_factory=dict)


def _empty_boxes() -> np.ndarray:
    return np.zeros((0, 4), dtype=np.float32)


class DetectionDataset(Dataset):
    """Images and their objects, in memory as flat arrays (cheap to share with loader workers).

    Attributes:
        class_names: list of K names, background excluded; label ``i`` is ``class_names[i - 1]``.
        format, root, split: where the data came from.
        problems: what the reader found wrong (and dropped, when the data set was opened with
            ``skip_invalid=True``); ``num_dropped_images``, ``num_dropped_objects`` count the drops.
        coco_category_ids: for COCO data, ``coco_category_ids[label - 1]`` is the original category id
            (None for other formats); ``annotation_file``: the COCO JSON (None otherwise).
        transform: None or a callable ``(image, target) -> (image, target)`` applied by ``__getitem__``.
        exif: ``"auto"``, ``"upright"`` or ``"stored"`` (see :func:`singleshot.data.images.exif_transpose_for`).
    """

    def __init__(
        self,
        records: list[ImageRecord],
        class_names: list[str],
        *,
        format: str = "",
        root: str = "",
        split: str | None = None,
        normalized: bool = False,
        problems: list[Problem] | None = None,
        transform=None,
        exif: str = "auto",
        coco_category_ids: list[int] | None = None,
        annotation_file: str | None = None,
    ):
        if exif not in EXIF_MODES:
            raise UserError(f"exif mode {exif!r} is not one of {', '.join(EXIF_MODES)}.")
        self.class_names = list(class_names)
        self.format = format
        self.root = str(root)
        self.split = split
        self.normalized = normalized
        self.problems = list(problems or [])
        self.transform = transform
        self.exif = exif
        self.coco_category_ids = coco_category_ids
        self.annotation_file = annotation_file
        counts = [len(r.labels) for r in records]
        self._offsets = np.zeros(len(records) + 1, dtype=np.int64)
        np.cumsum(counts, out=self._offsets[1:])
        m = int(self._offsets[-1])
        self._paths = np.array([r.path for r in records], dtype=str)
        self._names = np.array([r.name for r in records], dtype=str)
        self._image_ids = np.array([r.image_id for r in records], dtype=np.int64)
        self._sizes = np.array([[r.width or -1, r.height or -1] for r in records], dtype=np.int64).reshape(
            -1, 2
        )
        self._boxes = (
            np.concatenate([r.boxes for r in records] + [_empty_boxes()]).astype(np.float32).reshape(m, 4)
        )
        self._labels = np.concatenate([r.labels for r in records] + [np.zeros(0)]).astype(np.int64)
        self._difficult = np.concatenate(
            [r.difficult if r.difficult is not None else np.zeros(n, bool) for r, n in zip(records, counts)]
            + [np.zeros(0, bool)]
        ).astype(bool)
        self._iscrowd = np.concatenate(
            [r.iscrowd if r.iscrowd is not None else np.zeros(n, bool) for r, n in zip(records, counts)]
            + [np.zeros(0, bool)]
        ).astype(bool)

    # -- sizes and bookkeeping -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._paths)

    @property
    def num_classes(self) -> int:
        """K + 1: the classes plus background, what ``build_model(num_classes=...)`` takes."""
        return len(self.class_names) + 1

    @property
    def num_objects(self) -> int:
        return int(self._offsets[-1])

    @property
    def num_dropped_images(self) -> int:
        return sum(p.drops == "image" for p in self.problems)

    @property
    def num_dropped_objects(self) -> int:
        return sum(p.drops == "object" for p in self.problems)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def image_name(self, i: int) -> str:
        """The image's name in its data set (VOC id, file stem or COCO file name)."""
        return str(self._names[i])

    def image_info(self, i: int) -> ImageInfo:
        """Path and size of image ``i`` (the size its boxes refer to), without decoding pixels."""
        path = str(self._paths[i])
        w, h = (int(v) for v in self._sizes[i])
        if w <= 0 or h <= 0:
            w, h = read_image_header(path).upright_size
        return ImageInfo(path, w, h)

    def class_counts(self) -> np.ndarray:
        """Objects per label, ``ndarray[K + 1]`` (index 0, background, is 0)."""
        return np.bincount(self._labels, minlength=self.num_classes)

    def subset(self, indices) -> DetectionDataset:
        """A data set of the images ``indices`` (same classes, format and transform)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        records = [self._record(int(i)) for i in idx]
        return DetectionDataset(
            records,
            self.class_names,
            format=self.format,
            root=self.root,
            split=self.split,
            normalized=self.normalized,
            problems=self.problems,
            transform=self.transform,
            exif=self.exif,
            coco_category_ids=self.coco_category_ids,
            annotation_file=self.annotation_file,
        )

    def _record(self, i: int) -> ImageRecord:
        a, b = self._offsets[i], self._offsets[i + 1]
        w, h = (int(v) for v in self._sizes[i])
        return ImageRecord(
            str(self._paths[i]),
            int(self._image_ids[i]),
            str(self._names[i]),
            self._boxes[a:b],
            self._labels[a:b],
            self._difficult[a:b],
            self._iscrowd[a:b],
            w if w > 0 else None,
            h if h > 0 else None,
        )

    # -- targets and images ----------------------------------------------------------------------------
    def _target(self, i: int, width: int, height: int) -> dict:
        a, b = self._offsets[i], self._offsets[i + 1]
        boxes = torch.from_numpy(self._boxes[a:b].copy())
        if self.normalized:
            boxes *= torch.tensor([width, height, width, height], dtype=torch.float32)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        return {
            "boxes": boxes,
            "labels": torch.from_numpy(self._labels[a:b].copy()),
            "difficult": torch.from_numpy(self._difficult[a:b].copy()),
            "iscrowd": torch.from_numpy(self._iscrowd[a:b].copy()),
            "image_id": int(self._image_ids[i]),
            "path": str(self._paths[i]),
        }

    def annotation(self, i: int) -> dict:
        """The target of image ``i`` without decoding the image (no transform applied)."""
        info = self.image_info(i)
        return self._target(i, info.width, info.height)

    def load(self, i: int) -> tuple[Tensor, dict]:
        """Image ``i`` (possibly a channels-last view) and its target, without the transform."""
        w, h = (int(v) for v in self._sizes[i])
        annotated = (w, h) if w > 0 and h > 0 else None
        image, _, _ = load_annotated_image(str(self._paths[i]), annotated, self.exif)
        return image, self._target(i, image.shape[2], image.shape[1])

    def __getitem__(self, i: int):
        image, target = self.load(int(i))
        if self.transform is not None:
            return self.transform(image, target)
        return image.contiguous(), target

    def __repr__(self) -> str:
        return (
            f"DetectionDataset({self.format} {self.root!r}, split={self.split!r}, {len(self)} images, "
            f"{self.num_objects} objects, {len(self.class_names)} classes)"
        )


def collate(batch: list[tuple[Tensor, dict]]) -> tuple[Tensor, list[dict]]:
    """``DataLoader`` collate function: ``(images uint8 Tensor[B, 3, S_h, S_w], list of B targets)``.

    All images of a batch must have the same size (use a transform that resizes).
    """
    images = [b[0] for b in batch]
    if len({tuple(im.shape) for im in images}) > 1:
        raise ValueError(
            "collate needs images of one size; give the data set a TrainTransform or EvalTransform"
        )
    return torch.stack(images), [b[1] for b in batch]


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
        from singleshot.data.yolo import read_names_from_yaml

        names = read_names_from_yaml(p)
    else:
        text = p.read_text(encoding="utf-8", errors="replace")
        names = [
            line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")
        ]
    return check_class_names(names, str(p))


def check_class_names(names, source: str) -> list[str]:
    names = [str(n).strip() for n in names]
    if not names:
        raise UserError(f"{source} lists no class names; give one name per line.")
    seen = set()
    for n in names:
        if not n:
            raise UserError(f"{source} has an empty class name; give one non-empty name per line.")
        if n in seen:
            raise UserError(f"{source} names class {n!r} twice; class names must be unique.")
        seen.add(n)
    return names


def resolve_classes(classes) -> list[str] | None:
    """``classes`` argument -> list of names: None, a list/tuple of names, or a path to a classes file."""
    if classes is None:
        return None
    if isinstance(classes, (str, os.PathLike)):
        return read_class_names(classes)
    return check_class_names(list(classes), "the class list")


def names_from_annotations(found: set[str]) -> list[str]:
    """The 20 VOC classes (in their usual order) when the data uses only those, else the names sorted."""
    if found and found <= set(VOC_CLASSES):
        return list(VOC_CLASSES)
    return sorted(found)


# -- formats ---------------------------------------------------------------------------------------------
def format_module(format: str):
    """The reader module of a format (``voc``, ``coco``, ``yolo``): ``looks_like``, ``list_splits``, ``read``."""
    if format == "voc":
        from singleshot.data import voc as module
    elif format == "coco":
        from singleshot.data import coco as module
    elif format == "yolo":
        from singleshot.data import yolo as module
    else:
        raise UserError(f"data format {format!r} is unknown; use one of {', '.join(FORMATS)}.")
    return module


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
    """The split to use when none is given: ``trainval``/``train`` for training, ``test``/``val`` for evaluation.

    Returns None for a data set without splits (the whole folder is used).
    """
    splits = list_splits(path, format)
    if not splits:
        return None
    for name in TRAIN_SPLITS if purpose == "train" else EVAL_SPLITS:
        if name in splits:
            return name
    if purpose == "train":
        return splits[0]
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
        from singleshot.data.check import check_image_files

        records, image_problems = check_image_files(
            records, decode=check_images == "decode", exif=exif, normalized=result.normalized
        )
        problems += image_problems
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


def validate_box(
    box, width: float | None, height: float | None, shown: str, tolerance: float = BOX_TOLERANCE_PX
) -> tuple[np.ndarray | None, str | None]:
    """Check one xyxy box against its image; clip it when it is at most ``tolerance`` outside.

    Args:
        box: 4 numbers x1, y1, x2, y2 (pixels, or relative with ``width = height = 1``).
        width, height: the image size, or None when unknown (then only the size is checked).
        shown: the box as the file writes it, for the message (``"xmin 3, ymin 5, xmax 2, ymax 9"``).

    Returns:
        (clipped float32 box, None) or (None, what is wrong).
    """
    b = np.asarray(box, dtype=np.float64)
    if b.shape != (4,) or not np.isfinite(b).all():
        return None, f"box has a non-numeric or missing coordinate ({shown})"
    if b[2] <= b[0] or b[3] <= b[1]:
        return None, f"box has zero or negative size ({shown})"
    if width is not None and height is not None and width > 0 and height > 0:
        out = max(-b[0], -b[1], b[2] - width, b[3] - height)
        if out > tolerance:
            unit = " px" if width > 1 or height > 1 else " of the image"
            size = f"{width:g}x{height:g} image" if width > 1 or height > 1 else "image"
            return None, f"box lies {out:.3g}{unit} outside the {size} ({shown})"
        b = np.clip(b, 0, [width, height, width, height])
        if b[2] <= b[0] or b[3] <= b[1]:
            return None, f"box lies outside the image ({shown})"
    return b.astype(np.float32), None
