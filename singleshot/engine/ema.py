"""An exponential moving average (EMA) of a model's weights, what ``singleshot train --ema`` validates and
saves as ``best.pt``.

After optimizer step ``t`` (1, 2, ...) every floating-point entry of the state dict (parameters and
BatchNorm statistics) moves towards the model's::

    ema = d_t * ema + (1 - d_t) * w,    d_t = decay * (1 - exp(-t / warmup))

``decay`` 0.9998 averages over about 5000 steps; the warm-up (``warmup`` 2000 steps) keeps the early
average close to the weights, which change fast then (the rule of YOLOv5's ModelEMA). Integer entries
(BatchNorm's step counter) are copied.

    ema = WeightAverage(model)
    ema.update(model)                      # after each step
    ema.module                             # the averaged model (eval mode), to validate and save
    state = ema.state_dict(); ema.load_state_dict(state)   # in last.pt, so that a resume is exact
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

DECAY = 0.9998
WARMUP = 2000


class WeightAverage:
    """The EMA of ``model``'s state dict (see the module docstring); ``module`` is a copy of ``model``
    holding it, without gradients."""

    def __init__(self, model: nn.Module, decay: float = DECAY, warmup: float = WARMUP) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.decay, self.warmup, self.updates = float(decay), float(warmup), 0

    def current_decay(self) -> float:
        """``d_t`` of the next update (``t = updates + 1``)."""
        return self.decay * (1.0 - math.exp(-(self.updates + 1) / self.warmup))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (a model of the same architecture)."""
        d = self.current_decay()
        self.updates += 1
        source = model.state_dict()
        for key, value in self.module.state_dict().items():
            new = source[key].detach()
            if value.dtype.is_floating_point:
                value.mul_(d).add_(new.to(value.dtype), alpha=1.0 - d)
            else:
                value.copy_(new)

    def state_dict(self) -> dict:
        """What :meth:`load_state_dict` restores exactly: the averaged weights and the step count."""
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "updates": self.updates,
            "model": self.module.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.warmup = float(state["decay"]), float(state["warmup"])
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["model"])


def run_average(core: nn.Module, enabled: bool, checkpoint: dict | None) -> WeightAverage | None:
    """The EMA of a training run: None when off; else a fresh one of ``core``, or the one saved in the
    ``last.pt`` ``checkpoint`` being resumed (key ``"ema"``)."""
    if not enabled:
        return None
    average = WeightAverage(core)
    if checkpoint is not None and checkpoint.get("ema") is not None:
        average.load_state_dict(checkpoint["ema"])
    return average
