"""A small SSD base for CPUs: a narrow VGG-style stack of 3x3 convolution + BatchNorm + ReLU.

Each stride-2 convolution halves the map; the source maps sit at strides 8, 16, 32 and 64 (24, 12, 6, 3
cells at 192 px) with ``4w, 8w, 8w, 8w`` channels for a base width ``w``, and ``depth`` more 3x3
convolutions at strides 4 and 8 (``ssd_small`` builds width 16, depth 1)::

    3 -conv/2-> w -conv/2-> 2w [-conv-> 2w] x depth
      -conv/2-> 4w -conv-> 4w [-conv-> 4w] x depth      source 0, stride 8
      -conv/2-> 8w -conv-> 8w                           source 1, stride 16
      -conv/2-> 8w                                      source 2, stride 32
      -conv/2-> 8w                                      source 3, stride 64

BatchNorm lets it train from scratch with a large learning rate; no ImageNet weights exist for it.
On the demo's plain shapes, accuracy follows the number of training steps far more than the width; on
textured and cluttered backgrounds, the extra convolutions of ``depth=1`` (receptive field of source 0:
31 -> 55 px) bought more than extra width (``docs/models.md`` has the measurements).
"""

from __future__ import annotations

from torch import Tensor, nn


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallBackbone(nn.Module):
    """``forward(x Tensor[B, 3, H, W]) -> list`` of 4 source maps at strides 8, 16, 32, 64.

    Args:
        width: base channel count ``w`` (source maps have ``4w, 8w, 8w, 8w`` channels).
    """

    def __init__(self, width: int = 12, depth: int = 0) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be positive, got {width}")
        if depth < 0:
            raise ValueError(f"depth must be 0 or more, got {depth}")
        w = width
        self.stages = nn.ModuleList(
            [
                nn.Sequential(
                    _conv_bn_relu(3, w, 2),
                    _conv_bn_relu(w, 2 * w, 2),
                    *[_conv_bn_relu(2 * w, 2 * w) for _ in range(depth)],
                    _conv_bn_relu(2 * w, 4 * w, 2),
                    _conv_bn_relu(4 * w, 4 * w),
                    *[_conv_bn_relu(4 * w, 4 * w) for _ in range(depth)],
                ),
                nn.Sequential(_conv_bn_relu(4 * w, 8 * w, 2), _conv_bn_relu(8 * w, 8 * w)),
                _conv_bn_relu(8 * w, 8 * w, 2),
                _conv_bn_relu(8 * w, 8 * w, 2),
            ]
        )
        self.out_channels = [4 * w, 8 * w, 8 * w, 8 * w]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
