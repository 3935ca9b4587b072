"""Forward hooks that know which *use* of a module each call is, installed one step at a time.

A module used at several places of a model (a tied layer) has several names; its k-th call in
a forward pass is its k-th name, and a call beyond its names is ``<last name>#k``. The hooks
go in when a signal starts watching a step and come out when it stops, so steps that log
nothing run no hook at all. Used by the per-use gradient and activation probes.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

from torch import nn


def module_sites(model: nn.Module) -> Dict[nn.Module, List[str]]:
    """Every module -> all the names it has in the model (a shared module has several, in order)."""
    sites: Dict[nn.Module, List[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        sites.setdefault(module, []).append(name)
    return sites


class CallSites:
    """Pre- and post-forward hooks on ``modules`` (module -> its names), with call counting."""

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
