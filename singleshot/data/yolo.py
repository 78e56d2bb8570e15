"""YOLO folders: ``images/<split>/*.jpg`` with ``labels/<split>/*.txt`` beside them (the ultralytics layout).

A label file has one object per line, ``class cx cy w h``, with a 0-based class id and the box centre and
size relative to the image (0..1). Lines with more than five numbers (``class x1 y1 x2 y2 x3 y3 ...``) are
segmentation polygons and become their bounding box. A missing label file means an image with no objects.
The label file of ``.../images/<rest>/a.jpg`` is ``.../labels/<rest>/a.txt`` (the last ``images`` folder in the
path becomes ``labels``); without an ``images`` folder the label file lies beside the image.

Splits and class names come from ``data.yaml`` (``path``, ``train``, ``val``, ``test``, ``names``; a split is a
folder, a ``.txt`` list of image paths, or a list of those), else from the folders ``images/<split>/`` and
``classes.txt``. The simple YAML subset these files use is parsed without PyYAML (used when installed).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np

from singleshot.data.images import is_image_file
from singleshot.data.records import (
    ImageRecord,
    Problem,
    ReadResult,
    check_class_names,
    read_names_file,
    validate_box,
)
from singleshot.errors import UserError

SPLIT_KEYS = ("train", "val", "test")
CLASS_FILES = ("classes.txt", "labels/classes.txt", "classes.names", "obj.names")
# Relative boxes at most this far outside [0, 1] are clipped silently.
TOLERANCE = 0.01


# -- the YAML subset ---------------------------------------------------------------------------------------
def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if ch in "'\"" and quote in (None, ch):
            quote = None if quote else ch
        elif ch == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def _scalar(text: str):
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    if re.fullmatch(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?", text):
        return float(text)
    if text in ("null", "~", ""):
        return None
    if text in ("true", "false"):
        return text == "true"
    return text


def _split_flow(text: str) -> list[str]:
    items, depth, quote, current = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(current)
            current = ""
            continue
        current += ch
    if current.strip():
        items.append(current)
    return items


def _value(text: str):
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        return [_value(v) for v in _split_flow(text[1:-1])]
    if text.startswith("{") and text.endswith("}"):
        out = {}
        for item in _split_flow(text[1:-1]):
            k, _, v = item.partition(":")
            out[_scalar(k)] = _value(v)
        return out
    return _scalar(text)


def parse_simple_yaml(text: str) -> dict:
    """Parse the YAML subset of data.yaml files: top-level ``key: value`` with scalars, flow lists/maps
    (``[a, b]``, ``{0: a}``) and one level of block lists (``- a``) or maps (``0: a``)."""
    data: dict = {}
    key = None
    for raw in text.splitlines():
        line = _strip_comment(raw).rstrip()
        if not line.strip() or line.strip() in ("---", "..."):
            continue
        if not line[0].isspace():
            k, sep, v = line.partition(":")
            if not sep:
                raise ValueError(f"expected 'key: value', got {line.strip()!r}")
            key = _scalar(k)
            data[key] = _value(v) if v.strip() else None
            continue
        if key is None:
            raise ValueError(f"indented line without a key: {line.strip()!r}")
        item = line.strip()
        if item.startswith("- ") or item == "-":
            if data[key] is None:
                data[key] = []
            if not isinstance(data[key], list):
                raise ValueError(f"mixed list and mapping under {key!r}")
            data[key].append(_value(item[1:]))
        else:
            k, sep, v = item.partition(":")
            if not sep:
                raise ValueError(f"expected 'key: value' under {key!r}, got {item!r}")
            if data[key] is None:
                data[key] = {}
            if not isinstance(data[key], dict):
                raise ValueError(f"mixed list and mapping under {key!r}")
            data[key][_scalar(k)] = _value(v)
    return data


def load_yaml(path: Path) -> dict:
    """A data.yaml as a dict (PyYAML when importable, else :func:`parse_simple_yaml`).

    Raises:
        UserError: the file cannot be read or parsed.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path} ({exc}).") from None
    try:
        try:
            import yaml
        except ImportError:
            data = parse_simple_yaml(text)
        else:
            data = yaml.safe_load(text)
    except Exception as exc:
        raise UserError(f"{path} is not valid YAML ({str(exc).splitlines()[0]}); fix the file.") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a YAML mapping; expected keys such as train, val and names.")
    return data


