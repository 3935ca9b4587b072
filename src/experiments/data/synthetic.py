"""The book's synthetic regression data: ``X ~ N(0, 1)``, ``y = Xw + b + noise * N(0, 1)``.

    python train.py data=synthetic data.n_train=5000 data.batch_size=64
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
from omegaconf import DictConfig

from ..errors import ConfigError
from ..memory import check_fits
from .dataset import DataConfig, Dataset


@dataclass
class Config(DataConfig):
    _target_: str = "experiments.data.synthetic.load"
    name: str = "synthetic"
    true_w: List[float] = field(default_factory=lambda: [2.0, -3.4, 1.0, -0.5])  # w of y = Xw + b + noise
    true_b: float = 4.2  # b of y = Xw + b + noise
    noise: float = 0.01  # the standard deviation of the noise
    n_train: int = 1000  # training examples
    n_val: int = 1000  # validation examples


def load(cfg: DictConfig, seed: int) -> Dataset:
    if cfg.noise < 0:
        raise ConfigError(f"data.noise={cfg.noise}: a noise level cannot be negative.")
    n = cfg.n_train + cfg.n_val
    check_fits(n * (len(cfg.true_w) + 1) * 4, f"data=synthetic: {n:,} rows of {len(cfg.true_w)} features and a "
               f"target", f"data.n_train={cfg.n_train}, data.n_val={cfg.n_val}", "Use fewer rows.")
    gen = torch.Generator().manual_seed(seed)
    w = torch.tensor(list(cfg.true_w), dtype=torch.float32)
    x = torch.normal(0.0, 1.0, (n, len(w)), generator=gen)
    y = x @ w + cfg.true_b + cfg.noise * torch.normal(0.0, 1.0, (n,), generator=gen)
    y = y.reshape(-1, 1)
    return Dataset(x[: cfg.n_train], y[: cfg.n_train], x[cfg.n_train:], y[cfg.n_train:],
                   cfg.task, cfg.batch_size, 1)
