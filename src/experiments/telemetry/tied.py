"""Each use's own gradient of a tied parameter: the ``tied`` signal.

Autograd sums the gradients of every place a tied parameter is used into one ``.grad``.
To see each use's part, every call of a module that holds a tied parameter gets its own
view of it (``p.view_as(p)``) for the duration of that call; a hook on the view keeps the
gradient that flows into it. The views' gradients add up to ``.grad``. Works for any module
that reads its parameters as attributes (Linear, LayerNorm, Conv1d, ...), for a module used
any number of times, and for one parameter tied between different modules. No host sync
happens in a hook; capture is switched on only for the steps that log it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from functools import partial
from typing import Dict, List, Tuple

import torch
from torch import nn

from ..errors import TieGradientMismatch
from ..tying import TieGroup
from . import tags
from .hooks import CallSites, module_sites
from .signals import Signal, Watched, fused_norms


class UseGradients:
    """Captures, per tied parameter, the gradient each use contributes."""

    def __init__(self, model: nn.Module, groups: List[TieGroup]):
        self.groups = groups
        self.active = False
        self.grads: Dict[str, Dict[str, torch.Tensor]] = defaultdict(dict)  # canonical -> alias -> grad
        canonical_of = {id(g.param): g.canonical for g in groups}
        self._leaves: Dict[nn.Module, List[Tuple[str, str]]] = {}  # module -> [(leaf, canonical)]
        sites = module_sites(model)
        for module in sites:
            leaves = [(leaf, canonical_of[id(p)]) for leaf, p in module._parameters.items()
                      if p is not None and id(p) in canonical_of]
            if leaves:
                self._leaves[module] = leaves
        self._hooks = CallSites(model, {m: sites[m] for m in self._leaves}, pre=self._give_views, post=self._restore)
        self._saved: Dict[nn.Module, List[Dict[str, nn.Parameter]]] = defaultdict(list)

    def _give_views(self, module: nn.Module, args) -> None:
        if not self.active:
            return
        site = self._hooks.next_site(module)
        saved = {}
        grad_on = torch.is_grad_enabled()
        for leaf, canonical in self._leaves[module]:
            param = module._parameters[leaf]
            if not (grad_on and param.requires_grad):  # frozen (trainer.freeze) or no_grad: no gradient to split
                continue
            view = param.view_as(param)
            view.register_hook(self._keeper(canonical, f"{site}.{leaf}"))
            saved[leaf] = param
            module._parameters[leaf] = view  # read by forward as self.<leaf>, for this call only
        self._saved[module].append(saved)

    def _restore(self, module: nn.Module, args, output) -> None:
        if self.active and self._saved[module]:
            module._parameters.update(self._saved[module].pop())

    def _keeper(self, canonical: str, alias: str):
        def keep(grad: torch.Tensor) -> None:
            uses = self.grads[canonical]
            uses[alias] = grad if alias not in uses else uses[alias] + grad
        return keep

    def ordered(self, group: TieGroup) -> Dict[str, torch.Tensor]:
        """The uses of ``group`` in model order (backward delivers them last use first)."""
        uses = self.grads.get(group.canonical, {})
        rank = {alias: i for i, alias in enumerate(group.aliases)}
        return {a: uses[a] for a in sorted(uses, key=lambda a: (rank.get(a.split("#")[0], len(rank)), a))}

    def start(self) -> None:
        """Capture the uses of the next forward/backward (hooks go in now, out at ``stop``)."""
        self.grads.clear()
        self._hooks.install()
        self.active = True

    def stop(self) -> None:
        """Stop capturing; a forward that raised midway leaves views in place: put the Parameters back."""
        self.active = False
        self._hooks.remove()
        for module, stack in self._saved.items():
            while stack:
                module._parameters.update(stack.pop())


def use_statistics(name: str, param: nn.Parameter, uses: Dict[str, torch.Tensor]):
    """Tags and a 1-D device tensor (a value per tag) for one tied parameter, plus the sum
    check as (error, tolerance).

    ``cos`` is each use's cosine with the summed gradient (``.grad``); ``cancellation`` is
    ||sum of uses|| / sum of ||use|| (1 when the uses agree, near 0 when they cancel).
    """
    aliases = list(uses)
    stacked = torch.stack([uses[a].reshape(-1) for a in aliases]).float()
    total = param.grad.reshape(-1).float()
    norms = torch.linalg.vector_norm(stacked, dim=1)
    total_norm = torch.linalg.vector_norm(total)
    cos = (stacked @ total) / (norms * total_norm).clamp_min(1e-30)
    cancellation = torch.linalg.vector_norm(stacked.sum(0)) / norms.sum().clamp_min(1e-30)
    error = torch.linalg.vector_norm(stacked.sum(0) - total)
    tolerance = 1e-5 * stacked.shape[0] * (norms.sum() + 1e-12)
    names = [tags.use_stat(name, a, "grad_norm") for a in aliases] + [tags.use_stat(name, a, "cos") for a in aliases]
    names.append(tags.cancellation(name))
    values = torch.cat([norms, cos, cancellation.reshape(1)])  # one value per tag, one tensor
    return names, values, (error, tolerance)


def mismatch(name: str, uses: List[str], error: float, tolerance: float) -> TieGradientMismatch:
    return TieGradientMismatch(
        f"the per-use gradients of tied parameter '{name}' ({', '.join(uses)}) do not add up to its "
        f".grad: they differ by {error:.3g} (tolerance {tolerance:.3g}). A module that reads its "
        f"parameter other than as an attribute, a hook that edits gradients, or gradients accumulated "
        f"over several backward passes without zero_grad can cause this."
    )


def tied_layout(groups: List[TieGroup]) -> Dict[str, Dict[str, list]]:
    """Custom-scalars layout: one chart per tied parameter with its uses and their sum."""
    charts = {}
    for g in groups:
        lines = [tags.tied_grad_norm(g.canonical)] + [tags.use_stat(g.canonical, a, "grad_norm") for a in g.aliases]
        charts[f"{g.canonical}: gradient norm of each use and their sum"] = ["Multiline", [re.escape(t) for t in lines]]
    return {"tied parameters": charts}


class Tied(Signal):
    """``tied/<param>/...``: the summed gradient of each tied parameter, each use's own
    gradient and its cosine with the sum, and the cancellation; checks that the uses add up."""

    name = "tied"

    @classmethod
    def applies(cls, watched: Watched) -> bool:
        return bool(watched.groups)

    def __init__(self, watched: Watched):
        super().__init__(watched)
        self.uses = UseGradients(watched.model, watched.groups)
        watched.writer.add_custom_scalars(tied_layout(watched.groups))

    def before_forward(self, step) -> None:
        self.uses.start()

    def after_backward(self, step, record) -> None:
        self.uses.stop()
        with_grad = [g for g in self.watched.groups if g.param.grad is not None]
        if with_grad:
            norms = torch.stack(fused_norms([g.param.grad for g in with_grad]))
            record.extend([tags.tied_grad_norm(g.canonical) for g in with_grad], norms)
        for group in with_grad:
            uses = self.uses.ordered(group)
            if uses:
                names, values, (error, tolerance) = use_statistics(group.canonical, group.param, uses)
                record.extend(names, values)
                record.check(error, tolerance, partial(mismatch, group.canonical, list(uses)))

    def close(self) -> None:
        self.uses.stop()
