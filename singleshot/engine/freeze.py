"""Parts of a model that keep their weights while the rest trains (``singleshot train --freeze``).

A frozen part gets no gradient and no optimizer state, and its batch norms keep their running statistics
(they stay in eval mode while the model trains). The backward pass stops at the first trained layer, so
freezing the early layers of a backbone also saves their backward time: on a 2-core Zen 4, SSD300 with
``backbone.conv4`` (conv1_1 to conv4_3) frozen trains 2.3x as many images per second (docs/training.md).
"""

from __future__ import annotations

import difflib

from torch import nn

from singleshot.errors import UserError


def parts(model: nn.Module) -> list[str]:
    """The names ``--freeze`` accepts: every submodule that holds parameters, down to two levels
    (``backbone``, ``backbone.conv4``, ``head``, ...)."""
    names = []
    for name, module in model.named_modules():
        if name and name.count(".") < 2 and any(True for _ in module.parameters()):
            names.append(name)
    return names


def freeze(model: nn.Module, names: list[str], option: str = "--freeze") -> list[nn.Module]:
    """Stop the parameters of the submodules ``names`` from training; returns those submodules.

    Raises UserError naming the first name that is no part of ``model``, with the names it has, or when
    every parameter would be frozen.
    """
    modules = dict(model.named_modules())
    frozen = []
    for name in names:
        if not name or name not in modules or not any(True for _ in modules[name].parameters()):
            close = difflib.get_close_matches(name, parts(model), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"its parts are {', '.join(parts(model))}"
            raise UserError(f"{option} {name!r} names no part of the model that holds weights; {hint}")
        frozen.append(modules[name])
    for module in frozen:
        module.requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError(
            f"{option} {','.join(names)} freezes every weight of the model; leave a part to train"
        )
    return frozen


def hold_norms(frozen: list[nn.Module]) -> None:
    """Put the batch norms of the frozen parts in eval mode (call after ``model.train()``), so that
    their running statistics stay as they were."""
    for part in frozen:
        for module in part.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
