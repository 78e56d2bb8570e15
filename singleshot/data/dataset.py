"""The detection data set every reader's records become, and :func:`collate` for its batches.

A data set yields ``(image, target)``: ``image`` is ``Tensor[3, H, W]`` uint8 RGB and ``target`` holds

- ``"boxes"``: float32 ``Tensor[n, 4]`` xyxy in pixels of that image, ``0 <= x1 < x2 <= W`` (continuous
  coordinates: pixel ``i`` covers ``[i, i + 1)``, so a box's width is ``x2 - x1``);
- ``"labels"``: int64 ``Tensor[n]`` in ``1..K``; label ``i`` is ``dataset.class_names[i - 1]`` (0 is background);
- ``"difficult"``, ``"iscrowd"``: bool ``Tensor[n]``; ``"image_id"``: int (COCO's own id for COCO data,
  the index in the split otherwise); ``"path"``: the image file.

Readers never raise on bad content: they drop what is broken and describe it as a :class:`Problem`.
:func:`singleshot.data.formats.open_dataset` then refuses data with errors unless ``skip_invalid=True``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from singleshot.data.images import EXIF_MODES, load_annotated_image, read_image_header
from singleshot.data.records import ImageInfo, ImageRecord, Problem, RecordTable
from singleshot.errors import UserError

if TYPE_CHECKING:
    from torch import Tensor


class DetectionDataset:
    """Images and their objects, in memory as flat arrays (cheap to share with loader workers).

    A map-style data set for ``torch.utils.data.DataLoader`` (``__len__`` and ``__getitem__``). Opening one
    imports no torch: the index is numpy arrays, and torch comes in with the first tensor made, so reading
    an annotation file never holds the parsed file and the loaded torch at once.

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
        records: list[ImageRecord] | RecordTable,
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
        table = self._table = RecordTable.from_records(records)
        self._offsets, self._paths, self._names = table.offsets, table.paths, table.names
        self._image_ids, self._sizes = table.image_ids, table.sizes
        self._boxes, self._labels = table.boxes, table.labels
        self._difficult, self._iscrowd = table.difficult, table.iscrowd

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

    def training_boxes(self) -> Tensor:
        """The objects training learns (not difficult, not crowd): Tensor[N, 4] xyxy relative to their image.

        Image sizes come from the annotations; an image whose annotation does not record it (YOLO needs
        none, its boxes are relative already; VOC without <size>) has its header read.
        """
        keep = ~(self._difficult.astype(bool) | self._iscrowd.astype(bool))
        boxes = self._boxes.astype(np.float64)
        if not self.normalized:
            sizes = self._sizes.astype(np.float64)
            for i in np.flatnonzero((sizes <= 0).any(axis=1)):
                sizes[i] = self.image_info(int(i))[1:]
            per_box = np.repeat(sizes, np.diff(self._offsets), axis=0)  # (N, 2): w, h of each box's image
            boxes = boxes / np.tile(per_box, 2)
        import torch

        return torch.from_numpy(np.clip(boxes[keep], 0.0, 1.0).astype(np.float32)).reshape(-1, 4)

    def class_counts(self) -> np.ndarray:
        """Objects per label, ``ndarray[K + 1]`` (index 0, background, is 0)."""
        return np.bincount(self._labels, minlength=self.num_classes)

    def subset(self, indices) -> DetectionDataset:
        """A data set of the images ``indices`` (same classes, format and transform)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return DetectionDataset(
            self._table.select(idx),
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

    # -- targets and images ----------------------------------------------------------------------------
    def _target(self, i: int, width: int, height: int) -> dict:
        import torch

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
    import torch

    images = [b[0] for b in batch]
    if len({tuple(im.shape) for im in images}) > 1:
        raise ValueError(
            "collate needs images of one size; give the data set a TrainTransform or EvalTransform"
        )
    return torch.stack(images), [b[1] for b in batch]
