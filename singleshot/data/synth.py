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
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw
from tqdm import tqdm

from singleshot.data.backgrounds import BACKGROUNDS, draw_background, occluder
from singleshot.errors import UserError

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


def _fit(pts: np.ndarray) -> np.ndarray:
    """Centre an outline's bounding box on the origin and scale its longer side to span [-1, 1]."""
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return (pts - (lo + hi) / 2) * (2 / float((hi - lo).max()))


def _crescent() -> np.ndarray:
    # the unit circle less a circle of radius 0.85 centred at (0.45, 0): outer arc round the left, inner back
    xi = (1 + 0.45**2 - 0.85**2) / (2 * 0.45)
    t0 = math.acos(xi)
    outer = np.linspace(t0, 2 * math.pi - t0, 40)
    p0 = math.atan2(math.sin(t0), xi - 0.45)
    inner = np.linspace(2 * math.pi - p0, p0, 30)
    pts = np.concatenate(
        [
            np.stack([np.cos(outer), np.sin(outer)], 1),
            np.stack([0.45 + 0.85 * np.cos(inner), 0.85 * np.sin(inner)], 1),
        ]
    )
    return _fit(pts)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 60, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return _fit(np.stack([x, y], 1))


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
    "ellipse": _regular(48) * [1.0, 0.5],
    "pentagon": _fit(_regular(5)),
    "arrow": np.array(
        [(-1, -0.3), (0.15, -0.3), (0.15, -0.75), (1, 0), (0.15, 0.75), (0.15, 0.3), (-1, 0.3)],
        dtype=np.float64,
    ),
    "crescent": _crescent(),
    "heart": _heart(),
    "l-shape": np.array([(-1, -1), (-0.3, -1), (-0.3, 0.4), (1, 0.4), (1, 1), (-1, 1)], dtype=np.float64),
}
RING_HOLE = 0.55
ROTATES = {  # max degrees
    "square": 12,
    "triangle": 12,
    "cross": 12,
    "star": 20,
    "diamond": 10,
    "hexagon": 15,
    "ellipse": 30,
    "pentagon": 12,
    "arrow": 15,
    "crescent": 20,
    "heart": 10,
    "l-shape": 12,
}
# where an "outline" style scales the shape down to cut its hole: the centre of its inscribed circle
INCENTRES = {"triangle": (0.0, (math.sqrt(5) - 1) / (math.sqrt(5) + 1))}
STYLES = ("solid", "outline", "striped", "two-tone")
OUTLINE_HOLE = 0.6  # an outline's hole is the shape scaled by this much about its incentre

# The class catalogue, in the order --classes K takes them: a class is a shape, or "shape-style" for the
# styles other than solid (a class never depends on colour).
SHAPES = (
    "circle",
    "square",
    "triangle",
    "cross",
    "star",
    "ring",
    "diamond",
    "hexagon",
    "ellipse",
    "pentagon",
    "square-outline",
    "circle-striped",
    "arrow",
    "heart",
    "triangle-outline",
    "hexagon-striped",
    "crescent",
    "l-shape",
    "diamond-outline",
    "square-two-tone",
)


def class_parts(name: str) -> tuple[str, str] | None:
    """``"square-outline"`` -> ``("square", "outline")``, ``"l-shape"`` -> ``("l-shape", "solid")``; None
    for a name that is no shape, or no shape and style."""
    if name in OUTLINES:
        return name, "solid"
    for style in STYLES[1:]:
        if name.endswith("-" + style) and name[: -len(style) - 1] in OUTLINES:
            return name[: -len(style) - 1], style
    return None


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


def _hole(mask: Image.Image, pts: np.ndarray, centre: np.ndarray, x0: int, y0: int) -> Image.Image:
    """``mask`` less the shape ``pts`` scaled by OUTLINE_HOLE about ``centre`` (pixels): an outline stroke."""
    s = SUPERSAMPLE
    inner = centre + (pts - centre) * OUTLINE_HOLE
    m = Image.new("L", (mask.width * s, mask.height * s), 0)
    ImageDraw.Draw(m).polygon([((x - x0) * s, (y - y0) * s) for x, y in inner], fill=255)
    return ImageChops.subtract(mask, m.reduce(s))


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


