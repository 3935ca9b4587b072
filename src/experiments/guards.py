"""Guards that stop training safely: on a non-finite loss or gradient, and on SIGTERM/Ctrl-C."""

from __future__ import annotations

import math
import signal
from typing import List, Optional

import torch

from .errors import Diverged


def first_nonfinite_grad(names: List[str], params: List[torch.nn.Parameter]) -> Optional[str]:
    for name, p in zip(names, params):
        if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
            return name
    return None


def check_finite(step: int, loss: torch.Tensor, names: List[str], params: List[torch.nn.Parameter]) -> float:
    """Return the loss as a float; raise :class:`Diverged` if it is not finite.

    Called after ``backward()`` and before ``optimizer.step()``, so the weights and the last
    checkpoint are still those of the last good step. The one host transfer per step it costs
    also gives the loop its loss value, so nothing else has to accumulate tensors per step.
    """
    loss_value = loss.item()
    if math.isfinite(loss_value):
        return loss_value
    culprit = first_nonfinite_grad(names, params)
    raise Diverged(
        f"training diverged at step {step}: the loss is {loss_value}; first parameter with a non-finite gradient: "
        f"{culprit or 'none yet (every gradient is finite)'}. The weights were not updated with it and the last checkpoint is intact. "
        f"Lower optim.lr, pick a gentler init (init.std, init.value), or check the data."
    )


def check_validation(step: int, val_loss: float, names: List[str], params: List[torch.nn.Parameter]) -> None:
    """Raise :class:`Diverged` if the validation loss is not finite (e.g. weights overflowed)."""
    if math.isfinite(val_loss):
        return
    culprit = next((n for n, p in zip(names, params) if not bool(torch.isfinite(p).all())), None)
    raise Diverged(
        f"training diverged by step {step}: the validation loss is {val_loss}; first parameter that is "
        f"not finite: {culprit or 'none (the outputs overflow)'}. The last checkpoint is the last good state. "
        f"Lower optim.lr, pick a gentler init (init.std, init.value), or check the data."
    )


class InterruptGuard:
    """Turns SIGTERM and SIGINT into a flag the training loop checks after each step."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "InterruptGuard":
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some launchers): no handler
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""
