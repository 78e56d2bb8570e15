"""Where a training run stands: :class:`RunState` (epoch, step, history, best mAP, the partial sums of the
epoch in progress), saved into and read back from ``last.pt``, and :class:`LossTerms`, the loss terms
summed on the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor


class LossValues(NamedTuple):
    """The three loss terms as numbers: the total, the localisation and the confidence loss."""

    loss: float
    loc: float
    conf: float


@dataclass
class LossTerms:
    """Loss terms summed over steps, kept on the device as one ``Tensor[3]`` (loss, loc, conf): adding to
    them never waits for the device; :meth:`mean` and :meth:`tolist` are the host-device synchronisations."""

    values: Tensor

    @classmethod
    def zeros(cls, device: torch.device | str) -> LossTerms:
        return cls(torch.zeros(len(LossValues._fields), device=device))

    @classmethod
    def of(cls, losses: dict[str, Tensor]) -> LossTerms:
        """The terms of one step from the loss function's ``{"loss", "loc", "conf"}`` (detached)."""
        return cls(torch.stack([losses[name] for name in LossValues._fields]).detach())

    @property
    def loss(self) -> Tensor:
        return self.values[0]

    @property
    def loc(self) -> Tensor:
        return self.values[1]

    @property
    def conf(self) -> Tensor:
        return self.values[2]

    def add_(self, other: LossTerms | list[float]) -> LossTerms:
        """Add ``other`` (terms, or the numbers :meth:`tolist` gave) in place."""
        if isinstance(other, LossTerms):
            self.values += other.values
        else:
            self.values += torch.tensor(other, device=self.values.device)
        return self

    def zero_(self) -> LossTerms:
        self.values.zero_()
        return self

    def mean(self, steps: int) -> LossValues:
        """The sums divided by ``steps``, as numbers."""
        return LossValues(*(self.values / steps).tolist())

    def tolist(self) -> list[float]:
        """The sums as ``[loss, loc, conf]`` (what a checkpoint keeps)."""
        return self.values.tolist()


def _new_history() -> dict:
    return {"epochs": [], "steps": []}


@dataclass
class RunState:
    """Where a run stands, and what it recorded.

    Attributes:
        epoch: the epoch in progress (0-based; the number of finished epochs).
        step: the steps of ``epoch`` already done.
        history: ``{"epochs": [one row per finished epoch], "steps": [one row per logged step]}``.
        best_map: the best validation mAP so far (None: no validation yet).
        sums: the loss terms summed over the steps of ``epoch`` done so far (None: none counted yet).
        seconds: the training time of ``epoch`` so far.
        last_map: the latest validation mAP of this call (not saved).
    """

    epoch: int = 0
    step: int = 0
    history: dict = field(default_factory=_new_history)
    best_map: float | None = None
    sums: LossTerms | None = None
    seconds: float = 0.0
    last_map: float | None = None

    @classmethod
    def from_checkpoint(cls, checkpoint: dict, device: torch.device | str) -> RunState:
        """The state a ``last.pt`` holds; the partial sums go onto ``device``."""
        partial = checkpoint.get("partial")
        state = cls(
            checkpoint["epoch"], checkpoint["step"], checkpoint["history"], checkpoint.get("best_map")
        )
        if partial is not None:
            state.sums = LossTerms.zeros(device).add_(partial["sums"])
            state.seconds = partial["seconds"]
        return state

    def partial(self) -> dict | None:
        """The checkpoint's ``partial`` entry: the sums and seconds of an epoch stopped in its middle."""
        if self.sums is None:
            return None
        return {"sums": self.sums.tolist(), "seconds": self.seconds}

    def start_epoch(self, device: torch.device | str) -> LossTerms:
        """The sums of the epoch in progress, zero when it has none yet."""
        if self.sums is None:
            self.sums = LossTerms.zeros(device)
        return self.sums

    def finish_epoch(self) -> None:
        """Move to the start of the next epoch."""
        self.epoch, self.step, self.sums, self.seconds = self.epoch + 1, 0, None, 0.0