def _colour_far(rng: np.random.Generator, refs: list[np.ndarray]) -> tuple[int, int, int]:
    """A random colour far from all of ``refs`` (the largest smallest distance of 12 draws)."""
    cands = rng.uniform(0, 255, (12, 3))
    d = np.min([np.linalg.norm(cands - np.asarray(r, dtype=np.float64), axis=1) for r in refs], axis=0)
    return tuple(int(v) for v in cands[int(np.argmax(d))])


def _pattern(rng: np.random.Generator, style: str, w: int, h: int, size: float) -> np.ndarray:
    """Where a striped or two-tone object takes its second colour: float32 (h, w) in {0, 1}."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, math.pi)
    u = (xx - w / 2) * math.cos(a) + (yy - h / 2) * math.sin(a)
    if style == "striped":
        period = max(4.0, size / 4.5)
        return ((u / period) % 1 < 0.5).astype(np.float32)
    return (u > 0).astype(np.float32)  # two-tone: one half in each colour


def _shading(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Brightness factors float32 (h, w) for a lit object: a linear ramp or a radial highlight."""
    yy, xx = (np.mgrid[0:h, 0:w].astype(np.float32) + 0.5) / [[[max(h, 1)]], [[max(w, 1)]]]
    if rng.random() < 0.5:
        a = rng.uniform(0, 2 * math.pi)
        t = (xx - 0.5) * math.cos(a) + (yy - 0.5) * math.sin(a)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    else:
        hx, hy = rng.uniform(0.2, 0.8, 2)
        t = np.clip(np.hypot(xx - hx, yy - hy) / 0.9, 0, 1)
    lo, hi = rng.uniform(0.35, 0.6), rng.uniform(1.15, 1.4)
    return (hi + (lo - hi) * t).astype(np.float32)


def _paint(
    im: Image.Image, rng: np.random.Generator, cls: tuple[str, str], geometry: tuple, shaded: bool
) -> None:
    """Paint one object: a shape mask in a colour that stands out from the background under it, styled
    (outline, stripes, two tones) and shaded when asked."""
    shape, style = cls
    pts, (x0, y0, x1, y1), sx, sy, cx, cy, degrees = geometry
    w, h = x1 - x0, y1 - y0
    mask = _mask(shape, pts, x0, y0, w, h, sx, sy, cx, cy)
    if style == "outline":
        c = np.array(INCENTRES.get(shape, (0.0, 0.0))) * [sx, sy]
        a = math.radians(degrees)
        centre = c @ np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]).T + [cx, cy]
        mask = _hole(mask, pts, centre, x0, y0)
    local = np.asarray(im.crop((x0, y0, x1, y1)).resize((4, 4), Image.BOX)).reshape(-1, 3).mean(axis=0)
    colour = _colour_against(rng, local)
    if style in ("solid", "outline") and not shaded:
        im.paste(colour, (x0, y0), mask)
        return
    fill = np.empty((h, w, 3), np.float32)
    fill[:] = colour
    if style in ("striped", "two-tone"):
        second = _colour_far(rng, [local, np.array(colour)])
        on = _pattern(rng, style, w, h, max(w, h))[..., None]
        fill = fill * (1 - on) + np.array(second, np.float32) * on
    if shaded:
        fill *= _shading(rng, w, h)[..., None]
    im.paste(Image.fromarray(np.clip(fill, 0, 255).astype(np.uint8)), (x0, y0), mask)


def _cover(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Intersection of xyxy boxes a and b as fractions of a's and of b's area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0, 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1])), inter / ((b[2] - b[0]) * (b[3] - b[1]))


def _place(rng: np.random.Generator, shape: str, width: int, height: int, lo_size: float, hi_size: float):
    """A random pose inside the image: (points, xyxy box float32, sx, sy, cx, cy, degrees), or None when
    the drawn shape does not fit."""
    size = math.exp(rng.uniform(math.log(lo_size), math.log(hi_size)))
    aspect = math.exp(rng.uniform(-math.log(1.4), math.log(1.4)))
    sx, sy = size / 2 * math.sqrt(aspect), size / 2 / math.sqrt(aspect)
    degrees = rng.uniform(-1, 1) * ROTATES.get(shape, 0)
    pts = _shape_points(shape, 0.0, 0.0, sx, sy, degrees)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    if hi[0] - lo[0] >= width - 2 or hi[1] - lo[1] >= height - 2:
        return None
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
    return pts, np.clip(box, 0, [width, height, width, height]), sx, sy, cx, cy, degrees


