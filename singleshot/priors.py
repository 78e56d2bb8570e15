"""Default boxes ("priors") of SSD.

Every source feature map k of size (h_k, w_k) carries, in each cell, boxes of scale s_k and the
aspect ratios of that layer (paper section 2.2; docs/reference.md):

    s_k = s_min + (s_max - s_min) (k - 1) / (m - 1),        k = 1 .. m + 1

The (m + 1)-th scale only feeds the extra square box sqrt(s_m s_(m+1)) of the last layer.
Inside a cell the order is, as in every reference implementation:

    (s, s), (s', s') with s' = sqrt(s_k s_(k+1)),
    then for each r of the layer: (s sqrt(r), s / sqrt(r)), (s / sqrt(r), s sqrt(r)).

Cells are row-major (y outer, x inner) and layers follow each other.

A layer of density d > 1 (``densities``) carries its first box, the square of scale s_k, d x d times in
each cell, centred on the sub-grid ``(j + (a + 0.5) / d) * step`` (a = 0 .. d - 1, y outer, x inner), in
place of the one square at the cell centre; the other boxes of the cell stay at the centre. A finer set of
small squares covers objects under ~2.7 strides at any position without a finer feature map (the
"anchor densification" of FaceBoxes, Zhang et al. 2017).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

CLIP_MODES = ("corners", "cxcywh", "wh", None)


def _pair(value: int | float | Sequence) -> tuple:
    if isinstance(value, (int, float)):
        return (value, value)
    if len(value) != 2:
        raise ValueError(f"expected an int or a (height, width) pair, got {value!r}")
    return (value[0], value[1])


def ssd_scales(num_layers: int, s_min: float = 0.2, s_max: float = 0.9) -> list[float]:
    """The seed's linear scales s_1 .. s_(m+1) for ``num_layers`` = m source layers.

    ``s_(m+1)`` continues the line past ``s_max``; it is used only for the last layer's extra box.
    With a single layer the formula is undefined (m - 1 = 0): the scales are then ``[s_min, s_max]``,
    as in torchvision.
    """
    if num_layers < 1:
        raise ValueError("num_layers must be at least 1")
    if num_layers == 1:
        return [s_min, s_max]
    step = (s_max - s_min) / (num_layers - 1)
    return [s_min + step * k for k in range(num_layers + 1)]


def scales_from_sizes(min_sizes: Sequence[float], max_size: float, image_size: float) -> list[float]:
    """Caffe-style pixel ``min_sizes`` (one per layer) plus the last ``max_size`` -> m + 1 relative scales.

    ``scales_from_sizes([30, 60, 111, 162, 213, 264], 315, 300)`` is SSD300's VOC configuration.
    """
    return [float(s) / image_size for s in min_sizes] + [float(max_size) / image_size]


def boxes_per_cell(
    aspect_ratios: Sequence[Sequence[float]], densities: Sequence[int] | None = None
) -> list[int]:
    """Number of default boxes per cell of each layer: 2 squares plus 2 per ratio r (r and 1/r).

    With ``densities``, layer k's first square counts ``d_k ** 2`` times.
    """
    densities = check_densities(densities, len(aspect_ratios))
    return [1 + d * d + 2 * len(ratios) for ratios, d in zip(aspect_ratios, densities)]


def check_densities(densities: Sequence[int] | None, num_layers: int) -> list[int]:
    """``densities`` as a list of ``num_layers`` ints >= 1 (None: all 1); ValueError otherwise."""
    if densities is None:
        return [1] * num_layers
    values = list(densities)
    if len(values) != num_layers:
        raise ValueError(f"densities needs one value per source map ({num_layers}), got {len(values)}")
    for d in values:
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"densities must be ints of at least 1, got {values}")
    return values


def cell_shapes(s: float, s_next: float, ratios: Sequence[float]) -> list[tuple[float, float]]:
    """(w, h) of the boxes of one cell, in the reference order."""
    shapes = [(s, s)]
    extra = math.sqrt(s * s_next)
    shapes.append((extra, extra))
    for r in ratios:
        if r <= 0:
            raise ValueError(f"aspect ratios must be positive, got {r}")
        q = math.sqrt(r)
        shapes.append((s * q, s / q))
        shapes.append((s / q, s * q))
    return shapes


def default_boxes(
    feature_sizes: Sequence[int | Sequence[int]],
    aspect_ratios: Sequence[Sequence[float]],
    *,
    image_size: int | Sequence[int] | None = None,
    scales: Sequence[float] | None = None,
    s_min: float = 0.2,
    s_max: float = 0.9,
    steps: Sequence[float | Sequence[float]] | None = None,
    clip: str | None = "cxcywh",
    densities: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """SSD's default boxes for a list of source feature maps.

    Args:
        feature_sizes: per source layer an int f_k (square map) or ``(h, w)``.
        aspect_ratios: per layer a list of ratios r > 1; each r adds the boxes of ratio r and 1/r,
            e.g. ``[[2], [2, 3], [2, 3], [2, 3], [2], [2]]`` for SSD300.
        image_size: input size in pixels, an int or ``(h, w)``; needed with ``steps``.
        scales: m + 1 relative scales (m = number of layers). None: the seed's linear formula
            from ``s_min`` and ``s_max``.
        steps: per layer the pixel stride, an int or ``(step_y, step_x)``; centres are then at
            ``(j + 0.5) * step / width``. None: the paper's ``(j + 0.5) / f_k``.
        clip: ``"corners"`` clips (xmin, ymin, xmax, ymax) to [0, 1] and returns the clipped box in
            centre form (Caffe); ``"cxcywh"`` clamps all four centre-form values (ssd.pytorch);
            ``"wh"`` clamps only w and h (torchvision); None leaves the boxes alone.
        densities: per layer an int d_k >= 1: the first square of layer k is repeated on a d_k x d_k
            sub-grid of each cell (see the module docstring). None: 1 everywhere.

    Returns:
        Tensor[P, 4]: ``(cx, cy, w, h)`` relative to the input image, P = sum_k h_k w_k n_k with
        n_k = 1 + d_k^2 + 2 len(aspect_ratios[k]) (``boxes_per_cell``).
    """
    m = len(feature_sizes)
    if len(aspect_ratios) != m:
        raise ValueError(
            f"{m} feature sizes but {len(aspect_ratios)} aspect-ratio lists; give one list per layer"
        )
    if clip not in CLIP_MODES:
        raise ValueError(f"clip must be one of {CLIP_MODES}, got {clip!r}")
    if scales is None:
        scales = ssd_scales(m, s_min, s_max)
    if len(scales) != m + 1:
        raise ValueError(
            f"scales needs {m + 1} values for {m} layers (the last feeds the extra box), got {len(scales)}"
        )
    if steps is not None:
        if image_size is None:
            raise ValueError("steps need image_size to turn pixel strides into relative centres")
        if len(steps) != m:
            raise ValueError(f"{m} feature sizes but {len(steps)} steps")
        img_h, img_w = _pair(image_size)
    densities = check_densities(densities, m)

    layers = []
    for k in range(m):
        fh, fw = _pair(feature_sizes[k])
        shapes = cell_shapes(scales[k], scales[k + 1], aspect_ratios[k])
        d = densities[k]
        # Per box of the cell, its centre's offset inside the cell (in cells) and its (w, h).
        sub = [(a + 0.5) / d for a in range(d)]
        frac_y = torch.tensor(
            [fy for fy in sub for _ in sub] + [0.5] * (len(shapes) - 1), dtype=torch.float64
        )
        frac_x = torch.tensor(
            [fx for _ in sub for fx in sub] + [0.5] * (len(shapes) - 1), dtype=torch.float64
        )
        wh = torch.tensor([shapes[0]] * (d * d) + shapes[1:], dtype=torch.float64)  # (n, 2)
        n = wh.shape[0]
        rows = torch.arange(fh, dtype=torch.float64)[:, None] + frac_y  # (fh, n)
        cols = torch.arange(fw, dtype=torch.float64)[:, None] + frac_x  # (fw, n)
        if steps is not None:
            step_y, step_x = _pair(steps[k])
            # (j + 0.5) * step / size: the product is exact, so one rounding (the division) in float64.
            cy, cx = rows * step_y / img_h, cols * step_x / img_w
        else:
            cy, cx = rows / fh, cols / fw
        # A single float64 rounding followed by the cast gives the correctly rounded float32 centre
        # (double rounding is harmless for one division), i.e. exactly torchvision's float32 centres.
        cy = cy[:, None, :].expand(fh, fw, n)  # cells row-major, then the boxes of a cell
        cx = cx[None, :, :].expand(fh, fw, n)
        centres = torch.stack([cx, cy], dim=-1).reshape(fh * fw, n, 2)
        sizes = wh.unsqueeze(0).expand(fh * fw, n, 2)
        layers.append(torch.cat([centres, sizes], dim=-1).reshape(-1, 4))
    priors = torch.cat(layers, dim=0)

    if clip == "cxcywh":
        priors = priors.clamp(0.0, 1.0)
    elif clip == "wh":
        priors = torch.cat([priors[:, :2], priors[:, 2:].clamp(0.0, 1.0)], dim=1)
    elif clip == "corners":
        half = priors[:, 2:] / 2
        corners = torch.cat([priors[:, :2] - half, priors[:, :2] + half], dim=1).clamp(0.0, 1.0)
        priors = torch.cat([(corners[:, :2] + corners[:, 2:]) / 2, corners[:, 2:] - corners[:, :2]], dim=1)
    return priors.to(dtype=dtype, device=device)


# The reference configurations (SSD-REFERENCE.md, "Default boxes"), as keyword arguments of default_boxes.
SSD300_VOC = dict(
    feature_sizes=[38, 19, 10, 5, 3, 1],
    aspect_ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]],
    image_size=300,
    steps=[8, 16, 32, 64, 100, 300],
    scales=scales_from_sizes([30, 60, 111, 162, 213, 264], 315, 300),
)
SSD300_COCO = dict(SSD300_VOC, scales=scales_from_sizes([21, 45, 99, 153, 207, 261], 315, 300))
SSD512_VOC = dict(
    feature_sizes=[64, 32, 16, 8, 4, 2, 1],
    aspect_ratios=[[2], [2, 3], [2, 3], [2, 3], [2, 3], [2], [2]],
    image_size=512,
    steps=[8, 16, 32, 64, 128, 256, 512],
    scales=scales_from_sizes([35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8], 537.6, 512),
)
# torchvision's ssd300_vgg16 boxes: its own scales, the same steps and ratios, clip="wh".
TORCHVISION_SSD300 = dict(SSD300_VOC, scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05])
