"""Several data sets as one: the images of each in turn, their labels in the first set's class order.

    union = DatasetUnion([voc2007, voc2012])      # same class names, any order, any formats
    image, target = union[i]                       # target["labels"] follow union.class_names

The sets must have the same class names (:func:`singleshot.data.policy.check_same_classes` says how they
differ otherwise); set ``k``'s label ``l`` becomes the label of its name in ``class_names``.
"""

from __future__ import annotations

import bisect

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from singleshot.data.dataset import DetectionDataset
from singleshot.data.records import ImageInfo, Problem


class DatasetUnion(Dataset):
    """The concatenation of :class:`DetectionDataset` s with the same class names.

    Attributes:
        parts: the data sets, in order; ``class_names`` are the first one's.
        format, split: the parts' common format and split, else None; ``root``: the parts' roots, joined by
            ``" + "``.
        transform: None or a callable ``(image, target) -> (image, target)`` applied by ``__getitem__``.
    """

    coco_category_ids = None  # one set's COCO ids do not name the union's labels
    annotation_file = None

    def __init__(self, parts: list[DetectionDataset], transform=None):
        if not parts:
            raise ValueError("DatasetUnion needs at least one data set")
        self.parts = list(parts)
        self.class_names = list(parts[0].class_names)
        index = {name: i + 1 for i, name in enumerate(self.class_names)}
        self._luts = []  # per part: its label -> the union's label (background stays 0)
        for part in self.parts:
            if sorted(part.class_names) != sorted(self.class_names):
                raise ValueError(f"{part!r} does not have the classes {self.class_names}")
            self._luts.append(np.array([0] + [index[n] for n in part.class_names], dtype=np.int64))
        formats, splits = {p.format for p in parts}, {p.split for p in parts}
        self.format = formats.pop() if len(formats) == 1 else None
        self.split = splits.pop() if len(splits) == 1 else None
        self.root = " + ".join(p.root for p in parts)
        self.transform = transform
        self._starts = np.cumsum([0] + [len(p) for p in parts]).tolist()

    def __len__(self) -> int:
        return self._starts[-1]

    @property
    def num_classes(self) -> int:
        """K + 1: the classes plus background."""
        return len(self.class_names) + 1

    @property
    def num_objects(self) -> int:
        return sum(p.num_objects for p in self.parts)

    @property
    def problems(self) -> list[Problem]:
        return [problem for part in self.parts for problem in part.problems]

    @property
    def num_dropped_images(self) -> int:
        return sum(p.num_dropped_images for p in self.parts)

    @property
    def num_dropped_objects(self) -> int:
        return sum(p.num_dropped_objects for p in self.parts)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def _locate(self, i: int) -> tuple[int, int]:
        """(part, index in the part) of image ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(f"image {i} of a union of {len(self)}")
        k = bisect.bisect_right(self._starts, i) - 1
        return k, i - self._starts[k]

    def _remapped(self, k: int, target: dict) -> dict:
        return {**target, "labels": torch.from_numpy(self._luts[k])[target["labels"]]}

    def image_name(self, i: int) -> str:
        k, j = self._locate(i)
        return self.parts[k].image_name(j)

    def image_info(self, i: int) -> ImageInfo:
        k, j = self._locate(i)
        return self.parts[k].image_info(j)

    def training_boxes(self) -> Tensor:
        """Tensor[N, 4] xyxy relative to their image: the parts' training boxes, in order."""
        return torch.cat([p.training_boxes() for p in self.parts])

    def class_counts(self) -> np.ndarray:
        """Objects per label of ``class_names``, ``ndarray[K + 1]`` (index 0, background, is 0)."""
        counts = np.zeros(self.num_classes, dtype=np.int64)
        for part, lut in zip(self.parts, self._luts):
            np.add.at(counts, lut, part.class_counts())
        return counts

    def annotation(self, i: int) -> dict:
        k, j = self._locate(i)
        return self._remapped(k, self.parts[k].annotation(j))

    def load(self, i: int) -> tuple[Tensor, dict]:
        k, j = self._locate(i)
        image, target = self.parts[k].load(j)
        return image, self._remapped(k, target)

    def __getitem__(self, i: int):
        image, target = self.load(int(i))
        if self.transform is not None:
            return self.transform(image, target)
        return image.contiguous(), target

    def __repr__(self) -> str:
        return f"DatasetUnion({' + '.join(repr(p) for p in self.parts)})"
