"""Finding everything wrong with a data set in one run (``singleshot check-data``).

Readers already report what they see in the annotations (malformed XML/JSON, boxes of zero or negative size,
boxes outside the image beyond 2 pixels, unknown categories, labels out of range, duplicate ids, empty
splits, missing images). This module adds the image files themselves: unreadable or truncated images,
sizes that disagree with the annotation, EXIF orientation, and checks across splits.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from singleshot.data.dataset import (
    ImageRecord,
    Problem,
    detect_format,
    format_module,
    list_splits,
    resolve_classes,
    validate_box,
)
from singleshot.data.images import EXIF_MODES, ImageHeader, exif_transpose_for, inspect_image
from singleshot.errors import UserError


def _check_one(
    record: ImageRecord, header: ImageHeader | None, reason: str | None, exif: str, normalized: bool
) -> tuple[ImageRecord | None, list[Problem]]:
    path = record.path
    if reason is not None:
        what = reason if reason == "image file is missing" else f"cannot read the image ({reason})"
        return None, [Problem(path, what, drops="image")]
    problems = []
    annotated = (record.width, record.height) if record.width and record.height else None
    upright = exif_transpose_for(header, annotated, exif)
    actual = header.upright_size if upright else (header.width, header.height)
    if annotated is not None and annotated != actual:
        problems.append(
            Problem(
                path,
                f"the annotation ({Path(record.source).name or 'annotation'}) says the image "
                f"is {annotated[0]}x{annotated[1]} but it is {actual[0]}x{actual[1]}",
                drops="image",
            )
        )
        return None, problems
    if annotated is None and not normalized and len(record.boxes):
        keep = []
        for k, box in enumerate(record.boxes):
            clipped, message = validate_box(box, actual[0], actual[1], ", ".join(f"{v:g}" for v in box))
            if message:
                problems.append(
                    Problem(record.source or path, message, where=f"object {k + 1}", drops="object")
                )
            else:
                record.boxes[k] = clipped
            keep.append(message is None)
        if not all(keep):
            mask = np.array(keep, dtype=bool)
            record = replace(
                record,
                boxes=record.boxes[mask],
                labels=record.labels[mask],
                difficult=None if record.difficult is None else record.difficult[mask],
                iscrowd=None if record.iscrowd is None else record.iscrowd[mask],
            )
    return record, problems


def check_image_files(
    records: list[ImageRecord],
    *,
    decode: bool = True,
    exif: str = "auto",
    normalized: bool = False,
    progress: bool = False,
    desc: str = "check images",
) -> tuple[list[ImageRecord], list[Problem]]:
    """Open (and with ``decode`` decode) every image; drop the broken ones.

    Returns:
        (the records whose images are fine, the problems found).
    """
    workers = min(8, (os.cpu_count() or 1) + 1)
    with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while decoding
        results = pool.map(lambda r: inspect_image(r.path, decode=decode), records, chunksize=16)
        kept, problems = [], []
        rotated: dict[bool, list] = {True: [], False: []}  # EXIF-oriented images by "boxes refer to upright"
        for record, (header, reason) in tqdm(
            zip(records, results),
            total=len(records),
            desc=desc,
            unit="img",
            disable=not progress,
            leave=False,
        ):
            if header is not None and reason is None and header.orientation != 1:
                annotated = (record.width, record.height) if record.width and record.height else None
                rotated[exif_transpose_for(header, annotated, exif)].append((record.path, header.orientation))
            record, found = _check_one(record, header, reason, exif, normalized)
            problems += found
            if record is not None:
                kept.append(record)
    for upright, items in rotated.items():
        if items:
            refer = (
                "the upright image, as viewers show it"
                if upright
                else "the stored pixels, as the annotated image size says"
            )
            n = len(items)
            problems.append(
                Problem(
                    items[0][0],
                    f"{'this image' if n == 1 else f'this and {n - 1} more images'} "
                    f"carr{'ies' if n == 1 else 'y'} an EXIF orientation ({items[0][1]}); the boxes "
                    f"are taken to refer to {refer} (see --exif)",
                    severity="warning",
                )
            )
    return kept, problems


@dataclass
class CheckReport:
    """What :func:`check_data` found: the problems and, per split, the images and objects read."""

    path: str
    format: str
    problems: list[Problem] = field(default_factory=list)
    splits: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity != "error"]


def check_data(
    path,
    format: str | None = None,
    split: str | None = None,
    classes=None,
    *,
    decode: bool = True,
    exif: str = "auto",
    progress: bool = False,
) -> CheckReport:
    """Check every split (or ``split``) of a data set, images included; never raises for bad content."""
    if exif not in EXIF_MODES:
        raise UserError(f"exif mode {exif!r} is not one of {', '.join(EXIF_MODES)}.")
    p = Path(path)
    format = (format or detect_format(p)).lower()
    module = format_module(format)
    names = resolve_classes(classes)
    splits = [split] if split else (list_splits(p, format) or [None])
    report = CheckReport(str(p), format)
    seen: set[str] = set()
    problems: list[Problem] = []
    members: dict[str, set[str]] = {}
    class_lists: dict[str, list[str]] = {}
    for s in splits:
        label = s or (p.name if p.is_file() else "(all)")  # a COCO JSON: the split is the file
        try:
            result = module.read(p, s, names)
        except UserError as exc:
            problems.append(Problem(str(p), str(exc)))
            continue
        problems += result.problems
        if result.records:
            class_lists[label] = result.class_names
        fresh = [r for r in result.records if r.path not in seen]
        seen.update(r.path for r in fresh)
        checked, found = check_image_files(
            fresh,
            decode=decode,
            exif=exif,
            normalized=result.normalized,
            progress=progress,
            desc=f"check {label}",
        )
        problems += found
        bad = {pr.file for pr in found if pr.drops == "image"}
        usable = [r for r in result.records if r.path not in bad]
        members[label] = {r.path for r in usable}
        report.splits[label] = (len(usable), sum(len(r.labels) for r in usable))
        if not usable and not result.problems and not found:
            problems.append(Problem(str(p), f"split {label!r} has no usable images"))
    if len({tuple(v) for v in class_lists.values()}) > 1:
        first, *rest = class_lists.items()
        for name, other in rest:
            if other != first[1]:
                problems.append(
                    Problem(
                        str(p),
                        f"split {name!r} has classes {other} but {first[0]!r} has "
                        f"{first[1]}; give --classes so every split uses one list",
                    )
                )
    for held_out in ("test", "val"):
        for train in ("train", "trainval"):
            if held_out in members and train in members and not (held_out == "val" and train == "trainval"):
                shared = members[held_out] & members[train]
                if shared:
                    problems.append(
                        Problem(
                            str(p),
                            f"{len(shared)} images of split {held_out!r} are also in "
                            f"{train!r} (e.g. {sorted(shared)[0]})",
                            severity="warning",
                        )
                    )
    report.problems = list(dict.fromkeys(problems))  # one line per problem, even when splits share images
    return report


def check_dataset(
    path,
    format: str | None = None,
    split: str | None = None,
    classes=None,
    *,
    decode: bool = True,
    exif: str = "auto",
    progress: bool = False,
) -> list[Problem]:
    """Every problem of a data set (all splits unless ``split``), images decoded. See :func:`check_data`."""
    return check_data(path, format, split, classes, decode=decode, exif=exif, progress=progress).problems
