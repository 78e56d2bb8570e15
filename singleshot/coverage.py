"""How well a model's default boxes cover a data set's objects, and default boxes fitted to them.

SSD learns an object from the default boxes it matches: every prior of IoU >= 0.5 with it, or, when
none reaches 0.5, its single best prior (paper section 2.2). An object whose best IoU with every default box
is under 0.5 therefore gets one forced, poorly aligned positive and is barely learned. :func:`coverage`
measures the share of objects that reach 0.5, by object size and shape; :func:`fit_default_boxes` proposes
per-layer scales, aspect ratios and densities (keeping the model's feature maps) that raise it within a
budget of default boxes.

Boxes are relative to their image, ``(x1, y1, x2, y2)`` in [0, 1]: training resizes the whole image to
the network input, so relative ground truths and relative default boxes are what the matching compares
(IoU does not change when both axes are scaled). Sizes and ratios below are relative too: ``w / h`` is the
shape an object has at the network input, not in its image.

Exactness and speed: default boxes of one shape on a regular grid of centres (every layer of SSD) are
matched in closed form, since the intersection with a box only shrinks as the centre moves away from it:
the best prior of a grid is the one nearest the box's centre in x and in y, and the priors of IoU >= 0.5
are counted per column with a binary search. Priors that form no grid (border boxes of ``clip="corners"``)
go through :func:`torchvision.ops.box_iou` in chunks. 1e6 boxes x 2.5e4 priors take seconds on a CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torchvision.ops import box_iou

from singleshot.errors import UserError
from singleshot.priors import boxes_per_cell, check_densities, default_boxes

IOU_THRESHOLD = 0.5
# Object size sqrt(w h) relative to the image side: bucket edges.
SIZE_EDGES = (0.04, 0.08, 0.16, 0.32, 0.64)
# Object shape w / h: bucket edges (the middle bucket, 1/1.5 .. 1.5, is "about square").
RATIO_EDGES = (1 / 3, 1 / 2, 1 / 1.5, 1.5, 2.0, 3.0)
RATIO_LABELS = ("<1:3", "1:3-1:2", "1:2-1:1.5", "~1:1", "1.5:1-2:1", "2:1-3:1", ">3:1")
# Objects under this many pixels (sqrt(w h) at the network input) count as unlearnable.
MIN_LEARNABLE_PIXELS = 2.0
_CHUNK = 1 << 16


@dataclass
class Bucket:
    """Objects of one size or shape range: ``low <= value < high``."""

    label: str
    low: float
    high: float
    count: int
    covered: int

    @property
    def coverage(self) -> float | None:
        """Share of the bucket's objects with a default box of IoU >= 0.5 (None when empty)."""
        return self.covered / self.count if self.count else None

    def to_dict(self) -> dict:
        high = self.high if math.isfinite(self.high) else None
        return {
            "label": self.label,
            "low": self.low,
            "high": high,
            "count": self.count,
            "coverage": self.coverage,
        }


@dataclass
class Coverage:
    """What :func:`coverage` measures.

    Attributes:
        coverage: share of the boxes whose best IoU with some default box is >= 0.5 (0..1; 0 with no boxes).
        mean_best_iou: mean over the boxes of their best IoU.
        positives_per_object: mean number of default boxes of IoU >= 0.5 per box (density of positives).
        num_boxes, num_priors: N and P.
        by_size: buckets of sqrt(w h) (:data:`SIZE_EDGES`); by_ratio: buckets of w / h (:data:`RATIO_EDGES`).
        best_iou: Tensor[N] float32, each box's best IoU; positives: Tensor[N] int64, its priors of IoU >= 0.5.
    """

    coverage: float
    mean_best_iou: float
    positives_per_object: float
    num_boxes: int
    num_priors: int
    by_size: list[Bucket]
    by_ratio: list[Bucket]
    best_iou: Tensor = field(repr=False)
    positives: Tensor = field(repr=False)

    def to_dict(self) -> dict:
        """Plain types for JSON (the per-box tensors left out)."""
        return {
            "coverage": self.coverage,
            "mean_best_iou": self.mean_best_iou,
            "positives_per_object": self.positives_per_object,
            "num_objects": self.num_boxes,
            "num_default_boxes": self.num_priors,
            "by_size": [b.to_dict() for b in self.by_size],
            "by_ratio": [b.to_dict() for b in self.by_ratio],
        }


