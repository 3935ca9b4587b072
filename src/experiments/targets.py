"""``_target_``: how every config names code to run, as a dotted path.

Layers (``models.py``), init functions (``initialization.py``) and data sources (``data/``)
all name their code the same way; this module turns the path into the object.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import ConfigError


def resolve(path: str, where: str, default_module: str = "torch.nn") -> Any:
    """Import ``a.b.C``; a bare name is looked up in ``default_module``.

    ``where`` is the config key, for the message when the path does not import.
    """
    module_name, _, attr = str(path).rpartition(".")
    try:
        return getattr(importlib.import_module(module_name or default_module), attr)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(
            f"{where}: cannot import '{path}'. Give a dotted path to a class or function, "
            f"for example 'torch.nn.Linear' or 'torch.nn.init.xavier_uniform_'."
        ) from None
