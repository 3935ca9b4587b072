"""The config: a dataclass schema for every group, registered with Hydra, and composition.

Each YAML file in ``conf/<group>/`` names its schema first in its defaults list
(``- /schema/<group>@_here_``) and states only what differs from it, so Hydra rejects an
unknown key or a value of the wrong type while composing, before any work starts, with the
key in the message. Two groups take their schemas from the code they configure:

- ``data``: each source module of ``experiments.data`` carries its ``Config`` (found here by
  :func:`data_schemas`), stored as ``schema/data/<name>``;
- ``telemetry``: one field per registered signal (:func:`telemetry_schema`).

A ``_target_`` model (``conf/model/custom.yaml``, ``hf_gpt2.yaml``) names ``schema/target_model``: not a
dataclass but a plain mapping of the keys every model has, so that its other keys, the callable's
arguments, are free (``target_models.complete`` checks the types of ours). A key that a dataclass
schema lacks is an error (:func:`check_known_keys`), also when ``+key=...`` added it.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .cli_help import register_help_resolver
from .data import DataConfig
from .errors import ConfigError
from .runs import register_resolvers
from .target_models import target_model_defaults
from .telemetry.monitor import SIGNALS
from .telemetry.signals import SignalConfig

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # the checkout's, when installed editable from one
PACKAGED_CONF_DIR = Path(__file__).resolve().parent / "conf"  # a copy shipped in the wheel (setup.py)


@dataclass
class ModelConfig:
    """An architecture: a list of layer specs (see ``models.py`` for the spec language)."""

    name: str = MISSING  # the option's name (conf/model/<name>.yaml)
    width: int = 8  # hidden width
    depth: int = 1  # hidden layers of the plain MLP
    blocks: int = 4  # blocks of the nested network
    bottleneck: int = 4  # inner width of a nested block
    uses: int = 2  # how many times the tied network calls its shared layer
    hidden: int = 64  # hidden width of the window language model (tied_lm)
    cell: str = "rnn"  # the unrolled recurrent cell: rnn (Elman) | gru
    activation: str = "torch.nn.ReLU"  # the activation module, by dotted path (torch.nn.Tanh)
    out_features: int = 1  # width of the last layer (the model YAMLs take it from data.num_outputs)
    lazy: bool = True  # LazyLinear & co. where an input size is not given
    shared: Dict[str, Any] = field(default_factory=dict)  # name -> layer spec, one object
    layers: List[Any] = MISSING  # the layer specs, in order (see models.py: _target_, shared names, repeat, sequential)
    tie: List[List[str]] = field(default_factory=list)  # groups of parameter names to tie
    tie_embeddings: bool = True  # false: model.tie's parameters start as copies, not tied (the untied twin)
    grad_scale: Dict[str, float] = field(default_factory=dict)  # use -> gradient factor: +model.grad_scale={0.weight:10}


@dataclass
class InitRule:
    """Select parameters and name the function that initializes them in place."""

    fn: str = MISSING  # a torch.nn.init function ("xavier_uniform_") or a dotted path
    params: str = "*"  # glob over parameter names (any alias matches)
    module: Optional[str] = None  # class name of the owning module, e.g. "Linear"
    kind: str = "any"  # "weight", "bias" or "any": the word in its attribute name (initialization.kind_of)
    min_ndim: int = 0  # only parameters with at least this many dimensions (2: matrices, not LayerNorm's gains)
    args: Dict[str, Any] = field(default_factory=dict)  # keyword arguments of fn: {std: 0.01}


@dataclass
class InitConfig:
    """An initialization scheme: an ordered list of rules; later rules override earlier ones."""

    name: str = MISSING  # the option's name (conf/init/<name>.yaml)
    std: float = 0.01  # used by the normal scheme
    value: float = 1.0  # used by the constant scheme
    gain: float = 1.0  # used by the recurrent scheme (orthogonal recurrent weights)
    rules: List[InitRule] = field(default_factory=list)  # every rule that matches runs, in order


@dataclass
class SGDConfig:
    _target_: str = "torch.optim.SGD"  # the optimizer class
    _partial_: bool = True  # built later, with the model's parameters
    lr: float = 0.03  # the learning rate
    momentum: float = 0.0  # the momentum factor (0: plain SGD)
    weight_decay: float = 0.0  # L2 penalty (added to the gradient)
    fused: Optional[bool] = None  # None: fused (skips a non-finite step on the device); false: foreach


@dataclass
class AdamConfig:
    _target_: str = "torch.optim.Adam"  # the optimizer class
    _partial_: bool = True  # built later, with the model's parameters
    lr: float = 0.001  # the learning rate
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # decay rates of the moment estimates
    eps: float = 1e-8  # added to the denominator
    weight_decay: float = 0.0  # L2 penalty (added to the gradient)
    fused: Optional[bool] = None  # None: fused (skips a non-finite step on the device); false: foreach


@dataclass
class DistributedConfig:
    """A run in several processes (torchrun, or a Slurm job of several tasks): see ``distributed.py``."""

    backend: str = "auto"  # auto (gloo on the CPU, nccl on CUDA) | gloo | nccl
    timeout_s: float = 600.0  # a rank that waits this long for the others (a hung rank) stops the run


@dataclass
class TrainerConfig:
    epochs: int = 10  # passes over the training data
    seed: int = 0  # seeds the data, the initialization and the shuffling: same seed, same numbers on the CPU
    device: str = "auto"  # auto | cpu | cuda
    checkpoint_every: int = 1  # epochs between numbered checkpoints (0: only checkpoints/last.pt)
    resume: Optional[str] = None  # a run folder, a checkpoint file, or "auto" (this run folder's last.pt)
    resume_changes: str = "refuse"  # allow: resume with settings that differ from the checkpoint's (they are used)
    freeze: List[str] = field(default_factory=list)  # globs of parameter names that are not trained
    progress_every_s: float = 10.0  # a progress line (step/steps, rate, ETA) within an epoch this often; 0: none
    clip_grad_norm: Optional[float] = None  # clip the total gradient norm to this (grad_norm/total logs it before)
    check_every: int = 100  # steps between checks for a non-finite loss or gradient (also on every logged step)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)  # torchrun / Slurm tasks: one run
    compile: bool = False  # torch.compile the model for the steps that log nothing (logged steps run it eagerly)
    precision: str = "fp32"  # fp32 | bf16 (autocast of the forward pass and loss to bfloat16)


PRECISIONS = ("fp32", "bf16")


def check_trainer(cfg: DictConfig) -> None:
    """What ``TrainerConfig``'s types cannot say."""
    for key in ("epochs", "checkpoint_every"):
        if cfg[key] < 0:
            raise ConfigError(f"trainer.{key}={cfg[key]}: must be 0 or more.")
    if cfg.resume_changes not in ("refuse", "allow"):
        raise ConfigError(f"trainer.resume_changes={cfg.resume_changes!r}: use refuse (the default) or allow.")
    if cfg.check_every < 1:
        raise ConfigError(f"trainer.check_every={cfg.check_every}: must be at least 1 (steps between checks "
                          f"for a non-finite loss or gradient).")
    if not cfg.distributed.timeout_s > 0:
        raise ConfigError(f"trainer.distributed.timeout_s={cfg.distributed.timeout_s}: must be a positive number of "
                          f"seconds.")
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={cfg.precision!r}: use {' or '.join(PRECISIONS)}.")
    if cfg.clip_grad_norm is not None and not cfg.clip_grad_norm > 0:
        raise ConfigError(f"trainer.clip_grad_norm={cfg.clip_grad_norm}: must be a positive norm (or null: no "
                          f"clipping).")


