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
ignores detections matched to them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from singleshot.data.records import ImageRecord, Problem, ReadResult, validate_box
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
    json_path = find_annotation_file(path, split)
    root = path if path.is_dir() else json_path.parent
    problems: list[Problem] = []
    file = str(json_path)
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
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
    per_image = _objects(annotations, images, cats, label_of, file, problems)
    image_dir = _pick_image_dir(json_path, root, split, [im["file_name"] for im in images.values()])
    records = _records(images, per_image, image_dir, json_path, problems)
    extra = {"coco_category_ids": list(cat_ids), "annotation_file": file}
    return ReadResult(records, class_names, problems, extra=extra)


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


def _images(entries: list, file: str, split: str | None, problems: list[Problem]) -> dict[int, dict]:
    """image id -> ``{"file_name", "width", "height"}`` (sizes None when not given)."""
    images: dict[int, dict] = {}
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
        if iid in images:
            problems.append(
                Problem(
                    file,
                    f"image id {iid} is used twice ({images[iid]['file_name']} and {name}); "
                    "the second is left out",
                    where=f"image {k + 1}",
                    drops="image",
                )
            )
            continue
        w, h = im.get("width"), im.get("height")
        ok = isinstance(w, (int, float)) and isinstance(h, (int, float)) and w > 0 and h > 0
        images[iid] = {"file_name": name, "width": int(w) if ok else None, "height": int(h) if ok else None}
    if not images and not any(p.drops == "image" for p in problems):
        problems.append(
            Problem(file, "the file lists no images" + (f" (split {split!r} is empty)" if split else ""))
        )
    return images


def _objects(
    annotations: list,
    images: dict[int, dict],
    cats: dict[int, str],
    label_of: dict[int, int],
    file: str,
    problems: list[Problem],
) -> dict[int, list]:
    """image id -> ``[(xyxy pixel box, label, iscrowd)]`` for the valid annotations."""
    per_image: dict[int, list] = {i: [] for i in images}
    seen_ann: set = set()
    for k, a in enumerate(annotations):
        if not isinstance(a, dict):
            problems.append(
                Problem(file, "annotation is not an object", where=f"annotation {k + 1}", drops="object")
            )
            continue
        aid = a.get("id")
        where = f"annotation id {aid}" if aid is not None else f"annotation {k + 1}"
        if aid is not None:
            if aid in seen_ann:
                problems.append(
                    Problem(
                        file,
                        f"annotation id {aid} is used twice; the repeat is left out",
                        where=f"annotation {k + 1}",
                        drops="object",
                    )
                )
                continue
            seen_ann.add(aid)
        iid, cid = a.get("image_id"), a.get("category_id")
        if iid not in images:
            problems.append(Problem(file, f"refers to unknown image id {iid}", where=where, drops="object"))
            continue
        if cid not in cats:
            problems.append(Problem(file, f"unknown category id {cid}", where=where, drops="object"))
            continue
        if cid not in label_of:
            problems.append(
                Problem(file, f"category {cats[cid]!r} is not in the class list", where=where, drops="object")
            )
            continue
        bbox = a.get("bbox")
        ok = isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)
        x, y, w, h = [float(v) for v in bbox] if ok else [math.nan] * 4
        info = images[iid]
        box, message = validate_box([x, y, x + w, y + h], info["width"], info["height"], f"bbox {bbox}")
        if message:
            problems.append(Problem(file, f"{info['file_name']}: {message}", where=where, drops="object"))
            continue
        per_image[iid].append((box, label_of[cid], bool(a.get("iscrowd", 0))))

    return per_image


def _records(
    images: dict[int, dict],
    per_image: dict[int, list],
    image_dir: Path,
    json_path: Path,
    problems: list[Problem],
) -> list[ImageRecord]:
    """The records of the images whose files exist (missing ones are described in ``problems``)."""
    file = str(json_path)
    listing = set(os.listdir(image_dir)) if image_dir.is_dir() else set()
    records = []
    for iid, im in images.items():
        name = im["file_name"]
        image_path = Path(name) if os.path.isabs(name) else image_dir / name
        if not (name in listing or image_path.is_file()):
            problems.append(
                Problem(
                    str(image_path),
                    f"image file is missing (image id {iid} in {json_path.name})",
                    drops="image",
                )
            )
            continue
        objs = per_image[iid]
        records.append(
            ImageRecord(
                path=str(image_path),
                image_id=iid,
                name=name,
                boxes=np.array([o[0] for o in objs], dtype=np.float32).reshape(-1, 4),
                labels=np.array([o[1] for o in objs], dtype=np.int64),
                iscrowd=np.array([o[2] for o in objs], dtype=bool),
                width=im["width"],
                height=im["height"],
                source=file,
            )
        )
    return records


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
