"""SSD's VGG16 base network and extra layers (paper section 2.1 and 3; Caffe SSD).

VGG16's convolutions with the third max-pool in ceil mode (75 -> 38 at 300 px), pool5 turned into a 3x3
stride-1 pooling, fc6 into a 3x3 convolution of dilation 6 (1024 channels) and fc7 into a 1x1 convolution
(1024). conv4_3 is L2-normalised per position with a learned per-channel scale (initialised to 20).
Extra layers follow fc7: SSD300 ends with two valid 3x3 convolutions (3x3 and 1x1 maps), SSD512 with
four stride-2 stages and a 4x4 convolution (pad 1).

Source maps (SSD300 / SSD512): conv4_3, fc7, conv8_2, conv9_2, conv10_2, conv11_2 (, conv12_2);
channels 512, 1024, 512, 256, 256, 256 (, 256); sizes 38, 19, 10, 5, 3, 1 at 300 px and
64, 32, 16, 8, 4, 2, 1 at 512 px.

ImageNet initialisation (:func:`convert_vgg16_state_dict`) copies conv1_1 .. conv5_3 from a torchvision
``vgg16`` state dict and subsamples its first two fully connected layers into fc6 and fc7, as the paper
(and ParseNet's "fc_reduced" Caffe model) does:

- fc6: ``classifier.0.weight`` (4096, 25088) is the (4096, 512, 7, 7) kernel of a 7x7 convolution on pool5.
  Every 4th output (0, 4, ..., 4092) and every 3rd spatial position (rows and columns 0, 3, 6) are kept:
  (1024, 512, 3, 3). Taps 3 apart on the 7x7 grid sit 6 apart once pool5 no longer halves the map,
  hence dilation 6. The bias takes every 4th value.
- fc7: ``classifier.3.weight`` (4096, 4096) keeps every 4th row and every 4th column: (1024, 1024, 1, 1);
  its bias every 4th value. fc8 (the 1000 ImageNet classes) and dropout are dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from singleshot.errors import UserError

# VGG16 configuration "D": channels of each 3x3 convolution, "M" a 2x2 max-pool.
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
# Index (in torchvision's vgg16.features) of the ReLU after conv4_3: conv4_3 is the first source map.
_CONV4_3_END = 23
# Indices of the 13 convolutions in torchvision's vgg16.features (ReLU and max-pool layers in between).
VGG16_CONV_INDICES = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]


def _vgg16_layers() -> list[nn.Module]:
    """torchvision's ``vgg16().features[:30]`` layout (conv5_3's ReLU last, no pool5); pool3 in ceil mode."""
    layers: list[nn.Module] = []
    channels, pools = 3, 0
    for v in _VGG16:
        if v == "M":
            pools += 1
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=pools == 3))
        else:
            layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = v
    return layers


class L2Norm(nn.Module):
    """Per-position L2 normalisation across channels times a learned per-channel scale (ParseNet).

    ``y[b, c, i, j] = weight[c] * x[b, c, i, j] / ||x[b, :, i, j]||``; computed in float32 so that the
    sum of squares cannot overflow in half precision.
    """

    def __init__(self, channels: int, scale: float = 20.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: Tensor) -> Tensor:
        y = F.normalize(x.float(), dim=1) * self.weight.float().view(1, -1, 1, 1)
        return y.to(x.dtype)


def _extra_stage(
    in_channels: int, mid: int, out: int, kernel: int, stride: int, padding: int
) -> nn.Sequential:
    """1x1 reduction then the spatial convolution, each followed by ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, mid, kernel_size=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, out, kernel_size=kernel, stride=stride, padding=padding),
        nn.ReLU(inplace=True),
    )