def _fits(box: np.ndarray, boxes: list, covered: list, max_overlap: float, occlusion: float | None) -> bool:
    """Whether ``box`` may go on top of ``boxes``: by default neither of two boxes covers more than
    ``max_overlap`` of the other; with ``occlusion``, later boxes cover at most that share of each earlier
    one in all (``covered`` sums what they cover so far)."""
    if occlusion is None:
        return not any(max(_cover(box, b)) > max_overlap for b in boxes)
    return all(covered[j] + _cover(b, box)[0] <= occlusion for j, b in enumerate(boxes))


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
    background: str = "gradient",
    shaded: bool = False,
    occlusion: float | None = None,
    occluders: float = 0.0,
) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """One synthetic image.

    Args:
        shapes: the class names (see :data:`SHAPES` and :func:`class_parts`).
        background: one of :data:`singleshot.data.backgrounds.BACKGROUNDS`.
        shaded: objects get a linear or radial shading instead of one flat colour.
        occlusion: None (``max_overlap`` rules) or the share of each object's box that later objects may
            cover in all (boxes stay amodal: the whole shape, hidden parts included).
        occluders: the chance per object that a blob that is no class is painted over part of it.

    Returns:
        (RGB PIL image, boxes float32 (n, 4) xyxy pixels on integer pixel edges, class indices (n,) into shapes).
    """
    im = draw_background(rng, width, height, background, clutter)
    side = min(width, height)
    boxes: list[np.ndarray] = []
    covered: list[float] = []
    classes: list[int] = []
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        for _attempt in range(20):
            k = int(rng.integers(len(shapes)))
            cls = class_parts(shapes[k])
            geometry = _place(rng, cls[0], width, height, min_size * side, max_size * side)
            if geometry is None:
                continue
            box = geometry[1]
            if not _fits(box, boxes, covered, max_overlap, occlusion):
                continue
            covered = [c + _cover(b, box)[0] for c, b in zip(covered, boxes)]
            x0, y0, x1, y1 = (int(v) for v in box)
            _paint(im, rng, cls, (geometry[0], (x0, y0, x1, y1), *geometry[2:]), shaded)
            boxes.append(box)
            covered.append(0.0)
            classes.append(k)
            break
    if occluders > 0:
        draw = ImageDraw.Draw(im)
        for box in boxes:
            if rng.random() < occluders:
                across = rng.uniform(0.3, 0.6) * float(min(box[2] - box[0], box[3] - box[1]))
                draw.polygon(occluder(rng, box, across), fill=tuple(int(v) for v in rng.uniform(0, 255, 3)))
    bits = int(round(4 * clutter))
    if bits > 0:  # sensor-like noise, uniform in [-2^(bits-1), 2^(bits-1)) (random bytes are cheap)
        noise = np.frombuffer(rng.bytes(height * width * 3), np.uint8).reshape(height, width, 3) & (
            2**bits - 1
        )
        im = ImageChops.add(im, Image.fromarray(noise), 1.0, -(2 ** (bits - 1)))
    return im, np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(classes, dtype=np.int64)


SizeChoice = tuple[tuple[int, int], tuple[int, int]]  # ((h_lo, h_hi), (w_lo, w_hi)), inclusive


