"""The monitor: watches one model during training and writes what its signals see to TensorBoard.

The training loop calls ``before_forward``, ``after_backward`` (before ``optimizer.step()``)
and ``after_step`` on the steps something is due, ``quiet_step`` on the others; the monitor
passes each call on to the signals due on that step (see ``signals.py``) and writes the step's
scalars as one event. It also writes what a run logs once: the config, the ties, the summary
(``text``) and the hparams.

In a distributed run (``reducer`` given) every rank has a monitor and only rank 0's writes. On a
due step, ``after_backward`` (given the step's loss) reduces what the due signals hand over (the
loss and accuracy since the last reduction, activation sums and counts, each use's gradient) as
one flat tensor: one collective per logged step, none on quiet steps. ``sync`` adds the ranks'
losses up at an epoch's end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from omegaconf import DictConfig
from torch import nn

from ..distributed import Reducer
from ..errors import ConfigError
from ..uses import Uses
from . import activations, tied  # noqa: F401  (importing them registers their signals)
from .events import EventFile, NoEvents, ScalarWriter
from .protos import hparams, text
from .signals import SIGNALS, Signal, Watched


def cadences(cfg: DictConfig, total_steps: Optional[int] = None) -> Dict[str, int]:
    """Each signal's cadence as a plain int, 0 when off (read once: a DictConfig lookup per step
    costs microseconds). ``every: null`` is about the signal's ``points`` points over
    ``total_steps`` (every step when the run length is not known). ``telemetry.enabled=false``
    leaves only the loss on. A field that names no signal, or a cadence below 1, is an error."""
    every = {}
    for name, sig in cfg.items():
        if name == "enabled":
            continue
        if name not in SIGNALS:
            raise ConfigError(f"telemetry.{name}: there is no signal of that name (a field with no code behind "
                              f"it would be silently ignored). Signals: {', '.join(sorted(SIGNALS))}.")
        if sig.every is not None and sig.every < 1:
            raise ConfigError(f"telemetry.{name}.every={sig.every}: must be at least 1 (a number of "
                              f"steps); switch a signal off with telemetry.{name}.enabled=false.")
        n = sig.every if sig.every is not None else max(1, -(-(total_steps or 1) // SIGNALS[name].points))
        every[name] = n if sig.enabled and (cfg.enabled or name == "loss") else 0
    return every


class Monitor:
    def __init__(self, run_dir: Path, model: nn.Module, cfg: DictConfig, purge_step: Optional[int] = None,
                 classification: bool = False, uses: Optional[Uses] = None, total_steps: Optional[int] = None,
                 reducer: Optional[Reducer] = None, rank: int = 0):
        self._every = cadences(cfg, total_steps)
        self._last = total_steps or 0  # every signal also logs the last step: the final value is final
        self.reducer, self.rank, self.writes = reducer, rank, rank == 0
        # purge_step: a resumed run drops what the interrupted one wrote after its checkpoint
        self.events = EventFile(run_dir, purge_step=purge_step) if self.writes else NoEvents()
        self.record = ScalarWriter(self.events)
        named = list(model.named_parameters())
        device = named[0][1].device if named else torch.device("cpu")
        self.loss_total = torch.zeros((), dtype=torch.float64, device=device)  # every step's loss, added up
        # distributed: this rank's losses since the last reduction (their mean over ranks is the global part)
        self.loss_local = torch.zeros_like(self.loss_total) if reducer is not None else self.loss_total
        self._added = 0  # the step whose loss after_backward already added
        if uses is None and self._every.get("tied"):
            uses = Uses(model)
        watched = Watched(model, [n for n, _ in named], [p for _, p in named], classification, self.events,
                          self.loss_total, uses, self.loss_local, self.writes, reducer)
        self.signals: Dict[str, Signal] = {
            name: SIGNALS[name](watched) for name, every in self._every.items()
            if every and SIGNALS[name].applies(watched)
        }
        for name, signal in self.signals.items():
            signal.cadence = self._every[name]
        self._per_step = [s for s in self.signals.values() if s.watches_every_step()]
        self._step, self._due, self._next = 0, [], 1  # _next: the next step any signal is due

    def due(self, step: int) -> List[Signal]:
        """The signals that log at ``step``: the first step (the initial state), every N, the last.
        On a quiet step this is one integer comparison."""
        if step == self._step:
            return self._due
        if step < self._step:  # a step already passed (the lens writing a logged step after its update)
            return [s for name, s in self.signals.items() if self._at(name, step)]
        self._step = step
        if step < self._next and step != self._last:
            self._due = []
            return self._due
        self._due = [s for name, s in self.signals.items() if self._at(name, step)]
        self._next = min((step // n + 1) * n for n in (self._every[name] for name in self.signals)) \
            if self.signals else 1 << 62
        return self._due

    def _at(self, name: str, step: int) -> bool:
        return step == 1 or step % self._every[name] == 0 or step == self._last

    def quiet_step(self, loss, output: Optional[torch.Tensor] = None, target: Optional[torch.Tensor] = None,
                   scale: Optional[float] = None) -> None:
        """All a step on which no signal is due needs: its loss added to the running total, on the device
        (and what the per-step signals keep, e.g. the training accuracy). ``scale``: see ``Signal.every_step``."""
        if loss is not None:
            self.loss_local.add_(loss)
        for signal in self._per_step:
            signal.every_step(loss, output, target, scale)

    def before_forward(self, step: int) -> None:
        for signal in self.due(step):
            signal.before_forward(step)

    def after_backward(self, step: int, loss=None, output: Optional[torch.Tensor] = None,
                       target: Optional[torch.Tensor] = None, scale: Optional[float] = None) -> None:
        """Record what the gradients look like (call before ``optimizer.step()``). With the step's ``loss``
        (which a distributed run must give here) it is added up here rather than in ``after_step``; what
        the due signals hand over is reduced across ranks, one collective."""
        if loss is not None:
            self.quiet_step(loss, output, target, scale)
            self._added = step
        due = self.due(step)
        if due:
            with torch.no_grad():
                self._reduce(due)
                for signal in due:
                    signal.after_backward(step, self.record)

    def _reduce(self, due: List[Signal]) -> None:
        """The due signals' batch-dependent values, across ranks (nothing to do in one process)."""
        means, sums = [], []
        for signal in due:
            m, s = signal.batch_values()
            means += m
            sums += s
        if self.reducer is None:
            return
        self.reducer.reduce_(means, sums)
        if self.signals.get("loss") in due:  # loss_local went into this reduction: the total is the ranks' now
            self.loss_total.add_(self.loss_local)
            self.loss_local.zero_()

    def sync(self) -> None:
        """Add up the ranks' losses into ``loss_total`` (distributed: one collective; at an epoch's end)."""
        if self.reducer is not None:
            self.reducer.mean_([self.loss_local])
            self.loss_total.add_(self.loss_local)
            self.loss_local.zero_()

    def after_step(self, step: int, loss=None, output: Optional[torch.Tensor] = None,
                   target: Optional[torch.Tensor] = None, scale: Optional[float] = None) -> Dict[str, float]:
        """Record the loss (a detached device tensor; a float works too) unless ``after_backward`` had it, and
        what the due signals see after ``optimizer.step()``; write the step's event. Returns what was
        written. A quiet step only adds the loss to the running total, on the device."""
        if loss is not None and self._added != step:
            self.quiet_step(loss, output, target, scale)
        due = self.due(step)
        if not due:
            return {}
        with torch.no_grad():
            for signal in due:
                signal.after_step(step, self.record)
            return self.record.flush(step)

    def state_dict(self) -> Dict[str, object]:
        """What a checkpoint keeps (the running loss, each signal's state, and every rank's part not yet
        reduced: a collective in a distributed run, so every rank calls it): a resumed run logs what an
        uninterrupted one would, e.g. the first loss/train point after it averages the same steps."""
        states = {name: s.state_dict() for name, s in self.signals.items()}
        mine = {"loss_local": 0.0 if self.loss_local is self.loss_total else float(self.loss_local),
                "signals": {name: part for name, s in self.signals.items() if (part := s.rank_state())}}
        ranks = self.reducer.gather(mine) if self.reducer is not None else [mine]
        return {"loss_total": float(self.loss_total), "signals": {name: s for name, s in states.items() if s},
                "ranks": ranks}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """A checkpoint's state; written by another number of processes, each rank's unreduced part is
        combined (the global values are the same, only where they are kept differs)."""
        self.loss_total.fill_(state["loss_total"])
        for name, saved in state.get("signals", {}).items():
            if name in self.signals:
                self.signals[name].load_state_dict(saved)
        ranks = list(state.get("ranks") or [])
        if not ranks:
            return
        world = self.reducer.world if self.reducer is not None else 1
        if len(ranks) == world:  # the same number of processes: each takes its own part back
            self.loss_local.add_(ranks[self.rank]["loss_local"])  # (adds to loss_total in one process)
        else:
            self.loss_total.add_(sum(r["loss_local"] for r in ranks) / len(ranks))
        for name, signal in self.signals.items():
            signal.load_rank_state([r.get("signals", {}).get(name, {}) for r in ranks], self.rank, world)

    def drop(self, name: str) -> None:
        """Stop a signal for the rest of the run (``watch()`` without a loss has no loss to log)."""
        signal = self.signals.pop(name, None)
        if signal is not None:
            signal.close()
            self._per_step = [s for s in self._per_step if s is not signal]
            self._step, self._next = 0, 0  # what is due is worked out again (this step included)

    def epoch_end(self, step: int, metrics: Mapping[str, float]) -> None:
        self.events.write_scalars(step, list(metrics), list(metrics.values()))
        self.flush()

    def flush(self) -> None:
        """Everything logged so far onto disk (before a checkpoint: the two agree after a crash)."""
        self.events.flush()

    def text(self, tag: str, markdown: str, step: int = 0) -> None:
        self.events.write_summary(text(tag, markdown), step)

    def hparams(self, values: Mapping[str, object], metrics: Sequence[str], name: str) -> None:
        """HParams summaries in the run's own folder (not a sub-folder: TensorBoard would show a
        second run), the session named ``name``; ``metrics`` are tags of this run's curves."""
        for summary in hparams(values, metrics, name):
            self.events.write_summary(summary)

    def close(self) -> None:
        for signal in self.signals.values():
            signal.close()
        self.events.close()
