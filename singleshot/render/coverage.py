"""Object sizes over default-box sizes, as a PNG: which objects the default boxes cover.

    plot_coverage("default-boxes.png", boxes_rel, covered, [("ssd_small", shapes)])

Each panel plots the ground truths' relative width x height (log axes) as points, those with a default box
of IoU >= 0.5 in one colour and the others in red, over the (w, h) of every layer's default boxes (one marker
per layer). A point far from every marker is an object no default box can match.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from singleshot.errors import UserError

MAX_POINTS = 20000
_MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*")


def plot_coverage(
    path: str | os.PathLike,
    boxes_rel: Tensor,
    panels: Sequence[tuple[str, Tensor, Sequence[Sequence[tuple[float, float]]]]],
    title: str | None = None,
) -> Path:
    """Write object sizes over default-box sizes to a PNG, one panel per set of default boxes.

    Args:
        path: the PNG to write; missing parent folders are created.
        boxes_rel (Tensor[N, 4]): ground truths, xyxy relative to their image.
        panels: per panel ``(title, covered, layer_shapes)``: ``covered`` Tensor[N] bool (best IoU >= 0.5),
            ``layer_shapes`` per source map the ``(w, h)`` of its default boxes, relative.
        title: the figure's title.

    Returns:
        The path written.
    """
    from matplotlib.figure import Figure  # the object API: no pyplot state, no display

    path = Path(path)
    boxes = boxes_rel.detach().double().cpu().reshape(-1, 4)
    keep = torch.randperm(len(boxes), generator=torch.Generator().manual_seed(0))[:MAX_POINTS].sort().values
    w = (boxes[keep, 2] - boxes[keep, 0]).clamp(min=1e-4).numpy()
    h = (boxes[keep, 3] - boxes[keep, 1]).clamp(min=1e-4).numpy()
    fig = Figure(figsize=(6.2 * len(panels), 6), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(panels), sharex=True, sharey=True, squeeze=False).ravel()
    for ax, (name, covered, layer_shapes) in zip(axes, panels):
        hit = covered.detach().cpu().bool()[keep].numpy()
        point = dict(s=6, linewidths=0, alpha=0.45)
        ax.scatter(w[hit], h[hit], color="tab:blue", label=f"covered ({hit.mean():.1%})", **point)
        ax.scatter(w[~hit], h[~hit], color="tab:red", label=f"not covered ({(~hit).mean():.1%})", **point)
        for k, shapes in enumerate(layer_shapes):
            wh = np.asarray(shapes, dtype=float).reshape(-1, 2)
            ax.scatter(
                wh[:, 0],
                wh[:, 1],
                marker=_MARKERS[k % len(_MARKERS)],
                s=70,
                facecolors="none",
                edgecolors="black",
                linewidths=1.3,
                label=f"default boxes, map {k + 1}",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(min(w.min(initial=1.0), 0.01) * 0.8, 1.25)
        ax.set_ylim(min(h.min(initial=1.0), 0.01) * 0.8, 1.25)
        ax.set_aspect("equal")
        ax.grid(True, which="major", linewidth=0.5, alpha=0.5)
        ax.set_xlabel("width / image width")
        ax.set_ylabel("height / image height")
        ax.set_title(name)
        ax.legend(loc="upper left", fontsize="small", markerscale=1.0)
    if title:
        fig.suptitle(title)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    except OSError as e:
        raise UserError(
            f"cannot write the plot {str(path)!r} ({e.strerror or e}); choose a writable path."
        ) from e
    return path