def parse_image_sizes(spec) -> tuple[SizeChoice, ...]:
    """Image size choices from an int (square side), a (height, width) pair, a list of such pairs, or text:
    comma-separated items, each ``S`` (square), ``WxH``, a range ``A-B`` (each side drawn independently in
    it, so portrait, landscape and square all occur) or ``W1-W2xH1-H2``.

    Returns:
        ((h_lo, h_hi), (w_lo, w_hi)) per choice; each image takes one choice, then each side in its range.

    Raises:
        UserError: malformed text or a side outside 32..8192 pixels.
    """
    if isinstance(spec, (int, np.integer)):
        items = [((int(spec),) * 2, (int(spec),) * 2)]
    elif isinstance(spec, str):
        items = []
        for item in spec.split(","):
            m = re.fullmatch(r"\s*(\d+)(?:-(\d+))?\s*(?:[xX]\s*(\d+)(?:-(\d+))?)?\s*", item)
            if not m:
                raise UserError(
                    f"--image-size {spec!r} is malformed; give sides such as 300, 320x240, 360-640 or "
                    "a list such as 320x240,240x320."
                )
            w = (int(m.group(1)), int(m.group(2) or m.group(1)))
            h = (int(m.group(3)), int(m.group(4) or m.group(3))) if m.group(3) else w
            items.append((h, w))
    elif len(spec) == 2 and all(isinstance(v, (int, np.integer)) for v in spec):
        items = [((int(spec[0]),) * 2, (int(spec[1]),) * 2)]
    else:
        items = [((int(h),) * 2, (int(w),) * 2) for h, w in spec]
    for (h0, h1), (w0, w1) in items:
        if min(h0, w0) < 32 or max(h1, w1) > 8192 or h0 > h1 or w0 > w1:
            raise UserError(
                f"--image-size {w0}-{w1}x{h0}-{h1} is out of range; use sides between 32 and 8192 pixels."
            )
    return tuple(items)


def _backgrounds(spec) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in spec.split(",")) if isinstance(spec, str) else tuple(spec)
    if kinds == ("mixed",):
        kinds = BACKGROUNDS
    bad = [k for k in kinds if k not in BACKGROUNDS]
    if bad or not kinds:
        raise UserError(
            f"--background {spec!r} is unknown; use {', '.join(BACKGROUNDS)}, mixed, or a list such as "
            "texture,photo."
        )
    return kinds


@dataclass(frozen=True)
class _Job:
    """Draws and writes image ``i`` (and its VOC/YOLO annotation); returns (i, boxes, classes, (h, w))."""

    out: str
    format: str
    seed: int
    sizes: tuple[SizeChoice, ...]
    shapes: tuple[str, ...]
    min_size: float
    max_size: float
    min_objects: int
    max_objects: int
    clutter: float
    max_overlap: float
    jpeg_quality: int
    assignment: tuple[str, ...]
    backgrounds: tuple[str, ...] = ("gradient",)
    shaded: bool = False
    occlusion: float | None = None
    occluders: float = 0.0
    background_only: float = 0.0
    difficult_below: float = 0.0

    def _choices(self, i: int) -> tuple[int, int, str, bool]:
        """Image i's (height, width, background, background only), each from its own generator so that the
        objects' generator is the same as with one size and one background."""
        (h0, h1), (w0, w1) = self.sizes[0]
        if len(self.sizes) > 1 or h0 != h1 or w0 != w1:
            r = np.random.default_rng((self.seed, i, 1))
            (h0, h1), (w0, w1) = self.sizes[int(r.integers(len(self.sizes)))]
            h0, w0 = int(r.integers(h0, h1 + 1)), int(r.integers(w0, w1 + 1))
        kind = self.backgrounds[0]
        if len(self.backgrounds) > 1:
            kind = self.backgrounds[
                int(np.random.default_rng((self.seed, i, 2)).integers(len(self.backgrounds)))
            ]
        empty = (
            self.background_only > 0
            and np.random.default_rng((self.seed, i, 3)).random() < self.background_only
        )
        return h0, w0, kind, empty

    def __call__(self, i: int):
        h, w, kind, empty = self._choices(i)
        rng = np.random.default_rng((self.seed, i))
        im, boxes, classes = render_image(
            rng,
            w,
            h,
            self.shapes,
            min_size=self.min_size,
            max_size=self.max_size,
            min_objects=0 if empty else self.min_objects,
            max_objects=0 if empty else self.max_objects,
            clutter=self.clutter,
            max_overlap=self.max_overlap,
            background=kind,
            shaded=self.shaded,
            occlusion=self.occlusion,
            occluders=self.occluders,
        )
        out, split, stem = Path(self.out), self.assignment[i], f"{i + 1:06d}"
        if self.format == "voc":
            from singleshot.data.voc import annotation_xml

            im.save(out / "JPEGImages" / f"{stem}.jpg", quality=self.jpeg_quality)
            short = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
            xml = annotation_xml(
                f"{stem}.jpg",
                w,
                h,
                boxes,
                [self.shapes[c] for c in classes],
                difficult=(short < self.difficult_below).tolist(),
                folder="synth",
            )
            (out / "Annotations" / f"{stem}.xml").write_text(xml)
        elif self.format == "coco":
            im.save(out / split / f"{stem}.jpg", quality=self.jpeg_quality)
        else:
            from singleshot.data.yolo import label_lines

            im.save(out / "images" / split / f"{stem}.jpg", quality=self.jpeg_quality)
            rel = boxes / np.array([w, h, w, h], dtype=np.float32)
            (out / "labels" / split / f"{stem}.txt").write_text(label_lines(rel, classes))
        return i, boxes, classes, (h, w)


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


