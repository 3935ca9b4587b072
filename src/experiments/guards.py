"""Guards that stop training safely: on a non-finite loss or gradient, and on SIGTERM/Ctrl-C."""

from __future__ import annotations

import math
import signal
from typing import List, Optional

import torch

from .errors import Diverged
from .slurm import requeue_signals


def first_nonfinite_grad(names: List[str], params: List[torch.nn.Parameter]) -> Optional[str]:
    for name, p in zip(names, params):
        if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
            return name
    return None


class DivergenceGuard:
    """Stops training at a non-finite loss or gradient before the weights take it in, without a
    host transfer on quiet steps.

    With an optimizer that can skip its step on the device (PyTorch's fused SGD, Adam and AdamW
    read a ``found_inf`` flag, the way AMP's gradient scaler drives them), every step runs one
    fused check of the loss and every gradient that sets a sticky flag; while it is set the
    optimizer skips its update, so the weights stay those of the last good step, and a counter
    of skipped steps tells where it began. The flag reaches the host in :meth:`check`, which the
    loop calls on steps that log anyway, every ``trainer.check_every`` steps, before a checkpoint
    and at the end of an epoch: the run then stops naming the step where it happened. Any other
    optimizer keeps the same promise with one host read of the loss per step.

    ``agreed`` (a distributed run): every rank's gradients are the same after DDP's all-reduce, and
    :func:`spread_nonfinite` makes one rank's non-finite loss non-finite gradients on every rank, so each
    rank's guard sees the same thing at the same step; without a fused optimizer the host read per step
    then covers the gradients too.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, names: List[str], params: List[torch.nn.Parameter],
                 agreed: bool = False):
        self.names, self.params = names, params
        self.agreed = agreed
        self.on_device = bool(optimizer.defaults.get("fused"))
        device = params[0].device if params else torch.device("cpu")
        self.found_inf = torch.zeros((), device=device)  # 1.0 from the first bad step on (never reset)
        self.skipped = torch.zeros((), device=device)  # how many steps the optimizer skipped
        self._one = torch.ones((), device=device)
        if self.on_device:
            optimizer.found_inf, optimizer.grad_scale = self.found_inf, None

    def after_backward(self, step: int, loss: torch.Tensor) -> None:
        """Call between ``backward()`` and ``optimizer.step()``."""
        if not self.on_device:
            if self.agreed:  # another rank's loss may be the non-finite one: the gradients say so here too
                self._check_gradients(loss)
                if self.found_inf.item():
                    raise self._diverged(step, step, "the loss (of this rank's rows or another's) or a gradient "
                                                     "is not finite")
                return
            value = loss.item()
            if not math.isfinite(value):
                raise self._diverged(step, step, f"the loss is {value}")
            return
        self._check_gradients(loss)
        self.skipped.add_(self.found_inf)

    def _check_gradients(self, loss: Optional[torch.Tensor] = None) -> None:
        """Sets ``found_inf`` (sticky) if the loss or a gradient is not finite, on the device."""
        tensors = ([loss.detach().reshape(1)] if loss is not None else []) + \
            [p.grad for p in self.params if p.grad is not None]
        torch._amp_foreach_non_finite_check_and_unscale_(tensors, self.found_inf, self._one)

    def check(self, step: int) -> None:
        """Raise :class:`Diverged` if any step up to ``step`` was not finite (one host transfer)."""
        if self.on_device and (skipped := int(self.skipped.item())):
            raise self._diverged(step - skipped + 1, step, "the loss or a gradient is not finite")

    def _diverged(self, bad_step: int, step: int, what: str) -> Diverged:
        culprit = first_nonfinite_grad(self.names, self.params)
        if culprit:
            where = f"first parameter with a non-finite gradient at step {step}: {culprit}"
        elif self.on_device:  # checked later, on the device: this step's gradients are finite again
            where = (f"the gradients of step {step}, when it was found, are finite (optim.fused=false checks every "
                     f"step on the host and names the parameter)")
        else:
            where = f"the gradients of step {step} are finite (the loss itself overflowed)"
        return Diverged(
            f"training diverged at step {bad_step}: {what}; {where}. The weights were not updated with it "
            f"(nor since). Lower optim.lr, pick a gentler init (init.std, init.value), clip gradients "
            f"(trainer.clip_grad_norm), or check the data."
        )


def spread_nonfinite(loss: torch.Tensor) -> torch.Tensor:
    """The loss to call ``backward()`` on in a distributed run: ``loss`` itself (times exactly 1), or, where it
    is not finite, NaN times it, so that every gradient of this rank is NaN, and after DDP's all-reduce every
    rank's: all ranks' divergence guards then stop at the same step, whichever rank's batch diverged."""
    finite = torch.isfinite(loss.detach())
    return loss * torch.where(finite, torch.ones_like(loss), torch.full_like(loss, float("nan"))).detach()


def check_validation(step: int, val_loss: float, names: List[str], params: List[torch.nn.Parameter]) -> None:
    """Raise :class:`Diverged` if the validation loss is not finite (e.g. weights overflowed)."""
    if math.isfinite(val_loss):
        return
    culprit = next((n for n, p in zip(names, params) if not bool(torch.isfinite(p).all())), None)
    raise Diverged(
        f"training diverged by step {step}: the validation loss is {val_loss}; first parameter that is "
        f"not finite: {culprit or 'none (the outputs overflow)'}. "
        f"Lower optim.lr, pick a gentler init (init.std, init.value), or check the data."
    )


class InterruptGuard:
    """Turns SIGTERM and SIGINT into a flag the training loop checks after each step (in a Slurm job
    also submitit's time-limit signal: ``slurm.py``)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "InterruptGuard":
        for sig in self.SIGNALS + requeue_signals():
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
