"""Where a trained detector comes from: a singleshot checkpoint or ``torchvision:NAME``.

``torchvision:ssd300_vgg16`` and ``torchvision:ssdlite320_mobilenet_v3_large`` are torchvision's COCO
weights (``SSD300_VGG16_Weights.COCO_V1``, ``SSDLite320_MobileNet_V3_Large_Weights.COCO_V1``) read through
torchvision's weights API from torch's hub cache (``$TORCH_HOME/hub/checkpoints``), converted with
:func:`singleshot.models.from_torchvision`, and named with torchvision's COCO categories. Nothing is
downloaded: a file missing from the cache is a :class:`UserError` naming the file and the folder.

    model = load_source("runs/a/best.pt")
    model = load_source("torchvision:ssdlite320_mobilenet_v3_large")
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from singleshot.errors import UserError
from singleshot.models.checkpoint import load_checkpoint
from singleshot.models.ssd import SSD
from singleshot.models.torchvision_interop import ARCHS, from_torchvision

TORCHVISION_PREFIX = "torchvision:"
# torchvision architecture -> the name of its weights enum (member COCO_V1).
_WEIGHTS_ENUMS = {
    "ssd300_vgg16": "SSD300_VGG16_Weights",
    "ssdlite320_mobilenet_v3_large": "SSDLite320_MobileNet_V3_Large_Weights",
}


def is_torchvision_source(source: str | os.PathLike) -> bool:
    """Whether ``source`` names torchvision weights (``torchvision:NAME``) rather than a file."""
    return str(source).startswith(TORCHVISION_PREFIX)


def torchvision_weights(name: str):
    """The ``COCO_V1`` weights enum member of torchvision's detector ``name`` (one of :data:`ARCHS`)."""
    if name not in ARCHS:
        close = difflib.get_close_matches(name, ARCHS, n=1)
        hint = f"did you mean torchvision:{close[0]}? " if close else ""
        raise UserError(
            f"torchvision:{name} is not a torchvision detector singleshot converts; {hint}"
            f"choose {' or '.join(TORCHVISION_PREFIX + a for a in ARCHS)}"
        )
    import torchvision.models.detection as detection

    return getattr(detection, _WEIGHTS_ENUMS[name]).COCO_V1


def cached_weights_file(weights) -> Path:
    """Where torchvision's weights API keeps ``weights``' file: ``$TORCH_HOME/hub/checkpoints/<file name>``."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def load_torchvision_detector(name: str) -> SSD:
    """torchvision's COCO-trained ``name`` as a singleshot SSD (eval mode), its classes named.

    Raises UserError for an unknown name or a weights file missing from torch's hub cache (offline).
    """
    weights = torchvision_weights(name)
    path = cached_weights_file(weights)
    if not path.is_file():
        raise UserError(
            f"torchvision:{name} needs the file {path.name} in {path.parent} ($TORCH_HOME/hub/checkpoints) and "
            f"singleshot does not download: copy it there from {weights.url}"
        )
    try:
        # The file is in the cache, so this reads it (torchvision checks the hash only when downloading).
        state = weights.get_state_dict(progress=False, check_hash=True)
    except Exception:  # damaged bytes raise many kinds (RuntimeError, UnpicklingError, EOFError, ...)
        raise UserError(
            f"{path} cannot be read as torchvision's {name} weights: it is truncated or damaged; copy it again"
        ) from None
    model = from_torchvision(state, name)
    categories = list(weights.meta["categories"])
    if len(categories) == model.num_classes:
        model.class_names = categories[1:]  # categories[0] is "__background__"
    return model.eval()


def load_source(source: str | os.PathLike, map_location="cpu") -> SSD:
    """The detector in ``source``: a singleshot checkpoint file or ``torchvision:NAME``; eval mode."""
    text = os.fspath(source)
    if is_torchvision_source(text):
        return load_torchvision_detector(text[len(TORCHVISION_PREFIX) :]).to(map_location)
    return load_checkpoint(text, map_location=map_location)
