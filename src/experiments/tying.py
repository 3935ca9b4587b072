"""Tied parameters: find them, tie them from YAML, and check that ties still hold.

PyTorch drops duplicates from ``named_parameters()``: a tied parameter appears once,
under its first name (the *canonical* name). ``named_parameters(remove_duplicate=False)``
lists every name (the *aliases*). The tie manifest maps canonical name -> aliases and
travels with every saved set of weights.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Dict, List

from torch import nn

from .errors import BrokenTieError, ConfigError

TieManifest = Dict[str, List[str]]


@dataclass
class TieGroup:
    canonical: str  # the name named_parameters() gives
    aliases: List[str]  # every state_dict name of the same Parameter, canonical first
    param: nn.Parameter


def parameter_aliases(model: nn.Module) -> Dict[str, List[str]]:
    """Canonical name -> all names, for every unique parameter (tied or not)."""
    by_id: Dict[int, List[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return {names[0]: names for names in by_id.values()}


def matching(aliases: Dict[str, List[str]], pattern: str) -> List[str]:
    """Canonical names of the parameters any of whose names matches the glob ``pattern``
    (``aliases`` as :func:`parameter_aliases` returns it): a rule naming ``4.weight`` selects
    the parameter that ``named_parameters()`` calls ``2.weight``."""
    return [name for name, names in aliases.items() if any(fnmatch.fnmatchcase(n, pattern) for n in names)]


def tie_groups(model: nn.Module) -> List[TieGroup]:
    """The parameters that appear under more than one name."""
    params = dict(model.named_parameters())
    return [
        TieGroup(canonical, aliases, params[canonical])
        for canonical, aliases in parameter_aliases(model).items()
        if len(aliases) > 1
    ]


def tie_manifest(model: nn.Module) -> TieManifest:
    return {g.canonical: g.aliases for g in tie_groups(model)}


def _owner(model: nn.Module, name: str, where: str):
    module_path, _, leaf = name.rpartition(".")
    try:
        module = model.get_submodule(module_path) if module_path else model
    except AttributeError:
        module = None
    if module is None or not isinstance(getattr(module, leaf, None), nn.Parameter):
        valid = ", ".join(n for n, _ in model.named_parameters(remove_duplicate=False))
        raise ConfigError(f"{where}: no parameter named '{name}' in the model. Valid names: {valid}.")
    return module, leaf


def apply_param_ties(model: nn.Module, groups: List[List[str]]) -> None:
    """Make every name in each group refer to the first name's Parameter (``model.tie``)."""
    for g, names in enumerate(groups):
        where = f"model.tie[{g}]"
        if len(names) < 2:
            raise ConfigError(f"{where}={list(names)}: a tie needs at least two parameter names.")
        first_module, first_leaf = _owner(model, names[0], where)
        target = getattr(first_module, first_leaf)
        for name in names[1:]:
            module, leaf = _owner(model, name, where)
            other = getattr(module, leaf)
            if other.shape != target.shape:
                raise ConfigError(
                    f"{where}: cannot tie '{names[0]}' {tuple(target.shape)} with "
                    f"'{name}' {tuple(other.shape)}: the shapes differ."
                )
            setattr(module, leaf, target)


def untie(model: nn.Module, groups: List[List[str]]) -> Dict[str, str]:
    """Undo :func:`apply_param_ties`: every name after a group's first gets its own Parameter,
    a copy of the first's current values (the untied twin of a tied model starts where it does).
    Returns each copied name -> the name it copies."""
    copied = {}
    for g, names in enumerate(groups):
        first_module, first_leaf = _owner(model, names[0], f"model.tie[{g}]")
        source = getattr(first_module, first_leaf)
        for name in names[1:]:
            module, leaf = _owner(model, name, f"model.tie[{g}]")
            setattr(module, leaf, nn.Parameter(source.detach().clone(), requires_grad=source.requires_grad))
            copied[name] = names[0]
    return copied


def verify_ties(model: nn.Module, manifest: TieManifest) -> None:
    """Raise if a tie in ``manifest`` no longer holds (e.g. after ``load_state_dict(assign=True)``)."""
    found = dict(model.named_parameters(remove_duplicate=False))
    for canonical, aliases in manifest.items():
        for alias in aliases:
            if alias not in found:
                raise BrokenTieError(f"tie manifest: '{alias}' (tied to '{canonical}') is not a parameter of the model.")
            if found[alias] is not found[canonical]:
                raise BrokenTieError(
                    f"broken tie: '{canonical}' and '{alias}' should be one shared parameter "
                    f"but are now separate tensors (loading with assign=True or a device move "
                    f"can do this). Re-tie them, or load with load_state_dict(..., assign=False)."
                )
