"""Training curves: the loss terms, the learning rate and the validation mAP over training, as one PNG.

``plot_training_curves(path, steps, epochs)`` takes the records a run keeps (and writes to its
metrics CSV): ``steps`` are logged every few optimizer steps, ``epochs`` once per epoch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from singleshot.files import atomic_write
from singleshot.metrics import format_map


def plot_training_curves(
    path: str | os.PathLike,
    steps: Sequence[dict],
    epochs: Sequence[dict],
    title: str | None = None,
) -> None:
    """Draw three panels side by side and write them to ``path`` (PNG, atomically).

    Args:
        steps: dicts with ``"epoch"`` (fractional: 1.5 is half-way through the second epoch),
            ``"loss"``, ``"loc"``, ``"conf"`` (averages since the previous record) and ``"lr"``.
        epochs: dicts with ``"epoch"`` (1-based, completed) and optionally ``"val_map"`` (None when
            that epoch was not validated) and ``"loss"`` (the epoch's mean).
        title: drawn above the panels.
    """
    from matplotlib.figure import Figure  # the object API: no pyplot state, no display needed

    fig = Figure(figsize=(15, 4.2), dpi=100, layout="constrained")
    ax_loss, ax_lr, ax_map = fig.subplots(1, 3, sharex=True)  # one epoch axis for the three panels
    x = [s["epoch"] for s in steps]
    marker = "o" if len(steps) == 1 else None  # a line through one point draws nothing
    for key, label, style in (
        ("loss", "total", "-"),
        ("conf", "confidence", "--"),
        ("loc", "localisation", ":"),
    ):
        ax_loss.plot(x, [s[key] for s in steps], style, marker=marker, label=label)
    ax_loss.set_title("training loss")
    if steps:
        if min(s["loss"] for s in steps) > 0:
            ax_loss.set_yscale("log")
        ax_loss.legend()
    ax_lr.plot(x, [s["lr"] for s in steps], color="tab:purple", marker=marker)
    ax_lr.set_title("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if not steps:
        for ax in (ax_loss, ax_lr):
            _note(ax, "no training step recorded")

    validated = [e for e in epochs if e.get("val_map") is not None]
    percent = [100 * e["val_map"] for e in validated]  # drawn on the scale format_map prints
    ax_map.plot([e["epoch"] for e in validated], percent, "o-", color="tab:green")
    ax_map.set_ylim(0, 100)
    ax_map.set_title("validation mAP (%)")
    if not validated:
        _note(ax_map, "no validation" if epochs else "no epoch completed")

    last = max([*x, *(e["epoch"] for e in epochs), 1])
    for ax in (ax_loss, ax_lr, ax_map):
        ax.set_xlim(0, last * 1.04)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if validated:
        best = max(validated, key=lambda e: e["val_map"])
        _label_best(ax_map, best["epoch"], 100 * best["val_map"], format_map(best["val_map"]), last)

    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png"))


def _note(ax, text: str) -> None:
    """Say in the middle of an empty panel why it is empty."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4", fontsize="large")


def _label_best(ax, epoch: float, percent: float, text: str, last: float) -> None:
    """Write "best <text>" beside the best point, on the side where it stays inside the panel."""
    right = epoch > last / 2  # the label's end at the point, so that it never runs past the right edge
    below = percent > 50
    ax.annotate(
        f"best {text}",
        (epoch, percent),
        textcoords="offset points",
        xytext=(-6 if right else 6, -8 if below else 8),
        ha="right" if right else "left",
        va="top" if below else "bottom",
    )
