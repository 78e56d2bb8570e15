import numpy as np
import pytest

from singleshot.engine.recipe import (
    EPOCH_RANGE,
    TARGET_SAMPLES,
    choose_image_size,
    choose_recipe,
    object_sizes,
)


def _squares(sizes):
    """Square boxes of the given relative sides at the image centre: ndarray[N, 4]."""
    s = np.asarray(sizes, dtype=np.float64)[:, None]
    return np.hstack([0.5 - s / 2, 0.5 - s / 2, 0.5 + s / 2, 0.5 + s / 2])


def test_object_sizes_is_the_square_root_of_the_area():
    boxes = np.array([[0.0, 0.0, 0.5, 0.5], [0.1, 0.2, 0.5, 0.3], [0.3, 0.3, 0.3, 0.6]])
    np.testing.assert_allclose(object_sizes(boxes), [0.5, 0.2, 0.0])


@pytest.mark.parametrize(
    ("side", "expected"),
    [
        (0.2, 192),  # 16 / 0.2 = 80 px: the range's smallest size
        (0.07, 256),  # 16 / 0.07 = 228.6 -> the next multiple of 32
        (0.0625, 256),  # exactly 256
        (0.03, 256),  # 533 px wanted: capped at the range's largest
    ],
)
def test_image_size_follows_the_tenth_percentile_object(side, expected):
    # 10 % of the objects are this small, the rest large: the 10th percentile is `side`
    boxes = _squares([side] * 11 + [0.5] * 89)
    size, why = choose_image_size("ssd_small", boxes)
    assert size == expected
    assert why.startswith(f"{expected} px")
    assert ("would span" in why) == (16 / side > 256)


def test_models_outside_the_size_table_keep_their_input_size():
    assert choose_image_size("ssd300_vgg16", _squares([0.05])) == (None, None)
    assert choose_image_size("ssd_small", np.zeros((0, 4))) == (None, None)


def test_recipe_keeps_what_the_user_gave_and_explains_what_it_chose():
    boxes = _squares([0.1] * 10)
    given = choose_recipe("ssd_small", 600, boxes, image_size=224, epochs=40, batch_size=12, val_every=3)
    assert (given.image_size, given.epochs, given.batch_size, given.val_every) == (224, 40, 12, 3)
    assert given.reasons == {}

    chosen = choose_recipe("ssd_small", 600, boxes)
    assert chosen.epochs == -(-TARGET_SAMPLES // 600)  # ceil: 50 epochs of 600 images
    assert chosen.batch_size == 8
    assert chosen.val_every == 10  # 5 validations in 50 epochs
    assert set(chosen.reasons) == {"image_size", "epochs", "batch_size", "val_every"}


def test_epochs_stay_within_their_range():
    boxes = _squares([0.1])
    assert choose_recipe("ssd_small", 20, boxes).epochs == EPOCH_RANGE[1]
    big = choose_recipe("ssd_small", 118_287, boxes)
    assert big.epochs == EPOCH_RANGE[0]
    assert big.batch_size == 32
    assert "at least" in big.reasons["epochs"]


def test_validation_every_epoch_for_short_runs():
    recipe = choose_recipe("ssd_small", 600, _squares([0.1]), epochs=4)
    assert recipe.val_every == 1
    assert recipe.reasons["val_every"] == "1: every epoch"


def test_epochs_in_budget_cuts_to_what_fits_and_never_under_the_range():
    from singleshot.engine.recipe import BUDGET_VALIDATION_SHARE, epochs_in_budget

    assert epochs_in_budget(40, 10.0, 0) == (40, None)  # no budget
    assert epochs_in_budget(40, 10.0, 1000.0) == (40, None)  # 90 fit: the planned 40 stay
    share = 1 - BUDGET_VALIDATION_SHARE
    epochs, why = epochs_in_budget(40, 10.0, 300.0)
    assert epochs == int(300 * share // 10) == 27 and "27 instead of 40" in why and "10.0 s" in why
    epochs, why = epochs_in_budget(40, 100.0, 300.0)  # 2 fit, but a run keeps the range's minimum
    assert epochs == EPOCH_RANGE[0] and "longer" in why
    assert epochs_in_budget(5, 100.0, 300.0)[0] == 5  # never more than planned