def check_optimizer(cfg: DictConfig) -> None:
    """The optimizer's settings, before anything is built: torch would accept some of these silently
    (``lr=inf``) and others only with a traceback."""
    finite = lambda v: isinstance(v, (int, float)) and v == v and abs(v) != float("inf")  # noqa: E731
    if "lr" in cfg and not (finite(cfg.lr) and cfg.lr > 0):
        raise ConfigError(f"optim.lr={cfg.lr}: the learning rate must be a positive finite number.")
    for key in ("momentum", "weight_decay"):
        if key in cfg and not (finite(cfg[key]) and cfg[key] >= 0):
            raise ConfigError(f"optim.{key}={cfg[key]}: must be a finite number, 0 or more.")
    if "eps" in cfg and not (finite(cfg.eps) and cfg.eps > 0):
        raise ConfigError(f"optim.eps={cfg.eps}: must be a positive finite number.")
    if "betas" in cfg:
        betas = list(cfg.betas)
        if len(betas) != 2 or not all(finite(b) and 0 <= b < 1 for b in betas):
            raise ConfigError(f"optim.betas={betas}: two numbers in [0, 1), e.g. [0.9, 0.999].")


def non_finite_values(node: Any, where: str = "") -> Iterator[Tuple[str, float]]:
    """``(key, value)`` of every number in ``node`` (a config, any depth) that is NaN or infinite. A value
    that cannot be resolved yet (an interpolation of a missing key, ``???``) is skipped: the code that
    reads it names it."""
    if isinstance(node, (DictConfig, ListConfig)):
        keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
        for key in keys:
            here = f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else str(key)
            try:
                if node._get_node(key)._is_interpolation():  # its source is checked where it is set
                    continue
                value = node[key]
            except OmegaConfBaseException:
                continue
            yield from non_finite_values(value, here)
    elif isinstance(node, float) and not math.isfinite(node):
        yield where, node


def check_finite(cfg: DictConfig) -> None:
    """Every number in the config is finite: a NaN or an infinity would otherwise be trained with and show
    up later as a divergence (``init.gain=nan``, ``model.grad_scale`` of ``inf``) or a wrong message. No key
    accepts one; the error names the key."""
    bad = [(key, value) for group in cfg if group != "hydra" for key, value in non_finite_values(cfg[group], group)]
    if bad:
        listed = ", ".join(f"{key}={value}" for key, value in bad)
        raise ConfigError(f"{listed}: not a finite number. No config key takes NaN or an infinity (training "
                          f"with one fails later, as a divergence or a message that points elsewhere): give a "
                          f"finite number.")


