"""Per-layer output statistics, the usual way to judge an initialization scheme.

For every leaf module: the mean and standard deviation of its output, and for a ReLU the
fraction of its units that are dead on the batch (exactly zero for every example; a unit is
one output feature/channel, everything but the batch dimension). A module used several times
(a tied layer) is reported once per use, under the name of that use. Statistics stay on the
device; hooks are active only on the steps that log them.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import nn

from .tying import module_sites

DEAD_UNIT_TYPES = (nn.ReLU, nn.ReLU6)


def dead_fraction(output: torch.Tensor) -> torch.Tensor:
    """Fraction of units that are zero for every example of the batch (dim 0)."""
    return (output == 0).all(dim=0).float().mean()


class ActivationStats:
    def __init__(self, model: nn.Module):
        self.active = False
        self.tags: List[str] = []
        self.values: List[torch.Tensor] = []  # per call: [mean, std] or [mean, std, dead_frac]
        sites = module_sites(model)
        self._sites = {m: names for m, names in sites.items() if m is not model and not list(m.children())}
        self._calls: Dict[nn.Module, int] = {}
        self._model = model
        self._handles: list = []  # hooks exist only between start() and collect(): other steps pay nothing

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _record(self, module: nn.Module, args, output) -> None:
        if not self.active or not isinstance(output, torch.Tensor):
            return
        k = self._calls.get(module, 0)
        self._calls[module] = k + 1
        names = self._sites[module]
        name = names[k] if k < len(names) else f"{names[-1]}#{k}"
        out = output.detach().float()
        std, mean = torch.std_mean(out) if out.numel() > 1 else (out.new_zeros(()), out.mean())
        self.tags += [f"act/{name}/mean", f"act/{name}/std"]
        if isinstance(module, DEAD_UNIT_TYPES):
            self.tags.append(f"act/{name}/dead_frac")
            self.values.append(torch.stack([mean, std, dead_fraction(out)]))
        else:
            self.values.append(torch.stack([mean, std]))

    def start(self) -> None:
        self.tags, self.values = [], []
        self._calls.clear()
        if not self._handles:
            self._handles = [self._model.register_forward_pre_hook(lambda m, a: self._calls.clear())]
            self._handles += [m.register_forward_hook(self._record) for m in self._sites]
        self.active = True

    def collect(self) -> Tuple[List[str], torch.Tensor]:
        """The tags recorded since ``start`` and one 1-D tensor holding their values."""
        self.active = False
        self._remove()
        tags, values = self.tags, torch.cat(self.values) if self.values else torch.zeros(0)
        self.tags, self.values = [], []
        return tags, values

    def close(self) -> None:
        self.active = False
        self._remove()
