"""The uses of a model's parameters, found by use: which module call read which parameter, and
each use's own gradient.

Autograd sums the gradients of every place a parameter is used into one ``.grad``. To see or
change each use's part, every read of a watched parameter gets its own view (``p.view_as(p)``);
hooks on a view see (and may scale) the gradient that flows into that use, and the views'
gradients add up to ``.grad``. The reads are found by a ``torch.overrides.TorchFunctionMode``,
which sees every torch function a parameter enters, however it was read: a module's own
attribute (``nn.Linear``, ``nn.Embedding``, an ``RNNCell`` stepped in a loop, ALBERT's layer
called at every depth), a weight passed to a functional op by another module
(``F.linear(h, self.wte.weight)``), or a penalty in the loss (``w.pow(2).sum()``).

A use is named after where it happened (the module call that was running, from global module
hooks, and its call index within the pass):

- a module reading its own parameter: ``<module name>.<leaf>``; a module registered under
  several names (our tied layers, ``Unrolled``'s time steps) takes its k-th name at its k-th
  call (``2.weight``, ``4.weight``; ``1.t3.weight_hh``), beyond its names ``<last name>#k``
  (ALBERT's layer at depth 3: ``...albert_layers.0.attention.query#3.weight``);
- a module reading another's parameter: ``<parameter>@<module name>`` (``wte.weight@lm_head``;
  the model itself is named by its class, ``wte.weight@GPT``);
- a read outside the model's forward (a penalty in the loss): ``<parameter>@outside``.

Several reads inside one module call are one use. What reached ``.grad`` through no view (a
custom autograd function, a forward recomputed in backward by reentrant activation
checkpointing, a compiled graph) is the *unattributed* part: :meth:`Uses.report` says which
parameters have one. A pass begins when the model is entered from outside (so a wrapper whose
``forward`` calls the model, e.g. a LightningModule, works) and ends at :meth:`Uses.end`.

``scales`` (``model.grad_scale``: use name or glob -> factor) multiply chosen uses' gradients on
every step; capture (on the steps telemetry logs) keeps each use's gradient after its scale, so
what is logged is what the optimizer gets.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Dict, List, Mapping, Optional, Set, Tuple

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.overrides import TorchFunctionMode

from .errors import ConfigError, UseNotFound

OUTSIDE = "outside"  # the site of a read outside the model's forward
UNATTRIBUTED = "unattributed"  # the use name of the part of .grad no view carried


def module_sites(model: nn.Module) -> Dict[nn.Module, List[str]]:
    """Every module -> all the names it has in the model (a shared module has several, in order).
    The model itself is named by its class."""
    sites: Dict[nn.Module, List[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        sites.setdefault(module, []).append(name or type(model).__name__)
    return sites


def in_backward() -> bool:
    """Whether autograd's engine is running (a forward recomputed in backward)."""
    return torch._C._current_graph_task_id() != -1


