"""Signals: each thing the monitor can log is one small class, switched on and paced by its
config field ``telemetry.<name>`` (``enabled``, ``every``).

A subclass with a ``name`` registers itself in :data:`SIGNALS`; the telemetry schema has one
field per registered signal (``config.telemetry_schema``), so a new signal is one class::

    class FirstWeightMean(Signal):
        name = "first_weight_mean"     # telemetry.first_weight_mean.enabled / .every
        points = 50                    # by default about 50 points per run

        def after_step(self, step, record):
            record.add("first_weight_mean", self.watched.params[0].detach().mean())

Cadence: a signal logs at step 1 (the initial state), at the run's last step (so the final
value is final) and every ``every`` steps in between. ``every: null`` (the default) means about
``points`` points per run, whatever its length: ``every = ceil(total steps / points)``; an
explicit ``every`` wins.

The monitor calls, on the steps a signal is due:
``before_forward(step)``, ``batch_values()``, ``after_backward(step, record)`` (gradients present,
weights not yet updated) and ``after_step(step, record)`` (after ``optimizer.step()``). ``record``
collects the step's scalars (see ``events.ScalarWriter``); they reach the host in one transfer. A
signal that must see every step (the loss) overrides ``every_step``.

In a distributed run (``distributed.py``) every rank runs the same signals; only rank 0 writes. What
depends on a rank's own rows of the batch, a signal hands over in ``batch_values()`` (means, sums):
the monitor reduces what all due signals hand over as one flat tensor per step, in place, before
their ``after_backward``. Norms, update ratios and histograms come from DDP's averaged ``.grad`` and
the weights, the same on every rank: nothing to reduce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Sequence, Tuple, Type

import torch
from torch import nn

from ..distributed import Reducer
from ..uses import Uses
from . import tags
from .events import EventFile, ScalarWriter
from .protos import histogram


@dataclass
class SignalConfig:
    """``telemetry.<signal>``: on or off, and how often (in optimizer steps; null: about the
    signal's ``points`` points per run)."""

    enabled: bool = True
    every: Optional[int] = None


@dataclass
class Watched:
    """What every signal sees: the model, its unique parameters, its ties, the run's event file."""

    model: nn.Module
    names: List[str]  # as named_parameters() names them
    params: List[nn.Parameter]
    classification: bool
    events: EventFile
    loss_total: Optional[torch.Tensor] = None  # the run's losses added up (float64, on the device)
    uses: Optional[Uses] = None  # the uses of the parameters (experiments.uses), found on the steps that log
    loss_local: Optional[torch.Tensor] = None  # this rank's losses since the last reduction (distributed), else loss_total
    writes: bool = True  # False on ranks other than 0 of a distributed run: computed, not written
    reducer: Optional[Reducer] = None  # a distributed run's (distributed.Reducer); better: hand values over in batch_values


SIGNALS: Dict[str, Type["Signal"]] = {}


class Signal:
    name: ClassVar[str] = ""  # its config field: telemetry.<name>; a subclass with a name registers itself
    points: ClassVar[int] = 50  # by default, about this many points per run
    every: ClassVar[Optional[int]] = None  # a fixed default cadence instead (steps)
    enabled: ClassVar[bool] = True  # on by default

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            SIGNALS[cls.name] = cls

    def __init__(self, watched: Watched):
        self.watched = watched
        self.cadence = 0  # set by the monitor: every how many steps this signal logs

    @classmethod
    def applies(cls, watched: Watched) -> bool:
        """Whether this signal has anything to watch in this model (the tied signal needs ties)."""
        return True

    def watches_every_step(self) -> bool:
        """Whether :meth:`every_step` must run on every step, due or not."""
        return False

    def every_step(self, loss, output: Optional[torch.Tensor], target: Optional[torch.Tensor],
                   scale: Optional[float] = None) -> None:
        """Called after every step, due or not, for the signals that :meth:`watches_every_step`. ``scale``:
        None when the batch's mean is a plain mean; else what turns a sum over this rank's targets into its
        part of the global batch's mean (a distributed run's uneven last batch: ``distributed.shard``)."""

    def batch_values(self) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Called on due steps before :meth:`after_backward`: the tensors that depend on this rank's rows of
        the batch, as (means, sums). In a distributed run they are averaged (means) or added up (sums)
        across ranks in place; in one process they are left as they are."""
        return [], []

    def state_dict(self) -> Dict[str, object]:
        """What a checkpoint keeps of this signal, so that a resumed run logs what an uninterrupted one would."""
        return {}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        pass

    def rank_state(self) -> Dict[str, object]:
        """What a checkpoint keeps of this rank's own part (values of its rows not yet reduced); a checkpoint
        holds every rank's."""
        return {}

    def load_rank_state(self, states: List[Dict[str, object]], rank: int, world: int) -> None:
        """Every rank's saved part; from another number of ranks (``len(states) != world``), combined."""

    def before_forward(self, step: int) -> None:
        pass

    def after_backward(self, step: int, record: ScalarWriter) -> None:
        pass

    def after_step(self, step: int, record: ScalarWriter) -> None:
        pass

    def close(self) -> None:
        pass


FLAT_BELOW = 16  # tensors: from this many small ones on the CPU on, norms go through one flat copy


def goes_flat(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether norms of these tensors go through one flat copy: many of them, on the CPU. On a GPU
    (or for a few tensors) ``torch._foreach_norm`` is one fused kernel; on the CPU it dispatches once
    per tensor (~7 µs each, measured), where one ``cat`` of their flattened values and one segment sum
    in float64 (exact; float32 loses digits over long rows) are ~20x faster."""
    return len(tensors) >= FLAT_BELOW and tensors[0].device.type == "cpu"


def segment_norms(flat: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Norms (float64) of the consecutive pieces of ``flat`` that are ``lengths`` long."""
    return torch.segment_reduce(flat.double().square(), "sum", lengths=lengths).sqrt()


def fused_norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """L2 norms of many tensors, as one 1-D tensor on their device, in a few calls whatever their number."""
    if not tensors:
        return torch.zeros(0)
    if not goes_flat(tensors):
        return torch.stack(torch._foreach_norm(list(tensors)))
    lengths = torch.tensor([t.numel() for t in tensors])
    return segment_norms(torch.cat([t.reshape(-1) for t in tensors]), lengths).to(tensors[0].dtype)


class FlatViews:
    """Tensors that stay the same objects (the parameters: optimizers update them in place), with
    their flattened views made once (reshaping costs ~1.7 µs a tensor): ``cat()`` copies all their
    values in one call; ``flat`` says whether their norms go that way (:func:`goes_flat`)."""

    def __init__(self, tensors: Sequence[torch.Tensor]):
        self.tensors = list(tensors)
        self.flat = goes_flat(self.tensors)
        self.views = [t.view(-1) for t in self.tensors] if all(t.is_contiguous() for t in self.tensors) else None
        device = self.tensors[0].device if self.tensors else None
        self.lengths = torch.tensor([t.numel() for t in self.tensors], device=device)  # on their device, once

    def norms(self) -> torch.Tensor:
        if not self.flat:
            return fused_norms(self.tensors)
        return self.segment_norms(self.cat()).to(self.tensors[0].dtype)

    def cat(self) -> torch.Tensor:
        return torch.cat(self.views if self.views is not None else [t.reshape(-1) for t in self.tensors])

    def segment_norms(self, flat: torch.Tensor) -> torch.Tensor:
        """Norms (float64) of the pieces of a ``cat()``-shaped tensor."""
        return segment_norms(flat, self.lengths)


class Loss(Signal):
    """``loss/train`` (and ``acc/train``): the mean of the batch losses over the steps since the
    previous point (the steps each point stands for). The epoch mean is ``loss/train_epoch``."""

    name, points = "loss", 100

    def __init__(self, watched: Watched):
        super().__init__(watched)
        self._last_total, self._last_step = torch.zeros_like(watched.loss_total), 0  # at the previous point
        self._acc = None

    def watches_every_step(self) -> bool:
        return self.watched.classification  # the loss itself is the monitor's running total: no work here

    def every_step(self, loss, output, target, scale=None) -> None:
        if output is not None:
            right = (output.detach().argmax(-1) == target).float()
            acc = right.mean() if scale is None else right.sum() * scale
            self._acc = acc if self._acc is None else self._acc + acc

    def batch_values(self):
        """This rank's losses since the last reduction, and its accuracy since the last point."""
        return [self.watched.loss_local] + ([self._acc] if self._acc is not None else []), []

    def after_step(self, step, record) -> None:
        total, steps = self.watched.loss_total, step - self._last_step
        record.add(tags.LOSS_TRAIN, (total - self._last_total) / steps)
        if self._acc is not None:
            record.add(tags.ACC_TRAIN, self._acc / steps)
        self._last_total.copy_(total)
        self._last_step, self._acc = step, None

    def state_dict(self):
        return {"last_total": float(self._last_total), "last_step": self._last_step}

    def rank_state(self):
        return {"acc": None if self._acc is None else float(self._acc)}

    def load_rank_state(self, states, rank, world):
        """The accuracy since the last point; from another number of ranks, their mean (each rank's part is
        scaled so that the mean over ranks is the global value: every new rank gets that value)."""
        accs = [s.get("acc") for s in states]
        if len(states) == world:
            acc = accs[rank]
        else:
            acc = sum(a for a in accs if a is not None) / len(states) if any(a is not None for a in accs) else None
        self._acc = None if acc is None else torch.tensor(acc, device=self.watched.loss_total.device)

    def load_state_dict(self, state):
        self._last_total.fill_(state["last_total"])
        self._last_step = state["last_step"]


class ParamNorm(Signal):
    """``param_norm/<param>``: the L2 norm of every unique parameter."""

    name = "param_norm"

    def __init__(self, watched: Watched):
        super().__init__(watched)
        self.flat = FlatViews(watched.params)
        self.tags = [tags.param_norm(n) for n in watched.names]

    def after_step(self, step, record) -> None:
        record.extend(self.tags, self.flat.norms())


class GradNorm(Signal):
    """``grad_norm/<param>``: the L2 norm of every gradient (the sum over the uses, if tied), and
    ``grad_norm/total``: the norm of all of them together (what ``trainer.clip_grad_norm`` clips),
    before any clipping."""

    name = "grad_norm"

    def __init__(self, watched: Watched):
        super().__init__(watched)
        self.tags = {n: tags.grad_norm(n) for n in watched.names}

    def after_backward(self, step, record) -> None:
        pairs = [(n, g) for n, p in zip(self.watched.names, self.watched.params) if (g := p.grad) is not None]
        if pairs:
            norms = fused_norms([g for _, g in pairs])
            record.extend([self.tags[n] for n, _ in pairs] + [tags.GRAD_NORM_TOTAL],
                          torch.cat([norms, torch.linalg.vector_norm(norms).reshape(1)]))


def ratio_or_nan(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator``, NaN where the denominator is 0 (a ratio to nothing is undefined)."""
    return torch.where(denominator > 0, numerator / denominator, torch.nan)


class UpdateRatio(Signal):
    """``update_ratio/<param>``: ||w_after - w_before|| / ||w_before|| of one optimizer step; NaN for a
    parameter that was all zeros before the step (a zero-initialized bias at step 1): undefined."""

    name, points = "update_ratio", 25

    def __init__(self, watched: Watched):
        super().__init__(watched)
        self.flat = FlatViews(watched.params)
        self.tags = [tags.update_ratio(n) for n in watched.names]

    def after_backward(self, step, record) -> None:
        if self.flat.flat:  # many small tensors on the CPU: one flat copy of every weight
            self._before = self.flat.cat()
        else:  # one fused copy
            self._before = torch._foreach_mul([p.detach() for p in self.flat.tensors], 1.0)

    def after_step(self, step, record) -> None:
        if self.flat.flat:
            delta = self.flat.cat() - self._before
            ratios = ratio_or_nan(self.flat.segment_norms(delta), self.flat.segment_norms(self._before))
        else:
            deltas = torch._foreach_sub([p.detach() for p in self.flat.tensors], self._before)
            ratios = ratio_or_nan(fused_norms(deltas), fused_norms(self._before))
        record.extend(self.tags, ratios)
        self._before = None


class Histograms(Signal):
    """``param/<param>`` and ``grad/<param>``: the slowest to write, so few points (always the first
    and the last step: what training did to the distributions)."""

    name, points = "histograms", 5

    def after_backward(self, step, record) -> None:
        if not self.watched.writes:  # another rank writes them
            return
        for name, p in zip(self.watched.names, self.watched.params):
            if p.grad is not None:
                self.watched.events.write_summary(histogram(tags.grad_histogram(name), p.grad), step)

    def after_step(self, step, record) -> None:
        if not self.watched.writes:
            return
        for name, p in zip(self.watched.names, self.watched.params):
            self.watched.events.write_summary(histogram(tags.param_histogram(name), p), step)
