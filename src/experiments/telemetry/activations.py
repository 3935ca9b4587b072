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




def mean_std(rows: torch.Tensor):
    """Each row's mean and (unbiased) standard deviation, from its sum and sum of squares in float64:
    two fast reductions (torch.std_mean is ~9x slower on the CPU). Digits are lost only where a row's
    mean exceeds its spread a million-fold, which activations do not do."""
    n = rows.shape[1]
    total = rows.sum(1, dtype=torch.float64)
    squares = torch.linalg.vector_norm(rows, dim=1, dtype=torch.float64).square()
    mean = total / n
    if n < 2:
        return mean.float(), torch.zeros_like(mean, dtype=torch.float32)
    return mean.float(), ((squares - n * mean * mean) / (n - 1)).clamp_min(0).sqrt().float()


class ActivationStats:
    """Hooks keep each call's output (detached) on the steps that log; :meth:`collect` computes the
    statistics of all of them at once, a few tensor operations per group of same-shaped outputs
    rather than several per module (measured: ~15 µs a module the other way, on the CPU)."""

    def __init__(self, model: nn.Module):
        self.active = False
        self._outputs: List[Tuple[str, bool, torch.Tensor]] = []  # (use name, counts dead units, output)
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

    def collect(self, keep_hooks: bool = False) -> Tuple[List[str], torch.Tensor]:
        """The tags recorded since ``start`` and one 1-D tensor holding their values. ``keep_hooks``:
        the next step logs too (putting hooks on hundreds of modules and taking them off costs more
        than leaving them)."""
        self.active = False
        if not keep_hooks:
            self._calls.stop()
        groups: Dict[tuple, List[Tuple[str, torch.Tensor]]] = {}
        for name, dead, out in self._outputs:
            groups.setdefault((tuple(out.shape), out.dtype, out.device, dead and out.dim() > 1), []).append((name, out))
        self._outputs = []
        found, blocks = [], []
        for (shape, _, _, dead), members in groups.items():
            # many small outputs: stacked, a few operations for all; a large one: on its own (no copy)
            chunks = [members] if torch.Size(shape).numel() < 16384 else [[m] for m in members]
            for chunk in chunks:
                stacked = torch.stack([out for _, out in chunk]) if len(chunk) > 1 else chunk[0][1].unsqueeze(0)
                columns = list(mean_std(stacked.reshape(len(chunk), -1)))
                if dead:  # units (everything but the batch dimension) zero for every example
                    columns.append((stacked == 0).all(dim=1).reshape(len(chunk), -1).float().mean(1))
                blocks.append(torch.stack(columns, dim=1).reshape(-1))
                stats = ("mean", "std", "dead_frac")[:len(columns)]
                found += [tags.activation(name, stat) for name, _ in chunk for stat in stats]
        return found, torch.cat(blocks) if blocks else torch.zeros(0)


class Activations(Signal):
    """``act/<layer>/mean|std|dead_frac`` for every leaf module (each use of a tied one)."""

    name, points = "activations", 25

    def __init__(self, watched: Watched):
        super().__init__(watched)
        self.stats = ActivationStats(watched.model)

    def before_forward(self, step) -> None:
        self.stats.start()

    def after_backward(self, step, record) -> None:  # (the forward's outputs, before the next step is armed)
        found, values = self.stats.collect(keep_hooks=self.cadence == 1)
        if found:
            record.extend(found, values)

    def close(self) -> None:
        self.stats.close()
