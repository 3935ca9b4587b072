"""Data: one module per source, chosen by ``_target_`` in ``conf/data/<name>.yaml``.

A source module has a ``Config`` dataclass (extending :class:`DataConfig`, with ``name`` and
``_target_`` set) and a loader ``load(cfg, seed) -> Dataset``. ``config.register_configs``
finds every ``Config`` in this package and stores it as ``schema/data/<name>``, so a new
dataset is a module here plus a YAML that names its schema. A loader outside the package
works too: a YAML with its ``_target_`` and the keys of :class:`DataConfig`.
"""

from __future__ import annotations

import dataclasses

from omegaconf import DictConfig, OmegaConf, open_dict

from ..errors import ConfigError
from ..targets import resolve
from .dataset import DataConfig, Dataset, split, standardize

__all__ = ["DataConfig", "Dataset", "load_data", "split", "standardize"]

TASKS = ("regression", "classification", "next_token")


def complete(cfg: DictConfig) -> None:
    """Give a data config of the user's own (a YAML with a ``_target_`` and no schema of ours) the
    keys every data config has, with :class:`DataConfig`'s defaults."""
    if "_target_" not in cfg:
        raise ConfigError("data: no _target_; a data config names its loader, e.g. "
                          "_target_: experiments.data.synthetic.load.")
    with open_dict(cfg):
        for f in dataclasses.fields(DataConfig):
            if f.name not in cfg:
                cfg[f.name] = cfg._target_ if f.name == "name" else f.default


def load_data(cfg: DictConfig, seed: int) -> Dataset:
    """Build the dataset that ``cfg`` (the ``data`` node) names, and check it fits the config."""
    complete(cfg)
    missing = [key for key in cfg if OmegaConf.is_missing(cfg, key)]
    if missing:
        raise ConfigError(f"data={cfg.name} needs {', '.join(f'data.{k}' for k in missing)}: give "
                          f"{' '.join(f'data.{k}=...' for k in missing)} on the command line (or in its YAML).")
    if cfg.task not in TASKS:
        raise ConfigError(f"data.task={cfg.task!r}: must be one of {', '.join(TASKS)}.")
    for key in ("n_train", "n_val", "batch_size"):
        if key in cfg and cfg[key] < 1:
            raise ConfigError(f"data.{key}={cfg[key]}: must be at least 1 to form a batch.")
    loader = resolve(cfg._target_, "data._target_")
    data = loader(cfg, seed)
    if cfg.task != data.task:  # a source whose task is fixed (digits, zipf_text, ...) ignores the key
        raise ConfigError(f"data.task={cfg.task!r}, but the {cfg.name} data is a {data.task} task: drop data.task "
                          f"(this data fixes it).")
    if cfg.num_outputs is not None and cfg.num_outputs != data.num_outputs:
        raise ConfigError(f"data.num_outputs={cfg.num_outputs}, but the {cfg.name} data needs "
                          f"{data.num_outputs} outputs. Leave it unset (null) to take it from the data.")
    return data
