"""Synthetic detection data: coloured shapes on textured, cluttered backgrounds, in VOC, COCO or YOLO layout.

The classes differ by shape (circle, square, triangle, cross, star, ...), never by colour: every object gets
a random colour chosen to stand out from the background under it. Sizes are drawn log-uniformly between
``min_size`` and ``max_size`` (fractions of the shorter image side), with a random aspect ratio (up to 1.4)
and a small rotation, so the boxes vary in size and shape. Objects may overlap partly (at most
``max_overlap`` of either box is covered). The background is a colour gradient with low-frequency texture;
``clutter`` adds distractors that are texture, not shapes: lines, curves, stripes, specks and sensor noise.

Everything is drawn with numpy and PIL from ``numpy.random.default_rng((seed, i))`` per image, so the same
seed writes the same files, whatever the number of images.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw
from tqdm import tqdm

from singleshot.errors import UserError

SHAPES = ("circle", "square", "triangle", "cross", "star", "ring", "diamond", "hexagon")
DEFAULT_SPLITS = "train=0.7,val=0.1,test=0.2"
SUPERSAMPLE = 3  # shape masks are drawn this many times larger, then averaged: smooth edges


def _regular(k: int, start: float = -math.pi / 2) -> np.ndarray:
    a = start + np.arange(k) * 2 * math.pi / k
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def _star() -> np.ndarray:
    pts = _regular(10)
    pts[1::2] *= 0.45
    return pts


def _cross(t: float = 0.34) -> np.ndarray:
    return np.array(
        [
            (-t, -1),
            (t, -1),
            (t, -t),
            (1, -t),
            (1, t),
            (t, t),
            (t, 1),
            (-t, 1),
            (-t, t),
            (-1, t),
            (-1, -t),
            (-t, -t),
        ],
        dtype=np.float64,
    )


# Outlines in [-1, 1]^2; "ring" is a circle with a hole of radius RING_HOLE.
OUTLINES = {
    "circle": _regular(48),
    "ring": _regular(48),
    "square": np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=np.float64),
    "triangle": np.array([(0, -1), (1, 1), (-1, 1)], dtype=np.float64),
    "cross": _cross(),
    "star": _star(),
    "diamond": np.array([(0, -1), (1, 0), (0, 1), (-1, 0)], dtype=np.float64),
    "hexagon": _regular(6, 0.0),
}
RING_HOLE = 0.55
ROTATES = {"square": 12, "triangle": 12, "cross": 12, "star": 20, "diamond": 10, "hexagon": 15}  # max degrees


@dataclass
class SynthSummary:
    """What :func:`synthesize` wrote."""

    path: str
    format: str
    class_names: list[str]
    splits: dict[str, int]
    num_images: int
    num_objects: int


def parse_splits(text: str) -> list[tuple[str, float]]:
    """``"train=0.8,test=0.2"`` -> ``[("train", 0.8), ("test", 0.2)]``; fractions are normalised to sum 1.

    Raises:
        UserError: malformed text, a negative or zero total, or a name given twice.
    """
    out: list[tuple[str, float]] = []
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            frac = float(value)
        except ValueError:
            frac = -1.0
        if not sep or not name or frac < 0 or not name.replace("_", "").replace("-", "").isalnum():
            raise UserError(
                f"--splits {text!r} is malformed; write name=fraction pairs such as 'train=0.8,test=0.2'."
            )
        if name in dict(out):
            raise UserError(f"--splits names {name!r} twice; give each split once.")
        out.append((name, frac))
    total = sum(f for _, f in out)
    if not out or total <= 0:
        raise UserError(f"--splits {text!r} gives no images to any split; write e.g. 'train=0.8,test=0.2'.")
    return [(n, f / total) for n, f in out]


def _split_counts(num_images: int, splits: list[tuple[str, float]]) -> list[tuple[str, int]]:
    """Contiguous blocks; every split with a positive fraction gets at least one image when possible."""
    bounds = np.round(np.cumsum([0.0] + [f for _, f in splits]) * num_images).astype(int)
    counts = np.diff(bounds)
    for i, (_, f) in enumerate(splits):
        if f > 0 and counts[i] == 0:
            j = int(np.argmax(counts))
            if counts[j] > 1:
                counts[j] -= 1
                counts[i] += 1
    return [(n, int(c)) for (n, _), c in zip(splits, counts)]


def _background(rng: np.random.Generator, w: int, h: int, clutter: float) -> Image.Image:
    """A gradient between two muted colours with low-frequency texture, plus texture-like clutter."""
    c0, c1 = rng.uniform(30, 225, 3), rng.uniform(30, 225, 3)
    angle = rng.uniform(0, 2 * math.pi)
    cells = int(rng.integers(3, 9))
    # gradient + texture on a coarse grid, then one smooth upsampling: cheap at any image size
    gy, gx = np.mgrid[0 : cells + 1, 0 : cells + 1] / cells
    t = np.cos(angle) * gx + np.sin(angle) * gy
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    coarse = c0 * (1 - t[..., None]) + c1 * t[..., None]
    coarse += rng.normal(0, 40 * (0.4 + 0.6 * clutter), coarse.shape)
    im = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    draw = ImageDraw.Draw(im)
    side = min(w, h)
    for _ in range(int(rng.poisson(20 * clutter))):
        kind = rng.random()
        colour = tuple(int(v) for v in rng.uniform(0, 255, 3))
        if kind < 0.35:  # straight line
            p = rng.uniform(0, 1, 4) * [w, h, w, h]
            draw.line(
                [tuple(p[:2]), tuple(p[2:])], fill=colour, width=int(rng.integers(1, max(2, side // 100) + 2))
            )
        elif kind < 0.65:  # wandering curve
            n = int(rng.integers(4, 10))
            pts = np.cumsum(rng.normal(0, side * 0.06, (n, 2)), axis=0) + rng.uniform(0, 1, 2) * [w, h]
            draw.line([tuple(p) for p in pts], fill=colour, width=int(rng.integers(1, 3)), joint="curve")
        elif kind < 0.8:  # a patch of thin stripes
            x, y = rng.uniform(0, 1) * w, rng.uniform(0, 1) * h
            length, gap = rng.uniform(0.1, 0.3) * side, int(rng.integers(3, 7))
            for k in range(int(rng.integers(3, 8))):
                draw.line([(x, y + k * gap), (x + length, y + k * gap + length * 0.2)], fill=colour, width=1)
        else:  # specks, far smaller than any object
            n = int(rng.integers(5, 40))
            draw.point([tuple(p) for p in rng.uniform(0, 1, (n, 2)) * [w, h]], fill=colour)
    return im


def _shape_points(shape: str, cx: float, cy: float, sx: float, sy: float, degrees: float) -> np.ndarray:
    pts = OUTLINES[shape] * [sx, sy]
    a = math.radians(degrees)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return pts @ rot.T + [cx, cy]


def _mask(
    shape: str, pts: np.ndarray, x0: int, y0: int, w: int, h: int, sx: float, sy: float, cx: float, cy: float
) -> Image.Image:
    s = SUPERSAMPLE
    m = Image.new("L", (w * s, h * s), 0)
    d = ImageDraw.Draw(m)
    d.polygon([((x - x0) * s, (y - y0) * s) for x, y in pts], fill=255)
    if shape == "ring":
        hx, hy = sx * RING_HOLE, sy * RING_HOLE
        d.ellipse([(cx - hx - x0) * s, (cy - hy - y0) * s, (cx + hx - x0) * s, (cy + hy - y0) * s], fill=0)
    return m.reduce(s)


def _colour_against(rng: np.random.Generator, local_mean: np.ndarray) -> tuple[int, int, int]:
    best, best_d = None, -1.0
    for _ in range(12):
        c = rng.uniform(0, 255, 3)
        d = float(np.linalg.norm(c - local_mean))
        if d > best_d:
            best, best_d = c, d
        if d > 110:
            break
    return tuple(int(v) for v in best)


def _cover(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Intersection of xyxy boxes a and b as fractions of a's and of b's area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0, 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1])), inter / ((b[2] - b[0]) * (b[3] - b[1]))


def render_image(
    rng: np.random.Generator,
    width: int,
    height: int,
    shapes: tuple[str, ...],
    *,
    min_size: float,
    max_size: float,
    min_objects: int,
    max_objects: int,
    clutter: float,
    max_overlap: float,
) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """One synthetic image.

    Returns:
        (RGB PIL image, boxes float32 (n, 4) xyxy pixels on integer pixel edges, class indices (n,) into shapes).
    """
    im = _background(rng, width, height, clutter)
    side = min(width, height)
    boxes: list[np.ndarray] = []
    classes: list[int] = []
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        for _attempt in range(20):
            k = int(rng.integers(len(shapes)))
            shape = shapes[k]
            size = math.exp(rng.uniform(math.log(min_size * side), math.log(max_size * side)))
            aspect = math.exp(rng.uniform(-math.log(1.4), math.log(1.4)))
            sx, sy = size / 2 * math.sqrt(aspect), size / 2 / math.sqrt(aspect)
            degrees = rng.uniform(-1, 1) * ROTATES.get(shape, 0)
            pts = _shape_points(shape, 0.0, 0.0, sx, sy, degrees)
            lo, hi = pts.min(axis=0), pts.max(axis=0)
            if hi[0] - lo[0] >= width - 2 or hi[1] - lo[1] >= height - 2:
                continue
            cx = rng.uniform(1 - lo[0], width - 1 - hi[0])
            cy = rng.uniform(1 - lo[1], height - 1 - hi[1])
            pts = pts + [cx, cy]
            box = np.array(
                [
                    math.floor(pts[:, 0].min()),
                    math.floor(pts[:, 1].min()),
                    math.ceil(pts[:, 0].max()),
                    math.ceil(pts[:, 1].max()),
                ],
                dtype=np.float32,
            )
            box = np.clip(box, 0, [width, height, width, height])
            if any(max(_cover(box, b)) > max_overlap for b in boxes):
                continue
            x0, y0, x1, y1 = (int(v) for v in box)
            mask = _mask(shape, pts, x0, y0, x1 - x0, y1 - y0, sx, sy, cx, cy)
            local = (
                np.asarray(im.crop((x0, y0, x1, y1)).resize((4, 4), Image.BOX)).reshape(-1, 3).mean(axis=0)
            )
            im.paste(_colour_against(rng, local), (x0, y0), mask)
            boxes.append(box)
            classes.append(k)
            break
    bits = int(round(4 * clutter))
    if bits > 0:  # sensor-like noise, uniform in [-2^(bits-1), 2^(bits-1)) (random bytes are cheap)
        noise = np.frombuffer(rng.bytes(height * width * 3), np.uint8).reshape(height, width, 3) & (
            2**bits - 1
        )
        im = ImageChops.add(im, Image.fromarray(noise), 1.0, -(2 ** (bits - 1)))
    return im, np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(classes, dtype=np.int64)


@dataclass(frozen=True)
class _Job:
    """Draws and writes image ``i`` (and its VOC/YOLO annotation); returns (i, boxes, classes)."""

    out: str
    format: str
    seed: int
    size_hw: tuple[int, int]
    shapes: tuple[str, ...]
    min_size: float
    max_size: float
    min_objects: int
    max_objects: int
    clutter: float
    max_overlap: float
    jpeg_quality: int
    assignment: tuple[str, ...]

    def __call__(self, i: int):
        h, w = self.size_hw
        rng = np.random.default_rng((self.seed, i))
        im, boxes, classes = render_image(
            rng,
            w,
            h,
            self.shapes,
            min_size=self.min_size,
            max_size=self.max_size,
            min_objects=self.min_objects,
            max_objects=self.max_objects,
            clutter=self.clutter,
            max_overlap=self.max_overlap,
        )
        out, split, stem = Path(self.out), self.assignment[i], f"{i + 1:06d}"
        if self.format == "voc":
            from singleshot.data.voc import annotation_xml

            im.save(out / "JPEGImages" / f"{stem}.jpg", quality=self.jpeg_quality)
            xml = annotation_xml(
                f"{stem}.jpg", w, h, boxes, [self.shapes[c] for c in classes], folder="synth"
            )
            (out / "Annotations" / f"{stem}.xml").write_text(xml)
        elif self.format == "coco":
            im.save(out / split / f"{stem}.jpg", quality=self.jpeg_quality)
        else:
            from singleshot.data.yolo import label_lines

            im.save(out / "images" / split / f"{stem}.jpg", quality=self.jpeg_quality)
            rel = boxes / np.array([w, h, w, h], dtype=np.float32)
            (out / "labels" / split / f"{stem}.txt").write_text(label_lines(rel, classes))
        return i, boxes, classes


_JOB: _Job | None = None


def _init_worker(job: _Job) -> None:
    global _JOB
    _JOB = job


def _make_image(i: int):
    return _JOB(i)


@contextlib.contextmanager
def _pool(workers: int, job: _Job):
    if workers <= 1:
        yield None
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(job,)) as pool:
        yield pool


def _prepare(out: Path, format: str, overwrite: bool, split_names: list[str]) -> None:
    owned = {
        "voc": ["JPEGImages", "Annotations", "ImageSets", "classes.txt"],
        "coco": ["annotations", *split_names],
        "yolo": ["images", "labels", "data.yaml"],
    }[format]
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; give a folder to write the data set into.")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out} is not empty; choose a new folder or pass --overwrite.")
        for name in owned:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def synthesize(
    out,
    num_images: int,
    format: str = "voc",
    image_size=300,
    seed: int = 0,
    *,
    splits: str | list[tuple[str, float]] = DEFAULT_SPLITS,
    num_classes: int = 5,
    shapes: tuple[str, ...] | None = None,
    min_size: float = 0.08,
    max_size: float = 0.5,
    min_objects: int = 1,
    max_objects: int = 5,
    clutter: float = 0.5,
    max_overlap: float = 0.3,
    jpeg_quality: int = 92,
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = False,
) -> SynthSummary:
    """Write a synthetic data set of shapes.

    Args:
        out: folder to create (must be empty unless ``overwrite``).
        num_images: images in all splits together.
        format: ``"voc"`` (JPEGImages/, Annotations/, ImageSets/Main/; also ``trainval`` = train + val),
            ``"coco"`` (annotations/instances_<split>.json, <split>/) or ``"yolo"`` (images/<split>/,
            labels/<split>/, data.yaml).
        image_size: int (square) or (height, width) in pixels.
        seed: the same seed writes the same files.
        splits: ``"train=0.7,val=0.1,test=0.2"`` or a list of (name, fraction).
        num_classes: how many of :data:`SHAPES` to use (in that order), or ``shapes``: their names.
        min_size, max_size: object size range as a fraction of the shorter image side (log-uniform).
        min_objects, max_objects: objects per image (fewer when they do not fit).
        clutter: 0 (plain gradient) .. 1 (many distractor lines, curves, stripes, specks; more noise).
        max_overlap: the largest fraction of one object's box another may cover.
        jpeg_quality: JPEG quality of the images.
        overwrite: write into a non-empty ``out`` (replacing the folders this format writes).
        workers: processes drawing images (default: up to 4 for 200 images or more, else 1); the files do
            not depend on it.

    Returns:
        a :class:`SynthSummary`.

    Raises:
        UserError: a bad argument (format, sizes, counts, splits, an occupied folder).
    """
    format = format.lower()
    if format not in ("voc", "coco", "yolo"):
        raise UserError(f"--format {format!r} is unknown; use voc, coco or yolo.")
    if num_images < 1:
        raise UserError(f"--images must be at least 1 (got {num_images}).")
    h, w = (
        (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
    )
    if min(h, w) < 32 or max(h, w) > 8192:
        raise UserError(f"--image-size {w}x{h} is out of range; use sides between 32 and 8192 pixels.")
    if shapes is None:
        if not 1 <= num_classes <= len(SHAPES):
            raise UserError(f"--classes must be between 1 and {len(SHAPES)} (got {num_classes}).")
        shapes = SHAPES[:num_classes]
    unknown = [s for s in shapes if s not in OUTLINES]
    if unknown:
        raise UserError(f"unknown shape {unknown[0]!r}; choose from {', '.join(SHAPES)}.")
    if not 0 < min_size <= max_size <= 0.95:
        raise UserError(
            f"object sizes {min_size}..{max_size} are invalid; need 0 < min <= max <= 0.95 of the side."
        )
    if not 0 <= min_objects <= max_objects:
        raise UserError(f"objects per image {min_objects}..{max_objects} is invalid; need 0 <= min <= max.")
    if not 0 <= clutter <= 1:
        raise UserError(f"--clutter must be between 0 and 1 (got {clutter}).")
    split_list = parse_splits(splits) if isinstance(splits, str) else list(splits)
    counts = _split_counts(num_images, split_list)
    out = Path(out)
    _prepare(out, format, overwrite, [n for n, _ in counts])
    names = list(shapes)

    assignment = []
    for name, c in counts:
        assignment += [name] * c
    per_split: dict[str, list] = {n: [] for n, _ in counts}
    for name in per_split:
        if format == "coco":
            (out / name).mkdir(exist_ok=True)
        elif format == "yolo":
            (out / "images" / name).mkdir(parents=True, exist_ok=True)
            (out / "labels" / name).mkdir(parents=True, exist_ok=True)
    if format == "voc":
        (out / "JPEGImages").mkdir()
        (out / "Annotations").mkdir()
        (out / "classes.txt").write_text("".join(f"{n}\n" for n in names))
    job = _Job(
        str(out),
        format,
        seed,
        (h, w),
        tuple(shapes),
        min_size,
        max_size,
        min_objects,
        max_objects,
        clutter,
        max_overlap,
        jpeg_quality,
        tuple(assignment),
    )
    if workers is None:
        workers = min(4, os.cpu_count() or 1) if num_images >= 200 else 1
    num_objects = 0
    with _pool(workers, job) as pool:
        results = (
            pool.imap(_make_image, range(num_images), chunksize=16) if pool else map(job, range(num_images))
        )
        for i, boxes, classes in tqdm(
            results, total=num_images, desc="synth", unit="img", disable=not progress
        ):
            num_objects += len(boxes)
            stem = f"{i + 1:06d}"
            per_split[assignment[i]].append(
                (i + 1, f"{stem}.jpg", boxes, classes) if format == "coco" else stem
            )

    split_sizes = {n: len(v) for n, v in per_split.items()}
    if format == "voc":
        from singleshot.data.voc import write_split

        for name, ids in per_split.items():
            write_split(out, name, ids)
        if "train" in per_split and "val" in per_split and "trainval" not in per_split:
            write_split(out, "trainval", per_split["train"] + per_split["val"])
            split_sizes["trainval"] = split_sizes["train"] + split_sizes["val"]
    elif format == "coco":
        from singleshot.data.coco import write_json

        ann_id = 1
        for name, items in per_split.items():
            images, anns = [], []
            for image_id, file_name, boxes, classes in items:
                images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
                for (x1, y1, x2, y2), c in zip(boxes.tolist(), classes.tolist()):
                    anns.append(
                        {
                            "id": ann_id,
                            "image_id": image_id,
                            "category_id": c + 1,
                            "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "area": (x2 - x1) * (y2 - y1),
                            "iscrowd": 0,
                        }
                    )
                    ann_id += 1
            write_json(out / "annotations" / f"instances_{name}.json", images, anns, names)
    else:
        from singleshot.data.yolo import data_yaml

        (out / "data.yaml").write_text(data_yaml(list(per_split), names))
    return SynthSummary(str(out), format, names, split_sizes, num_images, num_objects)
