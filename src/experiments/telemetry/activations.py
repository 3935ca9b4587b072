"""Per-layer output statistics, the usual way to judge an initialization scheme: the
``activations`` signal.

For every leaf module: the mean and standard deviation of its output, and for a ReLU the
fraction of its units that are dead on the batch (exactly zero for every example; a unit is
one output feature/channel, everything but the batch dimension). A module used several times
(a tied layer) is reported once per use, under the name of that use. Statistics stay on the
device; hooks are in place only on the steps that log them.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn

from ..uses import CallSites, module_sites
from . import tags
from .signals import Signal, Watched

DEAD_UNIT_TYPES = (nn.ReLU, nn.ReLU6)


def dead_fraction(output: torch.Tensor) -> torch.Tensor:
    """Fraction of units that are zero for every example of the batch (dim 0)."""
    return (output == 0).all(dim=0).float().mean()


class ActivationStats:
    def __init__(self, model: nn.Module):
        self.active = False
        self.tags: List[str] = []
        self.values: List[torch.Tensor] = []  # per call: [mean, std] or [mean, std, dead_frac]
        leaves = {m: names for m, names in module_sites(model).items() if m is not model and not list(m.children())}
        self._hooks = CallSites(model, leaves, post=self._record)

    def _record(self, module: nn.Module, args, output) -> None:
        if not self.active or not isinstance(output, torch.Tensor):
            return
        name = self._hooks.next_site(module)
        out = output.detach().float()
        std, mean = torch.std_mean(out) if out.numel() > 1 else (out.new_zeros(()), out.mean())
        self.tags += [tags.activation(name, "mean"), tags.activation(name, "std")]
        if isinstance(module, DEAD_UNIT_TYPES):
            self.tags.append(tags.activation(name, "dead_frac"))
            self.values.append(torch.stack([mean, std, dead_fraction(out)]))
        else:
            self.values.append(torch.stack([mean, std]))

    def start(self) -> None:
        self.tags, self.values = [], []
        self._hooks.install()
        self.active = True

    def collect(self) -> Tuple[List[str], torch.Tensor]:
        """The tags recorded since ``start`` and one 1-D tensor holding their values."""
        self.active = False
        self._hooks.remove()
        found, values = self.tags, torch.cat(self.values) if self.values else torch.zeros(0)
        self.tags, self.values = [], []
        return found, values


class Activations(Signal):
    """``act/<layer>/mean|std|dead_frac`` for every leaf module (each use of a tied one)."""

    name, points = "activations", 50

    def __init__(self, watched: Watched):
        super().__init__(watched)
        self.stats = ActivationStats(watched.model)

    def before_forward(self, step) -> None:
        self.stats.start()

    def after_step(self, step, record) -> None:
        found, values = self.stats.collect()
        if found:
            record.extend(found, values)

    def close(self) -> None:
        self.stats.collect()
