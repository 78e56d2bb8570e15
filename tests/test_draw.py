import numpy as np
import pytest
import torch
from PIL import Image

from singleshot.render.draw import PALETTE, class_color, draw_detections, image_grid


def _dets(boxes, labels, scores=None):
    d = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}
    if scores is not None:
        d["scores"] = torch.tensor(scores)
    return d


def _pixels(picture):
    return np.asarray(picture).astype(np.int64)  # (H, W, 3)


def test_keeps_pixels_and_orientation():
    image = torch.zeros(3, 4, 6, dtype=torch.uint8)
    image[0, 1, 5] = 200  # red at row 1, column 5
    picture = draw_detections(image, _dets(torch.zeros(0, 4).tolist(), []), ["a"])
    assert picture.size == (6, 4) and picture.mode == "RGB"
    assert tuple(_pixels(picture)[1, 5]) == (200, 0, 0) and _pixels(picture).sum() == 200


@pytest.mark.parametrize("bad", [torch.zeros(3, 4, 4), torch.zeros(4, 4, dtype=torch.uint8)])
def test_rejects_other_images(bad):
    with pytest.raises(ValueError):
        draw_detections(bad, _dets([[0, 0, 1, 1]], [1], [0.5]), ["a"])


def test_box_outline_in_class_color_and_inside_untouched():
    image = torch.zeros(3, 100, 120, dtype=torch.uint8)
    picture = draw_detections(image, _dets([[20, 40, 80, 90]], [3], [0.9]), ["a", "b", "c"], line_width=2)
    px = _pixels(picture)
    colour = class_color(3)
    assert picture.size == (120, 100)
    # PIL draws the 2 px outline inward from the box's edges.
    assert tuple(px[65, 20]) == colour and tuple(px[65, 21]) == colour and px[65, 22].sum() == 0
    assert tuple(px[65, 80]) == colour and tuple(px[65, 79]) == colour and px[65, 78].sum() == 0
    assert tuple(px[90, 50]) == colour and tuple(px[89, 50]) == colour
    assert px[60:85, 25:75].sum() == 0  # inside the box
    assert px[91:, :].sum() == 0 and px[:, 81:].sum() == 0 and px[:, :20].sum() == 0  # outside
    assert image.sum() == 0  # the input is not drawn on


def test_label_sits_above_the_box_on_its_colour_with_readable_text():
    image = torch.zeros(3, 100, 120, dtype=torch.uint8)
    picture = draw_detections(image, _dets([[20, 50, 80, 90]], [3], [0.9]), ["a", "b", "c"])
    px = _pixels(picture)
    above = px[:50, 20:]
    colour = np.array(class_color(3))
    background = (above == colour).all(-1)
    assert background.sum() > 100  # a filled label box
    rows = np.nonzero(background.any(1))[0]
    assert rows.max() in (49, 50) and rows.min() < 45  # right on the box's top edge
    # The text is in black or white, whichever contrasts with the class colour: some of its pixels differ.
    inside = above[rows.min() : rows.max() + 1, : np.nonzero(background.any(0))[0].max() + 1]
    assert (~(inside == colour).all(-1)).sum() > 10


def test_label_of_a_box_at_the_top_goes_inside_and_stays_in_the_image():
    image = torch.zeros(3, 60, 60, dtype=torch.uint8)
    picture = draw_detections(image, _dets([[50, 0, 59, 30]], [1], [0.5]), ["a-long-class-name"])
    px = _pixels(picture)
    assert (px[:, :50] == np.array(class_color(1))).all(-1).any()  # moved left to fit


def test_score_threshold_and_order():
    image = torch.zeros(3, 50, 50, dtype=torch.uint8)
    same = draw_detections(image, _dets([[10, 10, 40, 40]], [1], [0.2]), ["a"], score_threshold=0.3)
    assert _pixels(same).sum() == 0
    # Two boxes on the same edge: the higher score is drawn last, so its colour wins.
    dets = _dets([[10, 10, 40, 40], [10, 10, 40, 40]], [1, 2], [0.9, 0.4])
    px = _pixels(draw_detections(image, dets, ["a", "b"], line_width=1))
    assert tuple(px[30, 10]) == class_color(1)


