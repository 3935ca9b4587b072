"""Dataclass schemas for every config group.

Each YAML file in ``conf/<group>/`` names its schema first in its defaults list
(``- /schema/<group>@_here_``), so Hydra rejects an unknown key or a value of the
wrong type while composing, before any work starts, with the key in the message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class ConfigError(ValueError):
    """A config value that cannot work. The message names the config path and value."""


@dataclass
class ModelConfig:
    """An architecture: a list of layer specs (see ``models.py`` for the spec language)."""

    name: str = MISSING
    width: int = 8  # hidden width
    depth: int = 1  # hidden layers of the plain MLP
    blocks: int = 4  # blocks of the nested network
    bottleneck: int = 4  # inner width of a nested block
    uses: int = 2  # how many times the tied network calls its shared layer
    activation: str = "torch.nn.ReLU"
    out_features: int = 1  # width of the last layer (the model YAMLs take it from data.num_outputs)
    lazy: bool = True  # LazyLinear & co. where an input size is not given
    shared: Dict[str, Any] = field(default_factory=dict)  # name -> layer spec, one object
    layers: List[Any] = MISSING
    tie: List[List[str]] = field(default_factory=list)  # groups of parameter names to tie


@dataclass
class InitRule:
    """Select parameters and name the function that initializes them in place."""

    fn: str = MISSING  # a torch.nn.init function ("xavier_uniform_") or a dotted path
    params: str = "*"  # glob over parameter names (any alias matches)
    module: Optional[str] = None  # class name of the owning module, e.g. "Linear"
    kind: str = "any"  # "weight", "bias" or "any": the parameter's attribute name
    args: Dict[str, Any] = field(default_factory=dict)


@dataclass
class InitConfig:
    """An initialization scheme: an ordered list of rules; later rules override earlier ones."""

    name: str = MISSING
    std: float = 0.01  # used by the normal scheme
    value: float = 1.0  # used by the constant scheme
    rules: List[InitRule] = field(default_factory=list)


@dataclass
class DataConfig:
    """What every dataset has: its task and output width (the model's last layer follows it)."""

    name: str = MISSING
    task: str = "regression"  # regression (MSE) | classification (cross-entropy, acc/* metrics)
    num_outputs: Optional[int] = 1  # width of the model's last layer; None: found from the data
    batch_size: int = 32


@dataclass
class SyntheticDataConfig(DataConfig):
    """The book's synthetic regression data: y = Xw + b + noise * N(0, 1)."""

    name: str = "synthetic"
    true_w: List[float] = field(default_factory=lambda: [2.0, -3.4, 1.0, -0.5])
    true_b: float = 4.2
    noise: float = 0.01
    n_train: int = 1000
    n_val: int = 1000


@dataclass
class DigitsDataConfig(DataConfig):
    """scikit-learn's bundled 8x8 handwritten digits (no download)."""

    name: str = "digits"
    task: str = "classification"
    num_outputs: Optional[int] = 10
    val_fraction: float = 0.2


@dataclass
class FashionMNISTConfig(DataConfig):
    """The four standard IDX files of Fashion-MNIST in ``root``."""

    name: str = "fashion_mnist"
    task: str = "classification"
    num_outputs: Optional[int] = 10
    root: str = "data/fashion_mnist"
    download: bool = False
    batch_size: int = 256


@dataclass
class CSVDataConfig(DataConfig):
    """A table of the user's: ``target`` column predicted from ``features`` (None: every other column)."""

    name: str = "csv"
    path: str = MISSING
    target: str = MISSING
    features: Optional[List[str]] = None
    num_outputs: Optional[int] = None
    val_fraction: float = 0.2


@dataclass
class SGDConfig:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = 0.03
    momentum: float = 0.0
    weight_decay: float = 0.0


@dataclass
class AdamConfig:
    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    lr: float = 0.001
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0


@dataclass
class TrainerConfig:
    epochs: int = 10
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    checkpoint_every: int = 1  # epochs between numbered checkpoints (0: only checkpoints/last.pt)
    resume: Optional[str] = None  # a run folder, a checkpoint file, or "auto" (this run folder's last.pt)
    freeze: List[str] = field(default_factory=list)  # globs of parameter names that are not trained


@dataclass
class Signal:
    """One telemetry signal: on or off, and how often (in optimizer steps)."""

    enabled: bool = True
    every: int = 10


@dataclass
class TelemetryConfig:
    enabled: bool = True  # master switch: off writes nothing but the loss curves
    # Each signal is logged at step 1 and then every `every` steps (cadences measured by scripts/bench.py).
    loss: Signal = field(default_factory=lambda: Signal(True, 10))
    param_norm: Signal = field(default_factory=lambda: Signal(True, 50))
    grad_norm: Signal = field(default_factory=lambda: Signal(True, 50))
    tied: Signal = field(default_factory=lambda: Signal(True, 50))  # summed and per-use gradients
    activations: Signal = field(default_factory=lambda: Signal(True, 100))
    update_ratio: Signal = field(default_factory=lambda: Signal(True, 100))
    histograms: Signal = field(default_factory=lambda: Signal(True, 1000))


SCHEMAS = {
    "model": ModelConfig,
    "init": InitConfig,
    "data/synthetic": SyntheticDataConfig,
    "data/digits": DigitsDataConfig,
    "data/fashion_mnist": FashionMNISTConfig,
    "data/csv": CSVDataConfig,
    "optim/sgd": SGDConfig,
    "optim/adam": AdamConfig,
    "trainer": TrainerConfig,
    "telemetry": TelemetryConfig,
}


def register_configs() -> None:
    """Store the schemas as ``schema/<group>`` so YAML files can extend them."""
    cs = ConfigStore.instance()
    for path, node in SCHEMAS.items():
        group, _, name = f"schema/{path}".rpartition("/")
        cs.store(group=group, name=name, node=node)
    from .sweeps import register_resolvers  # ${job_dirname:...} in hydra.sweep.subdir

    register_resolvers()
