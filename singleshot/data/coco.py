"""COCO: an instances JSON (``images``, ``annotations``, ``categories``) and a folder of images.

Layouts found from a folder ``ROOT``:

- ``ROOT/annotations/instances_<split>.json`` with images in ``ROOT/<split>/`` or ``ROOT/images/<split>/``
  (the COCO 2017 layout: ``instances_val2017.json`` + ``val2017/``);
- ``ROOT/<split>/_annotations.coco.json`` with the images beside it (Roboflow's COCO export);
- or the JSON file itself as the path (images looked for beside it and in the COCO places).

``bbox`` is ``[x, y, width, height]`` in pixels (continuous coordinates), so ``x2 = x + width``. Category ids
(which have gaps in COCO) map to contiguous labels ``1..K`` in increasing id order, named after the
categories; ``dataset.coco_category_ids[label - 1]`` gives the id back and ``target["image_id"]`` is COCO's
image id, so COCO evaluation can be run against the original JSON (``dataset.annotation_file``).
``iscrowd`` objects are kept with ``target["iscrowd"] = True``: training drops them, COCO evaluation
ignores detections matched to them. Masks (``segmentation``) are not read.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from singleshot.data.records import BOX_TOLERANCE_PX, Problem, ReadResult, RecordTable, validate_box
from singleshot.errors import UserError
from singleshot.files import write_text_atomic

ROBOFLOW_FILE = "_annotations.coco.json"


def looks_like(path: Path, strict: bool = True) -> bool:
    """A JSON file, or a folder with ``annotations/*.json``, ``instances_*.json`` or Roboflow exports; with
    ``strict=False`` any JSON file at the top of the folder counts too."""
    if path.is_file():
        return path.suffix.lower() == ".json"
    files = _annotation_files(path)
    if strict:
        return any(
            f.parent.name == "annotations" or f.name == ROBOFLOW_FILE or f.stem.startswith("instances_")
            for f in files.values()
        )
    return bool(files)


def _annotation_files(root: Path) -> dict[str, Path]:
    """split name -> annotation JSON, for a folder."""
    if not root.is_dir():
        return {}
    found: dict[str, Path] = {}
    for folder in (root / "annotations", root):
        files = sorted(folder.glob("*.json")) if folder.is_dir() else []
        instances = [f for f in files if f.stem.startswith("instances_")]
        if instances:
            files = instances
        elif folder == root:
            files = [f for f in files if f.name != ROBOFLOW_FILE and f.stem not in ("data", "package")]
        for f in files:
            found.setdefault(f.stem[len("instances_") :] if f.stem.startswith("instances_") else f.stem, f)
    for child in sorted(root.iterdir()):
        if child.is_dir() and (child / ROBOFLOW_FILE).is_file():
            found.setdefault(child.name, child / ROBOFLOW_FILE)
    return found


def list_splits(path: Path) -> list[str]:
    return [] if path.is_file() else sorted(_annotation_files(path))


def find_annotation_file(path: Path, split: str | None) -> Path:
    if path.is_file():
        return path
    files = _annotation_files(path)
    if not files:
        raise UserError(
            f"{path} holds no COCO annotation file: expected annotations/instances_<split>.json "
            "(or give the JSON file itself)"
        )
    if split is None:
        if len(files) == 1:
            return next(iter(files.values()))
        raise UserError(
            f"{path} holds several COCO annotation files ({', '.join(sorted(files))}); give --split."
        )
    if split not in files:
        raise UserError(
            f"split {split!r} not found in {path}: expected annotations/instances_{split}.json "
            f"(splits here: {', '.join(sorted(files)) or 'none'}); give --split with one of them."
        )
    return files[split]


def _image_dirs(json_path: Path, root: Path, split: str | None) -> list[Path]:
    stem = json_path.stem[len("instances_") :] if json_path.stem.startswith("instances_") else json_path.stem
    dirs = [json_path.parent]
    for base in dict.fromkeys([root, json_path.parent.parent]):
        for name in dict.fromkeys([split, stem]):
            if name:
                dirs += [base / name, base / "images" / name]
        dirs.append(base / "images")
    return list(dict.fromkeys(dirs))


def _pick_image_dir(json_path: Path, root: Path, split: str | None, file_names: list[str]) -> Path:
    if not file_names:
        return json_path.parent
    sample = file_names[:: max(1, len(file_names) // 20)][:20]
    best, best_hits = None, 0
    for d in _image_dirs(json_path, root, split):
        hits = sum((d / f).is_file() for f in sample)
        if hits > best_hits:
            best, best_hits = d, hits
        if hits == len(sample):
            break
    if best is None:
        looked = ", ".join(str(d) for d in _image_dirs(json_path, root, split)[:4])
        raise UserError(
            f"cannot find the images of {json_path} (e.g. {sample[0]}): looked in {looked}; put them "
            "in a folder named like the split beside annotations/."
        )
    return best


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def read(path: Path, split: str | None, classes: list[str] | None) -> ReadResult:
    """Read one COCO annotation file. See the module docstring."""
    with _no_cyclic_gc():
        return _read(path, split, classes)


def _read(path: Path, split: str | None, classes: list[str] | None) -> ReadResult:
    json_path = find_annotation_file(path, split)
    root = path if path.is_dir() else json_path.parent
    problems: list[Problem] = []
    file = str(json_path)
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f, object_hook=_without_segmentation)
    except json.JSONDecodeError as exc:
        return ReadResult([], list(classes or []), [Problem(file, f"malformed JSON ({exc})", drops="image")])
    except (OSError, UnicodeDecodeError) as exc:
        return ReadResult(
            [], list(classes or []), [Problem(file, f"cannot read the file ({exc})", drops="image")]
        )
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        return ReadResult(
            [],
            list(classes or []),
            [
                Problem(
                    file,
                    "not a COCO instances file: it needs lists 'images', 'annotations' and 'categories'",
                    drops="image",
                )
            ],
        )
    annotations = data.get("annotations") or []
    cats = _categories(data["categories"], file, problems)
    class_names, label_of, cat_ids = _labels(cats, classes)
    if not cats and not problems:
        problems.append(Problem(file, "the file defines no categories"))
    images = _images(data["images"], file, split, problems)
    objects = _objects(annotations, images, cats, label_of, file, problems)
    del data, annotations  # the parsed JSON: the columns hold what is needed
    image_dir = _pick_image_dir(json_path, root, split, images.file_names)
    records = _records(images, objects, image_dir, json_path, problems)
    extra = {"coco_category_ids": list(cat_ids), "annotation_file": file}
    return ReadResult(records, class_names, problems, extra=extra)


def _without_segmentation(entry: dict) -> dict:
    """``json.load``'s hook for every object: the masks (``segmentation``) go as soon as their annotation
    is parsed, which takes a third off the peak memory of reading COCO train2017's instances; the boxes
    are read from ``bbox``."""
    entry.pop("segmentation", None)
    return entry


@contextlib.contextmanager
def _no_cyclic_gc():
    """The cyclic garbage collector paused while a file is read: parsed JSON holds no cycles, and the
    collections that millions of new dicts and lists trigger, each walking the whole parsed file, made
    ``json.load`` of a COCO train2017-sized file take 1.7x as long and the columns built from it 1.3x."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _categories(categories: list, file: str, problems: list[Problem]) -> dict[int, str]:
    """category id -> name, for the well-formed categories (the others are described in ``problems``)."""
    cats: dict[int, str] = {}
    for k, c in enumerate(categories):
        cid, name = (c.get("id"), c.get("name")) if isinstance(c, dict) else (None, None)
        if not _is_int(cid) or not isinstance(name, str) or not name.strip():
            problems.append(
                Problem(file, "category needs an integer 'id' and a 'name'", where=f"category {k + 1}")
            )
        elif cid in cats:
            problems.append(
                Problem(
                    file,
                    f"category id {cid} is used twice ({cats[cid]!r} and {name!r})",
                    where=f"category {k + 1}",
                )
            )
        elif name.strip() in cats.values():
            problems.append(
                Problem(file, f"category name {name!r} is used twice", where=f"category id {cid}")
            )
        else:
            cats[cid] = name.strip()
    return cats


def _labels(cats: dict[int, str], classes: list[str] | None) -> tuple[list[str], dict[int, int], list[int]]:
    """``(class names, category id -> label, category id of each label (-1: not in the file))``: the
    categories by id, or ``classes`` (matched by name) when given."""
    if classes is None:
        cat_ids = sorted(cats)
        class_names = [cats[c] for c in cat_ids]
        label_of = {c: i + 1 for i, c in enumerate(cat_ids)}
    else:
        class_names = list(classes)
        by_name = {n: i + 1 for i, n in enumerate(class_names)}
        label_of = {c: by_name[n] for c, n in cats.items() if n in by_name}
        name_to_id = {n: c for c, n in cats.items()}
        cat_ids = [name_to_id.get(n, -1) for n in class_names]
    return class_names, label_of, cat_ids


class _Images(NamedTuple):
    """The well-formed image entries as columns: ``row[image id]`` is the entry's row in the others."""

    row: dict
    ids: list[int]
    file_names: list[str]
    sizes: np.ndarray  # int64 (n, 2) width, height; -1 when the entry gives no usable size


def _images(entries: list, file: str, split: str | None, problems: list[Problem]) -> _Images:
    """The image entries with an integer ``id`` and a ``file_name`` (the others are in ``problems``)."""
    row: dict = {}
    ids, names, sizes = [], [], []
    for k, im in enumerate(entries):
        iid = im.get("id") if isinstance(im, dict) else None
        name = im.get("file_name") if isinstance(im, dict) else None
        if not _is_int(iid) or not isinstance(name, str) or not name:
            problems.append(
                Problem(
                    file,
                    "image entry needs an integer 'id' and a 'file_name'",
                    where=f"image {k + 1}",
                    drops="image",
                )
            )
            continue
        if iid in row:
            problems.append(
                Problem(
                    file,
                    f"image id {iid} is used twice ({names[row[iid]]} and {name}); the second is left out",
                    where=f"image {k + 1}",
                    drops="image",
                )
            )
            continue
        w, h = im.get("width"), im.get("height")
        ok = isinstance(w, (int, float)) and isinstance(h, (int, float)) and w > 0 and h > 0
        row[iid] = len(ids)
        ids.append(iid)
        names.append(name)
        sizes.append((int(w), int(h)) if ok else (-1, -1))
    if not ids and not any(p.drops == "image" for p in problems):
        problems.append(
            Problem(file, "the file lists no images" + (f" (split {split!r} is empty)" if split else ""))
        )
    return _Images(row, ids, names, np.array(sizes, dtype=np.int64).reshape(-1, 2))


class _Objects(NamedTuple):
    """The valid annotations as columns, in file order: the row of their image, xyxy pixel boxes (float32,
    clipped to the image), labels and crowd flags."""

    image_rows: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray


def _objects(
    annotations: list,
    images: _Images,
    cats: dict[int, str],
    label_of: dict[int, int],
    file: str,
    problems: list[Problem],
) -> _Objects:
    """The valid annotations; the others are described in ``problems``, in file order.

    Each field is picked from every annotation in one pass (no object per box is kept), and the
    annotations are checked as arrays: ids given before, unknown images and categories, and the boxes as
    :func:`~singleshot.data.records.validate_box` checks one (which words the problems found).
    """
    n = len(annotations)
    if all(type(a) is dict for a in annotations):
        is_dict = np.ones(n, dtype=bool)
    else:
        is_dict = np.fromiter((isinstance(a, dict) for a in annotations), dtype=bool, count=n)
        annotations = [a if ok else {} for a, ok in zip(annotations, is_dict)]
    aids = [a.get("id") for a in annotations]
    rows = _looked_up(images.row, [a.get("image_id") for a in annotations], -1)
    labels = _looked_up(label_of, [a.get("category_id") for a in annotations], 0)
    bboxes = [a.get("bbox") for a in annotations]
    crowd = _truths([a.get("iscrowd", 0) for a in annotations])
    repeat = _repeats(aids) & is_dict
    bad = ~is_dict | repeat | (rows < 0) | (labels == 0)
    found = [
        (k, _problem(k, annotations[k], bool(is_dict[k]), bool(repeat[k]), int(rows[k]), cats, file))
        for k in np.flatnonzero(bad).tolist()
    ]
    ks = np.flatnonzero(~bad)
    boxes, good = _check_boxes(_xyxy(bboxes)[ks], images.sizes[rows[ks]])
    for k in ks[~good].tolist():
        row = int(rows[k])
        where = f"annotation id {aids[k]}" if aids[k] is not None else f"annotation {k + 1}"
        w, h = (int(v) for v in images.sizes[row])
        shown = f"bbox {bboxes[k]}"
        _, message = validate_box(_xyxy([bboxes[k]])[0], w if w > 0 else None, h if h > 0 else None, shown)
        found.append((k, Problem(file, f"{images.file_names[row]}: {message}", where=where, drops="object")))
    problems += [p for _, p in sorted(found, key=lambda kp: kp[0])]
    ks = ks[good]
    return _Objects(rows[ks], boxes[good], labels[ks], crowd[ks])


def _truths(values: list) -> np.ndarray:
    """``bool(v)`` of each value, as a bool array."""
    try:
        array = np.array(values) if values else np.zeros(0, dtype=bool)
    except (ValueError, TypeError, OverflowError):
        array = None
    if array is not None and array.ndim == 1 and array.dtype.kind in "biuf":
        return array != 0
    return np.fromiter(map(bool, values), dtype=bool, count=len(values))


def _problem(k: int, a: dict, is_dict: bool, repeat: bool, row: int, cats: dict, file: str) -> Problem:
    """What is wrong with annotation ``k`` (``a``), the first of the checks in the order they run."""
    if not is_dict:
        return Problem(file, "annotation is not an object", where=f"annotation {k + 1}", drops="object")
    aid = a.get("id")
    if repeat:
        message = f"annotation id {aid} is used twice; the repeat is left out"
        return Problem(file, message, where=f"annotation {k + 1}", drops="object")
    where = f"annotation id {aid}" if aid is not None else f"annotation {k + 1}"
    if row < 0:
        return Problem(file, f"refers to unknown image id {a.get('image_id')}", where=where, drops="object")
    cid = a.get("category_id")
    name = _looked_up(cats, [cid], None)[0]
    message = (
        f"category {name!r} is not in the class list" if name is not None else f"unknown category id {cid}"
    )
    return Problem(file, message, where=where, drops="object")


def _looked_up(table: dict, keys: list, missing) -> np.ndarray:
    """``[table.get(k, missing) for k in keys]`` as an array (int64, or objects when ``missing`` is None); a
    key that cannot be one (a list) is missing."""
    get = table.get
    try:
        values = [get(k, missing) for k in keys]
    except TypeError:  # an unhashable key somewhere: look each up on its own
        values = []
        for k in keys:
            try:
                values.append(get(k, missing))
            except TypeError:
                values.append(missing)
    return np.array(values, dtype=object if missing is None else np.int64)


def _repeats(aids: list) -> np.ndarray:
    """bool per annotation: an annotation before gave the same ``id`` (None never repeats)."""
    n = len(aids)
    try:
        ids = np.array(aids) if aids else np.zeros(0, dtype=np.int64)
    except (ValueError, TypeError, OverflowError):
        ids = None
    if ids is not None and ids.ndim == 1 and ids.dtype.kind in "iu":  # all integers: sort them
        _, first = np.unique(ids, return_index=True)
        repeat = np.ones(n, dtype=bool)
        repeat[first] = False
        return repeat
    repeat, seen = np.zeros(n, dtype=bool), set()
    for k, aid in enumerate(aids):
        if aid is None:
            continue
        try:
            repeat[k] = aid in seen
            seen.add(aid)
        except TypeError:  # a list as id: never the same as another
            pass
    return repeat


def _xyxy(bboxes: list) -> np.ndarray:
    """float64 (n, 4) ``[x, y, x + w, y + h]`` of COCO ``[x, y, w, h]`` boxes; NaN rows for a box that
    is not a list of 4 numbers."""
    try:  # every box a list of 4 numbers: one conversion
        xywh = np.array(bboxes) if bboxes else np.zeros((0, 4))
        fast = xywh.ndim == 2 and xywh.shape[1] == 4 and xywh.dtype.kind in "biuf"
        fast = fast and all(type(b) is list for b in bboxes)
    except (ValueError, TypeError, OverflowError):
        fast = False
    if fast:
        xywh = xywh.astype(np.float64)
    else:
        xywh = np.full((len(bboxes), 4), np.nan)
        for j, b in enumerate(bboxes):
            if isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b):
                xywh[j] = [float(v) for v in b]
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def _check_boxes(boxes: np.ndarray, sizes: np.ndarray, tolerance: float = BOX_TOLERANCE_PX):
    """``validate_box`` for many boxes: ``(float32 boxes clipped to their image, which are valid)``.

    Args:
        boxes (ndarray[n, 4]): float64 xyxy pixel boxes.
        sizes (ndarray[n, 2]): width, height of each box's image (<= 0: unknown, only the size is checked).
    """
    w, h = sizes[:, 0].astype(np.float64), sizes[:, 1].astype(np.float64)
    known = (w > 0) & (h > 0)
    with np.errstate(invalid="ignore"):
        good = np.isfinite(boxes).all(axis=1) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        out = np.max(np.stack([-boxes[:, 0], -boxes[:, 1], boxes[:, 2] - w, boxes[:, 3] - h], axis=1), axis=1)
        limits = np.stack([w, h, w, h], axis=1)
        clipped = np.where(known[:, None], np.clip(boxes, 0, limits), boxes)
        good &= ~known | (out <= tolerance)
        good &= (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return clipped.astype(np.float32), good


def _records(
    images: _Images, objects: _Objects, image_dir: Path, json_path: Path, problems: list[Problem]
) -> RecordTable:
    """The records of the images whose files exist (missing ones are described in ``problems``)."""
    file = str(json_path)
    listing = set(os.listdir(image_dir)) if image_dir.is_dir() else set()
    folder = str(image_dir)
    paths, keep = [], np.zeros(len(images.ids), dtype=bool)
    for j, (iid, name) in enumerate(zip(images.ids, images.file_names)):
        plain = "/" not in name and name not in (".", "..")  # then the join is what Path would make
        path = (
            os.path.join(folder, name)
            if plain
            else str(Path(name) if os.path.isabs(name) else image_dir / name)
        )
        paths.append(path)
        if name in listing or os.path.isfile(path):
            keep[j] = True
        else:
            problems.append(
                Problem(path, f"image file is missing (image id {iid} in {json_path.name})", drops="image")
            )
    counts = np.bincount(objects.image_rows, minlength=len(images.ids))
    offsets = np.zeros(len(images.ids) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    order = np.argsort(objects.image_rows, kind="stable")  # by image, in file order within one
    table = RecordTable(
        paths=np.array(paths, dtype=str),
        names=np.array(images.file_names, dtype=str),
        image_ids=np.array(images.ids, dtype=np.int64),
        sizes=images.sizes,
        offsets=offsets,
        boxes=objects.boxes[order].reshape(-1, 4),
        labels=objects.labels[order],
        difficult=np.zeros(len(order), dtype=bool),
        iscrowd=objects.iscrowd[order],
        source=file,
    )
    return table if keep.all() else table.select(keep)


def write_json(path: Path, images: list[dict], annotations: list[dict], class_names: list[str]) -> None:
    """Write a COCO instances file; category ids are ``1..K`` in ``class_names`` order."""
    data = {
        "info": {"description": "written by singleshot"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(class_names)],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data))
