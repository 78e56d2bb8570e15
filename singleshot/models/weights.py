"""ImageNet backbone weights: from a saved torchvision state dict or torchvision's weights API.

``backbone_weights="torchvision"`` downloads (once, into torch's hub cache) the classification weights of
``VGG16_Weights.IMAGENET1K_V1`` or ``MobileNet_V3_Large_Weights.IMAGENET1K_V1``; a path loads a state dict
saved from ``torchvision.models.vgg16()`` / ``mobilenet_v3_large()`` with ``torch.save(m.state_dict(), path)``.
"""

from __future__ import annotations

import os
from urllib.error import URLError

import torch
from torch import Tensor

from singleshot.errors import UserError

# Backbone name -> (torchvision weights enum name, member).
_TORCHVISION_WEIGHTS = {
    "vgg16": ("VGG16_Weights", "IMAGENET1K_V1"),
    "mobilenet_v3_large": ("MobileNet_V3_Large_Weights", "IMAGENET1K_V1"),
}


def _download(backbone: str) -> dict[str, Tensor]:
    import torchvision.models as tvm

    enum_name, member = _TORCHVISION_WEIGHTS[backbone]
    weights = getattr(getattr(tvm, enum_name), member)
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (URLError, OSError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"could not download torchvision's {enum_name}.{member} ImageNet weights ({reason}): this machine "
            f"looks offline, so download them where there is internet access and pass the saved {backbone} "
            "state dict as backbone_weights=PATH"
        ) from None


def read_state_dict(path: str | os.PathLike, what: str = "state dict") -> dict[str, Tensor]:
    """A state dict saved with ``torch.save``; a dict holding it under ``"state_dict"`` or ``"model"`` works too.

    Raises UserError for a missing, unreadable or foreign file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{what} file {path} does not exist; check the path")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise UserError(f"{what} file {path} cannot be read: permission denied") from None
    except Exception:  # damaged bytes raise many kinds (RuntimeError, UnpicklingError, KeyError, EOFError...)
        raise UserError(
            f"{path} is not a readable PyTorch {what}: it is truncated, of another format, or holds Python objects"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()):
        raise UserError(
            f"{path} does not hold a {what} (a dict of tensors); save one with torch.save(model.state_dict(), path)"
        )
    return data


def backbone_state_dict(backbone_weights: str | os.PathLike, backbone: str) -> tuple[dict[str, Tensor], str]:
    """``(state_dict, description)`` of ImageNet weights for ``backbone`` ("vgg16" or "mobilenet_v3_large").

    ``backbone_weights`` is ``"torchvision"`` (torchvision's weights API, downloads once) or a path.
    """
    if str(backbone_weights) == "torchvision":
        return _download(backbone), f"torchvision's {backbone} ImageNet weights"
    return read_state_dict(backbone_weights, f"{backbone} state dict"), str(backbone_weights)
