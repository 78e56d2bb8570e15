"""A detector for other classes that starts from a trained one (fine-tuning).

:func:`transfer_weights` copies every weight of a source SSD into a target SSD of the same architecture
and default boxes; in the classification head, each target class takes the outputs of the source class
of the same name (compared case-insensitively; background always takes background), wherever its
index moved. Classes the source does not know keep the target's fresh initialisation.

The last convolution of each classification predictor has ``boxes_per_cell x num_classes`` output
channels, box-major (channel ``b * C + c`` is class ``c`` of box ``b``), so classes are remapped per box.
"""

from __future__ import annotations

import torch
from torch import nn

from singleshot.models.ssd import SSD


def class_mapping(source_names: list[str], target_names: list[str]) -> list[int | None]:
    """For each target label (background 0 included), the source label of the same class, or None.

    Args:
        source_names: the source's C_s - 1 class names (label i is ``source_names[i - 1]``).
        target_names: the target's C_t - 1 class names.

    Returns:
        a list of C_t entries: 0 for background, the source label of the first source class whose name
        equals the target's case-insensitively, else None.
    """
    index: dict[str, int] = {}
    for label, name in enumerate(source_names, start=1):
        index.setdefault(name.casefold(), label)
    return [0] + [index.get(name.casefold()) for name in target_names]


def _class_convs(model: SSD) -> list[nn.Conv2d]:
    return [layer if isinstance(layer, nn.Conv2d) else layer[-1] for layer in model.head.classification]


@torch.no_grad()
def transfer_weights(source: SSD, target: SSD) -> tuple[list[str], list[str]]:
    """Copy ``source``'s weights into ``target`` (in place), remapping the classes by name.

    Both models must have the same architecture and default boxes (the target built from the source's
    builder arguments with its own number of classes). The target's pre-processing (mean, std,
    antialiasing) and box coding become the source's.

    Returns:
        ``(carried, new)``: the target's class names taken from the source, and those that keep the
        target's initialisation.
    """
    mapping = class_mapping(source.class_names, target.class_names)
    convs = {id(conv) for conv in _class_convs(target)}
    skip = {name for name, module in target.named_modules() if id(module) in convs}
    source_state = source.state_dict()
    target_state = target.state_dict()
    for key, value in target_state.items():
        if key.rsplit(".", 1)[0] not in skip:
            value.copy_(source_state[key])
    cs, ct = source.num_classes, target.num_classes
    for src, dst in zip(_class_convs(source), _class_convs(target)):
        boxes = dst.out_channels // ct
        for t_label, s_label in enumerate(mapping):
            if s_label is None:
                continue
            rows = [b * ct + t_label for b in range(boxes)]
            from_rows = [b * cs + s_label for b in range(boxes)]
            dst.weight[rows] = src.weight[from_rows]
            if dst.bias is not None:
                dst.bias[rows] = src.bias[from_rows]
    target.mean, target.std, target.antialias = source.mean, source.std, source.antialias
    target.variances = source.variances
    names = target.class_names
    carried = [n for n, m in zip(names, mapping[1:]) if m is not None]
    new = [n for n, m in zip(names, mapping[1:]) if m is None]
    return carried, new