def _names_from(data: dict, source: str) -> list[str] | None:
    names = data.get("names")
    if names is None:
        nc = data.get("nc")
        return [f"class{i}" for i in range(nc)] if isinstance(nc, int) and nc > 0 else None
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise UserError(f"{source}: 'names' keys must be class ids 0, 1, 2 ...") from None
        if keys != list(range(len(keys))):
            raise UserError(f"{source}: 'names' must number the classes 0..{len(keys) - 1} without gaps.")
        lookup = {int(k): v for k, v in names.items()}
        names = [lookup[k] for k in keys]
    if not isinstance(names, list):
        raise UserError(f"{source}: 'names' must be a list or a mapping of class id to name.")
    return check_class_names([str(n) for n in names], source)


def read_names_from_yaml(path: Path) -> list[str]:
    names = _names_from(load_yaml(path), str(path))
    if names is None:
        raise UserError(f"{path} has no 'names'; list the class names there.")
    return names


# -- layout ------------------------------------------------------------------------------------------------
def _find_yaml(path: Path) -> Path | None:
    if path.is_file():
        return path if path.suffix.lower() in (".yaml", ".yml") else None
    for name in ("data.yaml", "data.yml", "dataset.yaml"):
        if (path / name).is_file():
            return path / name
    candidates = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))
    return candidates[0] if len(candidates) == 1 else None


def _has_images(folder: Path) -> bool:
    try:
        return folder.is_dir() and any(is_image_file(e.name) for e in os.scandir(folder))
    except OSError:
        return False


