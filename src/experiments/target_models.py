"""Models built by any importable callable: a model config whose ``_target_`` names it.

    python train.py model=custom model._target_=mypkg.TinyLM +model.vocab=64
    python train.py model=hf_gpt2 data=zipf_text

A model config with a ``_target_`` (and no ``layers``) is one call: ``_target_`` names a class or
function (a dotted path) that returns a ``torch.nn.Module``, and every other key is a keyword
argument, except the keys every model has (:class:`OwnKeys`: ``name``, ``tie``,
``tie_embeddings``, ``grad_scale``), which mean what they mean for our layer-list models and are
never passed. An argument that is itself a mapping with a ``_target_`` is built first, depth first,
as Hydra's ``instantiate`` does (``config: {_target_: transformers.GPT2Config, n_layer: 2}``);
lists are walked too, and ``_args_`` gives positional arguments.

Paths resolve through :func:`targets.resolve`, so a config read back from a run folder names only
what ``allow_targets`` allows (``transformers.*``), nested paths included.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException
from torch import nn

from .errors import ConfigError
from .targets import resolve

CALL_KEYS = ("_target_", "_args_")  # Hydra's _partial_, _recursive_, _convert_ are not supported


@dataclass
class OwnKeys:
    """The keys of a ``_target_`` model config that are ours, not the callable's arguments."""

    name: Optional[str] = None  # the model's name in logs and messages; None: the _target_
    tie: List[List[str]] = field(default_factory=list)  # groups of parameter names to tie
    tie_embeddings: bool = True  # false: model.tie's parameters start as copies, not tied
    grad_scale: Dict[str, float] = field(default_factory=dict)  # use -> gradient factor


OWN_KEYS = tuple(f.name for f in dataclasses.fields(OwnKeys))
OWN_KEY_TYPES = {"name": "a string", "tie_embeddings": "true or false",
                 "tie": "a list of groups of parameter names, e.g. [[embed.weight,head.weight]]",
                 "grad_scale": "a mapping of uses to factors, e.g. {head.weight: 0.5}"}


def target_model_defaults() -> Dict[str, Any]:
    """``schema/target_model``: ``_target_`` (to be given) and the own keys' defaults, as a plain
    mapping (no dataclass, so the callable's arguments may be any keys)."""
    return {"_target_": "???", **dataclasses.asdict(OwnKeys())}


def is_target_model(cfg: DictConfig) -> bool:
    """A ``_target_`` model config (the key may still be ``???``: ``model=custom`` without it)."""
    return "_target_" in cfg.keys()


def complete(cfg: DictConfig) -> None:
    """Check the own keys' types and fill in those not given, with :class:`OwnKeys`' defaults
    (``name``: the ``_target_``). A ``_target_`` left ``???`` is an error that says how to give it."""
    if OmegaConf.is_missing(cfg, "_target_"):
        raise ConfigError("model._target_ is not set: name the class (or function) that builds your model, e.g. "
                          "python train.py model=custom model._target_=mypkg.TinyLM +model.vocab=64 (every other "
                          "+model.<key> is one of its arguments).")
    if "layers" in cfg.keys():
        raise ConfigError(f"model._target_={cfg._target_} and model.layers: a model config is either a list of "
                          f"layers or one _target_ call, not both. Drop one of them.")
    checked = OmegaConf.structured(OwnKeys)
    for key in OWN_KEYS:
        if key in cfg.keys():
            value = cfg[key]
            try:
                checked[key] = value
            except OmegaConfBaseException:
                shown = OmegaConf.to_yaml(value).strip() if OmegaConf.is_config(value) else repr(value)
                raise ConfigError(f"model.{key}={shown}: must be {OWN_KEY_TYPES[key]}.") from None
    with open_dict(cfg):
        for key in OWN_KEYS:
            if key not in cfg.keys():
                cfg[key] = checked[key]
        if cfg.name is None:
            cfg.name = str(cfg._target_)


def _build(node: Any, where: str) -> Any:
    """``node`` with every mapping that has a ``_target_`` replaced by what its call returns."""
    if isinstance(node, dict):
        if "_target_" in node:
            return _call(node, where)
        return {k: _build(v, f"{where}.{k}") for k, v in node.items()}
    if isinstance(node, list):
        return [_build(v, f"{where}[{i}]") for i, v in enumerate(node)]
    return node


def _call(node: Dict[str, Any], where: str) -> Any:
    unsupported = [k for k in node if k.startswith("_") and k.endswith("_") and k not in CALL_KEYS]
    if unsupported:
        raise ConfigError(f"{where}.{unsupported[0]}: not supported in a model config (only _target_ and _args_); "
                          f"write a function of your own that builds the object and name it by _target_.")
    path = node["_target_"]
    factory = resolve(path, f"{where}._target_")
    if not callable(factory):
        raise ConfigError(f"{where}._target_={path}: not a class or function.")
    args = _build(list(node.get("_args_", [])), f"{where}._args_")
    kwargs = {k: _build(v, f"{where}.{k}") for k, v in node.items() if k not in CALL_KEYS}
    try:
        return factory(*args, **kwargs)
    except (TypeError, ValueError) as e:
        shown = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])
        raise ConfigError(f"{where}: {path}({shown}) failed: {type(e).__name__}: {e}") from None


def build_target_model(cfg: DictConfig) -> nn.Module:
    """The module that ``cfg`` (the ``model`` node, a ``_target_`` call) builds."""
    complete(cfg)
    try:
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:
        raise ConfigError(f"model.{e.full_key} is not set (???): give it on the command line, "
                          f"e.g. model.{e.full_key}=...") from None
    call = {k: v for k, v in plain.items() if k not in OWN_KEYS}
    model = _call(call, "model")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model._target_={plain['_target_']} returned a {type(model).__module__}."
                          f"{type(model).__qualname__}, not a torch.nn.Module: name a class (or a function) "
                          f"that builds the model itself.")
    return model
