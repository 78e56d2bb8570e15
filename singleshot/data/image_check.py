"""Opening every image file of a split: unreadable or truncated images, sizes that disagree with the
annotation, boxes outside images whose size the annotation does not give, EXIF orientation.

:func:`check_image_files` is what :func:`singleshot.data.open_dataset` (``check_images="header"`` or
``"decode"``) and ``singleshot check-data`` run over a reader's records.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from singleshot.data.images import ImageHeader, exif_transpose_for, inspect_image
from singleshot.data.records import ImageRecord, Problem, validate_box

_CHUNK = 64  # images per task of the thread pool: one future per image costs more than reading a header


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
    records = list(records)  # each record made once (a RecordTable makes one per index read)
    workers = min(8, (os.cpu_count() or 1) + 1)
    chunks = [records[i : i + _CHUNK] for i in range(0, len(records), _CHUNK)]
    with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while reading and decoding
        results = itertools.chain.from_iterable(
            pool.map(lambda chunk: [inspect_image(r.path, decode=decode) for r in chunk], chunks)
        )
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
