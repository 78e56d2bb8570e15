"""Backgrounds for the synthetic data: gradient, texture, photo-like and cluttered scenes.

Every kind is drawn with numpy and PIL from the generator it is given, on coarse grids that are upsampled
once, so a 640x480 background takes a few milliseconds. None of them draws the data set's class shapes:

- ``"gradient"``: a colour gradient with low-frequency texture, plus ``clutter`` lines, curves, stripes and
  specks;
- ``"texture"``: multi-octave coloured value noise, or a fabric-like repeated pattern (checks, stripes, weave,
  dots) under a noise tint;
- ``"photo"``: a sky/ground split with a wavy horizon, or large blurred blobs, with soft shadows, fine grain
  and vignetting;
- ``"clutter"``: a gradient or texture under many distractors that are not class shapes: irregular polygons,
  smooth blobs, text-like strokes, and such pieces cut by the border.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

BACKGROUNDS = ("gradient", "texture", "photo", "clutter")


def _colour(rng: np.random.Generator, lo: float = 0, hi: float = 255) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.uniform(lo, hi, 3))


def _lines(draw: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int, clutter: float) -> None:
    """Texture-like clutter: straight lines, wandering curves, patches of stripes and specks."""
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


def gradient(rng: np.random.Generator, w: int, h: int, clutter: float) -> Image.Image:
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
    _lines(ImageDraw.Draw(im), rng, w, h, clutter)
    return im


def _field(rng: np.random.Generator, w: int, h: int, cells: int, channels: int = 1) -> np.ndarray:
    """Smooth value noise in about [-1, 1]: a random ``cells``-wide grid upsampled bicubically, float32 (h, w[, c])."""
    gw = max(2, int(round(cells * w / max(w, h))) + 1)
    gh = max(2, int(round(cells * h / max(w, h))) + 1)
    out = []
    for _ in range(channels):
        grid = Image.fromarray(rng.uniform(-1, 1, (gh, gw)).astype(np.float32), mode="F")
        out.append(np.asarray(grid.resize((w, h), Image.BICUBIC)))
    return np.stack(out, axis=-1) if channels > 1 else out[0]


def _value_noise(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Multi-octave coloured value noise, float32 (h, w, 3) in 0..255."""
    base = rng.uniform(40, 215, 3)
    tint = rng.uniform(-1, 1, 3)
    tint /= max(float(np.linalg.norm(tint)), 1e-6)
    octaves = int(rng.integers(3, 6))
    cells, amp, total = float(rng.uniform(2, 5)), 1.0, np.zeros((h, w), np.float32)
    colour = _field(rng, w, h, 3, 3) * rng.uniform(20, 50)
    for _ in range(octaves):
        total += amp * _field(rng, w, h, int(cells))
        cells, amp = cells * 2.2, amp * rng.uniform(0.45, 0.7)
    total /= max(float(np.abs(total).max()), 1e-6)
    contrast = rng.uniform(35, 80)
    return base + total[..., None] * (contrast * (0.5 + 0.5 * np.abs(tint))) + colour


