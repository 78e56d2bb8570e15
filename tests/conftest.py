"""Shared pytest fixtures.

- ``rng``: a ``torch.Generator`` seeded with 0, fresh for every test; pass it as ``generator=rng`` to
  ``torch.rand``/``torch.randn``/``torch.randint`` so that a test draws the same numbers every run.
- ``separated_boxes``: a function ``(rng, num_images, max_boxes) -> list[Tensor[n_i, 4]]`` of random xyxy
  boxes relative to the image, pairwise disjoint inside each image (one box per cell of a k x k grid, k
  drawn from 1..4 per image, so sizes range from a few percent to the whole image), so that no default box
  can be tied between two objects; ``n_i`` is in 0..max_boxes and the first image has at least one box.
- ``umask_022``: the process umask set to ``0o022`` for the test (and put back after it), so that the
  permissions of the files a test writes are known: ``0o644`` for a normal file.
- every test: ``$SINGLESHOT_CACHE`` (the graphs ``singleshot.runtime`` exports for ``--runtime auto``) is
  a temporary folder shared by the session, never the user's cache.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

MAX_GRID = 4


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _separated_boxes(rng: torch.Generator, num_images: int, max_boxes: int) -> list[torch.Tensor]:
    images = []
    for i in range(num_images):
        grid = int(torch.randint(1, MAX_GRID + 1, (), generator=rng))
        n = int(torch.randint(1 if i == 0 else 0, min(max_boxes, grid * grid) + 1, (), generator=rng))
        cells = torch.randperm(grid * grid, generator=rng)[:n]
        origin = (
            torch.stack([cells % grid, cells // grid], dim=1).double() / grid
        )  # (n, 2) cell corner (x, y)
        # Inside the cell [0, 1/grid]^2: a corner in its first 60 %, a size of 20 % .. 100 % of what is left.
        lo = torch.rand(n, 2, generator=rng, dtype=torch.float64) * 0.6 / grid
        size = (0.2 + 0.8 * torch.rand(n, 2, generator=rng, dtype=torch.float64)) * (1.0 / grid - lo)
        images.append(torch.cat([origin + lo, origin + lo + size], dim=1).float())
    return images


@pytest.fixture
def separated_boxes():
    return _separated_boxes


@pytest.fixture(scope="session")
def _graph_cache_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("graph-cache")


@pytest.fixture(autouse=True)
def _graph_cache(_graph_cache_folder, monkeypatch):
    monkeypatch.setenv("SINGLESHOT_CACHE", str(_graph_cache_folder))


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


class _TinyBackbone(nn.Module):
    """Feature maps of the SSD300 sizes (38, 19, 10, 5, 3, 1) from a 1x1 conv and average pooling."""

    out_channels = [4] * 6

    def __init__(self, sizes):
        super().__init__()
        self.sizes = list(sizes)
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        return OrderedDict((str(i), F.adaptive_avg_pool2d(y, s)) for i, s in enumerate(self.sizes))


@pytest.fixture
def torchvision_ssd300():
    """A torchvision ``SSD`` (21 classes, 300 x 300 input) with a tiny random backbone and the default boxes of
    ``ssd300_vgg16`` (``DefaultBoxGenerator`` with ``TORCHVISION_SSD300``, which equal
    ``default_boxes(**TORCHVISION_SSD300, clip="wh")``), for comparing the loss and post-processing."""
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD

    from singleshot.priors import TORCHVISION_SSD300

    cfg = TORCHVISION_SSD300
    boxes = DefaultBoxGenerator(cfg["aspect_ratios"], scales=cfg["scales"], steps=cfg["steps"])
    with torch.random.fork_rng(devices=[]):  # seeded weights, global RNG untouched
        torch.manual_seed(0)
        return SSD(_TinyBackbone(cfg["feature_sizes"]), boxes, (300, 300), num_classes=21)