class ModuleCalls:
    """Which module call of ``model`` is running, and the name of each call: a module's k-th call
    in a pass is its k-th name (beyond its names ``<last name>#k``). Global module hooks, in place
    only between :meth:`start` and :meth:`stop`; a pass begins at :meth:`start` and whenever the model
    itself is entered from outside it (the call counts start over), so a loop that calls the model
    through a wrapper, or its parts one by one, is named as it runs. ``begin()``, if given, is called
    when a call of the model's modules starts from outside them. Calls made while autograd recomputes a forward
    in backward are not use sites (``recomputed`` records that one happened). ``post(module, site,
    output)``, if given, is called as each call of ``model``'s modules returns."""

    def __init__(self, model: nn.Module, post=None, begin=None):
        self.root, self.names = model, module_sites(model)
        self.post, self.begin = post, begin
        self.stack: List[Tuple[Optional[nn.Module], str]] = []  # the calls in progress, innermost last
        self.calls: Dict[nn.Module, int] = {}
        self.recomputed = False
        self._handles: list = []

    def start(self) -> None:
        if not self._handles:
            self._handles = [register_module_forward_pre_hook(self._enter),
                             register_module_forward_hook(self._leave, always_call=True)]
        self.stack, self.calls = [], {}

    def stop(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self.stack = [], []

    def site(self, module: nn.Module, k: int) -> str:
        names = self.names[module]
        return names[k] if k < len(names) else f"{names[-1]}#{k}"

    def _enter(self, module: nn.Module, args) -> None:
        if module not in self.names:
            return
        if in_backward():
            self.recomputed = True
            self.stack.append((None, ""))  # not a use site: reads here are not split
            return
        if not self.stack:
            if self.begin is not None and torch.is_grad_enabled():  # (an evaluation pass is not a step's)
                self.begin()
            if module is self.root:
                self.calls = {}  # a new pass (the model's modules called one by one count on until stop)
        k = self.calls.get(module, 0)
        self.calls[module] = k + 1
        self.stack.append((module, self.site(module, k)))

    def _leave(self, module: nn.Module, args, output) -> None:
        if module in self.names and self.stack:
            _, site = self.stack.pop()
            if self.post is not None and site:
                self.post(module, site, output)


# Reads that carry no gradient: never a use (a checkpoint's state_dict() detaches every parameter).
NOT_A_USE = frozenset({
    "__get__", "__set__", "detach", "detach_", "requires_grad_", "size", "dim", "numel", "nelement", "ndimension",
    "data_ptr", "is_contiguous", "stride", "storage_offset", "element_size", "__len__", "__repr__", "__format__",
    "is_floating_point", "is_complex", "untyped_storage", "__reduce_ex__", "__deepcopy__", "share_memory_",
    "__hash__", "__bool__", "item", "tolist", "numpy"})


class _UseMode(TorchFunctionMode):
    """Gives every read of a watched parameter its own view, named by :class:`Uses`."""

    def __init__(self, uses: "Uses"):
        super().__init__()
        self.uses = uses

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        watched = self.uses.watched
        if not torch.is_grad_enabled() or getattr(func, "__name__", "") in NOT_A_USE:
            return func(*args, **kwargs)
        found = [i for i, a in enumerate(args) if id(a) in watched or (
            type(a) in (list, tuple) and any(id(x) in watched for x in a))]
        keys = [k for k, a in kwargs.items() if id(a) in watched]
        if (found or keys) and not in_backward():  # (a forward recomputed in backward is not split)
            view = self.uses.view
            args = list(args)
            for i in found:
                a = args[i]
                args[i] = view(a) if id(a) in watched else type(a)(view(x) if id(x) in watched else x for x in a)
            kwargs = {**kwargs, **{k: view(kwargs[k]) for k in keys}}
        return func(*args, **kwargs)


class Uses:
    """Each use of ``model``'s trainable parameters, on the passes that need it.

    ``arm(capture)`` before a training step: from the next time the model is entered, the reads of
    its parameters get views (every parameter's when capturing, else only those with a scaled use);
    ``end()`` after backward ends the step. After a captured step, :meth:`attribute` gives each
    parameter used more than once its uses' gradients (forward order), the unattributed part
    included.
    """

    def __init__(self, model: nn.Module, scales: Optional[Mapping[str, float]] = None):
        self.model = model
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.name_of: Dict[int, str] = {id(p): n for n, p in named}
        self.params: Dict[str, nn.Parameter] = dict(named)
        self.leaf_of: Dict[Tuple[nn.Module, int], str] = {
            (m, id(p)): leaf for m in model.modules() for leaf, p in m._parameters.items() if p is not None}
        self.scales = dict(scales or {})
        for key, factor in self.scales.items():
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor):
                raise ConfigError(f"model.grad_scale.{key}={factor!r}: must be a finite number.")
        self.calls = ModuleCalls(model, begin=self._begin)
        self._mode = _UseMode(self)
        self.capturing = self.active = self.armed = False
        self.watched: Dict[int, nn.Parameter] = {}  # id -> parameter: those whose reads get views now
        self.scaled: Set[int] = set()  # the parameters that had a scaled use: their reads get views every step
        self.first = True  # the first armed step looks at every parameter, to find the scaled ones
        self._clear()

    def _clear(self) -> None:
        self.scaled_uses: Set[str] = set()  # the scaled uses that occurred this step
        self.occurred: Dict[str, None] = {}  # every use of a watched parameter this step, in order
        self.order: Dict[str, List[str]] = {}  # canonical -> its uses, in forward order
        self.grads: Dict[str, Dict[str, torch.Tensor]] = {}  # canonical -> use -> gradient

    # -- a step --------------------------------------------------------------------------------
    def arm(self, capture: bool) -> None:
        """Split the next pass's reads into uses: every parameter's (``capture``), or only the
        scaled uses' parameters'. Nothing happens on a pass with neither."""
        self.capturing = capture
        if not (capture or self.scales):
            return
        self.armed = True
        if capture or self.first:
            self.watched = {id(p): p for p in self.params.values()}
        else:
            self.watched = {i: p for i, p in ((id(p), p) for p in self.params.values()) if i in self.scaled}
        self._clear()
        self.calls.start()

    def _begin(self) -> None:
        """A module of the model is entered: views from here until :meth:`end` (the mode is not on
        while the loop builds an optimizer or loads data)."""
        if not self.active:
            self._mode.__enter__()
            self.active = True

    def end(self) -> None:
        """After backward: no more views. A scaled use that did not occur is an error naming it and
        the uses that did."""
        self.armed = False
        self.calls.stop()
        ran, self.watched = self.active, {}
        if self.active:
            self._mode.__exit__(None, None, None)
            self.active = False
        if self.scales and ran:  # (armed for a step that never came: nothing to check)
            self._check_scales()
            self.first = False

    def close(self) -> None:
        self.capturing = False
        self.end()

    # -- what the mode calls ------------------------------------------------------------------
    def use_name(self, param: nn.Parameter) -> str:
        if not self.calls.stack:
            return f"{self.name_of[id(param)]}@{OUTSIDE}"
        module, site = self.calls.stack[-1]
        leaf = self.leaf_of.get((module, id(param)))
        return f"{site}.{leaf}" if leaf else f"{self.name_of[id(param)]}@{site}"

    def view(self, param: nn.Parameter) -> torch.Tensor:
        """A fresh view of ``param`` for one read, with the hooks its use needs (or ``param``
        itself where nothing is needed)."""
        use = self.use_name(param)
        self.occurred[use] = None
        factor = self._factor(use) if self.scales else None
        if factor is not None:
            self.scaled.add(id(param))
            self.scaled_uses.add(use)
        elif not self.capturing:
            return param
        view = param.view_as(param)
        if factor is not None:
            view.register_hook(lambda grad, f=factor: grad * f)
        if self.capturing:
            canonical = self.name_of[id(param)]
            order = self.order.setdefault(canonical, [])
            if use not in order:
                order.append(use)
            view.register_hook(self._keeper(canonical, use))  # after the scale: what the optimizer gets
        return view

    def _factor(self, use: str) -> Optional[float]:
        for key, factor in self.scales.items():
            if key == use or fnmatch.fnmatchcase(use, key):
                return float(factor)
        return None

    def _keeper(self, canonical: str, use: str):
        def keep(grad: torch.Tensor) -> None:
            found = self.grads.setdefault(canonical, {})
            found[use] = grad if use not in found else found[use] + grad
        return keep

    # -- after the step -----------------------------------------------------------------------
    def _check_scales(self) -> None:
        missing = [key for key in self.scales
                   if not any(key == use or fnmatch.fnmatchcase(use, key) for use in self.scaled_uses)]
        if missing:
            raise UseNotFound(missing, list(self.occurred))

    def attribute(self) -> Tuple[Dict[str, Dict[str, torch.Tensor]], Dict[str, str]]:
        """After a captured step (``.grad`` complete): each parameter used more than once ->
        use -> gradient in forward order, with an ``unattributed`` use for what reached ``.grad``
        through no view; and the parameters whose gradient could not be split at all -> why. (A distributed
        run has averaged ``grads`` across processes before: ``telemetry.tied.Tied.batch_values``.)"""
        shared, unsplit = {}, {}
        for canonical, param in self.params.items():
            grad = param.grad
            if grad is None:
                continue
            found = self.grads.get(canonical)
            if found:
                uses = {u: found[u] for u in self.order[canonical] if u in found}
                if len(uses) == 1 and torch.equal(grad, next(iter(uses.values()))):
                    continue  # read once, and .grad is that read's: not shared
                residual = grad - sum(uses.values())
                if not _negligible(residual, uses.values()):
                    uses[UNATTRIBUTED] = residual
                if len(uses) > 1:
                    shared[canonical] = uses
            elif self.capturing:
                unsplit[canonical] = "its gradient reached .grad through no use the lens saw"
        return shared, unsplit

    def release(self) -> None:
        """Drop the captured gradients (after :meth:`attribute`): a logged step's per-use gradients live
        only as long as its caller keeps them (the tied signal keeps the shared parameters' for
        ``Lens.uses()``), not until the next logged step."""
        self.grads = {}


def _negligible(residual: torch.Tensor, parts) -> bool:
    """Whether ``residual`` is rounding: the uses' sum and ``.grad`` add the same numbers in
    another order."""
    parts = list(parts)
    scale = sum(float(torch.linalg.vector_norm(p, dtype=torch.float64)) for p in parts) + 1e-30
    return float(torch.linalg.vector_norm(residual, dtype=torch.float64)) <= 1e-5 * len(parts) * scale


def discover_uses(model: nn.Module, sample, scales: Mapping[str, float]) -> None:
    """One forward pass on ``sample`` (in eval mode, random state kept) to check that every scaled
    use occurs: a typo in ``model.grad_scale`` is refused before training starts."""
    uses = Uses(model, scales)
    was_training = model.training
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            model.eval()
            uses.arm(capture=False)
            model(sample)
    finally:
        model.train(was_training)
        uses.end()  # raises UseNotFound naming what did occur
