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
    ax_loss, ax_lr, ax_map = fig.subplots(1, 3)
    x = [s["epoch"] for s in steps]
    for key, label, style in (
        ("loss", "total", "-"),
        ("conf", "confidence", "--"),
        ("loc", "localisation", ":"),
    ):
        ax_loss.plot(x, [s[key] for s in steps], style, label=label)
    ax_loss.set_title("training loss")
    ax_loss.set_xlabel("epoch")
    if steps and min(s["loss"] for s in steps) > 0:
        ax_loss.set_yscale("log")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)

    ax_lr.plot(x, [s["lr"] for s in steps], color="tab:purple")
    ax_lr.set_title("learning rate")
    ax_lr.set_xlabel("epoch")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax_lr.grid(alpha=0.3)

    validated = [e for e in epochs if e.get("val_map") is not None]
    percent = [100 * e["val_map"] for e in validated]  # drawn on the scale format_map prints
    ax_map.plot([e["epoch"] for e in validated], percent, "o-", color="tab:green")
    if validated:
        best = max(validated, key=lambda e: e["val_map"])
        ax_map.annotate(
            f"best {format_map(best['val_map'])}",
            (best["epoch"], 100 * best["val_map"]),
            textcoords="offset points",
            xytext=(0, -14),
            ha="center",
        )
    ax_map.set_ylim(0, 100)
    ax_map.set_title("validation mAP (%)")
    ax_map.set_xlabel("epoch")
    ax_map.grid(alpha=0.3)
    for ax in (ax_loss, ax_lr, ax_map):
        ax.set_xlim(left=0)

    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
