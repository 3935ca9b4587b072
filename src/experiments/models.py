"""Build a network from its YAML spec.

Hydra's ``instantiate`` cannot make one object appear in two places, and a tied
layer is exactly that, so models are built here. A spec (``model.layers``) is a
list whose items are one of:

- ``{_target_: torch.nn.Linear, out_features: 8}``: any ``torch.nn`` module (or any
  callable returning one) with its keyword arguments. With ``model.lazy`` on, a
  class that has a ``Lazy`` twin and is given no input size becomes that twin
  (``Linear`` -> ``LazyLinear``), so input sizes come from the first batch.
- ``shared``: a plain string names a layer declared once under ``model.shared``;
  every mention is the same module object.
- ``{repeat: N, body: [...]}``: ``body`` N times, spliced in place; with
  ``name: "block {i}"`` the copies become one ``Sequential`` child holding N named
  ``Sequential`` blocks (the seed's ``rgnet``).
- ``{sequential: [...]}``: one nested ``Sequential`` child.

A model config with a ``_target_`` instead of ``layers`` is one call of any callable that returns a
module (a class of the user's own, a Hugging Face model): see ``target_models.py``.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, List

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .errors import ConfigError
from .target_models import build_target_model, complete, is_target_model
from .targets import resolve

# The argument that carries the input size, for classes that have a Lazy twin.
_INPUT_ARGS = ("in_features", "in_channels", "num_features")


def _lazy_twin(cls: type, kwargs: Dict[str, Any]) -> type:
    twin = getattr(nn, "Lazy" + cls.__name__, None)
    if twin is None or getattr(nn, cls.__name__, None) is not cls:
        return cls
    params = list(inspect.signature(cls.__init__).parameters)[1:2]
    if params and params[0] in _INPUT_ARGS and params[0] not in kwargs:
        return twin
    return cls


class _Builder:
    def __init__(self, lazy: bool, shared_specs: Dict[str, Any]):
        self.lazy = lazy
        self.shared_specs = shared_specs
        self.shared: Dict[str, nn.Module] = {}

    def layer(self, spec: Any, where: str) -> nn.Module:
        if isinstance(spec, dict) and "_target_" in spec:
            kwargs = {k: v for k, v in spec.items() if k != "_target_"}
            factory = resolve(spec["_target_"], f"{where}._target_")
            if inspect.isclass(factory) and self.lazy:
                factory = _lazy_twin(factory, kwargs)
            try:
                module = factory(**kwargs)
            except TypeError as e:
                raise ConfigError(f"{where}: {spec['_target_']}({kwargs}) failed: {e}") from None
            if not isinstance(module, nn.Module):
                raise ConfigError(f"{where}: '{spec['_target_']}' did not return a torch.nn.Module")
            return module
        if isinstance(spec, dict) and "sequential" in spec:
            return nn.Sequential(*self.items(spec["sequential"], f"{where}.sequential"))
        raise ConfigError(
            f"{where}: cannot read layer spec {spec!r}. A layer is a dict with '_target_', "
            f"a name from model.shared, {{repeat: N, body: [...]}} or {{sequential: [...]}}."
        )

    def use_shared(self, name: str, where: str) -> nn.Module:
        if name not in self.shared_specs:
            declared = ", ".join(self.shared_specs) or "none"
            raise ConfigError(
                f"{where}: the layer '{name}' is not declared under model.shared "
                f"(declared: {declared}). Declare a shared layer once by name, then use the name."
            )
        if name not in self.shared:
            self.shared[name] = self.layer(self.shared_specs[name], f"model.shared.{name}")
        return self.shared[name]

    def items(self, specs: List[Any], where: str) -> List[nn.Module]:
        modules: List[nn.Module] = []
        for i, spec in enumerate(specs):
            here = f"{where}[{i}]"
            if isinstance(spec, str):
                modules.append(self.use_shared(spec, here))
            elif isinstance(spec, dict) and "repeat" in spec:
                modules.extend(self.repeat(spec, here))
            else:
                modules.append(self.layer(spec, here))
        return modules

    def repeat(self, spec: Dict[str, Any], where: str) -> List[nn.Module]:
        n, body, name = spec["repeat"], spec.get("body", []), spec.get("name")
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"{where}.repeat: must be a positive integer, got {n!r}")
        copies = [self.items(body, f"{where}.body") for _ in range(n)]
        if name is None:
            return [m for copy in copies for m in copy]
        group = nn.Sequential()
        for i, copy in enumerate(copies):
            group.add_module(name.format(i=i), nn.Sequential(*copy))
        return [group]


def check_model_config(cfg: DictConfig) -> None:
    """What the schema cannot say about ``cfg`` (the ``model`` node), before the data is loaded: a
    layer list's sizes (but ``out_features``, which may come from the data); a ``_target_`` model's
    own keys (completed with their defaults)."""
    if is_target_model(cfg):
        complete(cfg)
        return
    for key in ("width", "depth", "blocks", "bottleneck", "uses", "hidden"):
        if cfg[key] < 1:
            raise ConfigError(f"model.{key}={cfg[key]}: must be at least 1.")


def build_model(cfg: DictConfig) -> nn.Module:
    """Build the (possibly lazy) network that ``cfg`` (the ``model`` node) declares: a ``Sequential``
    of its layers, or what its ``_target_`` returns."""
    check_model_config(cfg)
    if is_target_model(cfg):
        return build_target_model(cfg)
    if cfg.out_features < 1:  # (from the data, known once it is loaded)
        raise ConfigError(f"model.out_features={cfg.out_features}: must be at least 1.")
    plain = OmegaConf.to_container(cfg, resolve=True)
    builder = _Builder(plain["lazy"], plain["shared"] or {})
    return nn.Sequential(*builder.items(plain["layers"], "model.layers"))


@torch.no_grad()
def materialize(model: nn.Module, sample: torch.Tensor) -> Any:
    """Run one forward pass so lazy layers learn their input sizes; returns the model's output."""
    return model(sample)


def has_uninitialized(model: nn.Module) -> bool:
    return any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters())
