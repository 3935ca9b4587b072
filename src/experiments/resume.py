"""Resuming honestly: a checkpoint continues the experiment it was trained for, or says why not.

A checkpoint records the resolved config it was trained with. On resume it is compared with the
config of the resuming command: a difference that changes the experiment (model, init, data,
seed, optimizer, freeze, ...) is refused, naming each key with both values, unless
``trainer.resume_changes=allow``. Then the new values really are used (the optimizer's
hyperparameters are set from the new config after its state is loaded; a different optimizer
starts fresh) and the run's log says what changed. Keys in :data:`FREE` may change freely.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError

log = logging.getLogger(__name__)

FREE = ("trainer.epochs", "trainer.resume", "trainer.resume_changes", "trainer.checkpoint_every", "trainer.device",
        "trainer.progress_every_s", "trainer.check_every", "trainer.distributed", "trainer.distributed.*",
        "telemetry.*", "data.download", "data.download_timeout")
IMPLEMENTATION = {"fused", "foreach", "capturable", "differentiable"}  # how an optimizer runs, not what it does
SHOWN = 8  # differing keys named in the message; the rest are counted


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


ABSENT = _Absent()  # a key one of the two configs does not have


@dataclass
class Change:
    key: str
    old: Any  # the checkpoint's value
    new: Any  # this command's

    def effect(self) -> str:
        """What the new value does to a resumed run."""
        if self.key.startswith("init."):
            return "no effect: the weights come from the checkpoint"
        if self.key == "trainer.seed":
            return "used for the data (split, generated samples); the shuffle order and random state continue " \
                   "from the checkpoint"
        if self.key == "optim._target_":
            return "a new optimizer: it starts without the checkpoint's optimizer state"
        return "used from here on"

    def __str__(self) -> str:
        return f"{self.key}: {self.old!r} in the checkpoint, {self.new!r} now"


def free(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in FREE)


def _diff(old: Any, new: Any, key: str, out: List[Change]) -> None:
    if key and free(key):
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for k in [*old, *(k for k in new if k not in old)]:
            _diff(old.get(k, ABSENT), new.get(k, ABSENT), f"{key}.{k}" if key else str(k), out)
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            _diff(a, b, f"{key}[{i}]", out)
    elif old != new:
        out.append(Change(key, old, new))


def config_changes(saved_yaml: str, new_yaml: str) -> List[Change]:
    """The keys that differ between the checkpoint's config and this one (nested keys by their
    dotted path, ``model.layers[0].out_features``), free keys left out."""
    load = lambda text: OmegaConf.to_container(OmegaConf.create(text), resolve=True)  # noqa: E731
    changes: List[Change] = []
    _diff(load(saved_yaml), load(new_yaml), "", changes)
    return changes


def check_changes(changes: List[Change], allow: str, checkpoint: Path) -> None:
    """Refuse ``changes`` unless ``trainer.resume_changes=allow``."""
    if not changes or allow == "allow":
        return
    shown = "; ".join(map(str, changes[:SHOWN])) + (f"; and {len(changes) - SHOWN} more" if len(changes) > SHOWN else "")
    raise ConfigError(
        f"trainer.resume: {checkpoint} was trained with other settings than this command gives: {shown}. Resume with "
        f"the checkpoint's settings (drop or fix these overrides), start a new run in another folder, or add "
        f"trainer.resume_changes=allow to continue with the new values. Free to change: {', '.join(FREE)}.")


def describe(changes: List[Change]) -> str:
    """One line per change and what it does, for the run's log and TensorBoard's text tab."""
    return "\n".join(f"- {c}: {c.effect()}" for c in changes)


def set_hyperparameters(optimizer: torch.optim.Optimizer, optim: DictConfig) -> None:
    """Set every hyperparameter the config names in each param group (loading an optimizer's state
    brings back the checkpoint's values: without this a changed ``optim.lr`` would be ignored)."""
    values = {k: v for k, v in OmegaConf.to_container(optim, resolve=True).items()
              if not k.startswith("_") and k not in IMPLEMENTATION and v is not None}
    for group in optimizer.param_groups:
        for key, value in values.items():
            if key in group:
                group[key] = tuple(value) if isinstance(group[key], tuple) else value


def restore_hydra_config(run_dir: Path, saved_yaml: Optional[str]) -> None:
    """Hydra wrote this command's config into ``<run>/.hydra/config.yaml`` before the resume was refused:
    put back the config the run was trained with, so the folder still describes its run."""
    path = Path(run_dir) / ".hydra" / "config.yaml"
    if saved_yaml and path.is_file():
        path.write_text(saved_yaml)
        log.info("restored %s to the config the checkpoint was trained with", path)
