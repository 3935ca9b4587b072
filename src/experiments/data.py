"""Datasets as in-memory tensors, and batches as slices of a shuffled copy.

No per-sample ``DataLoader`` collation: each epoch shuffles the whole tensor once
(one ``index_select``) and yields contiguous slices of it.
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

    def to(self, device: torch.device) -> "Dataset":
        move = lambda t: t.to(device)  # noqa: E731
        return Dataset(move(self.train_x), move(self.train_y), move(self.val_x), move(self.val_y),
                       self.task, self.batch_size)

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
                   cfg.task, cfg.batch_size)


LOADERS = {"synthetic": synthetic_regression}


def load_data(cfg: DictConfig, seed: int) -> Dataset:
    """Build the dataset that ``cfg`` (the ``data`` node) names."""
    if cfg.name not in LOADERS:
        raise ConfigError(f"data.name={cfg.name!r}: unknown dataset. Known: {', '.join(LOADERS)}.")
    for key in ("n_train", "n_val", "batch_size"):
        if key in cfg and cfg[key] < 1:
            raise ConfigError(f"data.{key}={cfg[key]}: must be at least 1 to form a batch.")
    return LOADERS[cfg.name](cfg, seed)
