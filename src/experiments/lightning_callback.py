"""The per-use lens in a Lightning run: :class:`LensCallback`, a thin shell over :class:`experiments.lens.Lens`.

::

    import lightning
    from experiments.lightning_callback import LensCallback

    trainer = lightning.Trainer(max_steps=1000, callbacks=[LensCallback("runs/lit", every=10)])
    trainer.fit(module, loader)

It writes what :func:`experiments.watch` writes (the same tags, sub-runs and text summaries) for the
LightningModule (or, with ``module="model"``, the model it holds under that attribute), the lens
stepping once per optimizer step: ``on_before_backward`` adds the step's loss up (Lightning hands it
divided by ``accumulate_grad_batches``, so the sum is the step's mean loss), ``on_before_optimizer_step``
(after the last backward of the step, before gradient clipping, as our trainer logs) calls
``lens.step(trainer.global_step + 1, loss)`` and ``on_train_batch_end`` writes the values that need the
update. With gradient accumulation each micro-batch's uses add up under the same names. ``grad_scale``
acts on every step. A resumed fit (``ckpt_path=...``) logs on from the checkpoint's step.

What it cannot do is an error when training starts, never wrong numbers: several processes (each
would log its own batch's per-use gradients), several optimizers (their steps interleave), 16-bit mixed
precision (the loss scaler scales the per-use gradients, not ``.grad``: use ``bf16-mixed``), and a
compiled module (``torch.compile``: no use is seen inside a compiled graph). Needs the ``lightning``
extra: ``pip install -e ".[lightning]"``.
"""

from __future__ import annotations

import logging
import operator
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

import torch

try:
    import lightning.pytorch as pl
except ImportError as error:  # pragma: no cover (the extra is installed where the tests run)
    raise ImportError('experiments.lightning_callback needs Lightning: pip install -e ".[lightning]"') from error

from .errors import ConfigError
from .lens import Lens, telemetry_config

log = logging.getLogger(__name__)


class LensCallback(pl.Callback):
    """Watch a LightningModule with the per-use lens; event files go to ``log_dir``.

    ``every``, ``grad_scale``, ``signals``: as for :func:`experiments.watch`. ``module``: the attribute
    path of the model to watch inside the LightningModule (``"model"``, ``"net.backbone"``), or None to
    watch the LightningModule itself (its parameters then carry its attribute names: ``model.wte.weight``).
    After ``fit``, :attr:`lens` is the closed lens (``callback.lens.uses()``: the last logged step's uses).
    """

    def __init__(self, log_dir: Union[str, Path], every: Union[int, Mapping[str, int]] = 10,
                 grad_scale: Optional[Mapping[str, float]] = None, signals: Optional[Iterable[str]] = None,
                 module: Optional[str] = None):
        super().__init__()
        self.log_dir, self.grad_scale, self.module = Path(log_dir), grad_scale, module
        self.telemetry = telemetry_config(every, signals)  # a bad signal or cadence fails here, not at fit
        self.lens: Optional[Lens] = None
        self._loss: Optional[torch.Tensor] = None
        self._saved: Optional[dict] = None  # the lens's state from the checkpoint a fit resumes

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._refuse(trainer)
        watched = pl_module if self.module is None else self._inner(pl_module)
        done = trainer.global_step  # a resumed fit starts after its checkpoint's step
        total = trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches
        total = int(total) if total != float("inf") else None
        self.lens = Lens(watched, self.log_dir, self.telemetry, grad_scale=self.grad_scale, total_steps=total,
                         first_step=done + 1, purge_step=done + 1 if done else None)
        if done and self._saved:
            self.lens.monitor.load_state_dict(self._saved)  # e.g. the first loss/train point averages from the last
        self._loss, self._saved = None, None

    def state_dict(self) -> dict:
        """What Lightning keeps in a checkpoint for this callback: the lens's running state."""
        return {"monitor": self.lens.monitor.state_dict()} if self.lens is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        self._saved = state_dict.get("monitor")

    def _refuse(self, trainer: "pl.Trainer") -> None:
        why = None
        if trainer.world_size > 1:
            why = (f"the fit runs in {trainer.world_size} processes, and each would log its own share of the batch's "
                   f"per-use gradients. Use one device (devices=1), or our trainer (train.py under torchrun), "
                   f"which reduces them across processes")
        elif len(trainer.optimizers) != 1:
            why = (f"the LightningModule has {len(trainer.optimizers)} optimizers; the lens steps once per optimizer "
                   f"step of one optimizer. Watch a module that one optimizer trains, in a fit with one optimizer")
        elif str(trainer.precision).startswith("16"):
            why = (f"precision={trainer.precision!r} scales the loss (a GradScaler): the per-use gradients would be "
                   f"scaled and .grad not. Use precision='bf16-mixed' or '32-true'")
        if why:
            raise ConfigError(f"LensCallback: {why}.")

    def _inner(self, pl_module: "pl.LightningModule") -> torch.nn.Module:
        try:
            found = operator.attrgetter(self.module)(pl_module)
        except AttributeError:
            found = None
        if not isinstance(found, torch.nn.Module):
            children = ", ".join(name for name, _ in pl_module.named_children()) or "none"
            raise ConfigError(f"LensCallback(module={self.module!r}): {type(pl_module).__name__} has no module "
                              f"there. Its modules: {children}; or module=None watches the LightningModule itself.")
        return found

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lens.new_pass()  # (training_step, not forward, is what Lightning calls)

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        loss = loss.detach()
        self._loss = loss if self._loss is None else self._loss + loss

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        step = trainer.global_step + 1
        loss, self._loss = self._loss, None
        if step != self.lens.next_step:
            raise ConfigError(f"LensCallback: Lightning is at optimizer step {step} but the lens expected step "
                              f"{self.lens._next}: a step was skipped or repeated, and logged values would carry "
                              f"the wrong step numbers.")
        self.lens.step(step, loss)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.lens.finish()  # after optimizer.step(): the parameter norms and update ratios (once per step)

    def on_train_end(self, trainer, pl_module) -> None:
        self._close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self.lens is not None:
            self.lens.close()