class VGG16Backbone(nn.Module):
    """VGG16 base + extra layers of SSD300 (``variant="ssd300"``) or SSD512 (``"ssd512"``).

    ``forward(x Tensor[B, 3, H, W]) -> list`` of the source maps named in the module docstring;
    ``out_channels`` lists their channels.
    """

    def __init__(self, variant: str = "ssd300") -> None:
        super().__init__()
        if variant not in ("ssd300", "ssd512"):
            raise ValueError(f"variant must be 'ssd300' or 'ssd512', got {variant!r}")
        layers = _vgg16_layers()
        self.conv4 = nn.Sequential(*layers[:_CONV4_3_END])  # conv1_1 .. conv4_3 + ReLU
        self.conv5 = nn.Sequential(*layers[_CONV4_3_END:])  # pool4, conv5_1 .. conv5_3 + ReLU
        self.l2norm = L2Norm(512, scale=20.0)
        self.pool5 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.fc6 = nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6)
        self.fc7 = nn.Conv2d(1024, 1024, kernel_size=1)
        extras = [
            _extra_stage(1024, 256, 512, 3, 2, 1),  # conv8_2
            _extra_stage(512, 128, 256, 3, 2, 1),  # conv9_2
        ]
        if variant == "ssd300":
            extras += [_extra_stage(256, 128, 256, 3, 1, 0), _extra_stage(256, 128, 256, 3, 1, 0)]
        else:
            extras += [
                _extra_stage(256, 128, 256, 3, 2, 1),
                _extra_stage(256, 128, 256, 3, 2, 1),
                _extra_stage(256, 128, 256, 4, 1, 1),  # conv12_2: 2x2 -> 1x1
            ]
        self.extras = nn.ModuleList(extras)
        self.variant = variant
        self.out_channels = [512, 1024, 512] + [256] * (len(extras) - 1)

        for m in [*self.conv4, *self.conv5]:
            if isinstance(m, nn.Conv2d):  # torchvision's VGG initialisation
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for m in [self.fc6, self.fc7, *self.extras.modules()]:
            if isinstance(m, nn.Conv2d):  # Caffe SSD / torchvision: xavier
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.conv4(x)
        features = [self.l2norm(x)]
        x = self.conv5(x)
        x = F.relu(self.fc6(self.pool5(x)), inplace=True)
        x = F.relu(self.fc7(x), inplace=True)
        features.append(x)
        for stage in self.extras:
            x = stage(x)
            features.append(x)
        return features


def subsample_fc6(weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """VGG16's fc6 (4096, 25088) + (4096,) -> a (1024, 512, 3, 3) dilated kernel + (1024,) bias."""
    kernel = weight.reshape(4096, 512, 7, 7)
    return kernel[::4, :, ::3, ::3].contiguous(), bias[::4].contiguous()


def subsample_fc7(weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """VGG16's fc7 (4096, 4096) + (4096,) -> a (1024, 1024, 1, 1) kernel + (1024,) bias."""
    return weight[::4, ::4].reshape(1024, 1024, 1, 1).contiguous(), bias[::4].contiguous()


def convert_vgg16_state_dict(
    state_dict: dict[str, Tensor], source: str = "the state dict"
) -> dict[str, Tensor]:
    """A torchvision ``vgg16`` (ImageNet) state dict -> the matching part of a :class:`VGG16Backbone`'s.

    Returns the keys of ``conv4``, ``conv5``, ``fc6`` and ``fc7`` (the extra layers and the L2Norm
    scale keep their initialisation). Raises UserError naming ``source`` when a key is missing or has
    the wrong shape (e.g. a ``vgg16_bn`` state dict).
    """
    expected = {f"features.{i}.weight" for i in VGG16_CONV_INDICES} | {
        "classifier.0.weight",
        "classifier.3.weight",
    }
    missing = sorted(expected - set(state_dict))
    if missing:
        raise UserError(
            f"{source} is not a torchvision vgg16 state dict (no {missing[0]}); pass the file saved from "
            f"torchvision.models.vgg16().state_dict()"
        )
    out: dict[str, Tensor] = {}
    for i in VGG16_CONV_INDICES:
        prefix = f"conv4.{i}" if i < _CONV4_3_END else f"conv5.{i - _CONV4_3_END}"
        out[f"{prefix}.weight"] = state_dict[f"features.{i}.weight"]
        out[f"{prefix}.bias"] = state_dict[f"features.{i}.bias"]
    fc6_w, fc7_w = state_dict["classifier.0.weight"], state_dict["classifier.3.weight"]
    if tuple(fc6_w.shape) != (4096, 25088) or tuple(fc7_w.shape) != (4096, 4096):
        raise UserError(
            f"{source} has fully connected layers of shapes {tuple(fc6_w.shape)} and {tuple(fc7_w.shape)}, "
            "not VGG16's (4096, 25088) and (4096, 4096)"
        )
    out["fc6.weight"], out["fc6.bias"] = subsample_fc6(fc6_w, state_dict["classifier.0.bias"])
    out["fc7.weight"], out["fc7.bias"] = subsample_fc7(fc7_w, state_dict["classifier.3.bias"])
    return out
