"""The CPU inference engine behind :meth:`singleshot.models.SSD.infer`: a cached channels-last copy of an
SSD whose convolutions are fused for prediction.

::

    network = inference_network(model)   # the model itself where fusing does not apply
    cls_logits, box_deltas = network(x.contiguous(memory_format=torch.channels_last))

Each ``nn.Conv2d`` becomes a :class:`FusedConv2d` (oneDNN, a following eval-mode BatchNorm folded into the
weight, a following ReLU or ReLU6 run inside the convolution) or, for the wide 3x3 convolutions where the
model's ``winograd`` is on, a :class:`singleshot.models.winograd.FusedWinogradConv2d` (Winograd's
F(4x4, 3x3)). Outputs equal ``model(x)`` in eval mode up to float32 rounding (~1e-5). The copy is cached
per model and rebuilt whenever one of its parameters or buffers changes.
"""

from __future__ import annotations

import copy
import itertools
import weakref

import torch
from torch import Tensor, nn

from singleshot.models.winograd import FusedWinogradConv2d, WinogradConv2d, winograd_suits

FUSING_AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(
    torch.ops.mkldnn, "_convolution_pointwise"
)


class FusedConv2d(nn.Module):
    """An inference-only ``nn.Conv2d`` for the CPU, for channels-last input: a following eval-mode BatchNorm
    is folded into its weight and bias, and a following ReLU or ReLU6 runs inside the oneDNN convolution (no
    extra passes over the output). The weight stays a plain channels-last tensor: pre-packing it in oneDNN's
    blocked layout was slower overall (a 1x1 convolution on a 19x19 map took 5x longer, tiny maps 50x)."""

    def __init__(self, conv: nn.Conv2d, norm: nn.BatchNorm2d | None = None) -> None:
        super().__init__()
        self.padding, self.stride = list(conv.padding), list(conv.stride)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        weight, bias = _folded(conv, norm)
        self.weight = weight.contiguous(memory_format=torch.channels_last)
        self.bias = bias.clone()
        self.activation, self.scalars = "none", []

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._convolution_pointwise(
            x,
            self.weight,
            self.bias,
            self.padding,
            self.stride,
            self.dilation,
            self.groups,
            self.activation,
            self.scalars,
            "",
        )


def _folded(conv: nn.Conv2d, norm: nn.BatchNorm2d | None) -> tuple[Tensor, Tensor]:
    """The weight and bias of ``conv`` followed by the eval-mode ``norm`` (if any), as one convolution."""
    weight = conv.weight.detach()
    bias = torch.zeros(conv.out_channels) if conv.bias is None else conv.bias.detach()
    if norm is not None:  # y = (conv(x) - mean) * gamma / sqrt(var + eps) + beta
        scale = norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps)
        weight = weight * scale[:, None, None, None]
        bias = (bias - norm.running_mean) * scale + norm.bias.detach()
    return weight, bias


def _fusable(conv: nn.Module) -> bool:
    return (
        type(conv) in (nn.Conv2d, WinogradConv2d)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def _fuse_convolutions(module: nn.Module, *, winograd: bool = True) -> None:
    """Swap the plain ``nn.Conv2d`` layers under ``module`` (in eval mode) for :class:`FusedConv2d`, or for
    :class:`singleshot.models.winograd.FusedWinogradConv2d` where ``winograd`` and it suits the layer (wide
    3x3 convolutions); inside an ``nn.Sequential``, a directly following affine ``BatchNorm2d`` and then
    ``ReLU`` / ``ReLU6`` are fused into it (and become identities). The rest of ``module`` should be made
    channels-last by the caller."""
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        i = 0
        while i < len(names):
            conv = module._modules[names[i]]
            if not _fusable(conv):
                i += 1
                continue
            j = i + 1
            norm = module._modules[names[j]] if j < len(names) else None
            if type(norm) is nn.BatchNorm2d and norm.affine and norm.track_running_stats:
                module._modules[names[j]] = nn.Identity()
                j += 1
            else:
                norm = None
            act = module._modules[names[j]] if j < len(names) else None
            fused, absorbed = _fused(conv, norm, act, winograd=winograd)
            if absorbed:
                module._modules[names[j]] = nn.Identity()
                j += 1
            module._modules[names[i]] = fused
            i = j
    for name, child in module.named_children():
        if _fusable(child):
            setattr(module, name, _fused(child, None, None, winograd=winograd)[0])
        elif not isinstance(child, (FusedConv2d, FusedWinogradConv2d)):
            _fuse_convolutions(child, winograd=winograd)


def _fused(conv: nn.Conv2d, norm: nn.BatchNorm2d | None, act: nn.Module | None, *, winograd: bool):
    """The inference module for ``conv`` followed by ``norm`` and the activation ``act`` (either may be None):
    a :class:`FusedWinogradConv2d` where ``winograd`` and it suits the layer, else a :class:`FusedConv2d`.
    Returns it and whether it applies ``act`` itself (a ReLU, or a ReLU6 for the oneDNN one)."""
    if winograd and winograd_suits(conv) and type(act) is not nn.ReLU6:
        relu = type(act) is nn.ReLU
        return FusedWinogradConv2d(*_folded(conv, norm), relu=relu), relu
    fused = FusedConv2d(conv, norm)
    if type(act) not in (nn.ReLU, nn.ReLU6):
        return fused, False
    fused.activation, fused.scalars = ("hardtanh", [0.0, 6.0]) if type(act) is nn.ReLU6 else ("relu", [])
    return fused, True


_FUSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (parameter versions, network)


def inference_network(model: nn.Module) -> nn.Module:
    """The network :meth:`singleshot.models.SSD.infer` (and so ``predict``) runs for the SSD ``model``:
    ``model`` itself, or on the CPU in float32 (no autocast, no forward hooks on the model: they expect to
    see it run) a channels-last copy of it with :class:`FusedConv2d` convolutions, fed channels-last input.
    One thread, CPU time: SSD300-VGG16 1.1x (batch 1) to 1.25x (batch 8) less than eager mode, ssd_small
    1.2-1.3x; outputs equal to ~1e-5. The copy is cached per model and rebuilt whenever a parameter or
    buffer changes (moved, loaded, or trained in place).
    """
    tensors = list(itertools.chain(model.parameters(), model.buffers()))
    usable = (
        FUSING_AVAILABLE
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in model.parameters())
        and not torch.is_autocast_enabled("cpu")
        and not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())  # hooks see the model
    )
    if not usable:
        return model
    key = (model.winograd, *((t.data_ptr(), t._version) for t in tensors))
    cached = _FUSED.get(model)
    if cached is None or cached[0] != key:
        network = copy.deepcopy(model).eval()
        _fuse_convolutions(network, winograd=model.winograd)
        network.to(memory_format=torch.channels_last)  # the remaining (non-fused) convolutions too
        _FUSED[model] = cached = (key, network)
    return cached[1]
