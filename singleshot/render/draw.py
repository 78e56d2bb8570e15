"""Drawing detections on images: boxes, class names and scores, one colour per class."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

# Twenty well-separated colours (matplotlib's tab20, dark shades first); label k uses PALETTE[(k - 1) % 20].
PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
    (247, 182, 210),
    (199, 199, 199),
    (219, 219, 141),
    (158, 218, 229),
]


def class_color(label: int) -> tuple[int, int, int]:
    """The RGB colour of class ``label`` (1-based; background 0 is never drawn)."""
    return PALETTE[(int(label) - 1) % len(PALETTE)]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def draw_detections(
    image: Tensor,
    detections: dict[str, Tensor],
    class_names: Sequence[str],
    score_threshold: float = 0.3,
    *,
    line_width: int | None = None,
    font_size: int | None = None,
    note_empty: bool = False,
) -> Image.Image:
    """The image with its detections drawn on it.

    Args:
        image: Tensor[3, H, W] uint8 RGB.
        detections: ``{"boxes": Tensor[K, 4] xyxy pixels of this image, "scores": Tensor[K],
            "labels": Tensor[K] int64 in 1..len(class_names)}`` (as ``model.predict`` returns;
            ``"scores"`` may be absent to draw ground truth).
        class_names: names of labels 1..C-1 (background excluded): label k is ``class_names[k - 1]``.
        score_threshold: draw detections scoring at least this.
        line_width, font_size: default to a size that suits the image (about 1/150 and 1/25 of its side).
        note_empty: when no detection reaches ``score_threshold``, write "no detection >= T" on the image
            (see :func:`note_no_detection`), so that a gallery tells an empty result from a missing one.

    Returns:
        A new RGB ``PIL.Image`` of size (W, H); each box is outlined in its class colour and labelled
        "name 0.93" on a filled tab of the same colour.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image Tensor[3, H, W], got shape {tuple(image.shape)}")
    if image.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    pil = Image.fromarray(image.permute(1, 2, 0).contiguous().cpu().numpy(), mode="RGB")
    height, width = image.shape[1:]
    side = min(height, width)
    line_width = line_width or max(1, round(side / 150))
    font = _font(font_size or max(9, round(side / 25)))
    pen = ImageDraw.Draw(pil)

    boxes = detections["boxes"].detach().float().cpu()
    labels = detections["labels"].detach().cpu().tolist()
    scores = detections.get("scores")
    scores = scores.detach().float().cpu().tolist() if scores is not None else [None] * len(labels)
    order = sorted(range(len(labels)), key=lambda i: scores[i] or 0.0)  # the best drawn last, on top
    order = [i for i in order if scores[i] is None or scores[i] >= score_threshold]
    if note_empty and not order:
        note_no_detection(pil, score_threshold)
    for i in order:
        x1, y1, x2, y2 = boxes[i].tolist()
        color = class_color(labels[i])
        pen.rectangle((x1, y1, x2, y2), outline=color, width=line_width)
        label = labels[i]
        name = class_names[label - 1] if 1 <= label <= len(class_names) else f"class {label}"
        text = name if scores[i] is None else f"{name} {scores[i]:.2f}"
        left, top, right, bottom = pen.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        ty = y1 - th - 2 if y1 - th - 2 >= 0 else y1  # above the box, or inside it at the top edge
        tx = min(max(x1, 0), max(width - tw - 2, 0))
        pen.rectangle((tx, ty, tx + tw + 2, ty + th + 2), fill=color)
        luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        pen.text(
            (tx + 1 - left, ty + 1 - top),
            text,
            fill=(0, 0, 0) if luminance > 150 else (255, 255, 255),
            font=font,
        )
    return pil


def note_no_detection(picture: Image.Image, score_threshold: float) -> Image.Image:
    """Write "no detection" and ">= T" (two lines, white on a dark tab) at the top left of ``picture``.

    The font is as large as fits the picture's width (1/12 of its side at most, 7 px at least).
    Returns ``picture``, drawn on in place.
    """
    pen = ImageDraw.Draw(picture)
    text = f"no detection\n>= {score_threshold:.2f}"
    size = max(7, round(min(picture.size) / 12))
    while True:
        font = _font(size)
        left, top, right, bottom = pen.multiline_textbbox((0, 0), text, font=font, spacing=1)
        if right - left + 6 <= picture.width or size <= 7:
            break
        size -= 1
    pen.rectangle((0, 0, right - left + 5, bottom - top + 5), fill=(40, 40, 40))
    pen.multiline_text((3 - left, 3 - top), text, fill=(255, 255, 255), font=font, spacing=1)
    return picture


def image_grid(
    images: Sequence[Image.Image],
    columns: int = 4,
    pad: int = 4,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Tile PIL images row-major into one image; each cell is as large as the largest image."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images)
    grid = Image.new(
        "RGB", (columns * cell_w + (columns + 1) * pad, rows * cell_h + (rows + 1) * pad), background
    )
    for k, im in enumerate(images):
        r, c = divmod(k, columns)
        grid.paste(im, (pad + c * (cell_w + pad), pad + r * (cell_h + pad)))
    return grid
