"""Datasets as in-memory tensors, and batches as slices of a shuffled copy.

No per-sample ``DataLoader`` collation: each epoch shuffles the whole tensor once
(one ``index_select``) and yields contiguous slices of it. Loading happens once per run.
Regression targets are float ``(n, outputs)``; classification targets are int64 class indices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Tuple

import torch
from omegaconf import DictConfig

from .config import ConfigError


@dataclass
class Dataset:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    task: str  # "regression" (MSE) or "classification" (cross-entropy)
    batch_size: int
    num_outputs: int  # what the model's last layer must produce

    def to(self, device: torch.device) -> "Dataset":
        move = lambda t: t.to(device)  # noqa: E731
        return Dataset(move(self.train_x), move(self.train_y), move(self.val_x), move(self.val_y),
                       self.task, self.batch_size, self.num_outputs)

    def sample_batch(self) -> torch.Tensor:
        """A batch of inputs for materializing lazy layers."""
        return self.train_x[: self.batch_size]

    def batches(self, generator: torch.Generator, skip: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of shuffled training batches (the last one may be smaller), after
        skipping the first ``skip`` (to resume mid-epoch with the same order)."""
        n = self.train_x.shape[0]
        perm = torch.randperm(n, generator=generator).to(self.train_x.device)
        x, y = self.train_x.index_select(0, perm), self.train_y.index_select(0, perm)
        for start in range(skip * self.batch_size, n, self.batch_size):
            yield x[start:start + self.batch_size], y[start:start + self.batch_size]

    def steps_per_epoch(self) -> int:
        return -(-self.train_x.shape[0] // self.batch_size)


def split(x: torch.Tensor, y: torch.Tensor, val_fraction: float, seed: int, where: str):
    """A seeded random train/validation split."""
    if not 0 < val_fraction < 1:
        raise ConfigError(f"{where}.val_fraction={val_fraction}: must be between 0 and 1.")
    n_val = max(1, round(len(x) * val_fraction))
    if n_val >= len(x):
        raise ConfigError(f"{where}: {len(x)} rows cannot be split into training and validation rows.")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val, train = perm[:n_val], perm[n_val:]
    return x[train], y[train], x[val], y[val]


def standardize(train_x: torch.Tensor, *others: torch.Tensor):
    """Zero mean, unit variance per feature, with statistics of the training rows only."""
    mean, std = train_x.mean(0), train_x.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))  # constant features stay 0
    return [(t - mean) / std for t in (train_x, *others)]


def synthetic_regression(cfg: DictConfig, seed: int) -> Dataset:
    """The book's data: X ~ N(0, 1), y = Xw + b + noise * N(0, 1)."""
    if cfg.noise < 0:
        raise ConfigError(f"data.noise={cfg.noise}: a noise level cannot be negative.")
    gen = torch.Generator().manual_seed(seed)
    w = torch.tensor(list(cfg.true_w), dtype=torch.float32)
    n = cfg.n_train + cfg.n_val
    x = torch.normal(0.0, 1.0, (n, len(w)), generator=gen)
    y = x @ w + cfg.true_b + cfg.noise * torch.normal(0.0, 1.0, (n,), generator=gen)
    y = y.reshape(-1, 1)
    return Dataset(x[: cfg.n_train], y[: cfg.n_train], x[cfg.n_train:], y[cfg.n_train:],
                   cfg.task, cfg.batch_size, 1)


def digits(cfg: DictConfig, seed: int) -> Dataset:
    """scikit-learn's 1,797 handwritten 8x8 digits, standardized, seeded split."""
    from sklearn.datasets import load_digits  # imported only when used: it is slow to import

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32)
    y = torch.tensor(bunch.target, dtype=torch.int64)
    train_x, train_y, val_x, val_y = split(x, y, cfg.val_fraction, seed, "data")
    train_x, val_x = standardize(train_x, val_x)
    return Dataset(train_x, train_y, val_x, val_y, "classification", cfg.batch_size, 10)


def _fashion_mnist(cfg: DictConfig, seed: int) -> Dataset:
    from .fashion_mnist import load_fashion_mnist

    return load_fashion_mnist(cfg)


def _csv(cfg: DictConfig, seed: int) -> Dataset:
    from .csv_data import load_csv

    return load_csv(cfg, seed)


LOADERS = {"synthetic": synthetic_regression, "digits": digits, "fashion_mnist": _fashion_mnist, "csv": _csv}


def load_data(cfg: DictConfig, seed: int) -> Dataset:
    """Build the dataset that ``cfg`` (the ``data`` node) names, and check it fits the config."""
    if cfg.name not in LOADERS:
        raise ConfigError(f"data.name={cfg.name!r}: unknown dataset. Known: {', '.join(LOADERS)}.")
    if cfg.task not in ("regression", "classification"):
        raise ConfigError(f"data.task={cfg.task!r}: must be 'regression' or 'classification'.")
    for key in ("n_train", "n_val", "batch_size"):
        if key in cfg and cfg[key] < 1:
            raise ConfigError(f"data.{key}={cfg[key]}: must be at least 1 to form a batch.")
    data = LOADERS[cfg.name](cfg, seed)
    if cfg.num_outputs is not None and cfg.num_outputs != data.num_outputs:
        raise ConfigError(f"data.num_outputs={cfg.num_outputs}, but the {cfg.name} data needs "
                          f"{data.num_outputs} outputs. Leave it unset (null) to take it from the data.")
    return data
