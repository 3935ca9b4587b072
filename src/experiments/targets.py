"""``_target_``: how every config names code to run, as a dotted path.

Layers (``models.py``), init functions (``initialization.py``) and data sources (``data/``)
all name their code the same way; this module turns the path into the object.

A config the user wrote (their YAML, their command line) may name anything. A config read from a
run folder is data, like a checkpoint: while it is built (``with only_safe_targets(...)``) a path
resolves only to what a model config may contain (:func:`is_safe`): ``torch.nn`` modules,
``torch.nn.init`` functions, and this project's own layers, init functions and data loaders;
or to a path the caller allows explicitly. Anything else is refused before it is imported.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator, Optional, Sequence, Tuple

from .errors import ConfigError

SAFE_PREFIXES = ("torch.nn.", "experiments.")  # only paths under these are imported at all
_allowed: ContextVar[Optional[Tuple[str, ...]]] = ContextVar("allowed_targets", default=None)  # None: trust all


@contextmanager
def only_safe_targets(allow: Sequence[str] = ()) -> Iterator[None]:
    """While building a config read from a run folder: resolve only safe paths, and ``allow``
    (exact dotted paths or globs such as ``mypkg.layers.*``)."""
    token = _allowed.set(tuple(allow))
    try:
        yield
    finally:
        _allowed.reset(token)


def is_safe(obj: Any) -> bool:
    """A ``torch.nn`` module class or this project's own layer, a ``torch.nn.init`` function or one
    of this project's init functions, or a data loader of ``experiments.data``."""
    module = getattr(obj, "__module__", "") or ""
    if inspect.isclass(obj):
        import torch

        return issubclass(obj, torch.nn.Module) and module.startswith(SAFE_PREFIXES)
    if inspect.isfunction(obj):
        return (module == "torch.nn.init" or module == "experiments.initialization"
                or (module.startswith("experiments.data.") and obj.__name__ == "load"))
    return False


def _refuse(path: str, where: str) -> ConfigError:
    package = path.partition(".")[0]
    return ConfigError(
        f"{where}: refused to run '{path}': a config read from a run folder is data, and it may name only "
        f"torch.nn modules, torch.nn.init functions and this project's own layers, init functions and data "
        f"loaders. If you trust this folder, allow it explicitly: allow_targets={path} on the inspect command "
        f"line, or load_run(..., allow_targets=['{path}']); allow_targets='{package}.*' allows its whole package.")


def resolve(path: str, where: str, default_module: str = "torch.nn") -> Any:
    """Import ``a.b.C``; a bare name is looked up in ``default_module``.

    ``where`` is the config key, for the message when the path does not import (or is refused).
    """
    module_name, _, attr = str(path).rpartition(".")
    full = f"{module_name or default_module}.{attr}"
    allowed = _allowed.get()
    trusted = allowed is None or any(fnmatch.fnmatchcase(full, p) or fnmatch.fnmatchcase(str(path), p) for p in allowed)
    if not trusted and not full.startswith(SAFE_PREFIXES):
        raise _refuse(full, where)  # not even imported: importing a module can run code
    try:
        obj = getattr(importlib.import_module(module_name or default_module), attr)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(
            f"{where}: cannot import '{path}'. Give a dotted path to a class or function, "
            f"for example 'torch.nn.Linear' or 'torch.nn.init.xavier_uniform_'."
        ) from None
    if not trusted and not is_safe(obj):
        raise _refuse(full, where)
    return obj
