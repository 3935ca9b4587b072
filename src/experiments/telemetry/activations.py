"""Per-layer output statistics, the usual way to judge an initialization scheme: the
``activations`` signal.

For every leaf module: the mean and standard deviation of its output, and for a ReLU the
fraction of its units that are dead on the batch (exactly zero for every example; a unit is
one output feature/channel, everything but the batch dimension). A module used several times
(a tied layer) is reported once per use, under the name of that use. Statistics stay on the
device; hooks are in place only on the steps that log them.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import nn

from ..uses import ModuleCalls
from . import tags
from .signals import Signal, Watched

DEAD_UNIT_TYPES = (nn.ReLU, nn.ReLU6)


def moments(rows: torch.Tensor) -> torch.Tensor:
    """Each row's sum, sum of squares (float64: two fast reductions; torch.std_mean is ~9x slower on the
    CPU) and count, as a ``(rows, 3)`` tensor: what ranks add up before the statistics are taken."""
    total = rows.sum(1, dtype=torch.float64)
    squares = torch.linalg.vector_norm(rows, dim=1, dtype=torch.float64).square()
    return torch.stack([total, squares, torch.full_like(total, rows.shape[1])], dim=1)


def mean_std(sums: torch.Tensor):
    """Mean and (unbiased) standard deviation from :func:`moments` (added up over ranks, or not). Digits are
    lost only where a mean exceeds its spread a million-fold, which activations do not do."""
    total, squares, n = sums.unbind(1)
    mean = total / n
    var = (squares - n * mean * mean) / (n - 1)
    return mean.float(), torch.where(n > 1, var.clamp_min(0).sqrt(), torch.zeros_like(var)).float()


def merge_passes(sums: torch.Tensor, counts: List, names: List[str]):
    """Calls of the same use in several forward passes of one step (gradient accumulation) are one call:
    their sums and counts added, each use once, in the order of first calls. A dead-unit count is kept
    only where every pass had the same units (a sequence model's units change with the length)."""
    first: Dict[str, int] = {}
    for name in names:
        first.setdefault(name, len(first))
    if len(first) == len(names):
        return sums, counts, names
    index = torch.tensor([first[n] for n in names], device=sums.device)
    sums = torch.zeros(len(first), sums.shape[1], dtype=sums.dtype, device=sums.device).index_add_(0, index, sums)
    merged: List = [None] * len(first)
    mismatched = set()
    for name, c in zip(names, counts):
        j = first[name]
        if c is None or j in mismatched:
            continue
        if merged[j] is not None and merged[j].shape != c.shape:
            mismatched.add(j)
            merged[j] = None
            continue
        merged[j] = c if merged[j] is None else merged[j] + c
    return sums, merged, list(first)


class ActivationStats:
    """Hooks keep each call's output (detached) on the steps that log. :meth:`partials` reduces all of
    them at once, a few tensor operations per group of same-shaped outputs rather than several per module
    (measured: ~15 µs a module the other way, on the CPU), to sums and counts in the order of the calls
    (the same on every rank of a distributed run, which adds them up); :meth:`finish` takes the
    statistics from those."""

    def __init__(self, model: nn.Module):
        self.active = False
        self._outputs: List[Tuple[str, bool, torch.Tensor]] = []  # (use name, counts dead units, output)
        self._layout: List[Tuple[str, int]] = []  # each call's use name and units (0: no dead-unit count)
        self._leaves = {m for m in model.modules() if m is not model and not list(m.children())}
        self._calls = ModuleCalls(model, post=self._record)

    def _record(self, module: nn.Module, site: str, output) -> None:
        if (self.active and module in self._leaves and isinstance(output, torch.Tensor)
                and torch.is_grad_enabled()):  # (not an evaluation pass)
            self._outputs.append((site, isinstance(module, DEAD_UNIT_TYPES), output.detach()))

    def start(self) -> None:
        self._outputs = []
        self._calls.start()
        self.active = True

    def close(self) -> None:
        """Hooks out, nothing kept."""
        self.active, self._outputs = False, []
        self._calls.stop()

    def partials(self, keep_hooks: bool = False) -> torch.Tensor:
        """What was recorded since ``start`` as one float64 tensor: each call's sum, sum of squares and count,
        then, for the calls of a ReLU, how many examples each unit (everything but the batch dimension) is
        non-zero for. ``keep_hooks``: the next step logs too (putting hooks on hundreds of modules and taking
        them off costs more than leaving them)."""
        self.active = False
        if not keep_hooks:
            self._calls.stop()
        records, self._outputs = self._outputs, []
        groups: Dict[tuple, List[int]] = {}
        for i, (_, dead, out) in enumerate(records):
            groups.setdefault((tuple(out.shape), out.dtype, out.device, dead and out.dim() > 1), []).append(i)
        order, blocks, counts = [], [], [None] * len(records)
        for (shape, _, _, dead), members in groups.items():
            # many small outputs: stacked, a few operations for all; a large one: on its own (no copy)
            chunks = [members] if torch.Size(shape).numel() < 16384 else [[m] for m in members]
            for chunk in chunks:
                stacked = torch.stack([records[i][2] for i in chunk]) if len(chunk) > 1 else records[chunk[0]][2][None]
                blocks.append(moments(stacked.reshape(len(chunk), -1)))
                order += chunk
                if dead:  # per unit: the examples it is not zero for
                    nonzero = (stacked != 0).sum(dim=1, dtype=torch.float64).reshape(len(chunk), -1)
                    for j, i in enumerate(chunk):
                        counts[i] = nonzero[j]
        if not records:
            self._layout = []
            return torch.zeros(0, dtype=torch.float64)
        position = torch.empty(len(records), dtype=torch.long)
        position[torch.tensor(order)] = torch.arange(len(records))
        sums = torch.cat(blocks)[position.to(blocks[0].device)]  # in the order of the calls
        names = [name for name, _, _ in records]
        sums, counts, names = merge_passes(sums, counts, names)
        self._layout = [(name, 0 if c is None else c.numel()) for name, c in zip(names, counts)]
        return torch.cat([sums.reshape(-1), *(c for c in counts if c is not None)])

    def collect(self, keep_hooks: bool = False) -> Tuple[List[str], torch.Tensor]:
        """The statistics of this process's outputs since ``start`` (:meth:`partials`, then :meth:`finish`)."""
        return self.finish(self.partials(keep_hooks))

    def finish(self, partials: torch.Tensor) -> Tuple[List[str], torch.Tensor]:
        """The tags of the calls :meth:`partials` saw and one 1-D tensor of their values: mean, std and, for
        a ReLU, the fraction of its units that are zero for every example (dead)."""
        if not self._layout:
            return [], torch.zeros(0)
        n = len(self._layout)
        mean, std = mean_std(partials[:3 * n].reshape(n, 3))
        units = [u for _, u in self._layout if u]
        found = []
        for name, u in self._layout:
            found += [tags.activation(name, stat) for stat in (("mean", "std", "dead_frac") if u else ("mean", "std"))]
        if not units:
            return found, torch.stack([mean, std], dim=1).reshape(-1)
        dead = torch.segment_reduce((partials[3 * n:] == 0).float(), "mean", lengths=torch.tensor(units,
                                    device=partials.device))
        dead_at = torch.full_like(mean, float("nan"))
        dead_at[torch.tensor([i for i, (_, u) in enumerate(self._layout) if u], device=mean.device)] = dead
        values = torch.stack([mean, std, dead_at], dim=1).reshape(-1)
        keep = torch.tensor([k < 2 or u > 0 for _, u in self._layout for k in range(3)], device=values.device)
        return found, values[keep]


class Activations(Signal):
    """``act/<layer>/mean|std|dead_frac`` for every leaf module (each use of a tied one)."""

    name, points = "activations", 25

    def __init__(self, watched: Watched):
        super().__init__(watched)
        self.stats = ActivationStats(watched.model)
        self._partials = None

    def before_forward(self, step) -> None:
        self.stats.start()

    def batch_values(self):
        """Sums and counts of this rank's outputs: a distributed run adds them up over the ranks."""
        self._partials = self.stats.partials(keep_hooks=self.cadence == 1)
        return [], [self._partials]

    def after_step(self, step, record) -> None:
        found, values = self.stats.finish(self._partials)
        self._partials = None
        if found:
            record.extend(found, values)

    def close(self) -> None:
        self.stats.close()