def test_ground_truth_without_scores_and_unknown_labels():
    image = torch.full((3, 80, 80), 255, dtype=torch.uint8)
    picture = draw_detections(image, _dets([[5, 30, 70, 70], [10, 40, 20, 50]], [1, 7]), ["a"])
    px = _pixels(picture)
    assert tuple(px[50, 5]) == class_color(1) and tuple(px[45, 10]) == class_color(7)


def test_empty_detections_give_the_image():
    image = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    empty = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "scores": torch.zeros(0),
    }
    assert (_pixels(draw_detections(image, empty, ["a"])) == image.permute(1, 2, 0).numpy()).all()


def test_class_colors_are_fixed_and_distinct():
    colours = [class_color(label) for label in range(1, 81)]
    assert colours == [class_color(label) for label in range(1, 81)] and colours[:20] == PALETTE
    first = np.array(colours[:20], dtype=float)
    gaps = np.linalg.norm(first[:, None] - first[None], axis=-1) + np.eye(20) * 1e9
    assert gaps.min() > 20  # RGB distance: the first 20 classes all differ visibly
    assert all(0 <= c <= 255 for colour in colours for c in colour)


def test_image_grid_tiles_row_major():
    red, blue = Image.new("RGB", (4, 3), (255, 0, 0)), Image.new("RGB", (2, 2), (0, 0, 255))
    grid = image_grid([red, blue, red], columns=2, pad=1)
    assert grid.size == (2 * 4 + 3, 2 * 3 + 3)
    px = _pixels(grid)
    assert (
        tuple(px[1, 1]) == (255, 0, 0) and tuple(px[1, 6]) == (0, 0, 255) and tuple(px[5, 1]) == (255, 0, 0)
    )
    assert tuple(px[0, 0]) == (255, 255, 255) and tuple(px[5, 6]) == (255, 255, 255)


def test_note_empty_says_so_only_when_nothing_reaches_the_threshold(monkeypatch):
    from PIL import ImageDraw

    written = []
    multiline_text = ImageDraw.ImageDraw.multiline_text
    monkeypatch.setattr(
        ImageDraw.ImageDraw,
        "multiline_text",
        lambda pen, xy, text, *a, **k: written.append(text) or multiline_text(pen, xy, text, *a, **k),
    )
    image = torch.full((3, 64, 64), 120, dtype=torch.uint8)
    weak = _dets([[10, 10, 40, 40]], [1], [0.2])
    plain = _pixels(draw_detections(image, weak, ["a"], score_threshold=0.5))
    noted = _pixels(draw_detections(image, weak, ["a"], score_threshold=0.5, note_empty=True))
    assert (plain == 120).all() and written == ["no detection\n>= 0.50"]
    changed = (noted != 120).any(axis=-1)
    assert changed[:8, :8].any() and not changed[40:].any()  # a tab at the top left, nothing below it
    assert noted[changed].min() <= 40 and noted[changed].max() > 200  # light text on a dark tab
    strong = _dets([[10, 10, 40, 40]], [1], [0.7])  # a detection drawn: no note
    assert (
        _pixels(draw_detections(image, strong, ["a"], 0.5, note_empty=True))
        == _pixels(draw_detections(image, strong, ["a"], 0.5))
    ).all()
    assert len(written) == 1


def test_note_empty_fits_a_small_picture():
    from singleshot.render.draw import note_no_detection

    small = Image.new("RGB", (64, 48), (120, 120, 120))
    px = _pixels(note_no_detection(small, 0.3))
    columns = np.nonzero((px != 120).any(axis=(0, 2)))[0]
    assert 0 < columns.max() < 63  # the tab ends inside the picture
