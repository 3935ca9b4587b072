"""Initialization schemes: ordered rules that pick parameters and name an init function.

A rule matches a parameter when its ``params`` glob matches any of the parameter's
names (aliases included), its ``module`` names the class of the module that owns it,
and its ``kind`` is the parameter's kind (:func:`kind_of`) or ``any``, and the parameter has at
least ``min_ndim`` dimensions.
Every matching rule runs, in order, so a later rule overrides an earlier one. A tied
parameter is initialized once. Lazy layers must be materialized first.

A parameter's kind comes from its attribute name split at ``_``: a name with the word ``bias``
is a bias, else one with the word ``weight`` is a weight, so PyTorch's own names are covered
(``weight``; ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh`` of ``RNNCell``/``GRUCell``/
``LSTMCell``; ``weight_ih_l0``, ``bias_hh_l1_reverse`` of ``RNN``/``GRU``/``LSTM``; ``in_proj_weight``,
``in_proj_bias``, ``bias_k`` of ``MultiheadAttention``; a parametrization's
``parametrizations.weight.original`` is a weight). A name with neither word (``cls_token``) has
no kind: only ``kind: any`` selects it, and a rule with a kind that skips such a parameter its
other selectors pick says so in the log.
"""

from __future__ import annotations

import logging
import re
from typing import Callable, Dict, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .errors import ConfigError
from .models import has_uninitialized
from .targets import resolve
from .tying import matching, parameter_aliases

log = logging.getLogger(__name__)


def d2l_custom_(tensor: torch.Tensor, low: float = -10.0, high: float = 10.0, threshold: float = 5.0) -> torch.Tensor:
    """The seed's ``my_init``: U(low, high), then every value with |w| < threshold set to 0."""
    with torch.no_grad():
        nn.init.uniform_(tensor, low, high)
        tensor.mul_(tensor.abs() >= threshold)
    return tensor


KINDS = ("weight", "bias", "any")
_PARAMETRIZED = re.compile(r"(?:^|\.)parametrizations\.([^.]+)\.original\d*$")


def kind_of(name: str) -> Optional[str]:
    """``"bias"``, ``"weight"`` or None for a parameter name (any dotted path): see the module docstring."""
    parametrized = _PARAMETRIZED.search(name)
    words = (parametrized.group(1) if parametrized else name.rpartition(".")[2]).split("_")
    if "bias" in words:
        return "bias"
    return "weight" if "weight" in words else None


def _init_function(path: str, where: str) -> Callable:
    fn = resolve(path, where, default_module="torch.nn.init")  # a bare name is a torch.nn.init function
    if not callable(fn):
        raise ConfigError(f"{where}: '{path}' is not a function.")
    return fn


def _owners(model: nn.Module) -> Dict[str, nn.Module]:
    """Parameter name (any alias) -> the module that holds it."""
    owners = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for leaf, _ in module.named_parameters(recurse=False, remove_duplicate=False):
            owners[f"{module_name}.{leaf}" if module_name else leaf] = module
    return owners


def initialize(model: nn.Module, cfg: DictConfig) -> Dict[str, str]:
    """Apply the scheme ``cfg`` (the ``init`` node). Returns canonical name -> rule that set it."""
    if cfg.std < 0:
        raise ConfigError(f"init.std={cfg.std}: a standard deviation cannot be negative.")
    if has_uninitialized(model):
        raise RuntimeError("initialize() needs materialized lazy layers: run one forward pass first.")
    params = dict(model.named_parameters())
    aliases = parameter_aliases(model)
    owners = _owners(model)
    set_by = {name: "pytorch default" for name in params}
    kindless: Dict[str, List[str]] = {}  # a parameter of no kind -> the kind rules whose other selectors picked it
    for i, rule in enumerate(cfg.rules):
        where = f"init.rules[{i}]"
        fn = _init_function(rule.fn, f"{where}.fn")
        args = OmegaConf.to_container(rule.args, resolve=True)
        if rule.kind not in KINDS:
            raise ConfigError(f"{where}.kind={rule.kind!r}: must be 'weight', 'bias' or 'any'.")
        matched: List[str] = []
        for name in matching(aliases, rule.params):
            p = params[name]
            if rule.module is not None and type(owners[name]).__name__ != rule.module.rpartition(".")[2]:
                continue
            if rule.kind != "any" and kind_of(name) != rule.kind:
                if kind_of(name) is None:
                    kindless.setdefault(name, []).append(f"{where} (kind={rule.kind})")
                continue
            if p.dim() < rule.get("min_ndim", 0):
                continue
            matched.append(name)
            with torch.no_grad():
                try:
                    fn(p, **args)
                except (TypeError, ValueError) as e:
                    raise ConfigError(f"{where}: {rule.fn}({name}, **{args}) failed: {e}") from None
            set_by[name] = f"{rule.fn}({', '.join(f'{k}={v}' for k, v in args.items())})"
            log.info("Init %s %s", name, p.shape)
        if not matched:
            raise ConfigError(
                f"{where} (fn={rule.fn}, params={rule.params!r}, module={rule.module}, kind={rule.kind}) "
                f"matches no parameter{'' if rule.kind == 'any' else ' of kind ' + rule.kind}: a typo, or a scheme "
                f"written for another model. Parameters: {', '.join(params)}."
            )
    skipped = {name: rules for name, rules in kindless.items() if set_by[name] == "pytorch default"}
    if skipped:
        log.warning("init: %s keep PyTorch's initial values: their names say neither weight nor bias, so the "
                    "kind rules that select them otherwise skip them (%s); a rule with kind: any naming them "
                    "initializes them", ", ".join(skipped),
                    "; ".join(f"{n}: {', '.join(r)}" for n, r in skipped.items()))
    return set_by
