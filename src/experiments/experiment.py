"""Set up an experiment from a composed config: device, data, model, ties, init."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict

import torch
from omegaconf import DictConfig
from torch import nn

from . import distributed
from .config import check_finite, check_known_keys
from .data import Dataset, load_data
from .errors import ConfigError
from .fit import check_model_memory, check_outputs, input_mismatch
from .initialization import initialize
from .models import build_model, check_model_config, materialize
from .outputs import check_output
from .tying import TieManifest, apply_param_ties, matching, parameter_aliases, tie_manifest, untie, verify_ties

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when there is one, else the CPU. In a distributed run each process takes the
    GPU of its local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda: this machine has no CUDA device. "
                          "Use trainer.device=auto or trainer.device=cpu.")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"trainer.device={name!r}: unknown device; use auto, cpu or cuda.")
    group = distributed.current()
    if name == "cuda" and group is not None:
        return torch.device("cuda", group.local_rank)
    return torch.device(name)


def freeze(model: nn.Module, patterns) -> None:
    """Parameters whose name (any alias) matches a glob get ``requires_grad=False``."""
    aliases = parameter_aliases(model)
    params = dict(model.named_parameters())
    for i, pattern in enumerate(patterns):
        matched = matching(aliases, pattern)
        if not matched:
            raise ConfigError(f"trainer.freeze[{i}]={pattern!r} matches no parameter. Parameters: {', '.join(params)}.")
        for name in matched:
            params[name].requires_grad_(False)
    if patterns and not any(p.requires_grad for p in params.values()):
        raise ConfigError(f"trainer.freeze={list(patterns)}: freezes every parameter, so nothing would train. "
                          f"Freeze fewer (e.g. trainer.freeze=[0.*]), or inspect the model with "
                          f"scripts/inspect_params.py instead.")


def _built(cfg: DictConfig, batch: torch.Tensor) -> nn.Module:
    """The model as :func:`build_experiment` builds it, materialized on ``batch`` and tied (not initialized)."""
    model = build_model(cfg.model)
    materialize(model, batch)
    apply_param_ties(model, cfg.model.tie)
    return model


@dataclass
class Experiment:
    model: nn.Module
    data: Dataset
    device: torch.device
    init_rules: Dict[str, str]  # canonical parameter name -> the rule that set it
    manifest: TieManifest  # canonical parameter name -> every state_dict name


def build_experiment(cfg: DictConfig) -> Experiment:
    """Seed, load the data, build the model, materialize lazy layers on a sample batch,
    apply parameter ties, initialize, then move to the device and check the ties held.
    Same seed, same model and data. With ``model.tie_embeddings=false`` the ties of ``model.tie``
    are undone after initialization: the untied twin starts with the tied model's values."""
    check_known_keys(cfg)  # a key no schema has (+model._target_ on a layer-list model) is not ignored
    check_finite(cfg)  # a NaN or an infinity anywhere in the config, named before anything is built
    check_model_config(cfg.model)
    device = resolve_device(cfg.trainer.device)
    torch.manual_seed(cfg.trainer.seed)
    data = load_data(cfg.data, cfg.trainer.seed)  # each source checks its sizes against the memory first
    if cfg.data.num_outputs is None:  # "from the data": the model's last layer interpolates this
        cfg.data.num_outputs = data.num_outputs
    sample = data.sample_batch()
    check_model_memory(cfg, data, sample, device, lambda batch: _built(cfg, batch))  # on the meta device
    model = build_model(cfg.model)
    try:
        output = materialize(model, sample)
    except (RuntimeError, TypeError, ValueError, IndexError) as e:
        raise ConfigError(input_mismatch(cfg, model, data, sample, e)) from None
    if "layers" in cfg.model:  # our layer-list models: the width from model.out_features, named
        check_outputs(cfg, data, output, len(sample))
    check_output(output, sample, data.train_y[: len(sample)], data.task, data.num_outputs,
                 f"model={cfg.model.name} on data={cfg.data.name}")
    apply_param_ties(model, cfg.model.tie)
    init_rules = initialize(model, cfg.init)  # on the CPU: the same initial values on every device
    if not cfg.model.tie_embeddings:
        for name, source in untie(model, cfg.model.tie).items():
            init_rules[name] = f"copy of {source}"
    freeze(model, cfg.trainer.freeze)
    manifest = tie_manifest(model)
    model.to(device)
    verify_ties(model, manifest)  # a device move must not split a tie
    return Experiment(model, data.to(device), device, init_rules, manifest)
