"""The plain records every data-set reader produces, and the rules they share.

:class:`ImageRecord` (one image and its objects), :class:`RecordTable` (many, as columns), :class:`ReadResult` (what a reader returns),
:class:`Problem` (one thing wrong, located), :class:`ImageInfo`, :func:`validate_box` (a box against its
image), the class-name rules (:func:`check_class_names`, :func:`read_names_file`,
:func:`names_from_annotations`) and the split names tried when none is given (:func:`pick_split`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

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


@dataclass
class RecordTable:
    """Many images' records as columns: one array per field, the objects of all images end to end.

    Image ``i``'s objects are rows ``offsets[i]:offsets[i + 1]`` of ``boxes`` (float32 (m, 4), as in
    :class:`ImageRecord`), ``labels`` (int64), ``difficult`` and ``iscrowd`` (bool). ``paths``, ``names``
    (numpy strings), ``image_ids`` (int64) and ``sizes`` (int64 (n, 2) width, height; -1 when not
    annotated) have a row per image. No Python object per image or box: a large index costs its arrays
    only, and forked DataLoader workers share its pages (reading them touches no reference counts).

    Also a sequence of :class:`ImageRecord` (``table[i]``, ``len``, iteration), made on demand; the records
    are views into the arrays.
    """

    paths: np.ndarray
    names: np.ndarray
    image_ids: np.ndarray
    sizes: np.ndarray
    offsets: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    iscrowd: np.ndarray
    source: str = ""

    @classmethod
    def from_records(cls, records) -> RecordTable:
        """The table of a list of :class:`ImageRecord` (a table is returned as it is)."""
        if isinstance(records, RecordTable):
            return records
        counts = [len(r.labels) for r in records]
        offsets = np.zeros(len(records) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        m = int(offsets[-1])

        def flags(name: str) -> np.ndarray:
            parts = [
                getattr(r, name) if getattr(r, name) is not None else np.zeros(n, bool)
                for r, n in zip(records, counts)
            ]
            return np.concatenate(parts + [np.zeros(0, bool)]).astype(bool)

        return cls(
            paths=np.array([r.path for r in records], dtype=str),
            names=np.array([r.name for r in records], dtype=str),
            image_ids=np.array([r.image_id for r in records], dtype=np.int64),
            sizes=np.array([[r.width or -1, r.height or -1] for r in records], dtype=np.int64).reshape(-1, 2),
            offsets=offsets,
            boxes=np.concatenate([r.boxes for r in records] + [_empty_boxes()])
            .astype(np.float32)
            .reshape(m, 4),
            labels=np.concatenate([r.labels for r in records] + [np.zeros(0)]).astype(np.int64),
            difficult=flags("difficult"),
            iscrowd=flags("iscrowd"),
            source=records[0].source if records else "",
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> ImageRecord:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = int(i) % len(self)
        a, b = self.offsets[i], self.offsets[i + 1]
        w, h = (int(v) for v in self.sizes[i])
        return ImageRecord(
            str(self.paths[i]),
            int(self.image_ids[i]),
            str(self.names[i]),
            self.boxes[a:b],
            self.labels[a:b],
            self.difficult[a:b],
            self.iscrowd[a:b],
            w if w > 0 else None,
            h if h > 0 else None,
            self.source,
        )

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def select(self, indices) -> RecordTable:
        """The table of the images ``indices`` (int array or boolean mask), in that order."""
        idx = np.asarray(indices)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64).reshape(-1)
        starts, counts = self.offsets[idx], np.diff(self.offsets)[idx]
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        # The object rows of the images chosen: starts[j] + 0 .. counts[j] - 1 for each j.
        rows = np.repeat(starts - offsets[:-1], counts) + np.arange(int(offsets[-1]), dtype=np.int64)
        return RecordTable(
            self.paths[idx],
            self.names[idx],
            self.image_ids[idx],
            self.sizes[idx],
            offsets,
            self.boxes[rows],
            self.labels[rows],
            self.difficult[rows],
            self.iscrowd[rows],
            self.source,
        )


class ImageInfo(NamedTuple):
    """``dataset.image_info(i)``: the image file and the size of the image the targets refer to."""

    path: str
    width: int
    height: int


@dataclass
class ReadResult:
    """What a format reader returns: ``records`` is a list of :class:`ImageRecord` or (COCO) a
    :class:`RecordTable`."""

    records: list[ImageRecord] | RecordTable
    class_names: list[str]
    problems: list[Problem] = field(default_factory=list)
    normalized: bool = False
    extra: dict = field(default_factory=dict)


def _empty_boxes() -> np.ndarray:
    return np.zeros((0, 4), dtype=np.float32)


# -- class names -------------------------------------------------------------------------------------------
def read_names_file(path: str | os.PathLike) -> list[str]:
    """Class names from a text file, one per line (``#`` comments and blank lines skipped).

    Raises:
        UserError: no names, or a name given twice.
    """
    p = Path(path)
    text = p.read_text(encoding="utf-8", errors="replace")
    names = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return check_class_names(names, str(p))


def check_class_names(names, source: str) -> list[str]:
    """``names`` as stripped strings; UserError (naming ``source``) when empty, blank or repeated."""
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


def names_from_annotations(found: set[str]) -> list[str]:
    """The 20 VOC classes (in their usual order) when the data uses only those, else the names sorted."""
    if found and found <= set(VOC_CLASSES):
        return list(VOC_CLASSES)
    return sorted(found)


# -- splits ------------------------------------------------------------------------------------------------
def pick_split(splits: list[str], purpose: str = "train") -> str | None:
    """The split to use of ``splits`` when none is given, or None.

    ``"train"``: ``trainval``, else ``train``, else the first split. ``"eval"``: the first of ``splits``
    starting with ``test``, then ``val``, ``valid``, ``validation`` (so ``val2017`` counts as ``val``).
    """
    if purpose == "train":
        return next((name for name in TRAIN_SPLITS if name in splits), splits[0] if splits else None)
    return next((s for name in EVAL_SPLITS for s in splits if s.startswith(name)), None)


# -- boxes -------------------------------------------------------------------------------------------------
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
