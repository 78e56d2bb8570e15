"""Pascal VOC: ``JPEGImages/``, ``Annotations/<id>.xml``, ``ImageSets/Main/<split>.txt``.

Box convention. VOC writes 1-based, inclusive pixel indices: a box ``xmin=1, xmax=10`` covers the first ten
pixel columns. singleshot uses continuous coordinates where pixel ``i`` (0-based) covers ``[i, i + 1)``, so::

    x1 = xmin - 1    y1 = ymin - 1    x2 = xmax    y2 = ymax      (width = xmax - xmin + 1)

and the writer does the inverse (``xmin = round(x1) + 1``, ``xmax = round(x2)``). A box with ``xmax < xmin``
has zero or negative size; ``xmin == xmax`` is one pixel wide and valid. The VOC devkit's "+1" areas are
exactly ``(x2 - x1) * (y2 - y1)`` in this convention.

``difficult`` objects are kept with ``target["difficult"] = True`` (training drops them by default; VOC
evaluation ignores them). Class names: a ``classes`` argument, else ``<root>/classes.txt``, else the 20 VOC
classes when the annotations use only those names, else the sorted names found in all annotations.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from singleshot.data.images import is_image_file
from singleshot.data.records import (
    ImageRecord,
    Problem,
    ReadResult,
    names_from_annotations,
    read_names_file,
    validate_box,
)
from singleshot.errors import UserError

COORDS = ("xmin", "ymin", "xmax", "ymax")


def find_root(path: Path) -> Path | None:
    """The folder holding ``Annotations/``: ``path`` itself, or its only ``VOC*`` child (a VOCdevkit)."""
    if (path / "Annotations").is_dir():
        return path
    if path.is_dir():
        children = [c for c in sorted(path.iterdir()) if c.is_dir() and (c / "Annotations").is_dir()]
        if len(children) == 1:
            return children[0]
    return None


def looks_like(path: Path) -> bool:
    return path.is_dir() and find_root(path) is not None


def _root(path: Path) -> Path:
    root = find_root(path)
    if root is None:
        raise UserError(
            f"{path} is not a Pascal VOC folder: expected Annotations/, JPEGImages/ and "
            "ImageSets/Main/<split>.txt inside it (or a VOCdevkit with one VOC20xx folder)."
        )
    return root


def list_splits(path: Path) -> list[str]:
    """Split names from ``ImageSets/Main/*.txt``, leaving out the per-class lists (``cat_train.txt``)."""
    main = _root(path) / "ImageSets" / "Main"
    if not main.is_dir():
        return []
    names = sorted(f.stem for f in main.glob("*.txt"))
    plain = set(names)
    return [n for n in names if not ("_" in n and n.rsplit("_", 1)[1] in plain)]


def _number(text: str | None) -> float:
    try:
        return float(text.strip()) if text is not None else float("nan")
    except ValueError:
        return float("nan")


def _size(ann: ET.Element) -> tuple[int | None, int | None]:
    size = ann.find("size")
    if size is None:
        return None, None
    w, h = _number(size.findtext("width")), _number(size.findtext("height"))
    if not (w > 0 and h > 0):  # missing or 0: some tools write 0 when they did not know
        return None, None
    return int(round(w)), int(round(h))


def read_object_names(xml_path: Path) -> set[str]:
    """The object names in one annotation file (an empty set when it cannot be parsed)."""
    try:
        ann = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError):
        return set()
    return {(o.findtext("name") or "").strip() for o in ann.findall("object")} - {""}


def _read_ids(split_file: Path, problems: list[Problem]) -> list[str]:
    ids, seen = [], {}
    text = split_file.read_text(encoding="utf-8", errors="replace")
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        image_id = parts[0]
        if image_id in seen:
            problems.append(
                Problem(
                    str(split_file),
                    f"image id {image_id!r} is listed twice (first on line "
                    f"{seen[image_id]}); the repeat is ignored",
                    where=f"line {n}",
                )
            )
            continue
        seen[image_id] = n
        ids.append(image_id)
    return ids


def read(path: Path, split: str | None, classes: list[str] | None) -> ReadResult:
    """Read a VOC split (``None``: every file in ``Annotations/``). See the module docstring."""
    root = _root(path)
    ann_dir, img_dir = root / "Annotations", root / "JPEGImages"
    problems: list[Problem] = []
    if split is not None:
        split_file = root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            found = list_splits(root)
            raise UserError(
                f"split {split!r} not found: {split_file} does not exist (splits here: "
                f"{', '.join(found) if found else 'none'}); give --split with one of them."
            )
        ids = _read_ids(split_file, problems)
        if not ids:
            problems.append(Problem(str(split_file), f"split {split!r} lists no images"))
    else:
        ids = sorted(f.stem for f in ann_dir.glob("*.xml"))
        if not ids:
            problems.append(Problem(str(ann_dir), "no annotation files (*.xml) found"))
    by_stem: dict[str, list[str]] = {}
    if img_dir.is_dir():
        with os.scandir(img_dir) as it:
            for entry in it:
                if is_image_file(entry.name):
                    by_stem.setdefault(os.path.splitext(entry.name)[0], []).append(entry.name)

    parsed = []  # (image id, xml path, image path, width, height, objects)
    for image_id in ids:
        xml_path = ann_dir / f"{image_id}.xml"
        try:
            ann = ET.parse(xml_path).getroot()
        except FileNotFoundError:
            problems.append(Problem(str(xml_path), "annotation file is missing", drops="image"))
            continue
        except ET.ParseError as exc:
            problems.append(Problem(str(xml_path), f"malformed XML ({exc})", drops="image"))
            continue
        except OSError as exc:
            problems.append(
                Problem(str(xml_path), f"cannot read the annotation ({exc.strerror})", drops="image")
            )
            continue
        candidates = by_stem.get(image_id, [])
        filename = (ann.findtext("filename") or "").strip()
        if filename in candidates:
            name = filename
        elif f"{image_id}.jpg" in candidates:
            name = f"{image_id}.jpg"
        elif candidates:
            name = sorted(candidates)[0]
        else:
            problems.append(
                Problem(
                    str(img_dir / f"{image_id}.jpg"),
                    f"image file is missing (listed in {xml_path.name})",
                    drops="image",
                )
            )
            continue
        width, height = _size(ann)
        parsed.append((image_id, xml_path, img_dir / name, width, height, ann.findall("object")))

    if classes is None:
        classes = _class_names(root, ann_dir, parsed)
    label_of = {n: i + 1 for i, n in enumerate(classes)}

    records = []
    for image_id, xml_path, image_path, width, height, objects in parsed:
        boxes, labels, difficult = [], [], []
        for k, obj in enumerate(objects):
            where = f"object {k + 1}"
            name = (obj.findtext("name") or "").strip()
            if not name:
                problems.append(Problem(str(xml_path), "object has no <name>", where=where, drops="object"))
                continue
            if name not in label_of:
                problems.append(
                    Problem(
                        str(xml_path),
                        f"class {name!r} is not in the class list "
                        f"({', '.join(classes[:6])}{', ...' if len(classes) > 6 else ''})",
                        where=where,
                        drops="object",
                    )
                )
                continue
            bb = obj.find("bndbox")
            values = [_number(bb.findtext(t)) if bb is not None else float("nan") for t in COORDS]
            shown = ", ".join(f"{t} {bb.findtext(t) if bb is not None else None}" for t in COORDS)
            box, message = validate_box(
                [values[0] - 1, values[1] - 1, values[2], values[3]], width, height, shown
            )
            if message:
                problems.append(Problem(str(xml_path), f"{name}: {message}", where=where, drops="object"))
                continue
            boxes.append(box)
            labels.append(label_of[name])
            difficult.append((obj.findtext("difficult") or "0").strip() not in ("0", "", "false", "False"))
        records.append(
            ImageRecord(
                path=str(image_path),
                image_id=len(records),
                name=image_id,
                boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
                labels=np.array(labels, dtype=np.int64),
                difficult=np.array(difficult, dtype=bool),
                width=width,
                height=height,
                source=str(xml_path),
            )
        )
    return ReadResult(records, list(classes), problems)


def _class_names(root: Path, ann_dir: Path, parsed: list) -> list[str]:
    """The classes of a VOC root without a class list given: its classes.txt, else the names in every
    annotation file (of all splits, so every split gets the same list)."""
    if (root / "classes.txt").is_file():
        return read_names_file(root / "classes.txt")
    found: set[str] = set()
    listed = {p[0] for p in parsed}
    for _, _, _, _, _, objects in parsed:
        found.update((o.findtext("name") or "").strip() for o in objects)
    for xml_path in ann_dir.glob("*.xml"):  # the other splits, so every split gets the same list
        if xml_path.stem not in listed:
            found |= read_object_names(xml_path)
    return names_from_annotations(found - {""})


def annotation_xml(
    filename: str, width: int, height: int, boxes, names, difficult=None, folder: str = "VOC"
) -> str:
    """A VOC annotation for xyxy pixel ``boxes`` (continuous coordinates; see the module docstring)."""
    difficult = difficult if difficult is not None else [False] * len(names)
    lines = [
        "<annotation>",
        f"  <folder>{escape(folder)}</folder>",
        f"  <filename>{escape(filename)}</filename>",
        "  <source><database>singleshot</database></source>",
        f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
        "  <segmented>0</segmented>",
    ]
    for (x1, y1, x2, y2), name, diff in zip(boxes, names, difficult):
        lines += [
            "  <object>",
            f"    <name>{escape(name)}</name>",
            "    <pose>Unspecified</pose>",
            "    <truncated>0</truncated>",
            f"    <difficult>{int(bool(diff))}</difficult>",
            f"    <bndbox><xmin>{int(round(float(x1))) + 1}</xmin><ymin>{int(round(float(y1))) + 1}</ymin>"
            f"<xmax>{int(round(float(x2)))}</xmax><ymax>{int(round(float(y2)))}</ymax></bndbox>",
            "  </object>",
        ]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def write_split(root: Path, split: str, ids) -> None:
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True, exist_ok=True)
    (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
