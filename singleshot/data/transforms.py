"""The paper's training augmentation (section 2.2) and the evaluation resize.

``TrainTransform`` does, in this order, on a uint8 image and xyxy pixel boxes:

1. drop ``difficult`` and ``iscrowd`` objects (unless ``keep_difficult`` / ``keep_crowd``);
2. photometric distortion (:func:`photometric_distort`): brightness, contrast, saturation, hue, channel swap,
   each with p 0.5, contrast before or after saturation/hue at random (the order of the paper's code and
   of ``torchvision.transforms.v2.RandomPhotometricDistort``, whose brightness, contrast and saturation
   kernels it uses; the hue turns about the gray axis, :func:`hue_rotate`, ten times cheaper than HSV);
3. zoom out, p 0.5: the image on a canvas ``r`` times its size per side, ``r ~ U(1, expand_max)``, at a
   random place; the rest filled with the mean colour;
4. min-IoU random crop (:func:`sample_iou_crop`): the whole image, or a patch whose IoU with some object
   is at least 0.1, 0.3, 0.5, 0.7 or 0.9, or any patch; side in [0.3, 1] of the canvas, aspect ratio
   in [1/2, 2], up to 50 trials (then the whole image); objects whose centre is inside are kept, clipped;
5. horizontal flip, p 0.5; 6. resize to the network input.

Steps 3-6 are computed as one geometric map, so the (up to 16x larger) zoom-out canvas is never built:
only the visible part of the image is resized and pasted onto a mean-filled output; the photometric
distortion is then applied to that pasted region (pixel-wise, as if it came first). Boxes follow the same
map exactly; the pasted image may sit up to half an output pixel off where its edges are inside the output.

Targets come out as what :class:`singleshot.loss.MultiBoxLoss` takes: ``"boxes"`` float32 xyxy relative to
the output ([0, 1]) and ``"labels"`` int64, plus ``"difficult"``/``"iscrowd"`` kept aligned and the
input's other keys (``image_id``, ``path``) passed through.
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from singleshot.boxes import box_iou

IMAGENET_MEAN = (0.485, 0.456, 0.406)
# min-IoU options of the crop sampler: None keeps the whole image, 0.0 is "any patch".
CROP_OPTIONS = (None, 0.1, 0.3, 0.5, 0.7, 0.9, 0.0)


def _size_hw(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def sample_iou_crop(
    boxes: Tensor,
    width: int,
    height: int,
    *,
    options=CROP_OPTIONS,
    trials: int = 50,
    min_scale: float = 0.3,
    max_scale: float = 1.0,
    min_aspect: float = 0.5,
    max_aspect: float = 2.0,
    generator: torch.Generator | None = None,
) -> tuple[tuple[int, int, int, int] | None, float | None]:
    """Sample an SSD crop window.

    Picks one of ``options`` uniformly. ``None`` keeps the whole image; a number ``m`` asks for a window
    ``(x0, y0, x1, y1)`` (integer pixels, ``x1 - x0`` in ``[min_scale, max_scale] * width``, likewise for the
    height, ``(x1 - x0) / (y1 - y0)`` in ``[min_aspect, max_aspect]``) that contains the centre of at least one
    box and whose IoU with some box is ``>= m`` (``m = 0``: any window). The ``trials`` candidate windows are
    drawn at once and the first that qualifies is taken; when none does, the whole image is kept.

    Args:
        boxes: Tensor[n, 4] xyxy pixels (n may be 0: then any window is accepted).
        width, height: the image (or zoom-out canvas) size.

    Returns:
        (window or None for the whole image, the option drawn).
    """
    option = options[int(torch.randint(len(options), (), generator=generator))]
    if option is None:
        return None, None
    u = torch.rand(
        trials, 4, generator=generator, dtype=torch.float64
    )  # (T, 4): scale w, scale h, pos x, pos y
    w = (width * (min_scale + (max_scale - min_scale) * u[:, 0])).floor().clamp(min=1)
    h = (height * (min_scale + (max_scale - min_scale) * u[:, 1])).floor().clamp(min=1)
    x0 = ((width - w) * u[:, 2]).floor()
    y0 = ((height - h) * u[:, 3]).floor()
    windows = torch.stack([x0, y0, x0 + w, y0 + h], dim=1)  # (T, 4)
    ok = (w / h >= min_aspect) & (w / h <= max_aspect)
    if len(boxes):
        b = boxes.to(torch.float64)
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2  # (n,)
        inside = (
            (cx > windows[:, :1]) & (cx < windows[:, 2:3]) & (cy > windows[:, 1:2]) & (cy < windows[:, 3:])
        )  # (T, n)
        ok &= inside.any(dim=1) & (box_iou(windows, b).amax(dim=1) >= option)
    first = torch.nonzero(ok)
    if len(first) == 0:
        return None, option
    return tuple(int(v) for v in windows[first[0, 0]].tolist()), option


def hue_rotate(image: Tensor, fraction: float) -> Tensor:
    """Turn the hue of a uint8 ``Tensor[3, H, W]`` by ``fraction`` of the colour circle.

    A rotation about the gray axis (the linear map of CSS ``hue-rotate``): grays stay gray, and it costs as
    little as the saturation change, where converting to HSV and back costs ten times more.
    """
    a, b = math.cos(2 * math.pi * fraction), math.sin(2 * math.pi * fraction)
    m = torch.tensor([
        [0.213 + 0.787 * a - 0.213 * b, 0.715 - 0.715 * a - 0.715 * b, 0.072 - 0.072 * a + 0.928 * b],
        [0.213 - 0.213 * a + 0.143 * b, 0.715 + 0.285 * a + 0.140 * b, 0.072 - 0.072 * a - 0.283 * b],
        [0.213 - 0.213 * a - 0.787 * b, 0.715 - 0.715 * a + 0.715 * b, 0.072 + 0.928 * a + 0.072 * b],
    ])  # fmt: skip
    out = torch.einsum("ij,jhw->ihw", m, image.float())
    return out.round_().clamp_(0, 255).to(torch.uint8)


def photometric_distort(
    image: Tensor,
    *,
    p: float = 0.5,
    brightness=(0.875, 1.125),
    contrast=(0.5, 1.5),
    saturation=(0.5, 1.5),
    hue=(-0.05, 0.05),
    generator: torch.Generator | None = None,
) -> Tensor:
    """SSD's photometric distortion of a uint8 ``Tensor[3, H, W]``; pixel-wise except contrast (image mean).

    Each of brightness, contrast, saturation and hue is applied with probability ``p`` with a factor drawn
    uniformly from its range (hue as a fraction of the colour circle, ±0.05 = ±18 degrees as in the paper's
    code, applied by :func:`hue_rotate`); contrast goes first or last with
    equal odds; finally the channels are permuted at random with probability ``p``.
    """

    def draw(lo: float, hi: float) -> float | None:
        u, v = torch.rand(2, generator=generator).tolist()
        return lo + (hi - lo) * v if u < p else None

    b, c, s, h = draw(*brightness), draw(*contrast), draw(*saturation), draw(*hue)
    contrast_first = float(torch.rand((), generator=generator)) < 0.5
    permute = float(torch.rand((), generator=generator)) < p
    if b is not None:
        image = TF.adjust_brightness(image, b)
    if c is not None and contrast_first:
        image = TF.adjust_contrast(image, c)
    if s is not None:
        image = TF.adjust_saturation(image, s)
    if h is not None:
        image = hue_rotate(image, h)
    if c is not None and not contrast_first:
        image = TF.adjust_contrast(image, c)
    if permute:
        image = image[torch.randperm(3, generator=generator)]
    return image


def _keep(target: dict, mask: Tensor) -> dict:
    """The target with only the objects in ``mask`` (per-object tensors filtered, other keys kept)."""
    n = len(mask)
    return {
        k: (v[mask] if isinstance(v, Tensor) and v.dim() >= 1 and len(v) == n else v)
        for k, v in target.items()
    }


def _resize(image: Tensor, size_hw: tuple[int, int]) -> Tensor:
    if tuple(image.shape[-2:]) == size_hw:
        return image
    return TF.resize(image, list(size_hw), interpolation=T.InterpolationMode.BILINEAR, antialias=True)


class TrainTransform:
    """SSD training augmentation: ``(image uint8 Tensor[3, H, W], target) -> (uint8 Tensor[3, S_h, S_w], target)``.

    Args:
        size: network input, int or (h, w).
        mean: RGB fill of the zoom-out canvas, on the [0, 1] scale (use the model's ``mean``).
        photometric, expand, crop, flip: switch each part on or off.
        expand_max: largest zoom-out ratio per side (the paper: 4); expand_p: its probability.
        crop_options, crop_trials, crop_min_scale: the crop sampler (see :func:`sample_iou_crop`).
        flip_p: probability of the horizontal flip.
        keep_difficult, keep_crowd: keep those objects (dropped by default).
        generator: a ``torch.Generator`` for reproducible draws (default: torch's global one, which
            ``DataLoader`` seeds per worker).
    """

    def __init__(
        self,
        size,
        mean=IMAGENET_MEAN,
        *,
        photometric: bool = True,
        expand: bool = True,
        expand_max: float = 4.0,
        expand_p: float = 0.5,
        crop: bool = True,
        crop_options=CROP_OPTIONS,
        crop_trials: int = 50,
        crop_min_scale: float = 0.3,
        flip: bool = True,
        flip_p: float = 0.5,
        keep_difficult: bool = False,
        keep_crowd: bool = False,
        generator: torch.Generator | None = None,
    ):
        self.size = _size_hw(size)
        self.fill = [int(round(float(m) * 255)) for m in mean]
        self.photometric = photometric
        self.expand = expand and expand_max > 1.0
        self.expand_max = float(expand_max)
        self.expand_p = expand_p
        self.crop = crop
        self.crop_options = tuple(crop_options)
        self.crop_trials = crop_trials
        self.crop_min_scale = crop_min_scale
        self.flip = flip
        self.flip_p = flip_p
        self.keep_difficult = keep_difficult
        self.keep_crowd = keep_crowd
        self.generator = generator

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def make_params(self, image_hw: tuple[int, int], target: dict) -> dict:
        """Draw one augmentation for an image of ``image_hw`` = (H, W) and its target.

        Returns:
            ``{"keep": bool Tensor[n] (not difficult/crowd, centre inside the window), "offset": (ox, oy) of
            the image on the zoom-out canvas, "canvas": (W', H'), "window": (x0, y0, x1, y1) crop in canvas
            pixels, "flip": bool}``.
        """
        height, width = (int(v) for v in image_hw)
        boxes = target["boxes"].float().reshape(-1, 4)
        keep = torch.ones(len(boxes), dtype=torch.bool)
        if not self.keep_difficult and "difficult" in target:
            keep &= ~target["difficult"].bool()
        if not self.keep_crowd and "iscrowd" in target:
            keep &= ~target["iscrowd"].bool()
        # zoom out: the image at (ox, oy) on a canvas_w x canvas_h canvas (never materialised)
        ox = oy = 0
        canvas_w, canvas_h = width, height
        if self.expand and self._rand() < self.expand_p:
            ratio = 1.0 + (self.expand_max - 1.0) * self._rand()
            canvas_w, canvas_h = int(width * ratio), int(height * ratio)
            ox = int((canvas_w - width) * self._rand())
            oy = int((canvas_h - height) * self._rand())
        window = None
        if self.crop:
            shifted = boxes[keep] + torch.tensor([ox, oy, ox, oy], dtype=boxes.dtype)
            window, _ = sample_iou_crop(
                shifted,
                canvas_w,
                canvas_h,
                options=self.crop_options,
                trials=self.crop_trials,
                min_scale=self.crop_min_scale,
                generator=self.generator,
            )
        if window is None:
            window = (0, 0, canvas_w, canvas_h)
        else:
            x0, y0, x1, y1 = window
            cx = (boxes[:, 0] + boxes[:, 2]) / 2 + ox
            cy = (boxes[:, 1] + boxes[:, 3]) / 2 + oy
            keep &= (cx > x0) & (cx < x1) & (cy > y0) & (cy < y1)
        flip = self.flip and self._rand() < self.flip_p
        return {
            "keep": keep,
            "offset": (ox, oy),
            "canvas": (canvas_w, canvas_h),
            "window": window,
            "flip": flip,
        }

    def apply(self, image: Tensor, target: dict, params: dict) -> tuple[Tensor, dict]:
        """The augmentation ``params`` (from :meth:`make_params`) applied to an image and its target."""
        target = _keep(target, params["keep"])
        ox, oy = params["offset"]
        x0, y0, x1, y1 = params["window"]
        crop_w, crop_h = x1 - x0, y1 - y0
        boxes = target["boxes"].float().reshape(-1, 4) + torch.tensor([ox - x0, oy - y0, ox - x0, oy - y0])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, crop_w) / crop_w
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, crop_h) / crop_h
        out = self._render(image, ox, oy, (x0, y0, x1, y1))
        if params["flip"]:
            out = out.flip(-1)
            boxes = torch.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], dim=1)
        target["boxes"] = boxes
        target["labels"] = target["labels"].long()
        return out, target

    def __call__(self, image: Tensor, target: dict) -> tuple[Tensor, dict]:
        return self.apply(image, target, self.make_params(tuple(image.shape[-2:]), target))

    def _render(self, image: Tensor, ox: int, oy: int, window: tuple[int, int, int, int]) -> Tensor:
        """The output image: the canvas window (x0, y0, x1, y1), resized to ``self.size``."""
        out_h, out_w = self.size
        x0, y0, x1, y1 = window
        height, width = image.shape[-2:]
        # the part of the image inside the window, in image pixels
        ix0, iy0 = max(x0 - ox, 0), max(y0 - oy, 0)
        ix1, iy1 = min(x1 - ox, width), min(y1 - oy, height)
        sx, sy = out_w / (x1 - x0), out_h / (y1 - y0)
        # where it lands in the output
        px0, py0 = round((ix0 + ox - x0) * sx), round((iy0 + oy - y0) * sy)
        px1, py1 = round((ix1 + ox - x0) * sx), round((iy1 + oy - y0) * sy)
        full = (px0, py0, px1, py1) == (0, 0, out_w, out_h)
        if px1 <= px0 or py1 <= py0:
            region = None
        else:
            region = _resize(image[:, iy0:iy1, ix0:ix1], (py1 - py0, px1 - px0))
            if self.photometric:
                region = photometric_distort(region, generator=self.generator)
        if full and region is not None:
            return region.contiguous()
        out = torch.tensor(self.fill, dtype=torch.uint8).view(3, 1, 1).expand(3, out_h, out_w).clone()
        if region is not None:
            out[:, py0:py1, px0:px1] = region
        return out


class EvalTransform:
    """Resize only: ``(image, target) -> (uint8 Tensor[3, S_h, S_w], target)``.

    The target's boxes become xyxy relative to the image ([0, 1]); ``"orig_size"`` holds ``(h, w)`` of the
    input so predictions can be mapped back to pixels. Difficult and crowd objects are kept.
    """

    def __init__(self, size):
        self.size = _size_hw(size)

    def __call__(self, image: Tensor, target: dict) -> tuple[Tensor, dict]:
        height, width = image.shape[-2:]
        target = dict(target)
        boxes = target["boxes"].float() / torch.tensor([width, height, width, height], dtype=torch.float32)
        target["boxes"] = boxes.clamp(0, 1).reshape(-1, 4)
        target["labels"] = target["labels"].long()
        target["orig_size"] = (int(height), int(width))
        return _resize(image, self.size).contiguous(), target