GROUPS_WITH_ARGUMENTS = ("optim",)  # extra keys are the optimizer's arguments: +optim.nesterov=true


def check_known_keys(cfg: DictConfig) -> None:
    """A key that a group's schema does not have is an error, not a setting nothing reads: Hydra lets
    ``+model._target_=mypkg.Net`` add a key to the layer-list model ``mlp``, which would then train
    the default layers silently. Nodes without a schema take any key (a data loader or a ``_target_``
    model of the user's own), and so does ``optim`` (its extra keys are the optimizer's arguments)."""
    for group in cfg.keys():
        if group not in GROUPS_WITH_ARGUMENTS:
            _check_node(cfg._get_node(group), str(group))


def _check_node(node: Any, where: str) -> None:
    if isinstance(node, ListConfig):
        for i in range(len(node)):
            _check_node(node._get_node(i), f"{where}[{i}]")
    if not isinstance(node, DictConfig) or node._is_missing() or node._is_none():
        return
    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        known = [f.name for f in dataclasses.fields(schema)]
        for key in node.keys():
            if key not in known:
                raise ConfigError(_unknown_key_message(f"{where}.{key}", schema, known, "layers" in known))
    for key in node.keys():
        _check_node(node._get_node(key), f"{where}.{key}")


def _unknown_key_message(key: str, schema: type, known: Sequence[str], layer_list: bool) -> str:
    if key == "model._target_" and layer_list:
        return ("model._target_: this model is a list of layers (its YAML names /schema/model), which has no "
                "_target_; the override would be ignored and the YAML's layers would train. For a model of your "
                "own class choose the custom model: python train.py model=custom model._target_=mypkg.TinyLM "
                "+model.vocab=64 (the other +model.<key> are its arguments), or a YAML of your own whose "
                "_target_ names it.")
    return (f"{key}: {schema.__name__} has no key '{key.rpartition('.')[2]}', so nothing would read it (the "
            f"override would be ignored). Its keys: {', '.join(known)}. Check the spelling (a key that exists "
            f"is set without '+').")


def telemetry_schema() -> type:
    """``telemetry``: a master switch and one :class:`SignalConfig` per registered signal, with
    that signal's default cadence. Each signal logs at step 1, then every ``every`` steps."""
    fields = [("enabled", bool, field(default=True))]  # false: only the loss curve
    for name, signal in SIGNALS.items():
        default = SignalConfig(enabled=signal.enabled, every=signal.every)
        fields.append((name, SignalConfig, field(default_factory=lambda d=default: dataclasses.replace(d))))
    return dataclasses.make_dataclass("TelemetryConfig", fields)


def data_schemas() -> Dict[str, type]:
    """``name`` -> ``Config`` of every source module in ``experiments.data``."""
    from . import data

    schemas = {}
    for info in pkgutil.iter_modules(data.__path__):
        config = getattr(importlib.import_module(f"{data.__name__}.{info.name}"), "Config", None)
        if isinstance(config, type) and dataclasses.is_dataclass(config) and issubclass(config, DataConfig):
            schemas[config.name] = config
    return schemas


def register_configs() -> None:
    """Store the schemas as ``schema/<group>`` so YAML files can extend them; register resolvers."""
    schemas = {"model": ModelConfig, "init": InitConfig, "optim/sgd": SGDConfig, "optim/adam": AdamConfig,
               "trainer": TrainerConfig, "telemetry": telemetry_schema()}
    schemas.update({f"data/{name}": config for name, config in data_schemas().items()})
    cs = ConfigStore.instance()
    for path, node in schemas.items():
        group, _, name = f"schema/{path}".rpartition("/")
        cs.store(group=group, name=name, node=node)
    cs.store(group="schema", name="target_model", node=target_model_defaults())  # a dict: any other key goes
    register_resolvers()
    register_help_resolver()


def find_conf_dir(start: Optional[Path] = None) -> Path:
    """The ``conf/`` to compose from: the project's the user stands in (``conf/config.yaml`` in the
    current folder or a parent of it), else the copy shipped with the package (a non-editable
    install), else the checkout the package is installed from (an editable install)."""
    here = Path(start or Path.cwd()).resolve()
    for candidate in [folder / "conf" for folder in (here, *here.parents)] + [PACKAGED_CONF_DIR, CONF_DIR]:
        if (candidate / "config.yaml").is_file():
            return candidate
    raise ConfigError(f"no conf/config.yaml in {here} or a folder above it, and none installed with the package "
                      f"({PACKAGED_CONF_DIR}): run from the project folder, or reinstall it with pip install .")


def compose_config(overrides: Sequence[str] = (), conf_dir: Optional[Path] = None) -> DictConfig:
    """The config ``python train.py <overrides>`` would run, composed with Hydra's compose API from
    ``conf_dir`` (default: :func:`find_conf_dir`)."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(Path(conf_dir or find_conf_dir()).resolve()), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))
