"""Precision-recall curves of an evaluation as a PNG (matplotlib's Agg renderer, no display needed).

    result = mean_average_precision(predictions, targets, metric="voc07", class_names=names)
    plot_pr_curves(result, "runs/eval/pr.png")

Up to ``SINGLE_AXES_MAX`` classes share one axes with a legend of per-class AP beside it; more get a grid of small
axes, one per class, titled with its AP. Classes without ground truth have no curve and are left out.
VOC curves are drawn as the monotone precision envelope (whose area is the VOC2010+ AP) over the raw
precision in score order, faint; COCO's curves are already interpolated at its 101 recall points.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from singleshot.errors import UserError
from singleshot.files import atomic_write
from singleshot.metrics import format_map

SINGLE_AXES_MAX = 10


def _ap_label(result: Mapping, name: str) -> str:
    if result.get("metric") == "coco":  # COCO's curves are the IoU 0.5 ones
        ap, what = result.get("per_class_50", {}).get(name, math.nan), "AP50"
    else:
        ap, what = result["per_class"].get(name, math.nan), "AP"
    return f"{what} {format_map(ap)}"


def _draw(ax, recall, precision, envelope: bool, **kwargs):
    if envelope:
        (line,) = ax.plot(recall, precision, linewidth=0.6, alpha=0.35)
        kwargs["color"] = line.get_color()
        precision = np.maximum.accumulate(np.asarray(precision)[::-1])[::-1]
    ax.plot(recall, precision, **kwargs)


def plot_pr_curves(result: Mapping, path: str | os.PathLike, title: str | None = None) -> Path:
    """Write the precision-recall curves in ``result["curves"]`` to a PNG.

    Args:
        result: what ``singleshot.metrics.mean_average_precision`` returns.
        path: the PNG to write; missing parent folders are created.
        title: the figure's title; default: the metric and its mAP.

    Returns:
        The path written.
    """
    from matplotlib.figure import Figure  # the object API: no pyplot state, no display

    path = Path(path)
    curves = result.get("curves", {})
    metric = result.get("metric", "")
    if title is None:
        mean = result.get("map", math.nan)
        title = f"{metric} mAP {format_map(mean)}"
        if metric == "coco":
            title += "  (curves at IoU 0.5)"
    n = len(curves)
    if n <= SINGLE_AXES_MAX:
        fig = Figure(figsize=(9.5, 6), dpi=100, layout="constrained")
        ax = fig.add_subplot()
        for name, (recall, precision) in curves.items():
            _draw(
                ax,
                recall,
                precision,
                metric != "coco",
                linewidth=1.5,
                label=f"{name} ({_ap_label(result, name)})",
            )
        if n:  # beside the axes, never over a curve; constrained layout makes room for it
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize="small")
        else:
            ax.text(0.5, 0.5, "no class has ground truth", ha="center", va="center", transform=ax.transAxes)
        _style(ax)
        ax.set_title(title)
    else:
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
        fig = Figure(figsize=(2.4 * cols, 2.2 * rows + 0.6), dpi=100, layout="constrained")
        axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel()
        for ax, (name, (recall, precision)) in zip(axes, curves.items()):
            _draw(ax, recall, precision, metric != "coco", linewidth=1.2)
            ax.set_title(f"{name}  {_ap_label(result, name)}", fontsize="small")
            _style(ax, labels=False)
        for ax in axes[n:]:
            ax.set_axis_off()
        fig.supxlabel("recall")
        fig.supylabel("precision")
        fig.suptitle(title)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: fig.savefig(f, format="png"))
    except OSError as e:
        raise UserError(
            f"cannot write the plot {str(path)!r} ({e.strerror or e}); choose a writable path."
        ) from e
    return path


def _style(ax, labels: bool = True) -> None:
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    if labels:
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