# --- matching statistics -------------------------------------------------------------------------


def _xyxy(priors_cxcywh: Tensor) -> Tensor:
    half = priors_cxcywh[:, 2:] / 2
    return torch.cat([priors_cxcywh[:, :2] - half, priors_cxcywh[:, :2] + half], dim=1)


def _grid_stats(boxes: Tensor, wh: Tensor, xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
    """Best IoU and number of priors of IoU >= 0.5 of boxes (Tensor[N, 4] xyxy, float64) with the priors of
    one shape ``wh`` centred on every point of the grid ``xs`` x ``ys`` (sorted Tensor[nx], Tensor[ny])."""
    pw, ph = float(wh[0]), float(wh[1])
    x1, y1, x2, y2 = boxes.unbind(1)
    bw, bh = x2 - x1, y2 - y1
    bcx, bcy = (x1 + x2) / 2, (y1 + y2) / 2
    area = bw * bh + pw * ph

    def overlap(lo: Tensor, hi: Tensor, centres: Tensor, size: float) -> Tensor:
        return (torch.minimum(hi, centres + size / 2) - torch.maximum(lo, centres - size / 2)).clamp(min=0)

    def nearest(values: Tensor, centre: Tensor) -> Tensor:
        i = torch.searchsorted(values, centre).clamp(1, len(values) - 1) if len(values) > 1 else None
        if i is None:
            return values.expand(len(centre))
        left, right = values[i - 1], values[i]
        return torch.where((centre - left).abs() <= (right - centre).abs(), left, right)

    inter = overlap(x1, x2, nearest(xs, bcx), pw) * overlap(y1, y2, nearest(ys, bcy), ph)
    best = inter / (area - inter)

    # Positives: IoU >= 0.5  <=>  inter >= (A + B) / 3. Columns within |dx| <= min(w) / 2 can qualify.
    reach = torch.minimum(bw, torch.full_like(bw, pw)) / 2
    lo = torch.searchsorted(xs, bcx - reach)
    hi = torch.searchsorted(xs, bcx + reach, right=True)
    width = int((hi - lo).max()) if len(lo) else 0
    positives = torch.zeros(len(boxes), dtype=torch.int64)
    if width > 0:
        index = lo[:, None] + torch.arange(width)
        valid = index < hi[:, None]
        iw = overlap(x1[:, None], x2[:, None], xs[index.clamp(max=len(xs) - 1)], pw)
        need = (area / 3)[:, None] / iw.clamp(min=1e-300)  # the height overlap each column needs
        ok = valid & (iw > 0) & (need <= torch.minimum(bh, torch.full_like(bh, ph))[:, None])
        reach_y = ((bh + ph)[:, None] / 2 - need).clamp(min=0)
        top = torch.searchsorted(ys, (bcy[:, None] - reach_y).contiguous())
        bottom = torch.searchsorted(ys, (bcy[:, None] + reach_y).contiguous(), right=True)
        positives = torch.where(ok, bottom - top, 0).sum(1)
    return best, positives


def _brute_stats(boxes: Tensor, priors_xyxy: Tensor) -> tuple[Tensor, Tensor]:
    """Best IoU and count of IoU >= 0.5 against arbitrary priors, by box_iou in chunks."""
    best, positives = [], []
    step = max(1, (1 << 22) // max(1, len(priors_xyxy)))
    for a in range(0, len(boxes), step):
        iou = box_iou(boxes[a : a + step], priors_xyxy)
        best.append(iou.max(1).values)
        positives.append((iou >= IOU_THRESHOLD).sum(1))
    return torch.cat(best), torch.cat(positives)


def _grid_groups(priors: Tensor) -> tuple[list[tuple[Tensor, Tensor, Tensor]], Tensor]:
    """Split priors (Tensor[P, 4] cxcywh, float64) into shapes on full grids ``(wh, xs, ys)`` and the rest."""
    shapes, inverse, counts = torch.unique(priors[:, 2:], dim=0, return_inverse=True, return_counts=True)
    order = torch.argsort(inverse, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    groups, rest = [], []
    for g in range(len(shapes)):
        members = priors[order[starts[g] : starts[g] + counts[g]]]
        xs, ys = torch.unique(members[:, 0]), torch.unique(members[:, 1])
        full = len(xs) * len(ys) == len(members) and len(torch.unique(members[:, :2], dim=0)) == len(members)
        if full and len(members) >= 4:
            groups.append((shapes[g], xs, ys))
        else:
            rest.append(members)
    return groups, torch.cat(rest) if rest else priors[:0]


def match_stats(boxes_rel: Tensor, priors_cxcywh: Tensor) -> tuple[Tensor, Tensor]:
    """Each box's best IoU with the priors and its number of priors of IoU >= 0.5.

    Args:
        boxes_rel (Tensor[N, 4]): xyxy relative to the image.
        priors_cxcywh (Tensor[P, 4]): default boxes ``(cx, cy, w, h)`` relative to the image.

    Returns:
        best_iou Tensor[N] float32 and positives Tensor[N] int64; the same values as
        ``box_iou(boxes, priors)`` gives, ``.max(1)`` and ``(>= 0.5).sum(1)``, to float rounding.
    """
    boxes = boxes_rel.detach().to("cpu", torch.float64).reshape(-1, 4)
    priors = priors_cxcywh.detach().to("cpu", torch.float64).reshape(-1, 4)
    best = torch.zeros(len(boxes), dtype=torch.float64)
    positives = torch.zeros(len(boxes), dtype=torch.int64)
    if len(boxes) == 0 or len(priors) == 0:
        return best.float(), positives
    groups, rest = _grid_groups(priors)
    rest_xyxy = _xyxy(rest)
    for a in range(0, len(boxes), _CHUNK):
        chunk = boxes[a : a + _CHUNK]
        b, p = best[a : a + _CHUNK], positives[a : a + _CHUNK]
        for wh, xs, ys in groups:
            g_best, g_pos = _grid_stats(chunk, wh, xs, ys)
            torch.maximum(b, g_best, out=b)
            p += g_pos
        if len(rest_xyxy):
            r_best, r_pos = _brute_stats(chunk, rest_xyxy)
            torch.maximum(b, r_best, out=b)
            p += r_pos
    return best.float(), positives


# --- buckets and the report ---------------------------------------------------------------------


def _size_labels() -> list[str]:
    edges = [f"{100 * e:g}" for e in SIZE_EDGES]
    return [f"<{edges[0]}%"] + [f"{a}-{b}%" for a, b in zip(edges, edges[1:])] + [f">={edges[-1]}%"]


def _buckets(values: Tensor, covered: Tensor, edges: Sequence[float], labels: Sequence[str]) -> list[Bucket]:
    index = torch.bucketize(values, torch.tensor(edges, dtype=values.dtype), right=True)
    bounds = [0.0, *edges, math.inf]
    out = []
    for i, label in enumerate(labels):
        inside = index == i
        out.append(Bucket(label, bounds[i], bounds[i + 1], int(inside.sum()), int((inside & covered).sum())))
    return out


def box_sizes(boxes_rel: Tensor) -> tuple[Tensor, Tensor]:
    """Size ``sqrt(w h)`` and shape ``w / h`` (inf for h = 0) of boxes (Tensor[N, 4] xyxy relative)."""
    boxes = boxes_rel.double()
    w = (boxes[:, 2] - boxes[:, 0]).clamp(min=0)
    h = (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    return (w * h).sqrt(), torch.where(h > 0, w / h.clamp(min=1e-300), math.inf)


def coverage(boxes_rel: Tensor, priors_cxcywh: Tensor) -> Coverage:
    """The share of boxes a set of default boxes covers (best IoU >= 0.5), overall and by size and shape.

    Args:
        boxes_rel (Tensor[N, 4]): ground truths, xyxy relative to their image.
        priors_cxcywh (Tensor[P, 4]): default boxes ``(cx, cy, w, h)`` relative to the network input.

    Returns:
        :class:`Coverage`.
    """
    best, positives = match_stats(boxes_rel, priors_cxcywh)
    covered = best >= IOU_THRESHOLD
    size, ratio = box_sizes(boxes_rel.reshape(-1, 4))
    n = len(best)
    return Coverage(
        coverage=float(covered.double().mean()) if n else 0.0,
        mean_best_iou=float(best.double().mean()) if n else 0.0,
        positives_per_object=float(positives.double().mean()) if n else 0.0,
        num_boxes=n,
        num_priors=len(priors_cxcywh),
        by_size=_buckets(size, covered, SIZE_EDGES, _size_labels()),
        by_ratio=_buckets(ratio, covered, RATIO_EDGES, RATIO_LABELS),
        best_iou=best,
        positives=positives,
    )


def learnable_boxes_problem(boxes_rel: Tensor, image_size: int | Sequence[int], name: str) -> str | None:
    """One sentence when a data set's boxes give a detector nothing to learn, else None.

    Args:
        boxes_rel (Tensor[N, 4]): the training objects, xyxy relative to their image.
        image_size: the network input, an int or ``(h, w)`` in pixels.
        name: how to name the data set in the sentence (its path and split).
    """
    if len(boxes_rel) == 0:
        return f"{name} has no objects to learn (none that is not difficult or crowd); add annotations."
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    boxes = boxes_rel.double()
    pixels = (
        (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * w * (boxes[:, 3] - boxes[:, 1]).clamp(min=0) * h
    ).sqrt()
    if bool((pixels < MIN_LEARNABLE_PIXELS).all()):
        return (
            f"{name}: every object is under {MIN_LEARNABLE_PIXELS:g} pixels at the {h}x{w} network input, "
            "too small to detect; use a larger --image-size or check that the boxes are in pixels."
        )
    return None


def check_learnable_boxes(boxes_rel: Tensor, image_size: int | Sequence[int], name: str) -> None:
    """Raise :class:`UserError` with :func:`learnable_boxes_problem`'s sentence, if any."""
    problem = learnable_boxes_problem(boxes_rel, image_size, name)
    if problem:
        raise UserError(problem)


# --- fitting default boxes -----------------------------------------------------------------------

# Ratios the fit may add to a layer (each r brings r and 1 / r), and the densest sub-grid it proposes.
FIT_RATIOS = (1.5, 2.0, 3.0)
MAX_DENSITY = 3
# The scale grid of the search: log-spaced relative sizes, rounded so that the proposal reads well.
_SCALE_GRID = tuple(
    sorted({round(0.01 * 1.06**i, 4) for i in range(int(math.log(120) / math.log(1.06)) + 1)})
)


@dataclass
class Fit:
    """What :func:`fit_default_boxes` proposes.

    Attributes:
        model_options: builder keyword arguments (``scales``, and ``aspect_ratios`` / ``densities`` where
            they changed), for ``build_model(name, num_classes, **model_options)`` or a training config.
        changes: sentences saying what changed and why, and what still limits the coverage.
        before, after: :class:`Coverage` of the model's and of the proposed default boxes, on all boxes.
        scales, aspect_ratios, densities: the proposed default boxes in full.
    """

    model_options: dict
    changes: list[str]
    before: Coverage
    after: Coverage
    scales: list[float]
    aspect_ratios: list[list[float]]
    densities: list[int]


class _Search:
    """Best IoUs of a box sample with candidate default boxes, one layer shape at a time (closed form)."""

    def __init__(self, boxes: Tensor, feature_sizes, image_size: tuple[int, int], steps) -> None:
        self.x1, self.y1, self.x2, self.y2 = boxes.double().unbind(1)
        self.cx, self.cy = (self.x1 + self.x2) / 2, (self.y1 + self.y2) / 2
        self.area = (self.x2 - self.x1) * (self.y2 - self.y1)
        self.n = len(boxes)
        self.grids = []  # per layer: (fh, fw, relative step y, relative step x)
        for k, size in enumerate(feature_sizes):
            fh, fw = (size, size) if isinstance(size, int) else size
            if steps is None:
                self.grids.append((fh, fw, 1.0 / fh, 1.0 / fw))
            else:
                sy, sx = (steps[k], steps[k]) if isinstance(steps[k], (int, float)) else steps[k]
                self.grids.append((fh, fw, sy / image_size[0], sx / image_size[1]))
        self._memo: dict = {}

    def shape(self, k: int, w: float, h: float, d: int = 1) -> Tensor:
        """Tensor[n] best IoU with boxes (w, h) on layer k's grid, d x d centres per cell."""
        fh, fw, sy, sx = self.grids[k]

        def overlap(lo, hi, centre, count, pitch, size):
            near = (centre / pitch).floor().clamp(0, count - 1)
            c = (near + 0.5) * pitch
            return (torch.minimum(hi, c + size / 2) - torch.maximum(lo, c - size / 2)).clamp(min=0)

        inter = overlap(self.x1, self.x2, self.cx, fw * d, sx / d, w) * overlap(
            self.y1, self.y2, self.cy, fh * d, sy / d, h
        )
        return inter / (self.area + w * h - inter)

    def core(self, k: int, s: float, ratios: tuple, d: int) -> Tensor:
        """Best IoU with layer k's boxes of scale s: its square (density d) and its ratio boxes."""
        key = (k, s, ratios, d)
        if key not in self._memo:
            best = self.shape(k, s, s, d)
            for r in ratios:
                q = math.sqrt(r)
                best = torch.maximum(
                    best, torch.maximum(self.shape(k, s * q, s / q), self.shape(k, s / q, s * q))
                )
            self._memo[key] = best.float()
        return self._memo[key]

    def layer(self, k: int, scales, ratios, densities) -> Tensor:
        extra = math.sqrt(scales[k] * scales[k + 1])
        return torch.maximum(
            self.core(k, scales[k], tuple(ratios[k]), densities[k]), self.shape(k, extra, extra).float()
        )

    def cells(self, k: int) -> int:
        return self.grids[k][0] * self.grids[k][1]


def _score(best: Tensor) -> float:
    """Coverage first; the mean best IoU (up to 0.5) breaks ties and leads the search across plateaus."""
    return float((best >= IOU_THRESHOLD).float().mean() + 0.01 * best.clamp(max=IOU_THRESHOLD).mean())


def _feasible(k: int, s: float, scales, ratios, min_rel: float, *, with_next: bool = True) -> bool:
    """Scale s at position k keeps every box >= 1 px and within the image, and the scales increasing.

    ``with_next=False`` ignores the scale after k (for fixing the scales from the first on).
    """
    m = len(ratios)
    if k > 0 and (s <= scales[k - 1] or scales[k - 1] * s > 1.0):  # the extra square of layer k - 1
        return False
    if with_next and k < m and (s >= scales[k + 1] or s * scales[k + 1] > 1.0):
        return False
    if k < m:
        q = math.sqrt(max(ratios[k], default=1.0))
        if s / q < min_rel or s * q > 1.0:
            return False
    return True


def _tune_scale(search: _Search, k: int, scales, ratios, densities, min_rel: float, grid) -> float:
    """The best scale at position k, the others fixed; returns the score and sets ``scales[k]``."""
    m = len(ratios)
    others = [search.layer(j, scales, ratios, densities) for j in range(m) if j not in (k - 1, k)]
    rest = torch.stack(others).amax(0) if others else torch.zeros(search.n)
    best_score, best_s = -1.0, scales[k]
    for s in sorted({*grid, scales[k]}):
        if not _feasible(k, s, scales, ratios, min_rel):
            continue
        trial = list(scales)
        trial[k] = s
        best = rest
        for j in (k - 1, k):
            if 0 <= j < m:
                best = torch.maximum(best, search.layer(j, trial, ratios, densities))
        score = _score(best)
        if score > best_score + 1e-9:
            best_score, best_s = score, s
    scales[k] = best_s
    return best_score


def _descend(search: _Search, scales, ratios, densities, min_rel: float, rounds: int = 3) -> float:
    """Coordinate descent over the m + 1 scales on the log grid; changes ``scales`` in place."""
    score = -1.0
    for _ in range(rounds):
        before = list(scales)
        for k in range(len(scales)):
            score = _tune_scale(search, k, scales, ratios, densities, min_rel, _SCALE_GRID)
        if scales == before:
            break
    return score


def _repair(scales: list[float], ratios, min_rel: float) -> None:
    """Move scales that break :func:`_feasible` to nearby grid values (in place): first each under its
    upper bound and below the next (last to first), then within the other bounds (first to last)."""
    m = len(ratios)
    for k in reversed(range(m + 1)):
        cap = _SCALE_GRID[-1] if k == m else min(0.99 / math.sqrt(max(ratios[k], default=1.0)), scales[k + 1])
        if scales[k] >= cap:
            scales[k] = max((g for g in _SCALE_GRID if g < cap), default=_SCALE_GRID[0])
    for k in range(m + 1):
        if not _feasible(k, scales[k], scales, ratios, min_rel, with_next=False):
            options = [g for g in _SCALE_GRID if _feasible(k, g, scales, ratios, min_rel, with_next=False)]
            if not options:
                raise ValueError(f"no scale for position {k} keeps the boxes within 1 px .. the image")
            scales[k] = min(options, key=lambda g: abs(math.log(g / scales[k])))


def _moves(search: _Search, ratios, densities, tune) -> list[tuple[str, int, object, int]]:
    """Candidate additions ``(kind, layer, value, added boxes)``: a ratio pair or a denser first square."""
    moves = []
    for k in range(len(ratios)):
        cells = search.cells(k)
        if "aspect_ratios" in tune:
            for r in FIT_RATIOS:
                if r not in ratios[k]:
                    moves.append(("ratio", k, r, 2 * cells))
        if "densities" in tune and densities[k] < MAX_DENSITY:
            d = densities[k] + 1
            moves.append(("density", k, d, (d * d - densities[k] ** 2) * cells))
    return moves


def _apply(move, ratios, densities) -> tuple[list, list]:
    kind, k, value, _ = move
    ratios, densities = [list(r) for r in ratios], list(densities)
    if kind == "ratio":
        ratios[k] = sorted([*ratios[k], value])
    else:
        densities[k] = value
    return ratios, densities


def _grow(search: _Search, scales, ratios, densities, tune, room: int, min_rel: float):
    """Greedy additions, best coverage gained per added box first, while they pay and fit in ``room``."""
    current = _descend(search, scales, ratios, densities, min_rel)
    min_gain = max(1.0, 0.001 * search.n) / search.n
    while True:
        best = None
        for move in _moves(search, ratios, densities, tune):
            if move[3] > room:
                continue
            r, d = _apply(move, ratios, densities)
            if not all(_feasible(k, s, scales, r, min_rel) for k, s in enumerate(scales)):
                continue
            trial = list(scales)
            k = move[1]
            window = [s for s in _SCALE_GRID if 0.6 * scales[k] <= s <= 1.5 * scales[k]]
            score = _tune_scale(search, k, trial, r, d, min_rel, window)
            gain = score - current
            if gain >= min_gain and (best is None or gain / move[3] > best[0]):
                best = (gain / move[3], move, trial, r, d)
        if best is None:
            return scales, ratios, densities
        _, move, scales, ratios, densities = best
        room -= move[3]
        current = _descend(search, scales, ratios, densities, min_rel)


def _count(feature_sizes, ratios, densities) -> int:
    per_cell = boxes_per_cell(ratios, densities)
    sizes = [(f, f) if isinstance(f, int) else tuple(f) for f in feature_sizes]
    return sum(h * w * n for (h, w), n in zip(sizes, per_cell))


def fit_default_boxes(
    boxes_rel: Tensor,
    feature_sizes: Sequence[int | Sequence[int]],
    *,
    image_size: int | Sequence[int],
    scales: Sequence[float],
    aspect_ratios: Sequence[Sequence[float]],
    steps: Sequence | None = None,
    clip: str | None = "cxcywh",
    densities: Sequence[int] | None = None,
    budget: float = 2.0,
    tune: Sequence[str] = ("aspect_ratios", "densities"),
    sample: int = 8192,
) -> Fit:
    """Default boxes for the same feature maps that cover more of ``boxes_rel``, within a box budget.

    The search: the m + 1 scales by coordinate descent on a log grid (every box >= 1 px at the input and
    within the image, scales increasing); then, greedily by coverage gained per added default box, a ratio
    pair (1.5, 2 or 3 and their inverses) on a layer or a denser sub-grid of a layer's smallest square,
    re-tuning the scales after each, while the total stays within ``budget`` x the current number. The
    search runs on a deterministic sample of ``sample`` boxes; the reported coverages are exact, on all.

    Args:
        boxes_rel (Tensor[N, 4]): ground truths, xyxy relative to their image.
        feature_sizes, image_size, scales, aspect_ratios, steps, clip, densities: the model's current
            default boxes, as :func:`singleshot.priors.default_boxes` takes them (``image_size`` ``(h, w)``
            or an int, in pixels).
        budget: the most default boxes allowed, as a multiple of the current number.
        tune: which builder keywords may change besides the scales: ``"aspect_ratios"``, ``"densities"``
            (a builder without an ``aspect_ratios`` keyword keeps its ratios).

    Returns:
        :class:`Fit`; the proposal is the model's own default boxes when nothing found covers more.
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    m = len(feature_sizes)
    old_scales, old_ratios = [float(s) for s in scales], [[float(r) for r in rs] for rs in aspect_ratios]
    old_densities = check_densities(densities, m)
    boxes = boxes_rel.detach().to("cpu", torch.float64).reshape(-1, 4)
    options = dict(image_size=(h, w), steps=steps, clip=clip)
    before = coverage(
        boxes, default_boxes(feature_sizes, old_ratios, scales=old_scales, densities=old_densities, **options)
    )
    room = int(budget * before.num_priors) - before.num_priors

    pick = torch.randperm(len(boxes), generator=torch.Generator().manual_seed(0))[:sample]
    search = _Search(boxes[pick.sort().values], feature_sizes, (h, w), steps)
    min_rel = 1.0 / min(h, w)
    new_scales, ratios, dens = list(old_scales), [list(r) for r in old_ratios], list(old_densities)
    _repair(new_scales, ratios, min_rel)
    new_scales, ratios, dens = _grow(search, new_scales, ratios, dens, tune, max(room, 0), min_rel)
    priors = default_boxes(feature_sizes, ratios, scales=new_scales, densities=dens, **options)
    after = coverage(boxes, priors)
    if after.coverage < before.coverage:  # the sample misled the search: keep what the model has
        new_scales, ratios, dens, after = old_scales, old_ratios, old_densities, before
    model_options = {"scales": new_scales}
    if ratios != old_ratios:
        model_options["aspect_ratios"] = ratios
    if dens != old_densities:
        model_options["densities"] = dens
    fit = Fit(model_options, [], before, after, new_scales, ratios, dens)
    fit.changes = describe_fit(fit, old_scales, old_ratios, old_densities, search, (h, w))
    return fit


def _percent(x: float) -> str:
    return f"{100 * x:.1f} %"


def describe_fit(
    fit: Fit, scales, ratios, densities, search: _Search, image_size: tuple[int, int]
) -> list[str]:
    """Sentences for :attr:`Fit.changes`: what changed from (scales, ratios, densities), and what limits."""
    h, w = image_size
    side = min(h, w)
    changes = []
    if fit.scales != scales:
        old = ", ".join(f"{s * side:.0f}" for s in scales[:-1])
        new = ", ".join(f"{s * side:.0f}" for s in fit.scales[:-1])
        changes.append(
            f"The smallest square of each source map, in pixels at the {h}x{w} input, goes from "
            f"{old} to {new} (scales {', '.join(f'{s:g}' for s in fit.scales)})."
        )
    for k, (fh, fw, sy, sx) in enumerate(search.grids):
        stride = max(sy * h, sx * w)
        name = f"Map {k + 1} ({fh}x{fw}, stride {stride:.0f} px)"
        added = sorted(set(fit.aspect_ratios[k]) - set(ratios[k]))
        if added:
            pairs = " and ".join(f"{r:g}:1 / 1:{r:g}" for r in added)
            changes.append(f"{name} gains the shapes {pairs}, for the elongated objects its squares miss.")
        if fit.densities[k] != densities[k]:
            d = fit.densities[k]
            changes.append(
                f"{name} repeats its smallest square on a {d}x{d} sub-grid of each cell (centres every "
                f"{stride / d:.0f} px instead of {stride / densities[k]:.0f}), so that small "
                "objects overlap one by IoU >= 0.5 wherever they sit in a cell."
            )
    before, after = fit.before, fit.after
    changes.append(
        f"Default boxes {before.num_priors} -> {after.num_priors} ({after.num_priors / before.num_priors:.2f}x); "
        f"objects with a default box of IoU >= 0.5: {_percent(before.coverage)} -> {_percent(after.coverage)} "
        f"of {after.num_boxes}."
    )
    if after.num_boxes and after.coverage < 0.95:
        worst = max(after.by_size, key=lambda b: b.count - b.covered)
        spacing = min(max(sy * h, sx * w) / d for (_, _, sy, sx), d in zip(search.grids, fit.densities))
        changes.append(
            f"Still uncovered: {_percent(1 - after.coverage)} of the objects, most of them of size {worst.label} "
            f"of the image side ({worst.count - worst.covered}); an object is matched at every position "
            f"only when its side is at least ~2.7x the finest spacing of default-box centres "
            f"({spacing:.0f} px here), so a finer map, a larger input or a larger budget would be needed."
        )
    return changes


def fit_for_model(model, boxes_rel: Tensor, budget: float = 2.0) -> Fit:
    """:func:`fit_default_boxes` for an SSD ``model``'s source maps at its input size.

    The ratios and densities change only where the model's builder takes them (``model.arch_args``).

    Args:
        model: an :class:`singleshot.models.SSD` (its ``feature_sizes``, ``scales``, ``aspect_ratios``,
            ``steps``, ``clip`` and ``densities`` describe its default boxes).
        boxes_rel (Tensor[N, 4]): ground truths, xyxy relative to their image.
        budget: the most default boxes allowed, as a multiple of the model's number.
    """
    return fit_default_boxes(
        boxes_rel,
        model.feature_sizes(model.image_size),
        image_size=model.image_size,
        scales=model.scales,
        aspect_ratios=model.aspect_ratios,
        steps=model.steps,
        clip=model.clip,
        densities=model.densities,
        budget=budget,
        tune=[key for key in ("aspect_ratios", "densities") if key in model.arch_args],
    )
