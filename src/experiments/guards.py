"""Guards that stop training safely: on a non-finite loss or gradient, and on SIGTERM/Ctrl-C."""

from __future__ import annotations

import math
import signal
from typing import List, Mapping, Optional

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


FLOAT32_MAX = torch.finfo(torch.float32).max  # a value beyond it is stored as ±inf in TensorBoard's float32


def check_validation(step: int, metrics: Mapping[str, float], names: List[str], params: List[torch.nn.Parameter]) -> None:
    """Raise :class:`Diverged` if an epoch's metric is not a finite float32: a validation loss that is
    inf or nan (e.g. weights overflowed), or a perplexity beyond float32's range (``loss/val`` above
    ~88.7 nats: far worse than guessing, and TensorBoard would show inf)."""
    bad = next(((tag, value) for tag, value in metrics.items() if not abs(value) <= FLOAT32_MAX), None)
    if bad is None:
        return
    tag, value = bad
    culprit = next((n for n, p in zip(names, params) if not bool(torch.isfinite(p).all())), None)
    if math.isfinite(value):
        what = f"{tag} is {value:.3g}, beyond float32's range (TensorBoard would show inf)"
        where = f"first parameter that is not finite: {culprit}" if culprit else "every parameter is still finite"
    else:
        what = f"{tag} is {value}"
        where = f"first parameter that is not finite: {culprit or 'none (the outputs overflow)'}"
    others = ", ".join(f"{t} {v:.6g}" for t, v in metrics.items() if t != tag)
    raise Diverged(
        f"training diverged by step {step}: {what}{f' ({others})' if others else ''}; {where}. "
        f"Lower optim.lr, pick a gentler init (init.std, init.value), or check the data."
    )


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_held: Optional[int] = None  # a stop signal that came before training began (see hold_interrupts)


def _remember(signum, frame) -> None:
    global _held
    if _held is not None:  # a second one: stop at once
        raise KeyboardInterrupt
    _held = signum


def hold_interrupts() -> None:
    """From now on, a SIGTERM or SIGINT that comes while no :class:`InterruptGuard` is active is
    remembered instead of ending the process (or, in a submitit job, being ignored); the next guard
    takes it over, so its training loop stops at its first step with a checkpoint. For the process
    of a sweep job: the sweep forwards its stop to each running job, which may still be setting up.
    Call it once per job, before the job starts (it forgets an earlier job's signal)."""
    global _held
    _held = None
    for sig in STOP_SIGNALS:
        signal.signal(sig, _remember)


class InterruptGuard:
    """Turns SIGTERM and SIGINT into a flag the training loop checks after each step (in a Slurm job
    also submitit's time-limit signal: ``slurm.py``); one that came earlier, held by
    :func:`hold_interrupts`, sets the flag at once."""

    SIGNALS = STOP_SIGNALS

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
        global _held
        if _held is not None and self.SIGNALS[0] in self._previous:  # a stop that came during set-up
            self.signum, _held = _held, None
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""
