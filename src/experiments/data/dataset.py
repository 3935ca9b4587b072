"""The dataset type every source returns, its config schema, and the helpers sources share.

A dataset is four tensors in memory. No per-sample ``DataLoader`` collation: each epoch
shuffles the whole tensor once (one ``index_select``) and yields contiguous slices of it.
Regression targets are float ``(n, outputs)``; classification targets are int64 class indices.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator, Optional, Tuple

import torch
from omegaconf import MISSING

from ..errors import ConfigError


@dataclass
class DataConfig:
    """What every data config has. A source extends it with its own keys (``Config`` in its
    module) and sets ``_target_`` to its loader, ``load(cfg, seed) -> Dataset``."""

    _target_: str = MISSING  # the loader, e.g. experiments.data.synthetic.load
    name: str = MISSING  # the YAML's name: conf/data/<name>.yaml
    task: str = "regression"  # regression (MSE) | classification (cross-entropy, acc/* metrics)
    num_outputs: Optional[int] = 1  # width of the model's last layer; None: found from the data
    batch_size: int = 32  # examples per optimizer step


@dataclass
class Dataset:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    task: str  # "regression" (MSE) or "classification" (cross-entropy)
    batch_size: int
    num_outputs: int  # what the model's last layer must produce
    # A standardized regression target (CSV tables): y_standardized = (y - target_mean) / target_std,
    # with the training rows' statistics. The model predicts, and the losses measure, standardized units.
    target_mean: Optional[torch.Tensor] = None
    target_std: Optional[torch.Tensor] = None

    def to(self, device: torch.device) -> "Dataset":
        move = lambda t: t.to(device)  # noqa: E731
        return replace(self, train_x=move(self.train_x), train_y=move(self.train_y), val_x=move(self.val_x),
                       val_y=move(self.val_y))

    def in_target_units(self, prediction: torch.Tensor) -> torch.Tensor:
        """A regression prediction in the target's own units (undoes the target's standardization, if any)."""
        if self.target_std is None:
            return prediction
        return prediction * self.target_std.to(prediction.device) + self.target_mean.to(prediction.device)

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


def split(x: torch.Tensor, y: torch.Tensor, val_fraction: float, seed: int, where: str = "data"):
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
