"""SSD networks, the model zoo, torchvision conversion and checkpoints.

from singleshot.models import build_model, load_checkpoint
model = build_model("ssd300_vgg16", num_classes=21, backbone_weights="torchvision")
detections = model.predict([image])                 # list of {"boxes", "scores", "labels"}
model = load_checkpoint("runs/a/best.pt")          # rebuilt from the file alone
"""

from singleshot.models.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from singleshot.models.ssd import SSD, SSDHead, count_flops, count_parameters
from singleshot.models.torchvision_interop import from_torchvision
from singleshot.models.zoo import DEFAULT_MODEL, build_model, list_models, register_model

__all__ = [
    "DEFAULT_MODEL",
    "SSD",
    "SSDHead",
    "build_model",
    "count_flops",
    "count_parameters",
    "from_torchvision",
    "list_models",
    "load_checkpoint",
    "read_checkpoint",
    "register_model",
    "save_checkpoint",
]
