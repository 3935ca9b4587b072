"""The uses of shared parameters: which call of a module is which use, and each use's own gradient.

Autograd sums the gradients of every place a tied parameter is used into one ``.grad``. To
see or change each use's part, every call of a module that holds a tied parameter gets its own
view of it (``p.view_as(p)``) for the duration of that call; hooks on the view see (and may
scale) the gradient that flows into that use. The views' gradients add up to ``.grad``. Works
for any module that reads its parameters as attributes (Linear, Embedding, LayerNorm, Conv1d,
RNNCell, ...), for a module used any number of times, and for one parameter tied between
different modules.

Two things use the views: the ``tied`` telemetry signal captures each use's gradient on the
steps it logs, and ``model.grad_scale`` (the intervention) multiplies chosen uses' gradients on
every step. One :class:`UseViews` serves both, scaling before capturing, so what is logged is
what the optimizer gets. Hooks are in place only while something needs them.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from .errors import ConfigError
from .tying import TieGroup


def module_sites(model: nn.Module) -> Dict[nn.Module, List[str]]:
    """Every module -> all the names it has in the model (a shared module has several, in order)."""
    sites: Dict[nn.Module, List[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        sites.setdefault(module, []).append(name)
    return sites


class CallSites:
    """Pre- and post-forward hooks on ``modules`` (module -> its names) that know which use each
    call is: a module's k-th call in a forward pass is its k-th name (beyond its names,
    ``<last name>#k``). ``install`` puts the hooks in, ``remove`` takes them out."""

    def __init__(self, model: nn.Module, modules: Dict[nn.Module, List[str]],
                 pre: Optional[Callable] = None, post: Optional[Callable] = None):
        self.model, self.modules, self.pre, self.post = model, modules, pre, post
        self._calls: Dict[nn.Module, int] = {}
        self._handles: list = []

    def install(self) -> None:
        """Hooks in (once), call counts reset."""
        self._calls.clear()
        if self._handles:
            return
        self._handles = [self.model.register_forward_pre_hook(lambda m, a: self._calls.clear())]
        for module in self.modules:
            if self.pre:
                self._handles.append(module.register_forward_pre_hook(self.pre))
            if self.post:
                self._handles.append(module.register_forward_hook(self.post))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def next_site(self, module: nn.Module) -> str:
        """The name of this call of ``module`` (call it once per call, from a hook)."""
        k = self._calls.get(module, 0)
        self._calls[module] = k + 1
        names = self.modules[module]
        return names[k] if k < len(names) else f"{names[-1]}#{k}"


class UseViews:
    """Per-call views of the tied parameters, with gradient scaling (always) and capture (on request).

    ``scales`` maps a use (the ``state_dict`` name of one use, e.g. ``0.weight`` of an embedding
    tied to ``5.weight``) to a factor applied to that use's gradient on every step.
    """

    def __init__(self, model: nn.Module, groups: List[TieGroup], scales: Optional[Mapping[str, float]] = None):
        self.groups = groups
        self.scales = dict(scales or {})
        self.capturing = False
        self.grads: Dict[str, Dict[str, torch.Tensor]] = defaultdict(dict)  # canonical -> use -> grad
        canonical_of = {id(g.param): g.canonical for g in groups}
        sites = module_sites(model)
        self._leaves: Dict[nn.Module, List[Tuple[str, str]]] = {}  # module -> [(leaf, canonical)]
        for module in sites:
            leaves = [(leaf, canonical_of[id(p)]) for leaf, p in module._parameters.items()
                      if p is not None and id(p) in canonical_of]
            if leaves:
                self._leaves[module] = leaves
        self._check_scales()
        self._hooks = CallSites(model, {m: sites[m] for m in self._leaves}, pre=self._give_views, post=self._restore)
        self._saved: Dict[nn.Module, List[Dict[str, nn.Parameter]]] = defaultdict(list)
        if self.scales:
            self._hooks.install()  # the intervention acts on every step

    def _check_scales(self) -> None:
        uses = {alias for g in self.groups for alias in g.aliases}
        for alias, factor in self.scales.items():
            if alias not in uses:
                valid = ", ".join(sorted(uses)) or "none: this model has no tied parameter"
                raise ConfigError(f"model.grad_scale: '{alias}' is no use of a tied parameter. "
                                  f"Uses (the state_dict names of tied parameters): {valid}.")
            if not isinstance(factor, (int, float)) or factor != factor:
                raise ConfigError(f"model.grad_scale.{alias}={factor!r}: must be a number.")

    def _give_views(self, module: nn.Module, args) -> None:
        site = self._hooks.next_site(module)
        saved = {}
        grad_on = torch.is_grad_enabled()
        for leaf, canonical in self._leaves[module]:
            param = module._parameters[leaf]
            use = f"{site}.{leaf}"
            factor = self.scales.get(use)
            if not (grad_on and param.requires_grad) or (factor is None and not self.capturing):
                continue  # frozen (trainer.freeze), no_grad, or nothing to do for this use
            view = param.view_as(param)
            if factor is not None:
                view.register_hook(lambda grad, f=factor: grad * f)
            if self.capturing:
                view.register_hook(self._keeper(canonical, use))  # after the scale: what the optimizer gets
            saved[leaf] = param
            module._parameters[leaf] = view  # read by forward as self.<leaf>, for this call only
        self._saved[module].append(saved)

    def _restore(self, module: nn.Module, args, output) -> None:
        if self._saved[module]:
            module._parameters.update(self._saved[module].pop())

    def _keeper(self, canonical: str, use: str):
        def keep(grad: torch.Tensor) -> None:
            found = self.grads[canonical]
            found[use] = grad if use not in found else found[use] + grad
        return keep

    def ordered(self, group: TieGroup) -> Dict[str, torch.Tensor]:
        """The captured uses of ``group`` in model order (backward delivers them last use first)."""
        found = self.grads.get(group.canonical, {})
        rank = {alias: i for i, alias in enumerate(group.aliases)}
        return {a: found[a] for a in sorted(found, key=lambda a: (rank.get(a.split("#")[0], len(rank)), a))}

    def start_capture(self) -> None:
        """Capture each use's gradient in the next forward/backward."""
        self.grads.clear()
        self._hooks.install()
        self.capturing = True

    def stop_capture(self, keep_hooks: bool = False) -> None:
        """Stop capturing; views a forward that raised midway left in place become Parameters again.
        ``keep_hooks``: the next step captures too (cheaper than taking the hooks off and on)."""
        self.capturing = False
        self.restore()
        if not (self.scales or keep_hooks):
            self._hooks.remove()

    def restore(self) -> None:
        for module, stack in self._saved.items():
            while stack:
                module._parameters.update(stack.pop())

    def close(self) -> None:
        self.capturing = False
        self.restore()
        self._hooks.remove()
