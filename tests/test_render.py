"""Tests of singleshot.render.curves and the legend of singleshot.render.pr, through the figures drawn."""

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from singleshot.render.curves import plot_training_curves


@pytest.fixture
def figures(monkeypatch):
    """The matplotlib figures saved during the test, in order."""
    saved = []
    savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: saved.append(fig) or savefig(fig, *a, **k))
    return saved


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_one_step_and_one_unvalidated_epoch_draw_markers_and_say_no_validation(tmp_path, figures):
    steps = [{"epoch": 1.0, "loss": 4.2, "loc": 1.3, "conf": 2.9, "lr": 0.001}]
    plot_training_curves(tmp_path / "c.png", steps, [{"epoch": 1, "val_map": None}])
    ax_loss, ax_lr, ax_map = figures[0].axes
    lines = ax_loss.get_lines() + ax_lr.get_lines()
    assert len(lines) == 4 and all(line.get_marker() == "o" for line in lines)
    assert sorted(float(line.get_ydata()[0]) for line in lines) == [0.001, 1.3, 2.9, 4.2]
    assert _texts(ax_map) == ["no validation"] and _texts(ax_loss) == _texts(ax_lr) == []
    assert all(ax.get_xlim()[0] == 0 and ax.get_xlim()[1] >= 1 for ax in (ax_loss, ax_lr, ax_map))


def test_many_steps_draw_lines_and_the_best_map_label_stays_inside(tmp_path, figures):
    steps = [
        {"epoch": e / 4, "loss": 3 - e / 4, "loc": 1.0, "conf": 2 - e / 4, "lr": 0.01} for e in range(1, 41)
    ]
    epochs = [{"epoch": k, "val_map": 0.08 * k if k % 2 == 0 else None} for k in range(1, 11)]
    plot_training_curves(tmp_path / "c.png", steps, epochs)
    fig = figures[0]
    ax_loss, _, ax_map = fig.axes
    assert all(line.get_marker() in ("None", None, "") for line in ax_loss.get_lines())
    (best,) = ax_map.texts
    assert best.get_text() == "best 80.0 %"
    renderer = FigureCanvasAgg(fig).get_renderer()  # the positions of the PNG saved
    box, panel = best.get_window_extent(renderer), ax_map.get_window_extent(renderer)
    assert panel.x0 <= box.x0 and box.x1 <= panel.x1 and panel.y0 <= box.y0 and box.y1 <= panel.y1


def test_no_record_says_so_in_every_panel(tmp_path, figures):
    plot_training_curves(tmp_path / "c.png", [], [])
    ax_loss, ax_lr, ax_map = figures[0].axes
    assert _texts(ax_loss) == _texts(ax_lr) == ["no training step recorded"]
    assert _texts(ax_map) == ["no epoch completed"] and ax_loss.get_legend() is None


def test_pr_legend_lies_beside_the_curves(tmp_path, figures):
    from singleshot.metrics import mean_average_precision
    from singleshot.render.pr import SINGLE_AXES_MAX, plot_pr_curves
    from tests.test_metrics import random_coco_set

    names = [f"class{k}" for k in range(SINGLE_AXES_MAX)]
    predictions, targets = random_coco_set(3, num_images=20, num_classes=SINGLE_AXES_MAX)
    plot_pr_curves(
        mean_average_precision(predictions, targets, "voc07", class_names=names), tmp_path / "p.png"
    )
    fig = figures[0]
    (ax,) = fig.axes
    renderer = FigureCanvasAgg(fig).get_renderer()  # the positions of the PNG saved
    legend, axes = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    assert len(ax.get_legend().get_texts()) == SINGLE_AXES_MAX
    assert legend.x0 >= axes.x1 and legend.x1 <= fig.bbox.x1  # right of the axes, inside the figure
