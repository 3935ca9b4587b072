"""The monitor: watches one model during training and writes what its signals see to TensorBoard.

The training loop calls ``before_forward``, ``after_backward`` (before ``optimizer.step()``)
and ``after_step`` every step; the monitor passes each call on to the signals due on that
step (see ``signals.py``) and writes the step's scalars as one event. It also writes what a
run logs once: the config, the ties, the summary (``text``) and the hparams.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Optional

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from ..errors import ConfigError
from ..tying import tie_groups
from ..uses import UseViews
from . import activations, tags, tied  # noqa: F401  (importing them registers their signals)
from .events import ScalarWriter
from .signals import SIGNALS, Signal, Watched

METRIC_TAGS = (tags.LOSS_TRAIN, tags.LOSS_VAL)


def cadences(cfg: DictConfig) -> Dict[str, int]:
    """Each signal's cadence as a plain int, 0 when off (read once: a DictConfig lookup per step
    costs microseconds). ``telemetry.enabled=false`` leaves only the loss on. A field that names
    no signal, or a cadence below 1, is an error."""
    every = {}
    for name, sig in cfg.items():
        if name == "enabled":
            continue
        if name not in SIGNALS:
            raise ConfigError(f"telemetry.{name}: there is no signal of that name (a field with no code behind "
                              f"it would be silently ignored). Signals: {', '.join(sorted(SIGNALS))}.")
        if sig.every < 1:
            raise ConfigError(f"telemetry.{name}.every={sig.every}: must be at least 1 (a number of "
                              f"steps); switch a signal off with telemetry.{name}.enabled=false.")
        every[name] = sig.every if sig.enabled and (cfg.enabled or name == "loss") else 0
    return every


class Monitor:
    def __init__(self, run_dir: Path, model: nn.Module, cfg: DictConfig, purge_step: Optional[int] = None,
                 classification: bool = False, uses: Optional[UseViews] = None):
        self._every = cadences(cfg)
        self.classification = classification
        # purge_step: a resumed run drops what the interrupted one wrote after its checkpoint
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)
        self.record = ScalarWriter(self.writer)
        named = list(model.named_parameters())
        watched = Watched(model, [n for n, _ in named], [p for _, p in named], uses.groups if uses else tie_groups(model),
                          classification, self.writer, uses)
        self.signals: Dict[str, Signal] = {
            name: SIGNALS[name](watched) for name, every in self._every.items()
            if every and SIGNALS[name].applies(watched)
        }
        self._per_step = [s for s in self.signals.values() if type(s).every_step is not Signal.every_step]
        self._step, self._due = 0, []

    def due(self, step: int) -> List[Signal]:
        """The signals that log at ``step``: each logs the first step (the initial state), then every N."""
        if step != self._step:
            self._step = step
            self._due = [s for name, s in self.signals.items() if step % self._every[name] == 0 or step == 1]
        return self._due

    def before_forward(self, step: int) -> None:
        for signal in self.due(step):
            signal.before_forward(step)

    def after_backward(self, step: int) -> None:
        """Record what the gradients look like (call before ``optimizer.step()``)."""
        for signal in self.due(step):
            signal.after_backward(step, self.record)

    def after_step(self, step: int, loss: float, output: Optional[torch.Tensor] = None,
                   target: Optional[torch.Tensor] = None) -> Dict[str, float]:
        """Record the loss (a float: the loop already has it on the host) and what the due signals
        see after ``optimizer.step()``; write the step's event. Returns what was written."""
        for signal in self._per_step:
            signal.every_step(loss, output, target)
        for signal in self.due(step):
            signal.after_step(step, self.record)
        return self.record.flush(step)

    def epoch_end(self, step: int, metrics: Mapping[str, float]) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def text(self, tag: str, markdown: str) -> None:
        self.writer.add_text(tag, markdown, 0)

    def hparams(self, values: Mapping[str, object]) -> None:
        """HParams summaries in the run's own folder; metrics are the ``METRIC_TAGS`` curves."""
        metrics = METRIC_TAGS + ((tags.ACC_TRAIN, tags.ACC_VAL) if self.classification else ())
        for summary in hparams(dict(values), {tag: 0.0 for tag in metrics}):
            self.writer._get_file_writer().add_summary(summary)

    def close(self) -> None:
        for signal in self.signals.values():
            signal.close()
        self.writer.flush()
        self.writer.close()
