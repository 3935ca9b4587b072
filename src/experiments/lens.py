"""The per-use lens on any model, in any training loop: ``watch()``.

::

    from experiments import watch

    lens = watch(model, log_dir="runs/mine", every=10, grad_scale={"lm_head.weight": 0.5})
    for step, (x, y) in enumerate(loader, start=1):
        loss = loss_fn(model(x), y)
        loss.backward()
        lens.step(step, loss)        # after backward, before optimizer.step(): logs what is due
        optimizer.step(); optimizer.zero_grad()
    lens.uses()                      # {parameter: {use: gradient}} of the last logged step
    lens.close()

It writes what our trainer writes (the trainer is its first client): the same TensorBoard tags,
text summaries and custom-scalars layout, for every parameter of ``model`` and, for every parameter a
training step uses more than once, each use's own gradient (``experiments.uses`` says how uses
are found and named). ``grad_scale`` acts on every step, logged or not. It works whichever
module's ``forward`` the loop calls (a wrapper that calls ``model`` is fine), with several
forward passes per step (gradient accumulation), and under DDP (watch the inner model).

Steps are counted by the loop: the lens arms itself for step ``n + 1`` when ``step(n)``
returns, so call it every step, with consecutive numbers. The values that need the optimizer's
update (parameter norms, update ratios) are written when the next ``step()`` or :meth:`Lens.finish`
(call it after ``optimizer.step()`` to write them at once) or :meth:`Lens.close` comes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Union

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .config import telemetry_schema
from .distributed import Reducer
from .errors import ConfigError
from .telemetry.monitor import Monitor, cadences
from .uses import Uses

log = logging.getLogger(__name__)


class Lens:
    """One model watched: a :class:`~experiments.telemetry.monitor.Monitor` (the signals and the
    event files) and the :class:`~experiments.uses.Uses` of its parameters. Build it with
    :func:`watch`; the trainer builds it from its config."""

    def __init__(self, model: nn.Module, log_dir: Union[str, Path], telemetry: DictConfig,
                 grad_scale: Optional[Mapping[str, float]] = None, total_steps: Optional[int] = None,
                 purge_step: Optional[int] = None, classification: bool = False, first_step: int = 1,
                 reducer: Optional[Reducer] = None, rank: int = 0):
        compiled = torch._dynamo.eval_frame.OptimizedModule
        inside = next((name for name, m in model.named_modules() if isinstance(m, compiled) and name), None)
        if inside is not None:
            raise ConfigError(
                f"watch(): the module {inside!r} inside this model is compiled (torch.compile), and inside a "
                f"compiled graph the lens sees no use of a parameter. Compile nothing you watch, or watch the "
                f"eager model and call the compiled one only on the steps that log nothing (lens.due(step)).")
        if isinstance(model, compiled):
            raise ConfigError(
                "watch(): this model is compiled (torch.compile), and inside a compiled graph the lens sees no "
                "use of a parameter. Watch the eager model (model._orig_mod) and call it on the steps that log "
                "(lens.due(step)), the compiled one on the others; our trainer does this with trainer.compile=true.")
        self.model = model
        self.uses_of = Uses(model, grad_scale)
        self.monitor = Monitor(Path(log_dir), model, telemetry, purge_step=purge_step, classification=classification,
                               uses=self.uses_of, total_steps=total_steps, reducer=reducer, rank=rank)
        self._pending: Optional[int] = None  # a logged step whose after-update half is still to write
        self._loss_seen: Optional[bool] = None
        self._arm(first_step)

    @property
    def next_step(self) -> int:
        """The step number the next :meth:`step` call must give."""
        return self._next

    def new_pass(self) -> None:
        """A new forward pass of the step begins. Only a loop that never calls the watched model itself
        needs it: the model's own call starts a pass, but a loop that calls its parts (a LightningModule
        watched whole, whose ``training_step`` calls ``self.model``) calls it before each micro-batch, so
        that every micro-batch's uses have the same names and add up."""
        self.uses_of.calls.calls = {}

    def due(self, step: int) -> bool:
        """Whether ``step`` logs anything (e.g. to run an eager model on that step only)."""
        return bool(self.monitor.due(step))

    def _arm(self, step: int) -> None:
        """Get ready for the forward pass of ``step``."""
        self._next = step
        if self.monitor.due(step):
            self.monitor.before_forward(step)
        if self.uses_of.scales and not self.uses_of.armed:  # (the tied signal arms it to capture when due)
            self.uses_of.arm(capture=False)

    def step(self, step: int, loss: Optional[torch.Tensor] = None, output: Optional[torch.Tensor] = None,
             target: Optional[torch.Tensor] = None, scale: Optional[float] = None) -> None:
        """After ``loss.backward()``, before ``optimizer.step()``: what is due at ``step`` about the
        gradients is recorded (each use's, the sums, their norms); the previous logged step's values
        after its update are written first. ``loss`` (a tensor or float) gives ``loss/train``; with
        ``output`` and ``target`` a classifier's ``acc/train``; ``scale``: a distributed run's share of
        the batch (``ddp.shard``)."""
        self.finish()
        if step != self._next:
            raise ValueError(f"lens.step({step}): the lens was armed for step {self._next}; call lens.step once "
                             f"per training step, with consecutive step numbers.")
        if self._loss_seen is None:
            self._loss_seen = loss is not None
            if not self._loss_seen:
                self.monitor.drop("loss")
        if loss is not None:
            loss = loss.detach() if isinstance(loss, torch.Tensor) else float(loss)
        self.uses_of.end()
        if self.monitor.due(step):
            self.monitor.after_backward(step, loss, output, target, scale)
            self._pending = step
        else:
            self.monitor.quiet_step(loss, output, target, scale)
        self._arm(step + 1)

    def finish(self) -> Dict[str, float]:
        """After ``optimizer.step()``: write the last logged step (its parameter norms and update
        ratios need the update). Returns what was written; ``step()`` calls it when you do not."""
        if self._pending is None:
            return {}
        step, self._pending = self._pending, None
        return self.monitor.after_step(step)

    def uses(self) -> Dict[str, Dict[str, torch.Tensor]]:
        """The last logged step's uses: {parameter name: {use name: gradient}} for every parameter
        used more than once (an ``unattributed`` use where part of ``.grad`` went through none)."""
        tied = self.monitor.signals.get("tied")
        return dict(tied.last) if tied is not None else {}

    def flush(self) -> None:
        self.monitor.flush()

    def close(self) -> None:
        """Write what is pending and close the event files; the model is as it was."""
        try:
            self.finish()
        finally:
            self.uses_of.close()
            self.monitor.close()


