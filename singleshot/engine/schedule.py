"""Learning-rate schedules: linear warmup, then step or cosine decay, as a function of the optimizer step.

The schedule is a pure function of the step number, so exact resume needs only the step counter::

    lr(step) = base_lr * warmup(step) * decay(step)
    warmup(step) = warmup_factor + (1 - warmup_factor) * step / warmup_steps   for step < warmup_steps, else 1
    step decay:   gamma ** (number of milestones <= step)
    cosine decay: final_factor + (1 - final_factor) * (1 + cos(pi * t)) / 2,   t = step / total_steps

The paper trains VOC with SGD at 1e-3 and divides it by 10 twice (at 2/3 and 5/6 of training, the
80k and 100k of 120k iterations); torchvision warms up linearly over the first 1000 iterations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

SCHEDULES = ("cosine", "step")


def lr_factor(
    step: int,
    total_steps: int,
    *,
    schedule: str = "cosine",
    warmup_steps: int = 0,
    warmup_factor: float = 0.001,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    final_factor: float = 0.0,
) -> float:
    """The multiplier of the base learning rate at optimizer step ``step`` (0-based).

    Args:
        step: steps already taken; the value returned is used for step number ``step``.
        total_steps: length of training in steps (cosine reaches ``final_factor`` there).
        schedule: "cosine" or "step".
        warmup_steps: linear warmup from ``warmup_factor`` to 1 over this many steps (0: none).
        milestones: step numbers at which "step" multiplies the rate by ``gamma``.
        final_factor: the cosine schedule's last multiplier.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
    if schedule == "step":
        decay = gamma ** sum(1 for m in milestones if step >= m)
    else:
        t = min(max(step / max(total_steps, 1), 0.0), 1.0)
        decay = final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * t))
    if step < warmup_steps:
        alpha = step / warmup_steps
        decay *= warmup_factor + (1.0 - warmup_factor) * alpha
    return decay


class WarmupSchedule:
    """Sets the learning rate of every parameter group from :func:`lr_factor` before each step.

    Call :meth:`step` once per optimizer step, before ``optimizer.step()``; ``state_dict`` holds only
    the step counter (the other settings come from the configuration).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, total_steps: int, **kwargs) -> None:
        self.optimizer = optimizer
        self.base_lr = base_lr
        self.total_steps = total_steps
        self.kwargs = kwargs
        self.last_step = 0
        lr_factor(0, total_steps, **kwargs)  # validates the settings now rather than at the first step

    @property
    def lr(self) -> float:
        """The learning rate of the next step."""
        return self.base_lr * lr_factor(self.last_step, self.total_steps, **self.kwargs)

    def step(self) -> float:
        """Apply the rate of the coming step to the optimizer and advance; returns that rate."""
        lr = self.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.last_step += 1
        return lr

    def state_dict(self) -> dict:
        return {"last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        self.last_step = int(state["last_step"])
