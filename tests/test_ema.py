"""--ema: the exponential moving average of the weights (singleshot.engine.ema), validated and saved as
best.pt, kept in last.pt so that a stopped and resumed run ends bit for bit as one run."""

from __future__ import annotations

import math

import pytest
import torch

from singleshot.engine.ema import WeightAverage
from tests.test_engine import _config, _fit, make_tiny_voc


@pytest.fixture(scope="module")
def tiny_voc(tmp_path_factory):
    return make_tiny_voc(tmp_path_factory)


def test_the_average_follows_the_warmed_up_decay_by_hand():
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.fill_(0.0)
    average = WeightAverage(model, decay=0.9, warmup=2.0)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 6.0]]))
        model.bias.fill_(1.0)
    average.update(model)
    d1 = 0.9 * (1 - math.exp(-1 / 2))
    expected = torch.tensor([[d1 * 1 + (1 - d1) * 3, d1 * 2 + (1 - d1) * 6]])
    assert torch.allclose(average.module.weight, expected)
    assert average.module.bias.item() == pytest.approx(1 - d1)
    average.update(model)  # the same weights again: the average moves by (1 - d2) of the gap
    d2 = 0.9 * (1 - math.exp(-2 / 2))
    assert torch.allclose(average.module.weight, d2 * expected + (1 - d2) * torch.tensor([[3.0, 6.0]]))
    assert not average.module.weight.requires_grad and model.weight.requires_grad

    copy = WeightAverage(torch.nn.Linear(2, 1))
    copy.load_state_dict(average.state_dict())
    assert copy.updates == 2 and torch.equal(copy.module.weight, average.module.weight)


def test_batch_norm_counters_are_copied_and_statistics_averaged():
    model = torch.nn.BatchNorm1d(3)
    average = WeightAverage(model, decay=0.5, warmup=1e-9)  # d_t = 0.5
    model.train()(torch.randn(8, 3))
    average.update(model)
    assert average.module.num_batches_tracked.item() == 1
    assert torch.allclose(average.module.running_mean, 0.5 * model.running_mean)


def test_ema_validates_saves_best_and_resumes_bit_for_bit(tmp_path, tiny_voc):
    """4 steps in one go == 2 steps, stop, resume, 2 steps: the EMA weights too; best.pt holds them."""
    from singleshot.models import read_checkpoint

    settings = {"epochs": 1, "ema": True, "val_split": "val", "fit_boxes": False}
    straight = _fit(_config(tiny_voc, tmp_path / "a", **settings))
    assert _fit(_config(tiny_voc, tmp_path / "b", **settings), stop_at=2).interrupted
    stopped = read_checkpoint(tmp_path / "b" / "last.pt")
    assert stopped["ema"]["updates"] == 2
    resumed = _fit(_config(tiny_voc, tmp_path / "b", **settings), resume=tmp_path / "b" / "last.pt")

    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    last = read_checkpoint(tmp_path / "a" / "last.pt")
    best = read_checkpoint(tmp_path / "a" / "best.pt")
    assert last["ema"]["updates"] == 4
    for key, value in last["ema"]["model"].items():
        assert torch.equal(best["state_dict"][key], value), key
        assert torch.equal(a[key], value), key  # the result is the averaged model
    assert not torch.equal(
        last["state_dict"]["head.regression.0.weight"], best["state_dict"]["head.regression.0.weight"]
    )
