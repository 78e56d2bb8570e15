"""``singleshot models``: the model zoo with input size, default boxes, parameters and GFLOPs.

Counts come from shape-only ("meta") models: nothing is allocated or computed, so the listing is instant.
"""

from __future__ import annotations

import argparse

HELP = "List the model zoo: input size, default boxes, parameters and GFLOPs of each model."
EXAMPLES = """\
examples:
  singleshot models                     # counts for 21 classes (VOC: 20 + background)
  singleshot models --num-classes 91    # COCO's 91-entry label space, as torchvision's models
  singleshot train --data data/shapes --model ssd300_vgg16 --out runs/vgg
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--num-classes",
        type=int,
        default=21,
        metavar="C",
        help="classes including background, for the parameter and FLOP counts (default: 21)",
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from singleshot.errors import UserError
    from singleshot.models.ssd import count_flops, count_parameters
    from singleshot.models.zoo import DEFAULT_MODEL, build_model, list_models, model_summary

    if args.num_classes < 2:
        raise UserError(
            f"--num-classes must be at least 2 (background and one class), got {args.num_classes}"
        )
    header = ("model", "input", "boxes", "params", "GFLOPs", "description")
    rows = []
    for name in list_models():
        with torch.device("meta"):
            model = build_model(name, args.num_classes)
        h, w = model.image_size
        rows.append(
            (
                name + (" *" if name == DEFAULT_MODEL else ""),
                f"{h}x{w}",
                str(len(model.priors)),
                f"{count_parameters(model) / 1e6:.2f} M",
                f"{count_flops(model) / 1e9:.2f}",
                model_summary(name),
            )
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    right = {2, 3, 4}
    for row in [header, *rows]:
        cells = [c.rjust(wd) if i in right else c.ljust(wd) for i, (c, wd) in enumerate(zip(row, widths))]
        print("  ".join(cells + [row[-1]]).rstrip())
    print(
        f"\n* default of 'singleshot train' and 'singleshot demo'. Counts for {args.num_classes} classes; "
        "GFLOPs of one image at the input size, 2 per multiply-add."
    )
    return 0
