"""scikit-learn's bundled 1,797 handwritten 8x8 digits: standardized, seeded split, no download.

    python train.py data=digits model=tied init=xavier
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from omegaconf import DictConfig

from .dataset import DataConfig, Dataset, split, standardize


@dataclass
class Config(DataConfig):
    _target_: str = "experiments.data.digits.load"
    name: str = "digits"
    task: str = "classification"
    num_outputs: Optional[int] = 10
    val_fraction: float = 0.2  # the share of the examples held out for validation (a seeded split)


def load(cfg: DictConfig, seed: int) -> Dataset:
    from sklearn.datasets import load_digits  # imported only when used: it is slow to import

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32)
    y = torch.tensor(bunch.target, dtype=torch.int64)
    train_x, train_y, val_x, val_y = split(x, y, cfg.val_fraction, seed)
    train_x, val_x = standardize(train_x, val_x)
    return Dataset(train_x, train_y, val_x, val_y, "classification", cfg.batch_size, 10)