def looks_like(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() in (".yaml", ".yml")
    if not path.is_dir():
        return False
    return (
        _find_yaml(path) is not None
        or (path / "labels").is_dir()
        or (path / "images").is_dir()
        or any((c / "images").is_dir() and (c / "labels").is_dir() for c in path.iterdir() if c.is_dir())
    )


def _layout(path: Path) -> tuple[Path | None, Path, dict]:
    """(data.yaml or None, dataset root, {split: list of sources})."""
    yaml_path = _find_yaml(path)
    if yaml_path is not None:
        data = load_yaml(yaml_path)
        base = yaml_path.parent
        if isinstance(data.get("path"), str) and data["path"]:
            p = Path(data["path"]).expanduser()
            p = p if p.is_absolute() else yaml_path.parent / p
            if p.is_dir():
                base = p
        splits = {}
        for key, value in data.items():
            if key in SPLIT_KEYS or (key == "valid" and "val" not in data):
                if value:
                    splits["val" if key == "valid" else key] = [
                        base / v if not Path(v).is_absolute() else Path(v)
                        for v in (value if isinstance(value, list) else [value])
                    ]
        return yaml_path, base, {"_data": data, **splits}
    root = path
    splits = {}
    images = root / "images"
    if images.is_dir():
        for child in sorted(images.iterdir()):
            if child.is_dir():
                splits[child.name] = [child]
    for child in sorted(root.iterdir()) if root.is_dir() else []:
        if child.is_dir() and (child / "images").is_dir() and child.name not in splits:
            splits[child.name] = [child / "images"]
    return None, root, splits


def list_splits(path: Path) -> list[str]:
    _, _, splits = _layout(path)
    return sorted(k for k in splits if k != "_data")


def label_path(image_path: Path) -> Path:
    """``.../images/x/a.jpg`` -> ``.../labels/x/a.txt``; beside the image when no ``images`` folder."""
    parts = list(image_path.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image_path.with_suffix(".txt")


def _images_of(source: Path, problems: list[Problem], file: str) -> list[Path]:
    if source.is_dir():
        found = []
        for dirpath, dirnames, filenames in os.walk(source):
            dirnames.sort()
            found += [Path(dirpath) / f for f in sorted(filenames) if is_image_file(f)]
        return found
    if source.is_file() and source.suffix.lower() == ".txt":
        out = []
        for n, line in enumerate(source.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            line = line.strip()
            if line:
                p = Path(line)
                p = p if p.is_absolute() else source.parent / p
                if not p.is_file():
                    problems.append(
                        Problem(
                            str(p),
                            f"image file is missing (listed in {source.name}, line {n})",
                            drops="image",
                        )
                    )
                    continue
                out.append(p)
        return out
    if source.is_file() and is_image_file(source.name):
        return [source]
    problems.append(Problem(file, f"split path {source} does not exist"))
    return []


def _parse_labels(
    path: Path,
    num_classes: int | None,
    problems: list[Problem],
    id_to_label: dict | None = None,
    file_names: list[str] | None = None,
):
    """-> (boxes (n, 4) relative xyxy, labels (n,)) of one label file, or None when there is no file (no
    objects), or False when it cannot be read. Labels are ``id + 1``, or ``id_to_label[id]`` when given."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        problems.append(Problem(str(path), f"cannot read the label file ({exc.strerror})", drops="image"))
        return False
    boxes, ids, seen = [], [], {}
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        where = f"line {n}"
        try:
            values = [float(v) for v in parts]
        except ValueError:
            problems.append(
                Problem(str(path), f"non-numeric value in {line.strip()!r}", where=where, drops="object")
            )
            continue
        if len(values) != 5 and not (len(values) >= 7 and len(values) % 2 == 1):
            problems.append(
                Problem(
                    str(path),
                    f"expected 'class cx cy w h' (5 numbers), found {len(values)}",
                    where=where,
                    drops="object",
                )
            )
            continue
        cls = values[0]
        if not math.isfinite(cls) or cls != int(cls) or cls < 0:
            problems.append(
                Problem(
                    str(path),
                    f"class id {parts[0]} is not a non-negative integer",
                    where=where,
                    drops="object",
                )
            )
            continue
        if num_classes is not None and cls >= num_classes:
            problems.append(
                Problem(
                    str(path),
                    f"class id {int(cls)} is out of range (the data set has "
                    f"{num_classes} classes, ids 0..{num_classes - 1})",
                    where=where,
                    drops="object",
                )
            )
            continue
        if id_to_label is not None and int(cls) not in id_to_label:
            problems.append(
                Problem(
                    str(path),
                    f"class {file_names[int(cls)]!r} (id {int(cls)}) is not in the class list",
                    where=where,
                    drops="object",
                )
            )
            continue
        if len(values) == 5:
            cx, cy, w, h = values[1:]
            xyxy = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        else:
            xs, ys = values[1::2], values[2::2]
            xyxy = [min(xs), min(ys), max(xs), max(ys)]
        box, message = validate_box(xyxy, 1.0, 1.0, f"{line.strip()}", tolerance=TOLERANCE)
        if message:
            problems.append(Problem(str(path), message, where=where, drops="object"))
            continue
        key = line.strip()
        if key in seen:
            problems.append(
                Problem(
                    str(path),
                    f"repeats line {seen[key]}; the repeat is left out",
                    where=where,
                    severity="warning",
                    drops="object",
                )
            )
            continue
        seen[key] = n
        boxes.append(box)
        ids.append(id_to_label[int(cls)] if id_to_label is not None else int(cls) + 1)
    return np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(ids, dtype=np.int64)


def read(path: Path, split: str | None, classes: list[str] | None) -> ReadResult:
    """Read one YOLO split (``None``: every image under ``images/``). See the module docstring."""
    yaml_path, root, splits = _layout(path)
    data = splits.pop("_data", {})
    problems: list[Problem] = []
    file = str(yaml_path or root)
    if split is not None:
        key = "val" if split in ("valid", "validation") and split not in splits else split
        if key not in splits:
            raise UserError(
                f"split {split!r} not found in {yaml_path or root} (splits here: "
                f"{', '.join(sorted(splits)) or 'none'}); give --split with one of them."
            )
        sources = splits[key]
    else:
        if splits:
            raise UserError(f"{yaml_path or root} has splits ({', '.join(sorted(splits))}); give --split.")
        sources = [root / "images"] if (root / "images").is_dir() else [root]

    file_names = _names_from(data, str(yaml_path)) if data else None  # what the ids in the files mean
    if file_names is None:
        for candidate in CLASS_FILES:
            if (root / candidate).is_file():
                file_names = read_names_file(root / candidate)
                break
    names = classes if classes is not None else file_names
    # class id in the files -> label; with a given class list (a checkpoint's) ids are matched by name
    id_to_label = None
    if classes is not None and file_names is not None:
        id_to_label = {i: classes.index(n) + 1 for i, n in enumerate(file_names) if n in classes}
    image_paths = []
    for source in sources:
        image_paths += _images_of(source, problems, file)
    if not image_paths and not problems:
        problems.append(Problem(file, f"split {split!r} has no images" if split else "no images found"))

    owners: dict[Path, Path] = {}
    found_labels = 0
    parsed = []
    for image_path in image_paths:
        lp = label_path(image_path)
        if lp in owners:
            message = (
                "image listed twice"
                if owners[lp] == image_path
                else f"{owners[lp].name} and {image_path.name} share the label file {lp.name}"
            )
            problems.append(Problem(str(image_path), f"{message}; the second is left out", drops="image"))
            continue
        owners[lp] = image_path
        num_ids = len(file_names) if file_names is not None else (len(names) if names is not None else None)
        result = _parse_labels(lp, num_ids, problems, id_to_label, file_names)
        if result is False:
            continue
        if result is not None:
            found_labels += 1
        else:
            result = (np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
        parsed.append((image_path, lp, *result))
    if parsed and not found_labels:
        problems.append(
            Problem(
                str(label_path(parsed[0][0]).parent),
                f"no label files found for {len(parsed)} images (expected e.g. "
                f"{label_path(parsed[0][0])}); check that labels/ mirrors images/",
            )
        )
    if names is None:
        top = max((int(labels.max()) - 1 for *_, labels in parsed if len(labels)), default=-1)
        names = [f"class{i}" for i in range(top + 1)]
        problems.append(
            Problem(
                file,
                "no data.yaml names or classes.txt: classes are named after their ids",
                severity="warning",
            )
        )
    records = [
        ImageRecord(path=str(ip), image_id=i, name=ip.stem, boxes=boxes, labels=labels, source=str(lp))
        for i, (ip, lp, boxes, labels) in enumerate(parsed)
    ]
    return ReadResult(records, list(names), problems, normalized=True)


def label_lines(boxes_rel, class_ids) -> str:
    """``class cx cy w h`` lines for relative xyxy boxes and 0-based class ids."""
    out = []
    for (x1, y1, x2, y2), c in zip(boxes_rel, class_ids):
        out.append(f"{int(c)} {(x1 + x2) / 2:.6f} {(y1 + y2) / 2:.6f} {x2 - x1:.6f} {y2 - y1:.6f}\n")
    return "".join(out)


def data_yaml(splits: list[str], class_names: list[str]) -> str:
    """A data.yaml for ``images/<split>`` folders next to it."""
    lines = ["path: .  # the folder of this file"]
    lines += [f"{s}: images/{s}" for s in splits]
    lines.append("names:")
    lines += [f"  {i}: {n}" for i, n in enumerate(class_names)]
    return "\n".join(lines) + "\n"