def watch(model: nn.Module, log_dir: Union[str, Path], every: Union[int, Mapping[str, int]] = 10,
          grad_scale: Optional[Mapping[str, float]] = None, signals: Optional[Iterable[str]] = None,
          total_steps: Optional[int] = None) -> Lens:
    """Watch ``model`` in your own training loop; TensorBoard event files go to ``log_dir``.

    ``every``: log every that many steps (and at step 1), or a dict signal -> every. ``signals``:
    the signals to log (default: those our trainer logs by default; ``experiments.telemetry.signals``
    lists them: loss, param_norm, grad_norm, tied, update_ratio, activations, histograms).
    ``grad_scale``: use name (or glob) -> factor on that use's gradient, every step.
    ``total_steps``: the run's length, if known (the last step is then always logged).
    """
    cfg = telemetry_config(every, signals)
    return Lens(model, log_dir, cfg, grad_scale=grad_scale, total_steps=total_steps)


def telemetry_config(every: Union[int, Mapping[str, int]] = 10, signals: Optional[Iterable[str]] = None) -> DictConfig:
    """The ``telemetry`` config that :func:`watch`'s ``every`` and ``signals`` mean (checked: an unknown
    signal or a bad cadence is a :class:`ConfigError`), for building a :class:`Lens` directly."""
    cfg = OmegaConf.structured(telemetry_schema())
    names = [n for n in cfg if n != "enabled"]
    if signals is not None:
        signals = list(signals)
        unknown = [s for s in signals if s not in names]
        if unknown:
            raise ConfigError(f"watch(signals={signals}): no signal named {', '.join(unknown)}. "
                              f"Signals: {', '.join(names)}.")
        for name in names:
            cfg[name].enabled = name in signals
    per_signal = dict(every) if isinstance(every, Mapping) else {name: every for name in names}
    for name, n in per_signal.items():
        if name not in names:
            raise ConfigError(f"watch(every={dict(every)}): no signal named {name}. Signals: {', '.join(names)}.")
        cfg[name].every = n
    cadences(cfg)  # a bad cadence fails here, before anything is written
    return cfg
