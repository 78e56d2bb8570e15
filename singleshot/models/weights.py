"""ImageNet backbone weights: from a saved torchvision state dict or torchvision's weights API.

``backbone_weights="imagenet"`` (or ``"torchvision"``) reads the classification weights of
``VGG16_Weights.IMAGENET1K_V1`` or ``MobileNet_V3_Large_Weights.IMAGENET1K_V1`` through torchvision's weights
API: from torch's hub cache, ``$TORCH_HOME/hub/checkpoints/<file name>``, once they are there (a machine
that downloaded them once works offline), else downloaded into it; offline without the file, a
:class:`UserError` names the file and the folder. A path loads a state dict saved from
``torchvision.models.vgg16()`` / ``mobilenet_v3_large()`` with ``torch.save(m.state_dict(), path)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.error import URLError

import torch
from torch import Tensor

from singleshot.errors import UserError

# Backbone name -> (torchvision weights enum name, member).
_TORCHVISION_WEIGHTS = {
    "vgg16": ("VGG16_Weights", "IMAGENET1K_V1"),
    "mobilenet_v3_large": ("MobileNet_V3_Large_Weights", "IMAGENET1K_V1"),
}


IMAGENET = ("imagenet", "torchvision")  # the names of torchvision's ImageNet weights


def cached_file(backbone: str) -> Path:
    """Where torchvision's weights API keeps ``backbone``'s ImageNet weights:
    ``$TORCH_HOME/hub/checkpoints/<file name>`` (``vgg16-397923af.pth``, ``mobilenet_v3_large-8738ca79.pth``)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(_weights_enum(backbone).url)


def _weights_enum(backbone: str):
    import torchvision.models as tvm

    enum_name, member = _TORCHVISION_WEIGHTS[backbone]
    return getattr(getattr(tvm, enum_name), member)


def _download(backbone: str) -> dict[str, Tensor]:
    """The ImageNet state dict of ``backbone`` from torch's hub cache, downloaded into it when missing."""
    enum_name, member = _TORCHVISION_WEIGHTS[backbone]
    weights, path = _weights_enum(backbone), cached_file(backbone)
    cached = path.is_file()
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (URLError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"the {backbone} ImageNet weights need the file {path.name} in {path.parent} "
            f"($TORCH_HOME/hub/checkpoints) and this machine cannot download it ({reason}): copy it there "
            f"from {weights.url}, or give --backbone-weights none"
        ) from None
    except Exception as exc:  # damaged bytes raise many kinds (RuntimeError, UnpicklingError, EOFError, ...)
        if not cached:
            raise UserError(
                f"downloading {weights.url} into {path.parent} failed ({exc}); copy {path.name} there by hand"
            ) from None
        raise UserError(
            f"{path} cannot be read as torchvision's {enum_name}.{member} weights: it is truncated or damaged; "
            "delete it or copy it again"
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

    ``backbone_weights`` is ``"imagenet"`` or ``"torchvision"`` (torchvision's weights API, from torch's hub
    cache, downloaded into it once) or a path.
    """
    if str(backbone_weights) in IMAGENET:
        return _download(backbone), f"torchvision's {backbone} ImageNet weights"
    return read_state_dict(backbone_weights, f"{backbone} state dict"), str(backbone_weights)