def _check_options(
    num_images, format, shapes, num_classes, min_size, max_size, min_objects, max_objects, clutter, extra
) -> tuple[str, ...]:
    """Validate synthesize's arguments; returns the class names."""
    if format not in ("voc", "coco", "yolo"):
        raise UserError(f"--format {format!r} is unknown; use voc, coco or yolo.")
    if num_images < 1:
        raise UserError(f"--images must be at least 1 (got {num_images}).")
    if shapes is None:
        if not 1 <= num_classes <= len(SHAPES):
            raise UserError(f"--classes must be between 1 and {len(SHAPES)} (got {num_classes}).")
        shapes = SHAPES[:num_classes]
    unknown = [s for s in shapes if class_parts(s) is None]
    if unknown:
        raise UserError(
            f"unknown class {unknown[0]!r}; choose from {', '.join(SHAPES)} or shape-STYLE with STYLE one of "
            f"{', '.join(STYLES[1:])}."
        )
    if len(set(shapes)) != len(shapes):
        raise UserError("--shapes names a class twice; give each class once.")
    if not 0 < min_size <= max_size <= 0.95:
        raise UserError(
            f"object sizes {min_size}..{max_size} are invalid; need 0 < min <= max <= 0.95 of the side."
        )
    if not 0 <= min_objects <= max_objects:
        raise UserError(f"objects per image {min_objects}..{max_objects} is invalid; need 0 <= min <= max.")
    if not 0 <= clutter <= 1:
        raise UserError(f"--clutter must be between 0 and 1 (got {clutter}).")
    occlusion, occluders, background_only, difficult_below = extra
    if occlusion is not None and not 0 <= occlusion <= 0.9:
        raise UserError(f"--occlusion must be between 0 and 0.9 (got {occlusion}).")
    for name, value in (("--occluders", occluders), ("--background-only", background_only)):
        if not 0 <= value <= 1:
            raise UserError(f"{name} must be between 0 and 1 (got {value}).")
    if difficult_below < 0:
        raise UserError(f"--difficult-below must be 0 or more pixels (got {difficult_below}).")
    if difficult_below > 0 and format != "voc":
        raise UserError("--difficult-below applies to the VOC layout only; drop it or use --format voc.")
    return tuple(shapes)


def _write_coco(out: Path, per_split: dict[str, list], names: list[str]) -> None:
    from singleshot.data.coco import write_json

    ann_id = 1
    for name, items in per_split.items():
        images, anns = [], []
        for image_id, file_name, boxes, classes, (h, w) in items:
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


def _make_folders(out: Path, format: str, split_names: list[str], names: list[str]) -> None:
    for name in split_names:
        if format == "coco":
            (out / name).mkdir(exist_ok=True)
        elif format == "yolo":
            (out / "images" / name).mkdir(parents=True, exist_ok=True)
            (out / "labels" / name).mkdir(parents=True, exist_ok=True)
    if format == "voc":
        (out / "JPEGImages").mkdir()
        (out / "Annotations").mkdir()
        (out / "classes.txt").write_text("".join(f"{n}\n" for n in names))