def _fabric(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A repeated pattern (checks, stripes, weave or dots) in two colours under a noise tint, (h, w, 3)."""
    c0, c1 = rng.uniform(30, 225, 3), rng.uniform(30, 225, 3)
    period = rng.uniform(4, 0.08 * min(w, h) + 6)
    a = rng.uniform(0, math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xx * math.cos(a) + yy * math.sin(a)) / period
    v = (-xx * math.sin(a) + yy * math.cos(a)) / period
    kind = int(rng.integers(4))
    if kind == 0:  # checks
        t = ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    elif kind == 1:  # stripes, soft edged
        t = 0.5 + 0.5 * np.sin(2 * math.pi * u)
    elif kind == 2:  # weave: alternating over/under threads
        t = np.where(
            (np.floor(u) + np.floor(v)) % 2 == 0, np.abs(np.sin(math.pi * u)), np.abs(np.sin(math.pi * v))
        )
    else:  # dots
        t = (((u % 1) - 0.5) ** 2 + ((v % 1) - 0.5) ** 2 < rng.uniform(0.04, 0.15)).astype(np.float32)
    tint = _field(rng, max(8, w // 4), max(8, h // 4), 4, 3) * rng.uniform(10, 35) + c0
    tint = Image.fromarray(np.clip(tint, 0, 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    return np.asarray(tint, np.float32) + t[..., None].astype(np.float32) * (c1 - c0).astype(np.float32)


def texture(rng: np.random.Generator, w: int, h: int, clutter: float) -> Image.Image:
    """Coloured multi-octave value noise or a fabric-like repeated pattern, with a little line clutter."""
    if rng.random() < 0.5:  # smooth: drawn at half resolution, then upsampled
        small = _value_noise(rng, max(8, w // 2), max(8, h // 2))
        im = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    else:
        im = Image.fromarray(np.clip(_fabric(rng, w, h), 0, 255).astype(np.uint8))
    _lines(ImageDraw.Draw(im), rng, w, h, clutter * 0.3)
    return im


def _blurred_blobs(rng: np.random.Generator, w: int, h: int, n: int, dark: bool) -> Image.Image:
    """``n`` large soft ellipses on a quarter-size canvas, blurred; an "L" weight image at full size."""
    sw, sh = max(8, w // 4), max(8, h // 4)
    m = Image.new("L", (sw, sh), 0)
    d = ImageDraw.Draw(m)
    for _ in range(n):
        cx, cy = rng.uniform(0, sw), rng.uniform(0, sh)
        rx, ry = rng.uniform(0.1, 0.4) * sw, rng.uniform(0.05, 0.25 if dark else 0.4) * sh
        d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=int(rng.uniform(120, 255)))
    m = m.filter(ImageFilter.GaussianBlur(rng.uniform(0.03, 0.08) * min(sw, sh)))
    return m.resize((w, h), Image.BILINEAR)


def photo(rng: np.random.Generator, w: int, h: int, clutter: float) -> Image.Image:
    """A photo-like scene: sky/ground or blurred blobs, soft shadows, fine grain and vignetting."""
    full_w, full_h = w, h
    w, h = max(16, w // 2), max(16, h // 2)  # the smooth scene is drawn at half resolution
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if rng.random() < 0.5:  # sky over ground, a wavy horizon
        sky_top, sky_low = rng.uniform([60, 90, 140], [170, 200, 255]), rng.uniform(150, 245, 3)
        ground_far, ground_near = rng.uniform(40, 180, 3), rng.uniform(20, 150, 3)
        horizon = rng.uniform(0.25, 0.7) * h + rng.uniform(-0.15, 0.15) * (xx[0] - w / 2)
        horizon = horizon + _field(rng, w, 1, 6)[0] * rng.uniform(0.01, 0.08) * h
        t_sky = np.clip(yy / np.maximum(horizon, 1), 0, 1)[..., None]
        t_ground = np.clip((yy - horizon) / np.maximum(h - horizon, 1), 0, 1)[..., None]
        is_sky = (yy < horizon)[..., None]
        a = np.where(
            is_sky,
            sky_top * (1 - t_sky) + sky_low * t_sky,
            ground_far * (1 - t_ground) + ground_near * t_ground,
        )
        a += _field(rng, w, h, 12, 3) * 12 * (~is_sky)
    else:  # a smooth colour field with large out-of-focus blobs
        c0, c1 = rng.uniform(30, 225, 3), rng.uniform(30, 225, 3)
        t = 0.5 + 0.5 * _field(rng, w, h, 2)
        a = c0 * (1 - t[..., None]) + c1 * t[..., None]
        for _ in range(int(rng.integers(2, 5))):
            weight = np.asarray(_blurred_blobs(rng, w, h, int(rng.integers(1, 4)), False), np.float32) / 255
            a = a * (1 - weight[..., None]) + rng.uniform(20, 240, 3) * weight[..., None]
    shadow = np.asarray(_blurred_blobs(rng, w, h, int(rng.integers(1, 4)), True), np.float32) / 255
    a *= 1 - rng.uniform(0.2, 0.5) * shadow[..., None]
    r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
    a *= (1 - rng.uniform(0.1, 0.4) * np.clip(r2 / 2, 0, 1))[..., None]
    im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).resize((full_w, full_h), Image.BICUBIC)
    bits = int(rng.integers(2, 4))  # fine grain, the same in the three channels
    grain = np.frombuffer(rng.bytes(full_w * full_h), np.uint8).reshape(full_h, full_w) & (2**bits - 1)
    im = ImageChops.add(im, Image.fromarray(grain).convert("RGB"), 1.0, -(2 ** (bits - 1)))
    _lines(ImageDraw.Draw(im), rng, full_w, full_h, clutter * 0.2)
    return im


def _irregular(rng: np.random.Generator, cx: float, cy: float, r: float, smooth: bool) -> list[tuple]:
    """An irregular polygon (6-10 corners of random radius) or a smooth blob (many points, low-order wobble)."""
    if smooth:
        a = np.linspace(0, 2 * math.pi, 40, endpoint=False)
        rad = np.ones_like(a)
        for k in (2, 3, 4):
            rad += rng.uniform(0, 0.25) * np.cos(k * a + rng.uniform(0, 2 * math.pi))
    else:
        a = np.sort(rng.uniform(0, 2 * math.pi, int(rng.integers(6, 11))))
        rad = rng.uniform(0.4, 1.0, len(a))
    sx, sy = r, r * rng.uniform(0.5, 1.5)
    return [(cx + sx * q * math.cos(t), cy + sy * q * math.sin(t)) for q, t in zip(rad, a)]


def _text(draw: ImageDraw.ImageDraw, rng: np.random.Generator, x: float, y: float, side: int, colour) -> None:
    """A line or two of glyph-like strokes: short segments and hooks on a baseline, like small print."""
    size = rng.uniform(0.02, 0.06) * side
    width = max(1, int(round(size / 6)))
    for row in range(int(rng.integers(1, 3))):
        gx = x
        for _ in range(int(rng.integers(3, 12))):
            pts = [(gx + rng.uniform(0, 0.7) * size, y + row * 1.5 * size + rng.uniform(0, 1) * size)]
            for _ in range(int(rng.integers(1, 4))):
                pts.append((gx + rng.uniform(0, 0.7) * size, y + row * 1.5 * size + rng.uniform(0, 1) * size))
            draw.line(pts, fill=colour, width=width)
            gx += size * rng.uniform(0.7, 1.1)


def clutter_scene(rng: np.random.Generator, w: int, h: int, clutter: float) -> Image.Image:
    """A gradient or texture under many distractors that are not class shapes (some cut by the border)."""
    im = gradient(rng, w, h, clutter * 0.5) if rng.random() < 0.5 else texture(rng, w, h, 0.0)
    draw = ImageDraw.Draw(im)
    side = min(w, h)
    for _ in range(int(rng.poisson(8 + 24 * clutter))):
        kind, colour = rng.random(), _colour(rng)
        r = side * math.exp(rng.uniform(math.log(0.02), math.log(0.2)))
        if rng.random() < 0.25:  # cut by the border
            edge = int(rng.integers(4))
            cx = [
                rng.uniform(-0.3, 0.3) * r,
                w - rng.uniform(-0.3, 0.3) * r,
                rng.uniform(0, w),
                rng.uniform(0, w),
            ]
            cy = [
                rng.uniform(0, h),
                rng.uniform(0, h),
                rng.uniform(-0.3, 0.3) * r,
                h - rng.uniform(-0.3, 0.3) * r,
            ]
            cx, cy = cx[edge], cy[edge]
        else:
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        if kind < 0.35:
            draw.polygon(_irregular(rng, cx, cy, r, smooth=False), fill=colour)
        elif kind < 0.65:
            draw.polygon(_irregular(rng, cx, cy, r, smooth=True), fill=colour)
        elif kind < 0.85:
            _text(draw, rng, cx, cy, side, colour)
        else:  # a thick open scribble
            pts = np.cumsum(rng.normal(0, r * 0.5, (int(rng.integers(3, 7)), 2)), axis=0) + [cx, cy]
            draw.line([tuple(p) for p in pts], fill=colour, width=max(2, int(r * 0.2)), joint="curve")
    return im


def occluder(rng: np.random.Generator, box: np.ndarray, side: float) -> list[tuple]:
    """A blob or irregular polygon centred on a random point of ``box``'s (xyxy pixels) border, about
    ``side`` across: covers part of the object, never all of it."""
    x1, y1, x2, y2 = box
    t = rng.uniform(0, 1)
    if rng.random() < 0.5:
        cx, cy = x1 + t * (x2 - x1), (y1, y2)[int(rng.integers(2))]
    else:
        cx, cy = (x1, x2)[int(rng.integers(2))], y1 + t * (y2 - y1)
    return _irregular(rng, cx, cy, side / 2, smooth=bool(rng.random() < 0.5))


KINDS = {"gradient": gradient, "texture": texture, "photo": photo, "clutter": clutter_scene}


def draw_background(rng: np.random.Generator, w: int, h: int, kind: str, clutter: float) -> Image.Image:
    """An RGB background of ``kind`` (one of :data:`BACKGROUNDS`), ``w`` x ``h`` pixels."""
    return KINDS[kind](rng, w, h, clutter)
