"""SSDLite's MobileNetV3-Large base and extra layers (MobileNetV3 paper section 6.3; torchvision's SSDLite).

The features of torchvision's ``mobilenet_v3_large`` are cut at C4, the last stride-16 block: the first
source map is that block's 1x1 expansion output (672 channels, 20x20 at 320 px), the second the end of
the network (960 channels, or 480 with the "reduced tail" of the paper's table 6; 10x10). Four extra
stages follow, each a 1x1 projection to half the output channels, a 3x3 depthwise convolution of stride 2
and a 1x1 projection, all with BatchNorm + ReLU6: 512, 256, 256, 128 channels at 5, 3, 2, 1.

The module layout equals torchvision's ``SSDLiteFeatureExtractorMobileNet``, so torchvision state dicts
load key for key (:func:`convert_mobilenet_v3_state_dict` maps an ImageNet classifier's keys).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn
from torchvision.models import mobilenet_v3_large
from torchvision.ops.misc import Conv2dNormActivation

from singleshot.errors import UserError

# torchvision's SSDLite normalisation: BatchNorm with eps 0.001 and momentum 0.03.
BatchNorm2d = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)


def _c4_position(features: nn.Sequential) -> int:
    """Index of the last stride-2 block (C4, output stride 16) of a MobileNetV3 ``features``."""
    strided = [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)]
    return strided[-1]


def _extra_block(in_channels: int, out_channels: int, norm_layer=BatchNorm2d) -> nn.Sequential:
    mid = out_channels // 2
    return nn.Sequential(
        Conv2dNormActivation(
            in_channels, mid, kernel_size=1, norm_layer=norm_layer, activation_layer=nn.ReLU6
        ),
        Conv2dNormActivation(
            mid, mid, kernel_size=3, stride=2, groups=mid, norm_layer=norm_layer, activation_layer=nn.ReLU6
        ),
        Conv2dNormActivation(
            mid, out_channels, kernel_size=1, norm_layer=norm_layer, activation_layer=nn.ReLU6
        ),
    )


def _normal_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, mean=0.0, std=0.03)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class MobileNetV3Backbone(nn.Module):
    """MobileNetV3-Large cut at C4 + SSDLite extras; ``forward(x) -> list`` of 6 source maps.

    Args:
        reduced_tail: halve the channels of the last stage (960 -> 480), as torchvision does when it
            trains SSDLite without ImageNet weights. ImageNet weights need ``reduced_tail=False``.
    """

    def __init__(self, reduced_tail: bool = False) -> None:
        super().__init__()
        net = mobilenet_v3_large(weights=None, norm_layer=BatchNorm2d, reduced_tail=reduced_tail).features
        c4 = _c4_position(net)
        self.features = nn.Sequential(
            nn.Sequential(*net[:c4], net[c4].block[0]),  # up to C4's 1x1 expansion (stride 16)
            nn.Sequential(net[c4].block[1:], *net[c4 + 1 :]),  # C4's depthwise conv .. the last 1x1 conv
        )
        self.c4_position = c4
        self.reduced_tail = reduced_tail
        last = net[-1].out_channels
        self.extra = nn.ModuleList(
            [_extra_block(last, 512), _extra_block(512, 256), _extra_block(256, 256), _extra_block(256, 128)]
        )
        self.out_channels = [net[c4].block[0].out_channels, last, 512, 256, 256, 128]
        _normal_init(self)  # torchvision's SSDLite initialisation without ImageNet weights

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for stage in self.features:
            x = stage(x)
            features.append(x)
        for stage in self.extra:
            x = stage(x)
            features.append(x)
        return features


def convert_mobilenet_v3_state_dict(
    state_dict: dict[str, Tensor], c4_position: int, source: str = "the state dict"
) -> dict[str, Tensor]:
    """A torchvision ``mobilenet_v3_large`` (ImageNet) state dict -> :class:`MobileNetV3Backbone` keys.

    ``features.{i}`` before C4 -> ``features.0.{i}``; C4's expansion ``features.{c4}.block.0`` ->
    ``features.0.{c4}``; its other layers ``features.{c4}.block.{j}`` -> ``features.1.0.{j}``; later
    blocks ``features.{i}`` -> ``features.1.{i - c4}``. The classifier is dropped.
    """
    if (
        "features.0.0.weight" not in state_dict
        or f"features.{c4_position}.block.0.0.weight" not in state_dict
    ):
        raise UserError(
            f"{source} is not a torchvision mobilenet_v3_large state dict; pass the file saved from "
            "torchvision.models.mobilenet_v3_large().state_dict()"
        )
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] != "features":
            continue
        i = int(parts[1])
        rest = parts[2:]
        if i < c4_position:
            new = ["features", "0", str(i), *rest]
        elif i == c4_position and rest[1] == "0":  # block.0.<...>
            new = ["features", "0", str(i), *rest[2:]]
        elif i == c4_position:
            new = ["features", "1", "0", *rest[1:]]
        else:
            new = ["features", "1", str(i - c4_position), *rest]
        out[".".join(new)] = value
    return out


def _check_shapes(model_state: dict[str, Tensor], loaded: dict[str, Tensor], source: str) -> None:
    """UserError when a loaded tensor's shape differs from the model's (e.g. a reduced-tail network)."""
    for key, value in loaded.items():
        if key not in model_state:
            raise UserError(f"{source} has a tensor {key!r} that this network does not have")
        if tuple(model_state[key].shape) != tuple(value.shape):
            raise UserError(
                f"{source}: {key} has shape {tuple(value.shape)}, the network expects "
                f"{tuple(model_state[key].shape)}; ImageNet weights need reduced_tail=False"
            )


def load_mobilenet_v3_weights(
    backbone: MobileNetV3Backbone, state_dict: dict[str, Tensor], source: str
) -> None:
    """Copy ImageNet weights into ``backbone`` (its extra layers keep their initialisation)."""
    converted = convert_mobilenet_v3_state_dict(state_dict, backbone.c4_position, source)
    own = backbone.state_dict()
    _check_shapes(own, converted, source)
    missing = [k for k in own if k.startswith("features.") and k not in converted]
    if missing:
        raise UserError(f"{source} lacks {missing[0]}; pass a complete mobilenet_v3_large state dict")
    with torch.no_grad():
        backbone.load_state_dict(converted, strict=False)