def _write_lists(out: Path, format: str, per_split: dict[str, list], names: list[str]) -> dict[str, int]:
    """The split lists (VOC), instances files (COCO) or data.yaml (YOLO); returns the images per split."""
    split_sizes = {n: len(v) for n, v in per_split.items()}
    if format == "voc":
        from singleshot.data.voc import write_split

        for name, ids in per_split.items():
            write_split(out, name, ids)
        if "train" in per_split and "val" in per_split and "trainval" not in per_split:
            write_split(out, "trainval", per_split["train"] + per_split["val"])
            split_sizes["trainval"] = split_sizes["train"] + split_sizes["val"]
    elif format == "coco":
        _write_coco(out, per_split, names)
    else:
        from singleshot.data.yolo import data_yaml

        (out / "data.yaml").write_text(data_yaml(list(per_split), names))
    return split_sizes


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
    background="gradient",
    shaded: bool = False,
    occlusion: float | None = None,
    occluders: float = 0.0,
    background_only: float = 0.0,
    difficult_below: float = 0.0,
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
        image_size: int (square), (height, width) in pixels, a list of (height, width) choices, or text
            (see :func:`parse_image_sizes`: ``"320x240,240x320"``, ``"360-640"``); drawn per image.
        seed: the same seed writes the same files.
        splits: ``"train=0.7,val=0.1,test=0.2"`` or a list of (name, fraction).
        num_classes: how many of :data:`SHAPES` to use (in that order), or ``shapes``: their names
            (a shape, or ``shape-style`` with a style of :data:`STYLES`).
        min_size, max_size: object size range as a fraction of the shorter image side (log-uniform).
        min_objects, max_objects: objects per image (fewer when they do not fit).
        clutter: 0 (plain gradient) .. 1 (many distractor lines, curves, stripes, specks; more noise).
        max_overlap: the largest fraction of one object's box another may cover.
        background: ``"gradient"``, ``"texture"``, ``"photo"``, ``"clutter"``, ``"mixed"`` (all four), or a
            list of them (``"texture,photo"``); each image takes one.
        shaded: objects get a linear or radial shading instead of one flat colour.
        occlusion: None (``max_overlap`` rules), or the share of each object's box that later objects may
            cover in all, e.g. 0.6; boxes stay amodal (the whole shape).
        occluders: the chance per object that a blob that is no class is painted over part of it.
        background_only: the share of images drawn with no objects (their annotations list none).
        difficult_below: VOC only: objects whose shorter box side is under this many pixels are marked
            difficult.
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
    extra = (occlusion, occluders, background_only, difficult_below)
    shapes = _check_options(
        num_images, format, shapes, num_classes, min_size, max_size, min_objects, max_objects, clutter, extra
    )
    sizes = parse_image_sizes(image_size)
    kinds = _backgrounds(background)
    split_list = parse_splits(splits) if isinstance(splits, str) else list(splits)
    counts = _split_counts(num_images, split_list)
    out = Path(out)
    _prepare(out, format, overwrite, [n for n, _ in counts])
    names = list(shapes)

    assignment = [name for name, c in counts for _ in range(c)]
    per_split: dict[str, list] = {n: [] for n, _ in counts}
    _make_folders(out, format, list(per_split), names)
    job = _Job(
        str(out),
        format,
        seed,
        sizes,
        shapes,
        min_size,
        max_size,
        min_objects,
        max_objects,
        clutter,
        max_overlap,
        jpeg_quality,
        tuple(assignment),
        kinds,
        shaded,
        occlusion,
        occluders,
        background_only,
        difficult_below,
    )
    if workers is None:
        workers = min(4, os.cpu_count() or 1) if num_images >= 200 else 1
    num_objects = 0
    with _pool(workers, job) as pool:
        results = (
            pool.imap(_make_image, range(num_images), chunksize=16) if pool else map(job, range(num_images))
        )
        for i, boxes, classes, hw in tqdm(
            results, total=num_images, desc="synth", unit="img", disable=not progress
        ):
            num_objects += len(boxes)
            stem = f"{i + 1:06d}"
            per_split[assignment[i]].append(
                (i + 1, f"{stem}.jpg", boxes, classes, hw) if format == "coco" else stem
            )

    split_sizes = _write_lists(out, format, per_split, names)
    return SynthSummary(str(out), format, names, split_sizes, num_images, num_objects)
